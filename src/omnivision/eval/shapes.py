"""Scoring the nano model on generated shapes data: answer accuracy by question type, POPE-style
yes/no metrics per negative-sampling strategy, and how often captions name absent objects.

Answers are compared after normalisation (lower case, surrounding punctuation and a leading article
removed); a yes/no answer counts by its first word, as POPE's scorers read it. The absent-object
rate is the share of objects a caption names (`<colour> <shape>` mentions) that are not in the
scene, and the share of captions naming at least one (object- and caption-level, CHAIR-style).
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence

from omnivision.data.records import QAItem

Answerer = Callable[[list[str], list[str]], list[str]]
"""(image paths, questions) -> answers."""


def normalise(text: str) -> str:
    text = text.strip().lower().strip(" .!?,;:")
    return re.sub(r"^(a|an|the)\s+", "", text)


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
    right, total = Counter(), Counter()
    for item, given in zip(items, _answers(answer, items, batch)):
        total[item.qtype] += 1
        right[item.qtype] += normalise(given) == normalise(item.answer)
    out = {qtype: right[qtype] / total[qtype] for qtype in sorted(total)}
    out["overall"] = sum(right.values()) / max(1, sum(total.values()))
    return out


def pope_metrics(answer: Answerer, items: Sequence[QAItem], batch: int = 32) -> dict[str, dict[str, float]]:
    """Accuracy, precision, recall, F1 and yes-ratio per strategy (an unparsable answer counts as
    'no', as POPE's scorer does)."""
    groups: dict[str, list[tuple[bool, bool]]] = defaultdict(list)
    for item, given in zip(items, _answers(answer, items, batch)):
        groups[item.extra.get("strategy", "all")].append((yes_no(given) == "yes", item.answer == "yes"))
    return {strategy: _binary(pairs) for strategy, pairs in sorted(groups.items())}


def _binary(pairs: list[tuple[bool, bool]]) -> dict[str, float]:
    tp = sum(p and t for p, t in pairs)
    fp = sum(p and not t for p, t in pairs)
    fn = sum(not p and t for p, t in pairs)
    tn = len(pairs) - tp - fp - fn
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"accuracy": (tp + tn) / len(pairs), "precision": precision, "recall": recall, "f1": f1,
            "yes_ratio": (tp + fp) / len(pairs), "n": float(len(pairs))}


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
    return {"object_rate": absent / max(1, named), "caption_rate": captions_with_absent / max(1, len(captions)),
            "objects_named": float(named)}
