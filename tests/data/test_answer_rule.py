"""The generated data's answer rule (`data/answer_rule.py`) and its three users: on one table of
answers, the stage-3 oracle teacher, the `shapes_qa` scorer and the nano model's shapes report (its
accuracy table and its yes/no reader) give the same verdict as the rule; lmms-eval's POPE rule,
which `shapes_pope` keeps, is stricter on form only."""

from __future__ import annotations

import pytest

from omnivision.data import answer_rule
from omnivision.data.answer_rule import is_correct, is_yes_no_question, normalise, reading, yes_no
from omnivision.data.records import QAItem
from omnivision.eval import shapes_accuracy
from omnivision.eval.scoring import FieldError, pope, shapes_qa
from omnivision.train.teachers import OracleTeacher, TeacherItem

# (prediction, truth, qtype, right?)
TABLE = [
    ("A circle.", "circle", "shape", True),  # the teacher used to "correct" this to "circle"
    ("circle", "circle", "shape", True),
    ("The top left!", "top left", "position", True),
    ("top   left", "top left", "position", True),  # runs of whitespace are one space
    ("Red.", "red", "color", True),
    ("  RED  ", "red", "color", True),
    ("dark red", "red", "color", False),
    ("circles", "circle", "shape", False),
    ("left top", "top left", "position", False),
    ("3", "3", "count", True),
    ("3 objects", "3", "count", False),
    ("three", "3", "count", False),
    ("A", "A", "chart", True),  # a bar letter is not an article
    ("a.", "A", "chart", True),
    ("Bar A", "A", "chart", False),
    ("20", "20", "chart", True),
    ("Yes, there is", "yes", "pope", True),  # the QA scorer used to reject this, the reader accept it
    ("yes", "yes", "pope", True),
    ("Yes.", "yes", "pope", True),
    ("No, there is not.", "no", "pope", True),
    ("NO!", "no", "pope", True),
    ("Yes, there is", "no", "pope", False),
    ("no", "yes", "pope", False),
    ("maybe", "no", "pope", False),  # the report used to count an unreadable answer as a right "no"
    ("I think so", "yes", "pope", False),
    ("There is no red circle", "no", "pope", False),  # read by the first word: nothing
    ("", "no", "pope", False),
]
IDS = [f"{p!r}-{t!r}" for p, t, _, _ in TABLE]


def teacher_verdict(prediction: str, truth: str) -> bool:
    """Right: the oracle keeps the answer; wrong: it replaces it by the truth."""
    [corrected] = OracleTeacher().correct([TeacherItem("q?", prediction, reference=truth)])
    assert corrected in (prediction, truth)
    return corrected == prediction if prediction != truth else True


def scorer_verdict(prediction: str, truth: str, qtype: str) -> bool:
    scored = shapes_qa.score({"answer": truth, "prediction": prediction, "qtype": qtype})
    assert scored.parsed == reading(prediction, truth)
    return scored.score == 1.0


def report_verdict(prediction: str, truth: str, qtype: str) -> bool:
    """The shapes report: its yes/no tables for probes, its accuracy table for other questions."""
    def answer(images, questions):
        return [prediction]

    if qtype == "pope":
        item = QAItem("0", "images/0.png", "Is there a red circle in the image?", truth, qtype,
                      {"strategy": "random", "object": "red circle"})
        accuracy = shapes_accuracy.pope_metrics(answer, [item])["random"]["accuracy"]
        assert (shapes_accuracy.yes_no(prediction) == truth) == (accuracy == 1.0)  # the reader
    else:
        accuracy = shapes_accuracy.qa_accuracy(answer, [QAItem("0", "images/0.png", "q?", truth, qtype)])[qtype]
    return accuracy == 1.0


@pytest.mark.parametrize("prediction, truth, qtype, right", TABLE, ids=IDS)
def test_one_verdict_everywhere(prediction, truth, qtype, right):
    verdicts = {"rule": is_correct(prediction, truth, qtype),
                "rule without qtype": is_correct(prediction, truth),
                "oracle teacher": teacher_verdict(prediction, truth),
                "shapes_qa scorer": scorer_verdict(prediction, truth, qtype),
                "shapes report": report_verdict(prediction, truth, qtype)}
    assert verdicts == dict.fromkeys(verdicts, right)


@pytest.mark.parametrize("prediction, truth, qtype, right",
                         [row for row in TABLE if row[2] == "pope"],
                         ids=[i for i, row in zip(IDS, TABLE) if row[2] == "pope"])
def test_lmms_eval_pope_rule_is_stricter_on_form_only(prediction, truth, qtype, right):
    """What lmms-eval (the `shapes_pope` task's scorer) counts right is right by the rule too; the
    rule also takes a right first word followed by more ("Yes, there is", "Yes.")."""
    lmms = pope.score({"answer": truth, "prediction": prediction}, "lmms-eval").score == 1.0
    assert not lmms or right
    if right and not lmms:
        assert prediction.strip().lower() != truth


def test_the_oracle_makes_no_pair_from_a_right_answer():
    items = [TeacherItem("What shape is the object in the center?", "A circle.", reference="circle"),
             TeacherItem("Is there a red circle in the image?", "Yes, there is", reference="yes"),
             TeacherItem("Is there a red circle in the image?", "Yes, there is", reference="no"),
             TeacherItem("Describe the image.", "a small red circle in the center",
                         reference="A small red circle in the center.")]
    assert OracleTeacher().correct(items) == ["A circle.", "Yes, there is", "no",
                                              "a small red circle in the center"]


@pytest.mark.parametrize("text, expected", [
    ("  Red. ", "red"), ("The red circle!", "red circle"), ("an\tarrow", "arrow"),
    ("top \n left", "top left"), ("the the square", "the square"), ("Theater", "theater"),
    ("A", "a"), ("?!red,;:", "red"), ("(red)", "(red)"),
])
def test_normalise(text, expected):
    assert normalise(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("yes", "yes"), ("Yes, there is.", "yes"), ("NO!", "no"), ("no yes", "no"),
    ("maybe yes", None), ("nope", None), ("", None), ("... yes", "yes"),
])
def test_yes_no_reads_the_first_word(text, expected):
    assert yes_no(text) == expected


def test_the_truth_says_whether_a_question_is_yes_no():
    assert is_yes_no_question("yes") and is_yes_no_question(" No.", "pope")
    assert not is_yes_no_question("red") and not is_yes_no_question("red", "color")
    assert reading("Yes, there is", "yes") == "yes" and reading("maybe", "no") is None
    assert reading("A circle.", "circle") == "circle"
    with pytest.raises(ValueError, match="'pope' question needs the truth 'yes' or 'no'"):
        is_correct("red", "red", answer_rule.YES_NO_QTYPE)
    with pytest.raises(FieldError, match="'answer' must be 'yes' or 'no' for a pope question"):
        shapes_qa.score({"answer": "red", "prediction": "red", "qtype": "pope"})
