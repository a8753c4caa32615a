"""Generated shapes questions (task `shapes_qa`): right or wrong by the generated data's rule,
accuracy overall and per question type.

Fields: `answer` (the canonical short answer), `prediction`, `qtype` (color, shape, count,
position, chart). The rule is `omnivision.data.answer_rule`, the one the oracle teacher of stage 3
and the nano model's shapes report use too: both sides normalised (lower case, surrounding
whitespace and the marks ` .!?,;:` at either end removed, single spaces, one leading article
dropped) and equal; a yes/no truth is answered by the prediction's first word. `parsed` is what was
compared: the normalised prediction, or its "yes"/"no" reading (None when it reads as neither).
The data is our own, so both conventions apply this one rule.

`aggregate` gives `accuracy` and `n` over all records at the top level, then one nested table
(`accuracy`, `n`) per question type, by its name.
"""

from __future__ import annotations

from collections import defaultdict

from omnivision.data import answer_rule
from omnivision.data.answer_rule import normalise
from omnivision.eval.scoring.protocol import (LMMS_EVAL, Scored, check_convention, text_field,
                                              wrong_field)

_TOTALS = ("accuracy", "n")  # top-level keys a question type must not shadow

__all__ = ["aggregate", "normalise", "qtype", "score"]


def qtype(record: dict) -> str:
    value = text_field(record, "qtype")
    if not value or value in _TOTALS:
        raise wrong_field(record, "qtype", "a question type name other than 'accuracy' or 'n'")
    return value


def score(record: dict, convention: str = LMMS_EVAL) -> Scored:
    check_convention(convention)
    kind = qtype(record)  # checked here so that a bad record stops before aggregation
    gold, prediction = text_field(record, "answer"), text_field(record, "prediction")
    try:
        parsed = answer_rule.reading(prediction, gold, kind)
    except ValueError:
        raise wrong_field(record, "answer", "'yes' or 'no' for a pope question") from None
    return Scored(float(answer_rule.is_correct(prediction, gold, kind)), parsed)


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
