"""The predictions file of one task: an append-only JSONL file of records, one per sample, that a
rerun resumes from, and its per-process shards.

Each record is the sample's benchmark fields plus `id`, `prompt` and `prediction` (see
`runner.prediction_record`). Records are appended a batch at a time, and each batch is flushed and
fsynced, so a killed run loses at most the batch in flight. The only damage a kill can leave is a
last line without its newline (or, after a crash of the machine, one that is not JSON): that line
is ignored when the file is read, and cut off before the file is appended to again, so its sample is
simply redone. A bad line followed by good ones is real damage, and raises `DataError`.

Under torchrun each process appends to its own shard, `predictions.rank{r}.jsonl` beside the main
file; `merge` folds the shards into the main file, in the task's sample order, and removes them.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from omnivision.json_files import DataError, write_json_lines

MAIN_NAME = "predictions.jsonl"


def shard_path(main: Path, rank: int) -> Path:
    """Where process `rank` appends its predictions: `predictions.rank{rank}.jsonl`."""
    return main.with_name(f"{main.stem}.rank{rank}{main.suffix}")


def shard_paths(main: Path) -> list[Path]:
    """Every shard beside `main`, from this run or from an earlier one with more processes."""
    return sorted(main.parent.glob(f"{main.stem}.rank*{main.suffix}"))


def encode(record: dict) -> str:
    """One record as a line; the same text whether appended or rewritten by `merge`."""
    return json.dumps(record, ensure_ascii=False) + "\n"


def _split_lines(data: bytes) -> tuple[list[bytes], bytes]:
    """The newline-terminated lines of `data`, and the unterminated rest."""
    *lines, rest = data.split(b"\n")
    return lines, rest


def _parse(path: Path, number: int, line: bytes) -> dict | None:
    """The record on a line, or None when the line is not a JSON object with an `id`."""
    try:
        record = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(record, dict):
        return None
    if "id" not in record:
        raise DataError(path, number, "prediction record without an 'id'")
    return record


def scan(path: Path) -> tuple[list[dict], int]:
    """The complete records of a predictions file, and the byte length they take up (where a
    damaged last line starts). A missing file has none."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return [], 0
    lines, _ = _split_lines(data)
    records, good_bytes, bad = [], 0, None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            if bad is None:  # blank lines after a bad one are cut off with it
                good_bytes += len(line) + 1
            continue
        record = _parse(path, number, line)
        if record is None:
            bad = bad or number
            continue
        if bad is not None:
            raise DataError(path, bad, "not a JSON record, and records follow it (the file is damaged; "
                                       "remove the line to redo its sample)")
        records.append(record)
        good_bytes += len(line) + 1
    return records, good_bytes


def read(path: Path) -> list[dict]:
    """The complete records of a predictions file, a damaged last line ignored."""
    return scan(path)[0]


def by_id(records: Iterable[dict]) -> dict[str, dict]:
    """Records keyed by id; the first record of an id wins (a later copy is a leftover)."""
    out: dict[str, dict] = {}
    for record in records:
        out.setdefault(str(record["id"]), record)
    return out


class Appender:
    """Appends records to a predictions file, after cutting off a damaged last line."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        records, good_bytes = scan(path)
        self.records = records
        """The records already in the file when it was opened."""
        if path.exists() and path.stat().st_size > good_bytes:
            print(f"note: {path}: dropping an incomplete last line (a killed run); its sample is "
                  f"redone", file=sys.stderr)
            with open(path, "r+b") as f:
                f.truncate(good_bytes)
        self._file = open(path, "a", encoding="utf-8", newline="\n")

    def append(self, records: Sequence[dict]) -> None:
        """Write the records and make them durable before returning."""
        self._file.write("".join(encode(r) for r in records))
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> Appender:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def merge(main: Path, shards: Sequence[Path], order: Sequence[str]) -> list[dict]:
    """Fold `shards` into `main`: every record once, those whose ids are in `order` first and in
    that order, then any others (from an earlier run with a larger limit) as they came. `main` is
    rewritten atomically before the shards are removed, so a kill in between loses nothing.
    Returns the records of `order` that exist, in order."""
    merged = by_id([*read(main), *(r for shard in shards for r in read(shard))])
    wanted = [merged[i] for i in order if i in merged]
    listed = set(order)
    rest = [r for i, r in merged.items() if i not in listed]
    write_json_lines(main, [*wanted, *rest])
    for shard in shards:
        shard.unlink(missing_ok=True)
    return wanted
