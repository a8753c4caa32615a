"""ChartQA relaxed accuracy under both conventions; expected values worked out by hand from the
rules in docs/benchmark-scoring.md, section 4."""

from __future__ import annotations

import json

import pytest

from omnivision.eval.scoring import chartqa
from omnivision.eval.scoring.protocol import FieldError


def rec(prediction: str, answer: str, kind: str = "human_test") -> dict:
    return {"question": "What is the value?", "answer": answer, "type": kind,
            "prediction": prediction}


@pytest.mark.parametrize("prediction, answer, right", [
    ("12.6", "12", True), ("11.4", "12", True),  # 5 % of 12 = 0.6: the boundary is included
    ("12.61", "12", False), ("11.39", "12", False),
    ("95", "100", True),  # 5 / 100: on the boundary
    ("100", "95", False),  # 5 / 95 > 5 %: the tolerance is relative to the target
    ("2020", "2019", True),  # years are numbers too
    ("12%", "0.12", True), ("12%", "12", False),  # "12%" is 0.12
    ("50%", "0.5", True), ("0.5", "50%", True),
    ("0.0", "0", False), ("0", "0", True),  # a zero target is compared as text
    ("1,000", "1000", False),  # no comma handling
    ("1e3", "1000", True),
    ("Yes", "yes", True), ("yes ", "yes", False),  # text: case-insensitive, not stripped
    ("$5", "5", False),
])
def test_lmms_eval_relaxed_correctness(prediction, answer, right):
    assert chartqa.score(rec(prediction, answer), "lmms-eval").score == float(right)


def test_parsed_is_the_number_read():
    assert chartqa.score(rec("12%", "0.12"), "lmms-eval").parsed == pytest.approx(0.12)
    assert chartqa.score(rec("Canada", "canada"), "lmms-eval").parsed is None


@pytest.mark.parametrize("prediction", ["nan", "inf", "-Infinity", "1e999", "nan%"])
@pytest.mark.parametrize("convention", ["lmms-eval", "vlmevalkit"])
def test_parsed_is_none_for_numbers_json_cannot_hold(prediction, convention):
    # float() reads these, but NaN and infinities would make scored.jsonl invalid JSON
    scored = chartqa.score(rec(prediction, "12"), convention)
    assert scored.parsed is None
    json.dumps(scored.parsed, allow_nan=False)


def test_conventions_disagree_on_whitespace_and_lists():
    # lmms-eval: "50% " does not end in "%", float() refuses it, so text: wrong
    assert chartqa.score(rec("50% ", "0.5"), "lmms-eval").score == 0.0
    assert chartqa.score(rec("50% ", "0.5"), "vlmevalkit").score == 1.0
    assert chartqa.score(rec(" yes", "Yes"), "vlmevalkit").score == 1.0
    # vlmevalkit reads a list-literal answer as several targets
    assert chartqa.score(rec("13", "[12, 13]"), "lmms-eval").score == 0.0
    assert chartqa.score(rec("13", "[12, 13]"), "vlmevalkit").score == 1.0
    assert chartqa.score(rec("14", "[12, 13]"), "vlmevalkit").score == 0.0  # 1/13 > 5 %


def test_splits_and_overall():
    rows = [(1.0, "human_test"), (0.0, "human_test"), (1.0, "augmented_test"),
            (1.0, "augmented_test")]
    m = chartqa.aggregate([{"type": t, "score": s} for s, t in rows], "lmms-eval")
    assert m == {"relaxed_overall": 0.75, "relaxed_human_split": 0.5,
                 "relaxed_augmented_split": 1.0, "n": 4}
    only_human = chartqa.aggregate([{"type": "human_test", "score": 1.0}], "lmms-eval")
    assert "relaxed_augmented_split" not in only_human


def test_records_of_unknown_split_count_overall_only():
    # a TSV without a split column gives type "unknown": not counted as augmented
    rows = [(1.0, "human_test"), (0.0, "unknown"), (1.0, "unknown")]
    m = chartqa.aggregate([{"type": t, "score": s} for s, t in rows], "lmms-eval")
    assert m == {"relaxed_overall": 2 / 3, "relaxed_human_split": 1.0, "unknown_type": 2, "n": 3}


def test_fields_are_checked():
    with pytest.raises(FieldError, match="missing field 'type'"):
        chartqa.score({"answer": "1", "prediction": "1"}, "lmms-eval")
    with pytest.raises(FieldError, match="'answer' must be a string, got int 12"):
        chartqa.score(rec("12", 12), "lmms-eval")
