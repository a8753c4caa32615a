"""Captions and question templates for procedural scenes, with short canonical answers.

Every question has exactly one correct answer, from a small closed vocabulary: a colour, a shape,
a digit, a grid position ("top left", "center", ...), a bar letter, "yes" or "no". A question is
only asked when the scene makes it unambiguous: a colour or shape question names an occupied cell
("What color is the object at the top left?"), a position question an object of the scene.
`answer_question` parses any of the templates back and answers it from the scene: the oracle for
the procedural data.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

from omnivision.data.charts import ChartScene
from omnivision.data.scenes import Scene
from omnivision.data.shape_scenes import COLORS, PLURALS, POSITIONS, SHAPES, ShapeObject, ShapeScene

CAPTION_PROMPT = "Describe the image."
COLOR_Q = "What color is the object {where}?"
SHAPE_Q = "What shape is the object {where}?"
COUNT_Q = "How many {plural} are there?"
COUNT_ALL_Q = "How many objects are there?"
POSITION_Q = "Where is the {color} {shape}?"
PROBE_Q = "Is there {article} {object} in the image?"
TALLEST_Q = "Which bar is the tallest?"
SHORTEST_Q = "Which bar is the shortest?"
VALUE_Q = "What is the value of bar {label}?"


class Question(NamedTuple):
    """A question about one scene, its answer, its `QAItem` qtype and details."""

    text: str
    answer: str
    qtype: str
    extra: dict[str, Any]


def probe_text(name: str) -> str:
    """The yes/no question about an object such as "orange circle" (with "a" or "an")."""
    return PROBE_Q.format(article="an" if name[0] in "aeiou" else "a", object=name)


def where(position: str) -> str:
    """The phrase that places an object: "at the top left", "in the center"."""
    return "in the center" if position == "center" else f"at the {position}"


def _join(phrases: list[str]) -> str:
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]


def caption(scene: Scene) -> str:
    """A full description, objects in reading order of their cells (charts: bars in order)."""
    if isinstance(scene, ChartScene):
        bars = _join([f"{label} is {value}" for label, value in zip(scene.labels, scene.values)])
        return f"A bar chart with {len(scene.values)} bars: {bars}."
    text = _join([f"a {o.size} {o.color} {o.shape} {where(o.position)}" for o in scene.objects])
    return text[0].upper() + text[1:] + "."


def descriptions(scene: Scene) -> list[str]:
    """Short texts true of the scene, coarse to fine, for contrastive pretraining: per object its
    shape, its colour alone, colour and shape, size, colour and shape, and shape, colour alone and
    colour and shape with the object's place; for a chart "a bar chart". The caption is not among
    them.

    The colour-only texts matter: when every text names the shape, the contrastive task is solved
    mostly by shape and place, and the tower's features of an object varied far less with its
    colour than with its shape (scripts/nano_features.py: 6 % against 53 % of the between-object
    variance); with them the two are balanced (32 % and 30 %), and a decoder trained on colour
    questions alone reached 49 % instead of 24 % held-out accuracy in 300 steps."""
    if isinstance(scene, ChartScene):
        return ["a bar chart"]
    out: list[str] = []
    for o in scene.objects:
        place = where(o.position)
        for text in (f"a {o.shape}", f"a {o.color} object", f"a {o.color} {o.shape}",
                     f"a {o.size} {o.color} {o.shape}", f"a {o.shape} {place}",
                     f"a {o.color} object {place}", f"a {o.color} {o.shape} {place}"):
            if text not in out:
                out.append(text)
    return out


def _unique(objects: tuple[ShapeObject, ...], **attrs: str) -> ShapeObject | None:
    """The one object with these attributes, or None when there are none or several."""
    found = [o for o in objects if all(getattr(o, k) == v for k, v in attrs.items())]
    return found[0] if len(found) == 1 else None


def shape_questions(scene: ShapeScene) -> dict[str, list[Question]]:
    """Every unambiguous question about a shapes scene, by qtype (probes are in `pope`)."""
    objs = scene.objects
    out: dict[str, list[Question]] = {"color": [], "shape": [], "count": [], "position": []}
    for o in objs:
        out["color"].append(Question(COLOR_Q.format(where=where(o.position)), o.color, "color", {}))
        out["shape"].append(Question(SHAPE_Q.format(where=where(o.position)), o.shape, "shape", {}))
    for shape in SHAPES:
        n = sum(o.shape == shape for o in objs)
        out["count"].append(Question(COUNT_Q.format(plural=PLURALS[shape]), str(n), "count",
                                     {"target": shape}))
    out["count"].append(Question(COUNT_ALL_Q, str(len(objs)), "count", {"target": "object"}))
    for o in objs:
        out["position"].append(Question(POSITION_Q.format(color=o.color, shape=o.shape),
                                        o.position, "position", {}))
    return out


def chart_questions(scene: ChartScene) -> dict[str, list[Question]]:
    """Every question about a chart, by kind: "tallest", "shortest" and "value" (all qtype chart)."""
    pairs = list(zip(scene.labels, scene.values))
    tallest = max(pairs, key=lambda p: p[1])[0]
    shortest = min(pairs, key=lambda p: p[1])[0]
    return {
        "tallest": [Question(TALLEST_Q, tallest, "chart", {"kind": "tallest"})],
        "shortest": [Question(SHORTEST_Q, shortest, "chart", {"kind": "shortest"})],
        "value": [Question(VALUE_Q.format(label=label), str(value), "chart", {"kind": "value"})
                  for label, value in pairs],
    }


def questions_for(scene: Scene) -> dict[str, list[Question]]:
    """All questions of a scene, grouped (shapes: by qtype; charts: by kind); empty groups dropped."""
    groups = chart_questions(scene) if isinstance(scene, ChartScene) else shape_questions(scene)
    return {k: v for k, v in groups.items() if v}


_ANY = "|".join
_WHERE = rf"(?:in the (center)|at the ({_ANY(p for p in POSITIONS if p != 'center')}))"
_PATTERNS = {
    "caption": re.escape(CAPTION_PROMPT),
    "color": rf"What colou?r is the object {_WHERE}\?",
    "shape": rf"What shape is the object {_WHERE}\?",
    "count": rf"How many ({_ANY(PLURALS.values())}|objects) are there\?",
    "position": rf"Where is the ({_ANY(COLORS)}) ({_ANY(SHAPES)})\?",
    "probe": rf"Is there an? ({_ANY(COLORS)}) ({_ANY(SHAPES)}) in the image\?",
    "tallest": re.escape(TALLEST_Q),
    "shortest": re.escape(SHORTEST_Q),
    "value": r"What is the value of bar ([A-D])\?",
}
_COMPILED = {k: re.compile(p, re.IGNORECASE) for k, p in _PATTERNS.items()}
_SINGULAR = {v: k for k, v in PLURALS.items()}
_CHART_KINDS = ("tallest", "shortest", "value")


def _answer_shapes(kind: str, groups: tuple[str, ...], scene: ShapeScene) -> str | None:
    objs = scene.objects
    if kind in ("color", "shape"):
        obj = _unique(objs, position=groups[0] or groups[1])
        return None if obj is None else getattr(obj, kind)
    if kind == "count":
        target = _SINGULAR.get(groups[0])
        return str(len(objs) if target is None else sum(o.shape == target for o in objs))
    obj = _unique(objs, color=groups[0], shape=groups[1])
    if kind == "probe":
        return "yes" if obj else "no"
    return obj.position if obj else None  # position


def _answer_chart(kind: str, groups: tuple[str, ...], scene: ChartScene) -> str | None:
    pairs = dict(zip(scene.labels, scene.values))
    if kind == "tallest":
        return max(pairs, key=pairs.__getitem__)
    if kind == "shortest":
        return min(pairs, key=pairs.__getitem__)
    if kind == "value":
        value = pairs.get(groups[0].upper())
        return None if value is None else str(value)
    return None


def answer_question(scene: Scene, text: str) -> str | None:
    """The canonical answer to a templated question about `scene`, or None.

    None means the text is not one of the templates, or the scene leaves it without one answer
    (a colour question about a shape that occurs twice, a chart question about a shapes scene).
    Matching ignores case and surrounding whitespace.
    """
    text = " ".join(text.split())
    for kind, pattern in _COMPILED.items():
        m = pattern.fullmatch(text)
        if m is None:
            continue
        groups = tuple(g and g.lower() for g in m.groups())
        if kind == "caption":
            return caption(scene)
        if isinstance(scene, ChartScene):
            return _answer_chart(kind, groups, scene)
        return None if kind in _CHART_KINDS else _answer_shapes(kind, groups, scene)
    return None
