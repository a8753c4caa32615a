"""Captions and questions agree with the scene; the oracle parser answers every template."""

from __future__ import annotations

import random

import pytest

from omnivision.data.charts import ChartScene, sample_chart_scene
from omnivision.data.questions import (answer_question, caption, chart_questions, descriptions, probe_text,
                                       questions_for, shape_questions)
from omnivision.data.shape_scenes import (COLORS, PLURALS, POSITIONS, SHAPES, ShapeObject, ShapeScene,
                                    sample_shape_scene)


def _scenes(n: int = 400) -> list[ShapeScene]:
    rng = random.Random(5)
    return [sample_shape_scene(rng) for _ in range(n)]


def test_caption_wording_and_order():
    scene = ShapeScene((ShapeObject("circle", "red", "large", "top left"),
                        ShapeObject("square", "blue", "small", "bottom right")))
    assert caption(scene) == "A large red circle at the top left and a small blue square at the bottom right."
    three = ShapeScene((ShapeObject("cross", "orange", "small", "top"),
                        ShapeObject("circle", "red", "large", "center"),
                        ShapeObject("triangle", "green", "large", "bottom")))
    assert caption(three) == ("A small orange cross at the top, a large red circle in the center "
                              "and a large green triangle at the bottom.")
    assert caption(ChartScene((3, 9, 1))) == "A bar chart with 3 bars: A is 3, B is 9 and C is 1."


def test_captions_mention_every_object_in_reading_order():
    for scene in _scenes():
        text = caption(scene)
        spots = [text.index(f"{o.size} {o.color} {o.shape}") for o in scene.objects]
        assert spots == sorted(spots)
        assert text.count(" a ") + 1 == len(scene.objects) + text.count(" a bar")


def test_answers_are_consistent_with_the_scene():
    asked = {"color": 0, "shape": 0, "count": 0, "position": 0}
    for scene in _scenes():
        groups = shape_questions(scene)
        for kind in ("color", "shape"):
            assert len(groups[kind]) == len(scene.objects)
            for q, o in zip(groups[kind], scene.objects):
                where = "in the center" if o.position == "center" else f"at the {o.position}"
                assert q.text.endswith(f" the object {where}?") and q.answer == getattr(o, kind)
        for q in groups["count"]:
            target = q.extra["target"]
            expected = len(scene.objects) if target == "object" else sum(
                o.shape == target for o in scene.objects)
            assert q.answer == str(expected)
            noun = "objects" if target == "object" else PLURALS[target]
            assert q.text == f"How many {noun} are there?"
        assert len(groups["count"]) == len(SHAPES) + 1
        assert [q.answer for q in groups["position"]] == [o.position for o in scene.objects]
        for qtype, qs in groups.items():
            asked[qtype] += len(qs)
            for q in qs:
                assert q.qtype == qtype and q.answer in _answer_vocabulary()
                assert answer_question(scene, q.text) == q.answer
    assert min(asked.values()) > 100


def _answer_vocabulary() -> set[str]:
    return set(COLORS) | set(SHAPES) | set(POSITIONS) | {str(n) for n in range(5)}


def test_chart_questions():
    scene = ChartScene((3, 9, 1, 6))
    groups = chart_questions(scene)
    assert groups["tallest"][0].answer == "B" and groups["shortest"][0].answer == "C"
    assert [(q.text, q.answer) for q in groups["value"]] == [
        (f"What is the value of bar {label}?", str(v)) for label, v in zip("ABCD", scene.values)]
    rng = random.Random(1)
    for _ in range(100):
        chart = sample_chart_scene(rng)
        for qs in questions_for(chart).values():
            for q in qs:
                assert q.qtype == "chart" and answer_question(chart, q.text) == q.answer


def test_descriptions_are_true_of_the_scene_only():
    scene = ShapeScene((ShapeObject("circle", "red", "large", "top left"),
                        ShapeObject("cross", "blue", "small", "center")))
    texts = descriptions(scene)
    assert texts[:7] == ["a circle", "a red object", "a red circle", "a large red circle",
                         "a circle at the top left", "a red object at the top left",
                         "a red circle at the top left"]
    assert "a blue object in the center" in texts and "a blue cross in the center" in texts
    assert len(texts) == len(set(texts)) == 14
    other_colours = [c for c in COLORS if c not in ("red", "blue")]
    assert not any(c in t for t in texts for c in other_colours)
    assert descriptions(ChartScene((1, 2, 3))) == ["a bar chart"]


def test_oracle_parser():
    scene = ShapeScene((ShapeObject("circle", "red", "large", "top left"),
                        ShapeObject("circle", "blue", "small", "center"),
                        ShapeObject("square", "orange", "small", "bottom")))
    assert answer_question(scene, "What color is the object at the top left?") == "red"
    assert answer_question(scene, "what colour is the object  in the center?") == "blue"
    assert answer_question(scene, "What shape is the object at the bottom?") == "square"
    assert answer_question(scene, "What shape is the object at the right?") is None  # empty cell
    assert answer_question(scene, "What color is the object at the middle?") is None
    assert answer_question(scene, "  How many   circles are there? ") == "2"
    assert answer_question(scene, "How many triangles are there?") == "0"
    assert answer_question(scene, "Where is the green circle?") is None
    assert answer_question(scene, probe_text("orange square")) == "yes"
    assert probe_text("orange square") == "Is there an orange square in the image?"
    assert answer_question(scene, probe_text("red square")) == "no"
    assert answer_question(scene, "Which bar is the tallest?") is None
    assert answer_question(scene, "Describe the image.") == caption(scene)
    assert answer_question(scene, "What is the meaning of life?") is None
    assert answer_question(ChartScene((1, 2, 3)), "What is the value of bar D?") is None
    assert answer_question(ChartScene((1, 2, 3)), "How many circles are there?") is None


@pytest.mark.parametrize("scene", [ChartScene((4, 2, 7)), ShapeScene((ShapeObject(
    "triangle", "yellow", "small", "right"),))])
def test_questions_for_drops_empty_groups(scene):
    assert all(questions_for(scene).values())
