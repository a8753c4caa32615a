"""Generated shapes questions (task `shapes_qa`): exact match after normalisation, accuracy
overall and per question type.

Fields: `answer` (the canonical short answer), `prediction`, `qtype` (color, shape, count,
position, chart). Both sides are normalised the same way: surrounding whitespace and the marks
` .!?,;:` at either end removed, lower case, and one leading article ("a", "an", "the" followed by
whitespace) dropped; the score is 1 when the two are then equal. `parsed` is the normalised
prediction. The data is our own, so both conventions apply this one rule.

`aggregate` gives `accuracy` and `n` over all records at the top level, then one nested table
(`accuracy`, `n`) per question type, by its name.
"""

from __future__ import annotations

import re
from collections import defaultdict

from omnivision.eval.scoring.protocol import (LMMS_EVAL, Scored, check_convention, text_field,
                                              wrong_field)

_ARTICLE = re.compile(r"^(a|an|the)\s+")
_TOTALS = ("accuracy", "n")  # top-level keys a question type must not shadow


def normalise(text: str) -> str:
    text = text.strip().lower().strip(" .!?,;:")
    return _ARTICLE.sub("", text)


def qtype(record: dict) -> str:
    value = text_field(record, "qtype")
    if not value or value in _TOTALS:
        raise wrong_field(record, "qtype", "a question type name other than 'accuracy' or 'n'")
    return value


def score(record: dict, convention: str = LMMS_EVAL) -> Scored:
    check_convention(convention)
    qtype(record)  # checked here so that a bad record stops before aggregation
    gold = normalise(text_field(record, "answer"))
    parsed = normalise(text_field(record, "prediction"))
    return Scored(float(parsed == gold), parsed)


def _table(rows: list[dict]) -> dict:
    n = len(rows)
    return {"accuracy": sum(float(r["score"]) for r in rows) / n if n else 0.0, "n": n}


def aggregate(records: list[dict], convention: str = LMMS_EVAL) -> dict:
    check_convention(convention)
    by_qtype: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        by_qtype[qtype(r)].append(r)
    out: dict = _table(records)
    for name in sorted(by_qtype):
        out[name] = _table(by_qtype[name])
    return out
