"""Scoring the nano model on generated shapes data: answer accuracy by question type, POPE-style
yes/no metrics per negative-sampling strategy, and how often captions name absent objects.

The rules live in the benchmark scorers and are reused here: answers are compared as
`scoring.shapes_qa` does (lower case, surrounding punctuation and a leading article removed), and
the yes/no tables are `scoring.pope`'s. One difference is kept on purpose: here a yes/no answer
counts by its first word ("Yes, there is" is a yes) and anything else counts as "no", whereas the
`shapes_pope` task's scorer reads only an exact "yes"/"no" (lmms-eval's rule). The absent-object
rate is the share of objects a caption names (`<colour> <shape>` mentions) that are not in the
scene, and the share of captions naming at least one (object- and caption-level, CHAIR-style).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from omnivision.data.records import QAItem
from omnivision.eval.scoring import pope, shapes_qa
from omnivision.eval.scoring.shapes_qa import normalise

Answerer = Callable[[list[str], list[str]], list[str]]
"""(image paths, questions) -> answers."""

__all__ = ["Answerer", "absent_object_rate", "mentioned_objects", "normalise", "pope_metrics",
           "qa_accuracy", "yes_no"]


def yes_no(text: str) -> str | None:
    words = re.findall(r"[a-z]+", text.lower())
    return words[0] if words and words[0] in ("yes", "no") else None


def _answers(answer: Answerer, items: Sequence[QAItem], batch: int) -> list[str]:
    out: list[str] = []
    for start in range(0, len(items), batch):
        chunk = items[start:start + batch]
        out += answer([i.image for i in chunk], [i.question for i in chunk])
    return out


def qa_accuracy(answer: Answerer, items: Sequence[QAItem], batch: int = 32) -> dict[str, float]:
    """Exact-match accuracy per question type and overall."""
    records = []
    for item, given in zip(items, _answers(answer, items, batch)):
        record = {"answer": item.answer, "prediction": given, "qtype": item.qtype}
        records.append({**record, "score": shapes_qa.score(record).score})
    table = shapes_qa.aggregate(records)
    out = {qtype: table[qtype]["accuracy"] for qtype in sorted(table) if qtype not in ("accuracy", "n")}
    out["overall"] = table["accuracy"]
    return out


def pope_metrics(answer: Answerer, items: Sequence[QAItem], batch: int = 32) -> dict[str, dict[str, float]]:
    """Accuracy, precision, recall, F1 and yes-ratio (the share of predicted "yes") per strategy;
    an answer whose first word is not "yes" counts as "no"."""
    records = []
    for item, given in zip(items, _answers(answer, items, batch)):
        read = "yes" if yes_no(given) == "yes" else "no"
        record = {"answer": item.answer, "prediction": given,
                  "category": item.extra.get("strategy", "all")}
        records.append({**record, "parsed": read, "score": float(read == pope.truth(record))})
    # every reading is "yes" or "no", so lmms-eval's and VLMEvalKit's tables agree here
    table = pope.aggregate(records)
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
