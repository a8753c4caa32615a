"""Scoring the nano model on generated shapes data: answer accuracy by question type (asked first in a
conversation, or second: `second_turn_accuracy`), POPE-style yes/no metrics per negative-sampling
strategy, and how often captions name absent objects.

Right and wrong follow the generated data's rule (`omnivision.data.answer_rule`), the one the
`shapes_qa` scorer (reused here for the accuracy tables) and the stage-3 oracle teacher use: texts
compared after normalisation (lower case, surrounding punctuation and a leading article removed),
and a yes/no answer read by its first word ("Yes, there is" is a yes; "maybe" reads as nothing and
is wrong). The yes/no tables are `scoring.pope`'s, filled with those readings and verdicts; an
answer that reads as neither is wrong, is not a predicted "yes", and counts as a negative
prediction in recall (as VLMEvalKit counts it). The `shapes_pope` task's scorer instead follows
lmms-eval's rule (an exact "yes"/"no"; `answer_rule` says how the two relate). The absent-object
rate is the share of objects a caption names (`<colour> <shape>` mentions) that are not in the
scene, and the share of captions naming at least one (object- and caption-level, CHAIR-style).
"""

from __future__ import annotations

import random
import re
from collections import defaultdict
from collections.abc import Callable, Sequence

from omnivision.data.answer_rule import is_correct, normalise, yes_no
from omnivision.data.records import QAItem
from omnivision.eval.scoring import VLMEVALKIT, pope, shapes_qa

Answerer = Callable[[list[str], list[str]], list[str]]
"""(image paths, questions) -> answers."""

SecondTurnAnswerer = Callable[[list[str], list[tuple[str, str]], list[str]], list[str]]
"""(image paths, a first turn about each image as (question, answer), questions) -> the answers to
the questions asked next in those conversations."""

__all__ = ["Answerer", "SecondTurnAnswerer", "absent_object_rate", "mentioned_objects", "normalise",
           "pope_metrics", "qa_accuracy", "second_turn_accuracy", "yes_no"]


def _answers(answer: Answerer, items: Sequence[QAItem], batch: int) -> list[str]:
    out: list[str] = []
    for start in range(0, len(items), batch):
        chunk = items[start:start + batch]
        out += answer([i.image for i in chunk], [i.question for i in chunk])
    return out


def qa_accuracy(answer: Answerer, items: Sequence[QAItem], batch: int = 32) -> dict[str, float]:
    """Exact-match accuracy per question type and overall."""
    return _accuracy(items, _answers(answer, items, batch))


def second_turn_accuracy(answer: SecondTurnAnswerer, items: Sequence[QAItem], seed: int = 0,
                         batch: int = 32) -> dict[str, float]:
    """`qa_accuracy` with each question asked second in a conversation about its image: after
    another question of the same image (drawn with `seed`) and that question's right answer, the
    image given with the first. A model trained on single questions can answer first questions
    and fail later ones, which the first-turn table does not show. A question whose image has no
    other is left out."""
    rng = random.Random(seed)
    by_image: dict[str, list[QAItem]] = defaultdict(list)
    for item in items:
        by_image[item.image].append(item)
    asked = []
    for item in items:
        others = [o for o in by_image[item.image] if o is not item]
        if others:
            asked.append((item, rng.choice(others)))
    answers: list[str] = []
    for start in range(0, len(asked), batch):
        chunk = asked[start:start + batch]
        answers += answer([i.image for i, _ in chunk], [(f.question, f.answer) for _, f in chunk],
                          [i.question for i, _ in chunk])
    return _accuracy([i for i, _ in asked], answers)


def _accuracy(items: Sequence[QAItem], answers: Sequence[str]) -> dict[str, float]:
    records = []
    for item, given in zip(items, answers):
        record = {"answer": item.answer, "prediction": given, "qtype": item.qtype}
        records.append({**record, "score": shapes_qa.score(record).score})
    table = shapes_qa.aggregate(records)
    out = {qtype: table[qtype]["accuracy"] for qtype in sorted(table) if qtype not in ("accuracy", "n")}
    out["overall"] = table["accuracy"]
    return out


def pope_metrics(answer: Answerer, items: Sequence[QAItem], batch: int = 32) -> dict[str, dict[str, float]]:
    """Accuracy, precision, recall, F1 and yes-ratio (the share of predicted "yes") per strategy;
    an answer is read by its first word, and one that reads as neither "yes" nor "no" is wrong and
    counts as a negative prediction."""
    records = []
    for item, given in zip(items, _answers(answer, items, batch)):
        record = {"answer": item.answer, "prediction": given,
                  "category": item.extra.get("strategy", "all")}
        truth = pope.truth(record)
        records.append({**record, "parsed": yes_no(given),
                        "score": float(is_correct(given, truth, item.qtype))})
    # VLMEvalKit's table counts an unread answer to a "yes" question as a false negative; each
    # record has one strategy, so its overall figures are lmms-eval's too (only strategies are kept)
    table = pope.aggregate(records, VLMEVALKIT)
    strategies = sorted({r["category"] for r in records})
    return {s: {"accuracy": table[s]["accuracy"], "precision": table[s]["precision"],
                "recall": table[s]["recall"], "f1": table[s]["f1_score"],
                "yes_ratio": table[s]["pred_yes_ratio"], "n": float(table[s]["n"])}
            for s in strategies}


def mentioned_objects(caption: str, colors: Sequence[str], shapes: Sequence[str]) -> list[str]:
    pattern = rf"\b({'|'.join(colors)})\s+(?:(?:small|large)\s+)?({'|'.join(shapes)})s?\b"
    return [f"{c} {s}" for c, s in re.findall(pattern, caption.lower())]


def absent_object_rate(captions: Sequence[str], scenes: Sequence[set[str]], colors: Sequence[str],
                       shapes: Sequence[str]) -> dict[str, float]:
    named = absent = captions_with_absent = 0
    for caption, present in zip(captions, scenes):
        objects = mentioned_objects(caption, colors, shapes)
        missing = [o for o in objects if o not in present]
        named += len(objects)
        absent += len(missing)
        captions_with_absent += bool(missing)
    return {"object_rate": absent / max(1, named),
            "caption_rate": captions_with_absent / max(1, len(captions)), "objects_named": float(named)}
