"""The nano-model scorer (`eval/shapes_accuracy.py`), built on the benchmark scorers and the generated
data's answer rule: accuracy per question type, and POPE tables where an answer counts by its first
word and anything unreadable is wrong and a negative prediction. Expected values are worked out by
hand."""

from __future__ import annotations

import pytest

from omnivision.data.records import QAItem
from omnivision.eval.scoring import pope
from omnivision.eval.shapes_accuracy import pope_metrics, qa_accuracy, second_turn_accuracy


def answerer(predictions: list[str], calls: list[int]):
    """Answers in order; records the size of each batch it is asked."""
    it = iter(predictions)

    def answer(images, questions):
        assert len(images) == len(questions)
        calls.append(len(questions))
        return [next(it) for _ in questions]
    return answer


def qa(n: int, answer: str, qtype: str) -> QAItem:
    return QAItem(str(n), "images/0.png", "q?", answer, qtype)


def probe(n: int, answer: str, strategy: str) -> QAItem:
    return QAItem(str(n), "images/0.png", "Is there a red circle?", answer, "pope",
                  {"strategy": strategy, "object": "red circle"})


def test_qa_accuracy_per_type_and_overall():
    items = [qa(0, "red", "color"), qa(1, "blue", "color"), qa(2, "3", "count"),
             qa(3, "circle", "shape"), qa(4, "top left", "position")]
    calls: list[int] = []
    out = qa_accuracy(answerer(["Red.", "green", "3", "A circle", "left"], calls), items, batch=2)
    # color 1 of 2, count 1 of 1, shape 1 of 1, position 0 of 1: overall 3 of 5
    assert out == {"color": 0.5, "count": 1.0, "position": 0.0, "shape": 1.0, "overall": 0.6}
    assert list(out) == ["color", "count", "position", "shape", "overall"]
    assert calls == [2, 2, 1]
    assert qa_accuracy(answerer([], []), []) == {"overall": 0.0}


def test_second_turn_accuracy_asks_each_question_after_another_of_its_image():
    items = [QAItem("0", "images/0.png", "colour?", "red", "color"),
             QAItem("1", "images/0.png", "shape?", "circle", "shape"),
             QAItem("2", "images/0.png", "count?", "2", "count"),
             QAItem("3", "images/1.png", "colour?", "blue", "color"),
             QAItem("4", "images/1.png", "shape?", "square", "shape"),
             QAItem("5", "images/2.png", "colour?", "green", "color")]  # alone on its image: left out
    truth = {(i.image, i.question): i.answer for i in items}
    seen = []

    def answer(images, firsts, questions):
        for image, (first, first_answer), question in zip(images, firsts, questions):
            seen.append((image, first, question))
            assert first != question and truth[(image, first)] == first_answer  # another question, answered right
        # right about image 0, wrong about image 1
        return [truth[(im, q)] if im == "images/0.png" else "no idea" for im, q in zip(images, questions)]

    out = second_turn_accuracy(answer, items, batch=2)
    assert [(im, q) for im, _, q in seen] == [(i.image, i.question) for i in items[:5]]
    assert out == {"color": 0.5, "count": 1.0, "shape": 0.5, "overall": 0.6}
    firsts = [f for _, f, _ in seen]
    assert second_turn_accuracy(answer, items, batch=2) == out and [f for _, f, _ in seen[5:]] == firsts
    assert second_turn_accuracy(answer, items, seed=1) == out  # another draw of first questions, same truths


def test_pope_metrics_first_word_rule():
    items = [probe(0, "yes", "random"), probe(1, "yes", "random"), probe(2, "no", "random"),
             probe(3, "no", "random"), probe(4, "yes", "adversarial"), probe(5, "no", "adversarial")]
    answers = ["Yes, there is.",  # yes on yes: TP
               "I think so",  # unreadable on yes: wrong, a negative prediction (FN)
               "maybe",  # unreadable on no: wrong, and no predicted "yes"
               "yes",  # yes on no: FP
               "no", "No."]  # adversarial: FN, TN
    out = pope_metrics(answerer(answers, []), items, batch=4)
    assert set(out) == {"random", "adversarial"}
    # random: TP 1, FN 1, FP 1, 1 of 4 right; 2 of 4 predicted "yes"
    assert out["random"] == pytest.approx({"accuracy": 0.25, "precision": 0.5, "recall": 0.5,
                                           "f1": 0.5, "yes_ratio": 0.5, "n": 4.0})
    # adversarial: FN 1, TN 1; no "yes" predicted, so precision, recall and F1 are 0/0 -> 0
    assert out["adversarial"] == pytest.approx({"accuracy": 0.5, "precision": 0.0, "recall": 0.0,
                                                "f1": 0.0, "yes_ratio": 0.0, "n": 2.0})


def test_first_word_rule_differs_from_the_shapes_pope_scorer():
    """"Yes, there is." is a yes here but nothing under lmms-eval's exact rule (see the report)."""
    out = pope_metrics(answerer(["Yes, there is."], []), [probe(0, "yes", "popular")])
    assert out["popular"]["accuracy"] == 1.0
    record = {"answer": "yes", "prediction": "Yes, there is.", "category": "popular"}
    assert pope.score(record, "lmms-eval").score == 0.0
