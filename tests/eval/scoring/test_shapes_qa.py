"""Scoring the generated shapes questions: normalisation, exact match (a yes/no truth: the first
word), per-type accuracy, and the registry entries of both shapes tasks. Expected values are worked out by hand from the rules in
the scorer's docstring."""

from __future__ import annotations

import pytest

from omnivision.eval.scoring import SCORERS, pope, scorer_for, shapes_qa
from omnivision.eval.scoring.protocol import FieldError


def rec(answer: str, prediction: str, qtype: str = "color") -> dict:
    return {"question_id": "000001-color", "question": "What color is the circle?",
            "answer": answer, "prediction": prediction, "qtype": qtype}


@pytest.mark.parametrize("text, expected", [
    ("  Red. ", "red"),  # whitespace, end punctuation, case
    ("The red circle!", "red circle"),  # a leading article goes
    ("A circle", "circle"), ("an\tarrow", "arrow"),  # any whitespace after the article
    ("Theater", "theater"), ("an", "an"),  # an article needs whitespace after it
    ("the the square", "the square"),  # only one article is dropped
    ("top  \n left", "top left"),  # runs of whitespace are one space
    ("top left", "top left"), ("3", "3"),
    ("?!red,;:", "red"), ("red.?", "red"),  # any mix of the marks at the ends
    ("(red)", "(red)"), ("'red'", "'red'"),  # brackets and quotes are not among them
])
def test_normalise(text, expected):
    assert shapes_qa.normalise(text) == expected


@pytest.mark.parametrize("answer, prediction, right", [
    ("red", "Red.", True), ("circle", "A circle", True), ("top left", "The top left!", True),
    ("3", "3 objects", False), ("red", "dark red", False), ("circle", "circles", False),
    ("top left", "left top", False), ("3", "three", False),
    ("A", "a.", True), ("A", "Bar A", False),  # a bar letter is not an article
])
@pytest.mark.parametrize("convention", ["lmms-eval", "vlmevalkit"])
def test_score_is_exact_match_after_normalising(answer, prediction, right, convention):
    s = shapes_qa.score(rec(answer, prediction), convention)
    assert s.score == (1.0 if right else 0.0)
    assert s.parsed == shapes_qa.normalise(prediction)


@pytest.mark.parametrize("answer, prediction, right, parsed", [
    ("yes", "Yes, there is", True, "yes"), ("no", "No.", True, "no"),
    ("no", "Yes, there is", False, "yes"), ("no", "maybe", False, None),
])
def test_a_yes_no_truth_is_answered_by_the_first_word(answer, prediction, right, parsed):
    """The generated data's rule (data/answer_rule.py), which the oracle teacher uses too."""
    s = shapes_qa.score(rec(answer, prediction, qtype="pope"))
    assert (s.score, s.parsed) == (float(right), parsed)


def test_bad_records_name_the_field():
    with pytest.raises(FieldError, match="'prediction'"):
        shapes_qa.score({"answer": "red", "qtype": "color"})
    with pytest.raises(FieldError, match="'answer' must be a string"):
        shapes_qa.score(rec("red", "red") | {"answer": 3})
    with pytest.raises(FieldError, match="'qtype'"):
        shapes_qa.score(rec("red", "red", qtype="n"))  # would shadow the total count
    with pytest.raises(FieldError, match="'answer' must be 'yes' or 'no' for a pope question"):
        shapes_qa.score(rec("red", "red", qtype="pope"))
    with pytest.raises(ValueError, match="unknown scoring convention"):
        shapes_qa.score(rec("red", "red"), "vqa")


def test_aggregate_per_question_type():
    rows = [rec("red", "red"), rec("blue", "green"), rec("green", "Green."),  # color: 2 of 3
            rec("3", "3", "count"), rec("2", "4", "count"),  # count: 1 of 2
            rec("circle", "The circle", "shape")]  # shape: 1 of 1
    scored = [{**r, "score": shapes_qa.score(r).score} for r in rows]
    out = shapes_qa.aggregate(scored)
    # overall 4 of 6
    assert out["accuracy"] == pytest.approx(4 / 6) and out["n"] == 6
    assert out["color"] == {"accuracy": pytest.approx(2 / 3), "n": 3}
    assert out["count"] == {"accuracy": 0.5, "n": 2}
    assert out["shape"] == {"accuracy": 1.0, "n": 1}
    assert set(out) == {"accuracy", "n", "color", "count", "shape"}
    assert shapes_qa.aggregate([]) == {"accuracy": 0.0, "n": 0}


def test_registry():
    assert scorer_for("shapes_qa") is shapes_qa
    assert SCORERS["shapes_pope"] is pope  # the probes carry POPE's fields (category = strategy)
