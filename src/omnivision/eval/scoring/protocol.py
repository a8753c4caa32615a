"""The contract every benchmark scorer keeps, and the record checks they share.

A scorer module exposes `score(record, convention) -> Scored` (one record: the benchmark's own
fields plus `prediction`) and `aggregate(records, convention) -> dict` (records that also carry the `score`
and `parsed` that `score` gave them). `convention` names whose rules to follow: "lmms-eval" (the
default everywhere) or "vlmevalkit" (its rule-based exact-matching path, no judge model).

Scorers see plain dicts and no file, so a bad field raises `FieldError` naming the field; whoever
reads the file adds the line number (see `score_file`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

LMMS_EVAL = "lmms-eval"
VLMEVALKIT = "vlmevalkit"
CONVENTIONS = (LMMS_EVAL, VLMEVALKIT)


@dataclass(frozen=True)
class Scored:
    """One record's result: `score` in [0, 1] and what was read out of the prediction."""

    score: float
    parsed: Any


class FieldError(ValueError):
    """A record lacks a field a scorer needs, or the field holds the wrong kind of value."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        super().__init__(problem)


def check_convention(convention: str) -> str:
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown scoring convention {convention!r} "
                         f"(choose from {', '.join(CONVENTIONS)})")
    return convention


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def field(record: dict, name: str) -> Any:
    """The value of a required field (present and not null)."""
    if record.get(name) is None:
        raise FieldError(name, f"missing field '{name}'")
    return record[name]


def text_field(record: dict, name: str) -> str:
    value = field(record, name)
    if not isinstance(value, str):
        raise FieldError(name, f"'{name}' must be a string, got {type(value).__name__} "
                               f"{_show(value)}")
    return value


def wrong_field(record: dict, name: str, expected: str) -> FieldError:
    """The error for a present field whose value is not what the benchmark allows."""
    return FieldError(name, f"'{name}' must be {expected}, got {_show(record.get(name))}")
