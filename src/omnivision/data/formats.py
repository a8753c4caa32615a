"""Dataset files to records and back: every field validated, every problem at its `file:line`.

Readers accept a JSON array or JSONL (see `jsonfiles`); line numbers are real line numbers in both.
Layouts:

- conversations (LLaVA): `{"id", "image"?, "conversations": [{"from": "human"|"gpt", "value"}]}`;
  turns alternate starting with "human" and end with "gpt"; `<image>` may appear once, in the first
  human turn only, and only when `image` is set. The marker and the whitespace around it are
  removed from the text (a record with an image but no marker is accepted: the image still goes
  with the first user turn).
- captions: `{"image", "caption"}`.
- preferences: `{"image"?, "prompt", "chosen", "rejected"}`; `chosen` must differ from `rejected`;
  an `<image>` marker in the prompt is removed like in conversations.
- QA items: `{"id", "image"?, "question", "answer", "qtype", "extra"?}`, `qtype` in `QTYPES`; a
  "pope" item needs `extra.strategy` in `POPE_STRATEGIES` and `extra.object`.

Unknown keys are ignored. Ids may be strings or integers (read as strings).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from omnivision.json_files import DataError, iter_json_records, write_json, write_json_lines
from omnivision.data.records import (POPE_STRATEGIES, QTYPES, CaptionPair, Conversation,
                                     PreferencePair, QAItem)

__all__ = ["DataError", "conversation_to_llava", "read_captions", "read_conversations",
           "read_preferences", "read_qa", "record_to_dict", "write_json", "write_jsonl"]

IMAGE_MARKER = "<image>"
_MARKER_RE = re.compile(r"\s*<image>\s*")
_ROLES = {"human": "user", "gpt": "assistant"}
_FROM = {v: k for k, v in _ROLES.items()}
T = TypeVar("T")


def _show(value: Any) -> str:
    """A short one-line rendering of a bad value for an error message."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class _Fields:
    """One raw record being validated; `fail` raises a `DataError` at its file and line."""

    def __init__(self, path: Path, line: int, raw: Any) -> None:
        self.path, self.line = path, line
        if not isinstance(raw, dict):
            self.fail(f"expected a JSON object, got {type(raw).__name__}")
        self.raw: dict[str, Any] = raw

    def fail(self, problem: str) -> NoReturn:
        raise DataError(self.path, self.line, problem)

    def text(self, key: str, value: Any = None, *, optional: bool = False) -> str | None:
        """A non-empty string field (`value` overrides the lookup, for nested fields)."""
        if value is None:
            if key not in self.raw or self.raw[key] is None:
                if optional:
                    return None
                self.fail(f"missing field '{key}'")
            value = self.raw[key]
        if not isinstance(value, str):
            self.fail(f"'{key}' must be a string, got {type(value).__name__} {_show(value)}")
        if not value.strip():
            self.fail(f"'{key}' is empty")
        return value

    def ident(self, key: str = "id") -> str:
        value = self.raw.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        return self.text(key)

    def strip_marker(self, key: str, text: str, image: str | None) -> str:
        n = text.count(IMAGE_MARKER)
        if n and image is None:
            self.fail(f"'{key}' has an {IMAGE_MARKER} marker but the record has no image")
        if n > 1:
            self.fail(f"'{key}' has {n} {IMAGE_MARKER} markers; one image per record")
        return _MARKER_RE.sub(" ", text).strip() if n else text


def _read(path: str | os.PathLike, parse: Callable[[_Fields], T]) -> list[T]:
    path = Path(path)
    out = []
    for line, raw in iter_json_records(path):
        record = parse(_Fields(path, line, raw))
        record.source = (str(path), line)
        out.append(record)
    return out


