"""POPE: reading yes/no out of a prediction, and accuracy, precision, recall, F1 and yes-ratio,
overall and per sampling strategy (the record's `category`: adversarial, popular, random).

Fields: `answer` ("yes"/"no", any case), `prediction`, optional `category` (several strategies
may be listed, comma-separated). `parsed` is "yes", "no" or None (nothing read).

- lmms-eval: the prediction, lowercased and stripped, must be exactly "yes" or "no"; "Yes." or
  "Yes, there is" read as nothing. Precision and recall count only exact "yes"/"no" predictions, so
  an unreadable answer is wrong for accuracy but sits in no cell of precision or recall.
  `yes_ratio` is the share of ground-truth "yes" (lmms-eval's definition, kept as is).
- vlmevalkit: punctuation is dropped or blanked the VQA way, then "yes" counts if the word "yes"
  occurs and "no" does not, and the reverse; otherwise nothing ("Unknown"). Nothing counts as a
  negative prediction (a false negative on a "yes" question). A record listed under several
  strategies counts once per strategy, in the overall figures too.

Metric names are lmms-eval's without its `pope_` prefix (`accuracy`, `precision`, `recall`,
`f1_score`, `yes_ratio`); `pred_yes_ratio`, the share of predicted "yes"
(POPE's own yes-ratio), is added because the lmms-eval one does not depend on the model.
"""

from __future__ import annotations

import re
from collections import defaultdict

from omnivision.eval.scoring.protocol import (LMMS_EVAL, Scored, check_convention, text_field,
                                              wrong_field)

# VQA-style punctuation handling, as VLMEvalKit's YOrN extraction applies it.
_VQA_PUNCTUATION = ';/[]"{}()=+\\_->@<`,?!'
_DIGIT_COMMA_DIGIT = re.compile(r"\d,\d")
_PERIOD_NOT_BEFORE_DIGIT = re.compile(r"\.(?!\d)")


def truth(record: dict) -> str:
    value = text_field(record, "answer").strip().lower()
    if value not in ("yes", "no"):
        raise wrong_field(record, "answer", "'yes' or 'no'")
    return value


def _lmms_eval_reading(prediction: str) -> str | None:
    text = prediction.lower().strip()
    return text if text in ("yes", "no") else None


def _vqa_punctuation(text: str) -> str:
    # Each mark is deleted when it touches a space anywhere in the text (or the text has a
    # digit,digit comma), else replaced by a space; the test looks at the original text.
    delete_all = _DIGIT_COMMA_DIGIT.search(text) is not None
    out = text
    for mark in _VQA_PUNCTUATION:
        glued = delete_all or f"{mark} " in text or f" {mark}" in text
        out = out.replace(mark, "" if glued else " ")
    # VLMEvalKit passes re.UNICODE (32) where re.sub takes its count: at most 32 periods go.
    return _PERIOD_NOT_BEFORE_DIGIT.sub("", out, count=32)


def _vlmevalkit_reading(prediction: str) -> str | None:
    words = _vqa_punctuation(prediction.lower()).split()
    has_yes, has_no = "yes" in words, "no" in words
    if has_yes != has_no:
        return "yes" if has_yes else "no"
    return None


def score(record: dict, convention: str = LMMS_EVAL) -> Scored:
    read = _lmms_eval_reading if check_convention(convention) == LMMS_EVAL else _vlmevalkit_reading
    gold = truth(record)
    _categories(record)  # checked here, where the caller can say which record it is
    parsed = read(text_field(record, "prediction"))
    return Scored(float(parsed == gold), parsed)


def _categories(record: dict) -> list[str]:
    value = record.get("category")
    if value is None:
        return []
    if not isinstance(value, str):
        raise wrong_field(record, "category", "a string")
    return [c.strip() for c in value.split(",") if c.strip()]


def _ratio(num: int, den: int) -> float:
    return num / den if den else 0.0


def _table(rows: list[dict], convention: str) -> dict[str, float]:
    golds = [truth(r) for r in rows]
    preds = [r["parsed"] for r in rows]
    tp = sum(g == "yes" and p == "yes" for g, p in zip(golds, preds))
    fp = sum(g == "no" and p == "yes" for g, p in zip(golds, preds))
    if convention == LMMS_EVAL:
        fn = sum(g == "yes" and p == "no" for g, p in zip(golds, preds))
    else:  # an unreadable answer is a negative prediction
        fn = sum(g == "yes" and p != "yes" for g, p in zip(golds, preds))
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    f1 = _ratio(2 * precision * recall, precision + recall)
    return {"accuracy": _ratio(sum(float(r["score"]) for r in rows), len(rows)),
            "precision": precision, "recall": recall, "f1_score": f1,
            "yes_ratio": _ratio(golds.count("yes"), len(rows)),
            "pred_yes_ratio": _ratio(preds.count("yes"), len(rows)), "n": len(rows)}


def aggregate(records: list[dict], convention: str = LMMS_EVAL) -> dict:
    """Overall metrics at the top level, then one nested table per strategy, by its name."""
    check_convention(convention)
    by_category: dict[str, list[dict]] = defaultdict(list)
    exploded: list[dict] = []
    for r in records:
        names = _categories(r)
        for name in names:
            by_category[name].append(r)
        exploded += [r] * max(1, len(names))
    overall_rows = records if convention == LMMS_EVAL else exploded
    out: dict = _table(overall_rows, convention)
    for name in sorted(by_category):
        out[name] = _table(by_category[name], convention)
    return out
