"""The whole procedural dataset: deterministic bytes, readable by the readers, true to its scenes."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from omnivision.data.charts import ChartScene
from omnivision.data.formats import read_captions, read_conversations, read_qa
from omnivision.data.shapes_dataset import FILES, MAX_TURNS, TRAINING_PROBES, generate_shapes_dataset
from omnivision.data.images import check_images
from omnivision.data.questions import CAPTION_PROMPT, answer_question, caption, questions_for
from omnivision.data.scenes import read_scenes
from omnivision.data.shape_scenes import BACKGROUND, POSITIONS, ShapeScene


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("shapes")
    return root, generate_shapes_dataset(root, 40, seed=7, image_size=64, chart_fraction=0.25)


def test_same_seed_same_bytes_other_seed_other_bytes(dataset, tmp_path):
    root, _ = dataset
    generate_shapes_dataset(tmp_path / "again", 40, seed=7, image_size=64, chart_fraction=0.25)
    generate_shapes_dataset(tmp_path / "other", 40, seed=8, image_size=64, chart_fraction=0.25)
    digest = _digest(root)
    assert len(digest) == 40 + len(FILES)
    assert _digest(tmp_path / "again") == digest
    other = _digest(tmp_path / "other")
    assert other.keys() == digest.keys() and other["scenes.jsonl"] != digest["scenes.jsonl"]


def test_files_read_back_and_images_check(dataset):
    root, meta = dataset
    scenes = read_scenes(root / "scenes.jsonl")
    sft = read_conversations(root / "sft.json")
    qa = read_qa(root / "qa.jsonl")
    pope = read_qa(root / "pope.jsonl")
    captions = read_captions(root / "captions.jsonl")
    for records in (scenes, sft, qa, pope, captions):
        kept, report = check_images(records, root)
        assert len(kept) == len(records) and report.dropped == 0
    charts = [s for s in scenes if isinstance(s.scene, ChartScene)]
    assert len(charts) == 10 and len(scenes) == 40
    counts = meta["counts"]
    assert counts["chart_scenes"] == 10 and counts["sft_conversations"] == len(sft)
    assert {c.image for c in sft} == {s.image for s in scenes}
    assert sum(counts["qa"].values()) == len(qa)
    assert sum(v["yes"] + v["no"] for v in counts["pope"].values()) == len(pope)
    assert json.loads((root / "meta.json").read_text()) == meta
    assert meta["seed"] == 7 and "red circle" in meta["vocabulary"]["objects"]
    for r in scenes:
        assert Image.open(root / r.image).size == (64, 64)


def test_every_answer_matches_its_scene(dataset):
    root, _ = dataset
    truth = {r.image: r.scene for r in read_scenes(root / "scenes.jsonl")}
    probe_answers, starts = set(), set()
    captions, qa_turns = Counter(), Counter()
    for c in read_conversations(root / "sft.json"):
        scene = truth[c.image]
        if c.turns[0] == ("user", CAPTION_PROMPT):  # the caption is asked alone
            assert c.turns == [("user", CAPTION_PROMPT), ("assistant", caption(scene))]
            captions[c.image] += 1
            continue
        assert 1 <= len(c.turns) // 2 <= MAX_TURNS
        for (_, question), (_, answer) in zip(c.turns[::2], c.turns[1::2]):
            assert question != CAPTION_PROMPT and answer_question(scene, question) == answer
            starts.add(" ".join(question.split()[:2]))
            qa_turns[c.image] += 1
            if question.startswith("Is there"):
                probe_answers.add(answer)
    assert set(captions.values()) == {1} and captions.keys() == truth.keys()
    for image, scene in truth.items():  # one question of each kind, plus the probes
        probes = TRAINING_PROBES if isinstance(scene, ShapeScene) else 0
        assert qa_turns[image] == len(questions_for(scene)) + probes
    assert probe_answers == {"yes", "no"}
    assert {"What color", "What shape", "How many", "Where is", "Which bar", "What is"} < starts
    qa = read_qa(root / "qa.jsonl")
    for item in qa + read_qa(root / "pope.jsonl"):
        assert answer_question(truth[item.image], item.question) == item.answer
    assert {i.qtype for i in qa} == {"color", "shape", "count", "position", "chart"}
    assert len({i.id for i in qa}) == len(qa)
    pope_images = {i.image for i in read_qa(root / "pope.jsonl")}
    assert pope_images == {img for img, s in truth.items() if isinstance(s, ShapeScene)}
    for cp in read_captions(root / "captions.jsonl"):
        assert cp.caption == caption(truth[cp.image])


def test_count_answers_match_the_rendered_image(dataset):
    """Independent of the scene record: occupied grid cells in the PNG equal the object count."""
    root, _ = dataset
    for item in read_qa(root / "qa.jsonl"):
        if item.qtype != "count" or item.extra["target"] != "object":
            continue
        pixels = np.asarray(Image.open(root / item.image).convert("RGB"))
        occupied = 0
        for n in range(len(POSITIONS)):
            row, col = divmod(n, 3)
            cell = pixels[row * 64 // 3:(row + 1) * 64 // 3, col * 64 // 3:(col + 1) * 64 // 3]
            occupied += bool((cell != BACKGROUND).any())
        assert str(occupied) == item.answer


def test_every_question_asks_about_each_object_and_keeps_the_rest(dataset, tmp_path):
    """`sft_questions="every"`: each scene's whole question set once (each object's colour, shape
    and place, every count, every chart question), the probes and the caption as before, in
    conversations of at most `max_turns` questions; the other files are the same bytes as with one
    question of each kind."""
    root, _ = dataset
    meta = generate_shapes_dataset(tmp_path, 40, seed=7, image_size=64, chart_fraction=0.25,
                                   sft_questions="every", max_turns=3)
    assert (meta["sft_questions"], meta["max_turns"]) == ("every", 3)
    truth = {r.image: r.scene for r in read_scenes(tmp_path / "scenes.jsonl")}
    asked: dict[str, Counter] = {image: Counter() for image in truth}
    lengths = Counter()
    for c in read_conversations(tmp_path / "sft.json"):
        lengths[len(c.turns) // 2] += 1
        for (_, question), (_, answer) in zip(c.turns[::2], c.turns[1::2]):
            assert answer_question(truth[c.image], question) == answer
            if not question.startswith("Is there"):
                asked[c.image][question] += 1
    for image, scene in truth.items():
        every = Counter(q.text for pool in questions_for(scene).values() for q in pool)
        every[CAPTION_PROMPT] += 1
        assert asked[image] == every
    assert set(lengths) == {1, 2, 3}  # at most max_turns questions a conversation
    four = [s for s in truth.values() if isinstance(s, ShapeScene) and len(s.objects) == 4]
    assert four  # scenes whose every object is asked where it is, and what colour it has
    one, other = _digest(root), _digest(tmp_path)
    assert other.keys() == one.keys() and other["sft.json"] != one["sft.json"]
    assert all(one[k] == other[k] for k in one if k not in ("sft.json", "meta.json"))


@pytest.mark.parametrize("kwargs,words", [({"n": 0}, "n must be"), ({"image_size": 16}, "image size"),
                                          ({"chart_fraction": 1.5}, "chart fraction"),
                                          ({"sft_questions": "all"}, "sft questions must be one of one, every"),
                                          ({"max_turns": 0}, "max turns must be at least 1")])
def test_bad_arguments(tmp_path, kwargs, words):
    args = {"n": 3, "seed": 0, **kwargs}
    with pytest.raises(ValueError, match=words):
        generate_shapes_dataset(tmp_path, **args)
