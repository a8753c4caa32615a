"""MMMU: the multiple-choice parser and its per-sample seeded fallback, open answers by the official
MMMU rules, the vlmevalkit path, and accuracy per subject, domain and overall. Expected values are
worked out by hand from docs/benchmark-scoring.md (sections 3.2 to 3.5)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import pytest

from omnivision.eval.scoring import mmmu
from omnivision.eval.scoring.mmmu_parsing import normalise, parse_choice, parse_open
from omnivision.eval.scoring.protocol import FieldError

OPTIONS = ["cat", "dog", "bird", "fish"]  # A B C D


def mc(prediction: str, answer: str = "B", ident: str = "validation_Art_1") -> dict:
    return {"id": ident, "question": "Which animal? <image 1>", "question_type": "multiple-choice",
            "options": str(OPTIONS), "answer": answer, "prediction": prediction}


def open_q(prediction: str, answer: str, ident: str = "validation_Math_1") -> dict:
    return {"id": ident, "question": "How much?", "question_type": "open", "options": "[]",
            "answer": answer, "prediction": prediction}


def choose(response: str) -> tuple[str, bool]:
    return parse_choice(response, OPTIONS, random.Random(0))


@pytest.mark.parametrize("response, letter", [
    ("(A)", "A"), ("A.", "A"), ("B", "B"), ("  C  ", "C"),
    ("The answer is (B), not (C).", "C"),  # two brackets: the later one
    ("A dog is shown.", "A"),  # the article "A" followed by a space
    ("B.\n", "B"),  # the newline keeps the period, so "B." (rule c)
    ("C.\nA.\n", "A"),  # rule c only: all positions tie, the first letter in option order wins
    ("I think the animal is a bird", "C"),  # 7 words, no letter: the option text
    ("it's a cat, not a dog at all", "B"),  # two option texts: the later one
])
def test_parse_choice(response, letter):
    assert choose(response) == (letter, False)


@pytest.mark.parametrize("response", ["B)", "**B**", "B's", "d", "E", "dog", "", "B\n"])
def test_parse_choice_falls_back_to_random(response):
    letter, drawn = choose(response)
    assert drawn and letter in "ABCD"


def test_fallback_is_seeded_per_sample_and_counted():
    records = [mc("B)", ident=f"validation_Art_{i}") for i in range(40)]
    first = [mmmu.score(r, "lmms-eval") for r in records]
    again = [mmmu.score(r, "lmms-eval") for r in reversed(records)][::-1]  # other order, same draw
    assert [s.parsed for s in first] == [s.parsed for s in again]
    assert all(s.parsed["random"] for s in first)
    assert len({s.parsed["letter"] for s in first}) > 1  # drawn per sample, not one fixed letter
    scored = [{**r, "score": s.score, "parsed": s.parsed} for r, s in zip(records, first)]
    scored.append({**mc("B"), "score": 1.0, "parsed": {"letter": "B", "random": False}})
    assert mmmu.aggregate(scored, "lmms-eval")["random_fallbacks"] == 40


def test_wrong_fallback_reads_no_letter():
    # docs/benchmark-scoring.md 3.2: "always wrong" instead of a random letter; a readable letter is unaffected
    unread = mmmu.score(mc("B)"), "lmms-eval", fallback="wrong")
    assert (unread.score, unread.parsed) == (0.0, {"letter": None, "random": False, "wrong": True})
    read = mmmu.score(mc("(B)"), "lmms-eval", fallback="wrong")
    assert (read.score, read.parsed["wrong"]) == (1.0, False)
    records = [{**mc("x"), "score": x.score, "parsed": x.parsed} for x in (unread, read)]
    m = mmmu.aggregate(records, "lmms-eval")
    assert (m["wrong_fallbacks"], m["random_fallbacks"], m["overall"]) == (1, 0, 0.5)
    with pytest.raises(ValueError, match="unknown MMMU fallback 'skip'"):
        mmmu.score(mc("B"), "lmms-eval", fallback="skip")


def test_submission_answer_reads_as_the_scorer_does():
    hidden = {"answer": None}  # test-split records carry no gold answer
    unread = {**mc("B)", ident="test_Art_3"), **hidden}
    drawn = mmmu.score({**unread, "answer": "A"}, "lmms-eval").parsed["letter"]
    assert mmmu.submission_answer(unread) == (drawn, True)  # the same seeded draw
    assert mmmu.submission_answer(unread, "wrong") == ("", True)
    assert mmmu.submission_answer({**mc("I pick (C)."), **hidden}) == ("C", False)
    open_answer = {**open_q("The answer is 1,000 units.", "x"), **hidden}
    assert mmmu.submission_answer(open_answer) == ([0.0, 1000.0, "1,000 units"], False)


def test_fallback_is_the_same_in_a_fresh_process():
    # a different hash seed must not change the draw (it is seeded from the id, not hash())
    ids = [f"validation_Art_{i}" for i in range(8)]
    here = [mmmu.score(mc("B)", ident=i), "lmms-eval").parsed["letter"] for i in ids]
    code = ("import json, sys; from omnivision.eval.scoring import mmmu; "
            "print(json.dumps([mmmu.score({'id': i, 'question_type': 'multiple-choice', "
            f"'options': {str(OPTIONS)!r}, 'answer': 'B', 'prediction': 'B)'}}, 'lmms-eval')"
            ".parsed['letter'] for i in json.loads(sys.argv[1])]))")
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code, json.dumps(ids)], env=env, check=True,
                         capture_output=True, text=True, timeout=120).stdout
    assert json.loads(out) == here


@pytest.mark.parametrize("prediction, answer, right", [
    ("3.499", "3.5", True),  # numbers compare after rounding to 2 decimals
    ("13.5", "3.5", False),
    ("a cat", "cat", True),  # text gold inside a text candidate
    ("12 meters. units are meters", "12", True),  # through the extracted number
    ("50%", "50", True), ("50%", "0.5", False), ("twelve", "12", False),
    ("The answer is 7", "7", True),  # shortest tail after an indicator: "7"
    ("x = 5", "5", True),  # "=" is an indicator in the last piece
    ("the answer is b", "b", True),  # one character: padded " b" / "b " on both sides
    ("abc", "b", False),  # ...so it cannot match inside a word
    ("1,000", "0", True),  # "1,000" also yields a spurious 0
    ("1,000", "1000", True), ("1e3", "1000", True),
    ("Paris\nso the answer is London", "london", True),  # per line: the first has no key
])
def test_open_answers_follow_official_rules(prediction, answer, right):
    s = mmmu.score(open_q(prediction, answer), "lmms-eval")
    assert s.score == float(right)


def test_open_candidates():
    # "the answer is 1,000 units" -> key "1,000 units" (shortest tail: after "is ");
    # numbers "1,000" and the spurious "000"; normalised: the text, 1000.0 and 0.0
    assert parse_open("The answer is 1,000 units.") == [0.0, 1000.0, "1,000 units"]
    assert normalise(" 3.14159 ") == [3.14]
    assert normalise("X") == [" x", "x "]


def test_gold_list_any_element():
    assert mmmu.score(open_q("it is 7", ["6", "7"]), "lmms-eval").score == 1.0
    assert mmmu.score(mc("C", answer=["B", "C"]), "lmms-eval").score == 1.0


@pytest.mark.parametrize("prediction, letter", [
    ("B", "B"), ("B)", "B"), ("**B**", "B"), ("A B", "Z"), ("b", "Z"), ("dog", "B"),
])
def test_vlmevalkit_multiple_choice(prediction, letter):
    s = mmmu.score(mc(prediction), "vlmevalkit")
    assert s.parsed == {"letter": letter, "random": False, "wrong": False}
    assert s.score == float(letter == "B")


@pytest.mark.parametrize("prediction, right", [
    ("13.5", True),  # "3.5" occurs in it: option A
    ("3.5", True),
    ("3.499", False),  # no letter, no option text inside: Z
    ("A", True),  # a bare letter picks option A, the gold text
    ("Other Answers", False),
])
def test_vlmevalkit_open_is_a_two_way_choice(prediction, right):
    assert mmmu.score(open_q(prediction, "3.5"), "vlmevalkit").score == float(right)


def test_conventions_disagree():
    assert mmmu.score(open_q("3.499", "3.5"), "lmms-eval").score == 1.0
    assert mmmu.score(open_q("3.499", "3.5"), "vlmevalkit").score == 0.0
    assert mmmu.score(open_q("13.5", "3.5"), "lmms-eval").score == 0.0
    assert mmmu.score(open_q("13.5", "3.5"), "vlmevalkit").score == 1.0


def test_aggregate_per_subject_domain_and_overall():
    rows = [("validation_Art_1", 1.0), ("validation_Art_2", 0.0), ("validation_Art_3", 0.0),
            ("validation_Art_Theory_1", 1.0), ("validation_Math_4", 1.0),
            ("validation_Computer_Science_3", 0.0)]
    records = [{"id": i, "score": s, "parsed": {"letter": "A", "random": False}} for i, s in rows]
    m = mmmu.aggregate(records, "lmms-eval")
    assert m["overall"] == 0.5 and m["n"] == 6 and m["random_fallbacks"] == 0  # 3 of 6
    assert m["subjects"]["Art"] == {"acc": 0.33333, "num": 3}  # rounded to 5 decimals
    assert m["subjects"]["Computer_Science"] == {"acc": 0.0, "num": 1}
    assert m["domains"]["Art and Design"] == {"acc": 0.5, "num": 4}  # Art 1/3 + Art_Theory 1/1
    assert m["domains"]["Science"] == {"acc": 1.0, "num": 1}
    assert m["domains"]["Tech and Engineering"] == {"acc": 0.0, "num": 1}
    assert m["domains"]["Business"] == {"acc": 0.0, "num": 0}
    assert sum(len(v) for v in mmmu.DOMAINS.values()) == 30


def test_fields_are_checked():
    with pytest.raises(FieldError, match="'id' must be"):
        mmmu.score(mc("A", ident="Art-1"), "lmms-eval")
    with pytest.raises(FieldError, match="'question_type'"):
        mmmu.score({**mc("A"), "question_type": "mcq"}, "lmms-eval")
    with pytest.raises(FieldError, match="'options' must be a Python list literal"):
        mmmu.score({**mc("A"), "options": "cat, dog"}, "lmms-eval")
    with pytest.raises(FieldError, match="missing field 'answer'"):
        mmmu.score({k: v for k, v in mc("A").items() if k != "answer"}, "lmms-eval")
