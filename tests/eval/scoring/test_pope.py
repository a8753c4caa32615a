"""POPE scoring under both conventions: how yes/no is read, and the metric tables. Every expected
value below is worked out by hand from the rules in docs/benchmark-scoring.md section 1."""

from __future__ import annotations

import pytest

from omnivision.eval.scoring import pope
from omnivision.eval.scoring.protocol import FieldError


def rec(answer: str, prediction: str, category: str | None = None) -> dict:
    r = {"question_id": 1, "question": "Is there a dog in the image?", "answer": answer,
         "prediction": prediction}
    if category is not None:
        r["category"] = category
    return r


def scored(records: list[dict], convention: str) -> list[dict]:
    out = []
    for r in records:
        s = pope.score(r, convention)
        out.append({**r, "score": s.score, "parsed": s.parsed})
    return out


@pytest.mark.parametrize("prediction, parsed", [
    ("yes", "yes"), ("No", "no"), (" Yes \n", "yes"),  # lowercased and stripped
    ("Yes.", None), ("no.", None), ("Yes, there is", None),  # nothing is extracted
    ("maybe", None), ("", None),
])
def test_lmms_eval_needs_exactly_yes_or_no(prediction, parsed):
    s = pope.score(rec("yes", prediction), "lmms-eval")
    assert s.parsed == parsed
    assert s.score == (1.0 if parsed == "yes" else 0.0)


@pytest.mark.parametrize("prediction, parsed", [
    ("Yes, there is a dog.", "yes"),  # ", " touches a space: the comma goes; the final period goes
    ("no.", "no"),
    ("Yes!", "yes"),  # "!" touches no space: it becomes a space
    ("There is no dog in the image.", "no"),
    ("Yes, there is a car, but no person.", None),  # both words
    ("yes/no", None),  # "/" becomes a space: both words
    ("nope", None), ("I cannot tell", None),
    ("no-one is there", "no"),  # "-" touches no space and there is no digit,digit: a space
    ("no-one of the 1,000 people", None),  # a digit,digit comma: every mark is deleted ("noone")
    ("." * 32 + "yes", "yes"),  # periods not before a digit are deleted, at most 32 of them...
    ("." * 33 + "yes", None),  # ...so one is left, glued to the word
])
def test_vlmevalkit_reads_one_word(prediction, parsed):
    assert pope.score(rec("yes", prediction), "vlmevalkit").parsed == parsed


def test_conventions_disagree_on_a_sentence():
    r = rec("yes", "Yes, there is a dog.")
    assert pope.score(r, "lmms-eval").score == 0.0
    assert pope.score(r, "vlmevalkit").score == 1.0


def test_ground_truth_is_case_insensitive_and_checked():
    assert pope.score(rec(" Yes", "yes"), "lmms-eval").score == 1.0
    with pytest.raises(FieldError, match="'answer' must be 'yes' or 'no'"):
        pope.score(rec("maybe", "yes"), "lmms-eval")
    with pytest.raises(FieldError, match="missing field 'prediction'"):
        pope.score({"answer": "yes"}, "lmms-eval")
    with pytest.raises(ValueError, match="unknown scoring convention"):
        pope.score(rec("yes", "yes"), "vqa")


# (ground truth, prediction, category); lmms-eval reads / vlmevalkit reads
RECORDS = [
    rec("yes", "yes", "adversarial"),  # yes / yes: TP
    rec("yes", "no", "adversarial"),  # no / no: FN
    rec("yes", "Yes, there is", "adversarial"),  # nothing / yes
    rec("no", "yes", "adversarial"),  # yes / yes: FP
    rec("no", "no", "popular"),  # no / no: TN
    rec("no", "nope", "popular"),  # nothing / nothing
    rec("yes", "maybe", "popular"),  # nothing / nothing (a FN for vlmevalkit)
    rec("no", "No, there is not.", "random"),  # nothing / no
]


def test_lmms_eval_tables():
    m = pope.aggregate(scored(RECORDS, "lmms-eval"), "lmms-eval")
    # right: records 1 and 5 of 8; TP 1, FP 1 (record 4), FN 1 (record 2; "maybe" is in no cell)
    assert m["accuracy"] == pytest.approx(2 / 8)
    assert m["precision"] == pytest.approx(1 / 2)
    assert m["recall"] == pytest.approx(1 / 2)
    assert m["f1_score"] == pytest.approx(1 / 2)
    assert m["yes_ratio"] == pytest.approx(4 / 8)  # share of ground-truth "yes"
    assert m["pred_yes_ratio"] == pytest.approx(2 / 8)
    assert m["n"] == 8
    adv, pop = m["adversarial"], m["popular"]
    assert (adv["accuracy"], adv["precision"], adv["recall"]) == \
        pytest.approx((1 / 4, 1 / 2, 1 / 2))
    assert adv["yes_ratio"] == pytest.approx(3 / 4)
    # popular: no TP and no FP (0/0 -> 0); "maybe" on a "yes" is not a FN, so recall is 0/0 too
    assert pop == {"accuracy": pytest.approx(1 / 3), "precision": 0.0,
                   "recall": 0.0, "f1_score": 0.0,
                   "yes_ratio": pytest.approx(1 / 3), "pred_yes_ratio": 0.0, "n": 3}
    assert m["random"]["accuracy"] == 0.0
    assert set(m) >= {"adversarial", "popular", "random"}


def test_vlmevalkit_tables():
    m = pope.aggregate(scored(RECORDS, "vlmevalkit"), "vlmevalkit")
    # right: records 1, 3, 5, 8; TP 2 (1, 3), FP 1 (4), FN 2 (2, and "maybe" as a negative)
    assert m["accuracy"] == pytest.approx(4 / 8)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 4)
    assert m["f1_score"] == pytest.approx(2 * (2 / 3) * (1 / 2) / (2 / 3 + 1 / 2))  # 4/7
    assert m["popular"]["recall"] == 0.0  # TP 0, FN 1
    assert m["random"]["accuracy"] == 1.0


def test_shared_question_counts_once_per_strategy_in_vlmevalkit_only():
    records = [rec("yes", "yes", "adversarial,popular"), rec("no", "yes", "random")]
    lmms = pope.aggregate(scored(records, "lmms-eval"), "lmms-eval")
    vlm = pope.aggregate(scored(records, "vlmevalkit"), "vlmevalkit")
    assert lmms["n"] == 2 and lmms["accuracy"] == pytest.approx(1 / 2)
    # exploded rows: the shared right answer twice, the wrong one once
    assert vlm["n"] == 3 and vlm["accuracy"] == pytest.approx(2 / 3)
    assert vlm["precision"] == pytest.approx(2 / 3)
    for m in (lmms, vlm):
        assert m["adversarial"]["n"] == m["popular"]["n"] == m["random"]["n"] == 1


def test_no_category_gives_overall_only():
    m = pope.aggregate(scored([rec("yes", "yes"), rec("no", "yes")], "lmms-eval"), "lmms-eval")
    assert m["accuracy"] == 0.5 and m["precision"] == 0.5 and m["recall"] == 1.0
    assert not any(isinstance(v, dict) for v in m.values())
