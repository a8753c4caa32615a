"""POPE-style probes: balanced, negatives truly absent, each strategy draws the right negatives."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from omnivision.data.pope import (object_frequencies, pope_probes, sample_negatives,
                                  training_probe)
from omnivision.data.records import POPE_STRATEGIES
from omnivision.data.shape_scenes import ShapeObject, ShapeScene, all_object_names, sample_shape_scene


def _shares(name: str, present: set[str]) -> bool:
    color, shape = name.split()
    return any(p.split()[0] == color or p.split()[1] == shape for p in present)


def _skewed_scenes(n: int) -> list[ShapeScene]:
    """Random scenes plus many with a purple cross, so that "popular" means something."""
    rng = random.Random(3)
    scenes = [sample_shape_scene(rng) for _ in range(n)]
    heavy = ShapeScene((ShapeObject("cross", "purple", "large", "center"),
                        ShapeObject("circle", "yellow", "small", "bottom")))
    return scenes + [heavy] * (n // 4)


def test_probes_are_balanced_and_negatives_follow_their_strategy():
    scenes = _skewed_scenes(300)
    freq = object_frequencies(scenes)
    assert len(freq) == 24
    assert min(freq["purple cross"], freq["yellow circle"]) > max(
        v for k, v in freq.items() if k not in ("purple cross", "yellow circle"))
    rng = random.Random(0)
    totals = Counter()
    for scene in scenes:
        present = {o.name for o in scene.objects}
        probes = pope_probes(scene, rng, freq)
        for strategy in POPE_STRATEGIES:
            mine = [q for q in probes if q.extra["strategy"] == strategy]
            yes = [q.extra["object"] for q in mine if q.answer == "yes"]
            no = [q.extra["object"] for q in mine if q.answer == "no"]
            assert len(yes) == len(no) == min(3, len(present))
            assert set(yes) <= present and not set(no) & present and len(set(no)) == len(no)
            if strategy == "adversarial":
                assert all(_shares(n, present) for n in no)
            if strategy == "popular":
                others = [o for o in all_object_names() if o not in present and o not in no]
                assert min(freq[n] for n in no) >= max(freq[o] for o in others)
            for q in mine:
                assert q.qtype == "pope" and q.text.startswith("Is there a")
                assert q.extra["object"] in q.text
            totals[strategy] += len(mine)
        yes_sets = {s: {q.extra["object"] for q in probes if q.extra["strategy"] == s
                        and q.answer == "yes"} for s in POPE_STRATEGIES}
        assert len({frozenset(v) for v in yes_sets.values()}) == 1  # same positives, as in POPE
    assert totals["random"] == totals["popular"] == totals["adversarial"] > 0


def test_popular_negatives_are_the_most_frequent_absent_objects():
    freq = Counter({name: 0 for name in all_object_names()})
    freq.update({"red circle": 9, "blue square": 7, "green cross": 5})
    present = ["red circle", "orange triangle"]
    got = sample_negatives(present, "popular", 2, random.Random(0), freq)
    assert got == ["blue square", "green cross"]


def test_random_negatives_cover_unrelated_objects_adversarial_never_do():
    present = ["red circle"]
    freq = Counter({name: 1 for name in all_object_names()})
    rng = random.Random(0)
    rand = {n for _ in range(200) for n in sample_negatives(present, "random", 3, rng, freq)}
    adv = {n for _ in range(200) for n in sample_negatives(present, "adversarial", 3, rng, freq)}
    assert "blue square" in rand and "red circle" not in rand
    assert adv == {n for n in all_object_names() if n != "red circle" and _shares(n, set(present))}


def test_training_probe_is_correct_and_roughly_balanced():
    rng = random.Random(1)
    scenes = [sample_shape_scene(rng) for _ in range(400)]
    freq = object_frequencies(scenes)
    answers = Counter()
    for scene in scenes:
        q = training_probe(scene, rng, freq)
        present = {o.name for o in scene.objects}
        assert q.answer == ("yes" if q.extra["object"] in present else "no")
        answers[q.answer] += 1
    assert 150 < answers["yes"] < 250


def test_unknown_strategy():
    with pytest.raises(ValueError, match="unknown POPE strategy"):
        sample_negatives(["red circle"], "frequent", 1, random.Random(0), Counter())
