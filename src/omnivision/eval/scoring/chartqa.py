"""ChartQA (test): relaxed accuracy, per split (human / augmented) and overall.

Fields: `answer` (string), `type` ("human_test"; "unknown" where the data says no split, e.g. a
VLMEvalKit TSV without a `split` column; anything else counts as augmented), `prediction`.
`parsed` is the prediction read as a finite number, or None (so "nan" and "inf", which `float()`
reads, are kept as None: JSON has no such numbers).

Relaxed correctness: a text ending in "%" is read as its number / 100, any other text as Python's
`float()` reads it (surrounding whitespace, "1e3", "nan" accepted; "1,000" and "$5" not). When the
prediction reads as a number and the target as a non-zero one, right if
|prediction - target| / |target| <= 0.05 (the boundary included); otherwise right only if the two
texts are equal ignoring case.

- lmms-eval: the raw prediction (a trailing space after "%" therefore makes "50% " text, not 0.5).
- vlmevalkit: the prediction is stripped first, and an answer written as a Python list literal
  ("[12, 13]") gives several targets, any of which may be met.

Metrics are lmms-eval's: `relaxed_overall`, `relaxed_human_split`, `relaxed_augmented_split` (a
split with no records is left out), plus `unknown_type`, the count of records of type "unknown",
when there are any: those count in the overall figure only.
"""

from __future__ import annotations

import ast
import math

from omnivision.eval.scoring.protocol import LMMS_EVAL, Scored, check_convention, text_field

MAX_RELATIVE_CHANGE = 0.05
HUMAN = "human_test"
UNKNOWN_TYPE = "unknown"


def to_number(text: str) -> float | None:
    try:
        if text.endswith("%"):
            return float(text.rstrip("%")) / 100.0
        return float(text)
    except ValueError:
        return None


def relaxed_correct(prediction: str, target: str) -> bool:
    pred, gold = to_number(prediction), to_number(target)
    if pred is not None and gold:  # a zero target (or an unreadable one) is compared as text
        return abs(pred - gold) / abs(gold) <= MAX_RELATIVE_CHANGE
    return prediction.lower() == target.lower()


def _parsed(prediction: str) -> float | None:
    number = to_number(prediction)
    return number if number is not None and math.isfinite(number) else None


def _vlmevalkit_targets(answer: str) -> list[str]:
    try:
        value = ast.literal_eval(answer)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return [answer]
    return [str(v) for v in value] if isinstance(value, list) else [answer]


def score(record: dict, convention: str = LMMS_EVAL) -> Scored:
    answer = text_field(record, "answer")
    text_field(record, "type")
    prediction = text_field(record, "prediction")
    if check_convention(convention) == LMMS_EVAL:
        return Scored(float(relaxed_correct(prediction, answer)), _parsed(prediction))
    prediction = prediction.strip()
    right = any(relaxed_correct(prediction, t) for t in _vlmevalkit_targets(answer))
    return Scored(float(right), _parsed(prediction))


def _mean(rows: list[dict]) -> float:
    return sum(float(r["score"]) for r in rows) / len(rows)


def aggregate(records: list[dict], convention: str = LMMS_EVAL) -> dict:
    check_convention(convention)
    out: dict = {"relaxed_overall": _mean(records) if records else 0.0}
    human = [r for r in records if r.get("type") == HUMAN]
    unknown = [r for r in records if r.get("type") == UNKNOWN_TYPE]
    augmented = [r for r in records if r.get("type") not in (HUMAN, UNKNOWN_TYPE)]
    if human:
        out["relaxed_human_split"] = _mean(human)
    if augmented:
        out["relaxed_augmented_split"] = _mean(augmented)
    if unknown:
        out["unknown_type"] = len(unknown)
    out["n"] = len(records)
    return out