def _parse_conversation(f: _Fields) -> Conversation:
    ident, image = f.ident(), f.text("image", optional=True)
    turns_raw = f.raw.get("conversations")
    if not isinstance(turns_raw, list) or not turns_raw:
        f.fail("'conversations' must be a non-empty list of turns")
    turns = []
    for n, turn in enumerate(turns_raw):
        key = f"conversations[{n}]"
        if not isinstance(turn, dict):
            f.fail(f"{key} must be an object with 'from' and 'value'")
        speaker = turn.get("from")
        expected = "human" if n % 2 == 0 else "gpt"
        if speaker not in _ROLES:
            f.fail(f"{key}.from must be 'human' or 'gpt', got {_show(speaker)}")
        if speaker != expected:
            f.fail(f"{key}.from is '{speaker}' but turns must alternate, starting with 'human'")
        value = f.text(f"{key}.value", turn.get("value"))
        if n == 0:
            value = f.strip_marker(f"{key}.value", value, image)
        elif IMAGE_MARKER in value:
            f.fail(f"{key}.value has an {IMAGE_MARKER} marker; only the first human turn may")
        turns.append((_ROLES[speaker], value))
    if turns[-1][0] != "assistant":
        f.fail("the last turn is from 'human'; a conversation must end with a 'gpt' answer")
    return Conversation(ident, image, turns)


def _parse_caption(f: _Fields) -> CaptionPair:
    return CaptionPair(f.text("image"), f.text("caption"))


def _parse_preference(f: _Fields) -> PreferencePair:
    image = f.text("image", optional=True)
    prompt = f.strip_marker("prompt", f.text("prompt"), image)
    chosen, rejected = f.text("chosen"), f.text("rejected")
    if chosen == rejected:
        f.fail("'chosen' and 'rejected' are identical")
    return PreferencePair(image, prompt, chosen, rejected)


def _parse_qa(f: _Fields) -> QAItem:
    ident, image = f.ident(), f.text("image", optional=True)
    question, answer = f.text("question"), f.text("answer")
    qtype = f.text("qtype")
    if qtype not in QTYPES:
        f.fail(f"'qtype' must be one of {', '.join(QTYPES)}; got {_show(qtype)}")
    extra = f.raw.get("extra", {})
    if extra is None:
        extra = {}
    if not isinstance(extra, dict):
        f.fail(f"'extra' must be an object, got {type(extra).__name__}")
    if qtype == "pope":
        if extra.get("strategy") not in POPE_STRATEGIES:
            f.fail(f"a pope item needs extra.strategy in {', '.join(POPE_STRATEGIES)}; "
                   f"got {_show(extra.get('strategy'))}")
        f.text("extra.object", extra.get("object"))
    return QAItem(ident, image, question, answer, qtype, dict(extra))


def read_conversations(path: str | os.PathLike) -> list[Conversation]:
    """LLaVA-layout conversations from a JSON array or JSONL file; raises `DataError`."""
    return _read(path, _parse_conversation)


def read_captions(path: str | os.PathLike) -> list[CaptionPair]:
    """Caption pairs (`image`, `caption`) from a JSON array or JSONL file; raises `DataError`."""
    return _read(path, _parse_caption)


def read_preferences(path: str | os.PathLike) -> list[PreferencePair]:
    """Preference pairs (`image`, `prompt`, `chosen`, `rejected`); raises `DataError`."""
    return _read(path, _parse_preference)


def read_qa(path: str | os.PathLike) -> list[QAItem]:
    """Evaluation questions (`QAItem`) from a JSON array or JSONL file; raises `DataError`."""
    return _read(path, _parse_qa)


def conversation_to_llava(c: Conversation) -> dict[str, Any]:
    """The LLaVA JSON form of a conversation: `<image>\\n` starts the first human turn."""
    turns = []
    for n, (role, text) in enumerate(c.turns):
        if n == 0 and c.image is not None:
            text = f"{IMAGE_MARKER}\n{text}"
        turns.append({"from": _FROM[role], "value": text})
    out: dict[str, Any] = {"id": c.id}
    if c.image is not None:
        out["image"] = c.image
    out["conversations"] = turns
    return out


def record_to_dict(record: Any) -> dict[str, Any]:
    """A record as written to a file: conversations in LLaVA form, others field by field."""
    if isinstance(record, Conversation):
        return conversation_to_llava(record)
    if isinstance(record, dict):
        return record
    if is_dataclass(record):
        return {f.name: getattr(record, f.name) for f in fields(record) if f.name != "source"}
    raise TypeError(f"cannot write a {type(record).__name__} as a record")


def write_jsonl(path: str | os.PathLike, records: Iterable[Any]) -> None:
    """Write records (dataclasses from `records`, or dicts) as JSONL, atomically."""
    write_json_lines(path, (record_to_dict(r) for r in records))
