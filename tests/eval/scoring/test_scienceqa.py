"""ScienceQA-IMG letter rules under both conventions. Options: A cat, B dog, C bird; B is right.
Expected values are worked out by hand from docs/benchmark-scoring.md section 2."""

from __future__ import annotations

import pytest

from omnivision.eval.scoring import scienceqa
from omnivision.eval.scoring.protocol import FieldError


def rec(prediction: str, answer: int = 1) -> dict:
    return {"question": "Which animal is shown?", "choices": ["cat", "dog", "bird"],
            "answer": answer, "hint": "", "prediction": prediction}


@pytest.mark.parametrize("prediction", ["B", "b", " B \n", "B.", "B. dog", "B.erosion"])
def test_lmms_eval_right(prediction):
    s = scienceqa.score(rec(prediction), "lmms-eval")
    assert s.score == 1.0 and s.parsed == "B"


@pytest.mark.parametrize("prediction", ["(B)", "(B) dog", "B)", "Answer: B", "The answer is B",
                                        "b. dog", "**B**", "dog", "A.", "C"])
def test_lmms_eval_wrong(prediction):
    assert scienceqa.score(rec(prediction), "lmms-eval").score == 0.0


def test_lmms_eval_parsed_shows_the_letter_it_read():
    assert scienceqa.score(rec("A. cat"), "lmms-eval").parsed == "A"
    assert scienceqa.score(rec("C"), "lmms-eval").parsed == "C"
    assert scienceqa.score(rec("The answer is B"), "lmms-eval").parsed is None


@pytest.mark.parametrize("prediction, letter", [
    ("B", "B"), ("(B)", "B"), ("B)", "B"), ("**B**", "B"), ("The answer is B", "B"),
    ("dog", "B"),  # option text, short answer
    ("b. dog", "B"),  # no upper-case letter token; "dog" is the only option text inside
    ("b", "Z"),  # lower-case letters are never tokens, and "b" holds no option text
    ("A dog", "A"),  # the article is a standalone "A"
    ("cat or dog", "Z"),  # two option texts
])
def test_vlmevalkit_letters(prediction, letter):
    s = scienceqa.score(rec(prediction), "vlmevalkit")
    assert s.parsed == letter
    assert s.score == float(letter == "B")


def test_conventions_disagree():
    for prediction in ("(B)", "dog", "The answer is B"):
        assert scienceqa.score(rec(prediction), "lmms-eval").score == 0.0
        assert scienceqa.score(rec(prediction), "vlmevalkit").score == 1.0


def test_fields_are_checked():
    with pytest.raises(FieldError, match="missing field 'choices'"):
        scienceqa.score({"answer": 0, "prediction": "A"}, "lmms-eval")
    with pytest.raises(FieldError, match="'answer' must be an option index from 0 to 2"):
        scienceqa.score(rec("A", answer=3), "lmms-eval")
    with pytest.raises(FieldError, match="'answer'"):
        scienceqa.score(rec("A", answer="B"), "lmms-eval")


def test_exact_match_is_the_mean():
    records = [{"score": s} for s in (1.0, 0.0, 1.0, 1.0)]
    assert scienceqa.aggregate(records, "lmms-eval") == {"exact_match": 0.75, "n": 4}
