"""ScienceQA (image subset): reading the option letter out of a prediction.

Fields: `choices` (list of option texts, lettered A, B, ... in order), `answer` (index of the right
option), `prediction`. `parsed` is the letter read, or None / "Z" when none was.

- lmms-eval (v0.3.5 and later): after stripping, the whole prediction equal to the right letter in
  any case is right ("B", "b"); otherwise a prediction whose first character is an upper-case
  letter and whose second is "." is right when that letter is ("B.", "B. cat"); nothing else is
  ("(B)", "B)", "Answer: B", "b. cat", the option's text).
- vlmevalkit: `vlmevalkit_choice.infer_choice` over the non-empty options; "Z" when nothing is read.

The metric is lmms-eval's `exact_match`: the mean score.
"""

from __future__ import annotations

from omnivision.eval.scoring.protocol import (LMMS_EVAL, Scored, check_convention, field,
                                              text_field, wrong_field)
from omnivision.eval.scoring.vlmevalkit_choice import infer_choice


def letters(n: int) -> list[str]:
    return [chr(ord("A") + i) for i in range(n)]


def _choices(record: dict) -> list[str]:
    value = field(record, "choices")
    if not isinstance(value, list) or not value or not all(isinstance(c, str) for c in value):
        raise wrong_field(record, "choices", "a non-empty list of strings")
    return value


def _gold(record: dict, n_choices: int) -> str:
    value = field(record, "answer")
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < n_choices:
        raise wrong_field(record, "answer", f"an option index from 0 to {n_choices - 1}")
    return letters(n_choices)[value]


def _lmms_eval(prediction: str, gold: str) -> Scored:
    pred = prediction.strip()
    if pred.lower() == gold.lower():
        return Scored(1.0, gold)
    if len(pred) >= 2 and pred[0].isupper() and pred[1] == ".":
        return Scored(float(pred[0].lower() == gold.lower()), pred[0])
    # A lone wrong letter is still worth showing; anything longer was not read at all.
    return Scored(0.0, pred.upper() if len(pred) == 1 and pred.isalpha() else None)


def score(record: dict, convention: str = LMMS_EVAL) -> Scored:
    choices = _choices(record)
    gold = _gold(record, len(choices))
    prediction = text_field(record, "prediction")
    if check_convention(convention) == LMMS_EVAL:
        return _lmms_eval(prediction, gold)
    options = {letter: text for letter, text in zip(letters(len(choices)), choices) if text}
    letter = infer_choice(prediction, options)
    return Scored(float(letter == gold), letter)


def aggregate(records: list[dict], convention: str = LMMS_EVAL) -> dict:
    check_convention(convention)
    n = len(records)
    return {"exact_match": sum(float(r["score"]) for r in records) / n if n else 0.0, "n": n}
