"""JSON and JSONL files at the byte level: records with their line numbers, atomic writes.

`iter_json_records` reads either layout, told apart by content: a file whose first non-space
character is `[` is one JSON array; anything else is JSONL (one JSON value per line, blank lines
ignored). Both report each record with the 1-based line on which it starts, JSON arrays included
(the array is walked element by element), so every problem can be reported as `file:line: problem`.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

_WS = re.compile(r"[ \t\n\r]*")


class DataError(ValueError):
    """A bad record or file; the message is one line, `{file}:{line}: {problem}`."""

    def __init__(self, file: str | os.PathLike, line: int, problem: str) -> None:
        self.file = str(file)
        self.line = line
        self.problem = " ".join(problem.splitlines())
        super().__init__(f"{self.file}:{self.line}: {self.problem}")

    def __reduce__(self):  # picklable, e.g. across DataLoader worker processes
        return DataError, (self.file, self.line, self.problem)


def _read_text(path: Path) -> str:
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(path, data.count(b"\n", 0, e.start) + 1, "file is not UTF-8 text") from e
    return text[1:] if text.startswith("\ufeff") else text


def iter_json_records(path: str | os.PathLike) -> Iterator[tuple[int, Any]]:
    """Yield `(line, value)` for each record of a JSON-array or JSONL file; raises `DataError`."""
    path = Path(path)
    text = _read_text(path)
    start = _WS.match(text).end()
    if text.startswith("[", start):
        yield from _iter_array(path, text, start)
    else:
        yield from _iter_lines(path, text)


def _iter_lines(path: Path, text: str) -> Iterator[tuple[int, Any]]:
    # split on "\n" only: JSON strings may hold raw U+2028 and similar, which splitlines() splits on
    for n, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            yield n, json.loads(line)
        except json.JSONDecodeError as e:
            hint = " (JSONL needs one whole record per line)" if e.msg.startswith("Expecting") else ""
            raise DataError(path, n, f"invalid JSON: {e.msg} at column {e.colno}{hint}") from e


def _iter_array(path: Path, text: str, start: int) -> Iterator[tuple[int, Any]]:
    decoder = json.JSONDecoder()
    line, counted = 1, 0

    def line_at(pos: int) -> int:
        nonlocal line, counted
        line += text.count("\n", counted, pos)
        counted = pos
        return line

    i = _WS.match(text, start + 1).end()
    if text.startswith("]", i):
        _expect_end(path, text, i + 1, line_at)
        return
    while True:
        try:
            value, end = decoder.raw_decode(text, i)
        except json.JSONDecodeError as e:
            raise DataError(path, e.lineno, f"invalid JSON: {e.msg} at column {e.colno}") from e
        yield line_at(i), value
        i = _WS.match(text, end).end()
        if text.startswith(",", i):
            i = _WS.match(text, i + 1).end()
        elif text.startswith("]", i):
            _expect_end(path, text, i + 1, line_at)
            return
        elif i >= len(text):
            raise DataError(path, line_at(i), "invalid JSON: the array is not closed with ']'")
        else:
            raise DataError(path, line_at(i), f"invalid JSON: expected ',' or ']' after a record, "
                                              f"found {text[i]!r}")


def _expect_end(path: Path, text: str, pos: int, line_at: Callable[[int], int]) -> None:
    i = _WS.match(text, pos).end()
    if i < len(text):
        raise DataError(path, line_at(i), "invalid JSON: extra data after the closing ']'")


def _write_atomic(path: str | os.PathLike, text: str) -> None:
    """Write `text` to a temporary file beside `path`, then rename it over `path`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write `data` as indented JSON (one value), atomically."""
    _write_atomic(path, json.dumps(data, ensure_ascii=False, indent=2) + "\n")


def write_json_lines(path: str | os.PathLike, rows: Iterable[Any]) -> None:
    """Write one JSON value per line, atomically."""
    _write_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
