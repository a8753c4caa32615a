"""The bundled nano model answers about generated scenes it has never seen (a seed no recipe uses),
through the same path as `omnivision run` with no `--model`."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest
import torch

from omnivision.cli.main import main
from omnivision.data.formats import read_qa
from omnivision.data.shapes_dataset import generate_shapes_dataset
from omnivision.data.questions import answer_question
from omnivision.data.scenes import read_scenes
from omnivision.eval.shapes_accuracy import normalise, pope_metrics, qa_accuracy, second_turn_accuracy
from omnivision.loader import BUNDLED, load
from omnivision.vlm import Turn
from omnivision.weights.native import is_native
from omnivision.weights.release_read import find_release, load_release
from omnivision.weights.release_write import write_release

from tests.conftest import REPO

pytestmark = pytest.mark.skipif(not is_native(BUNDLED), reason="no bundled nano model")

UNSEEN_SEED = 777  # the recipe trains on seed 1 and measures on seed 1001

# Measured on these 60 scenes (the model of 2026-12-08 made on the AMD EPYC: stage 2 on conversations
# of one or two questions, the projector learning too, stage 3 on scenes stage 2 never saw; float32
# on the EPYC): overall 0.996, shape, count, chart and colour 1.0, position 0.979; asked second in a
# conversation (`second_turn_accuracy`, seed 0) 0.908. Chance is 0.25 for shape, 1/6 for colour, at
# most 0.5 for count and position, 0.25-0.33 for chart. Each kind has 48 questions here (chart 36),
# so one answer is 2 points (3 for chart); the floors allow two more wrong answers per kind than
# measured.
MIN_ACCURACY = {"overall": 0.94, "shape": 0.95, "count": 0.95, "chart": 0.94, "color": 0.95, "position": 0.93}
MIN_SECOND_TURN_ACCURACY = 0.86  # overall; ten answers below the measured (a model of single questions: 0.215)
MIN_POPE_ACCURACY = 0.97  # always "yes" (or "no") scores 0.50; measured 1.0 (212 probes) per strategy

@pytest.fixture(scope="module")
def unseen(tmp_path_factory):
    vlm = load(BUNDLED, dtype="float32")
    root = tmp_path_factory.mktemp("unseen")
    generate_shapes_dataset(root, 60, UNSEEN_SEED, image_size=vlm.config.vision.image_size)
    return vlm, root


def _answerer(vlm, root):
    return lambda images, questions: vlm.answer_batch([root / i for i in images], questions,
                                                      max_new_tokens=16)


def test_bundled_model_is_small_and_self_describing():
    size = sum(f.stat().st_size for f in BUNDLED.iterdir())
    assert size <= 20 * 2**20
    meta = json.loads((BUNDLED / "config.json").read_text())
    assert meta["config"]["name"] == "omnivision-nano"


def test_answers_questions_about_unseen_scenes(unseen):
    vlm, root = unseen
    scores = qa_accuracy(_answerer(vlm, root), read_qa(root / "qa.jsonl"))
    for qtype, floor in MIN_ACCURACY.items():
        assert scores[qtype] >= floor, (qtype, scores)


def test_answers_a_second_question_in_the_same_conversation(unseen):
    """`omnivision chat`, the server and `vlm.chat(history=...)` ask follow-ups: each question asked
    after another about its scene, with that one's right answer."""
    vlm, root = unseen

    def answer_second(images, firsts, questions):
        return vlm.answer_batch([None] * len(images), questions, max_new_tokens=16,
                                histories=[[Turn(q, a, root / i)] for i, (q, a) in zip(images, firsts)])

    scores = second_turn_accuracy(answer_second, read_qa(root / "qa.jsonl"))
    assert scores["overall"] >= MIN_SECOND_TURN_ACCURACY, scores


def test_yes_no_probes_about_unseen_scenes(unseen):
    vlm, root = unseen
    scores = pope_metrics(_answerer(vlm, root), read_qa(root / "pope.jsonl"))
    assert set(scores) == {"random", "popular", "adversarial"}
    for strategy, s in scores.items():
        assert s["accuracy"] >= MIN_POPE_ACCURACY, (strategy, s)


def test_readme_quick_start_answer(capsys):
    """The README's first command, `omnivision run` with no `--model`, answers its question about
    the shipped scene correctly (the scene's ground truth is in assets/scene.jsonl)."""
    readme = (REPO / "README.md").read_text()
    found = re.search(r'omnivision run --image (assets/\S+\.png) "([^"]+)"', readme)
    assert found, "the quick start's run command is missing from the README"
    image, question = found.groups()
    scene = read_scenes(REPO / "assets" / "scene.jsonl")[0].scene
    assert main(["run", "--image", str(REPO / image), question]) == 0
    out = capsys.readouterr()
    assert "random-weight" not in out.err + out.out
    assert normalise(out.out.strip().splitlines()[-1]) == answer_question(scene, question)


def test_round_trips_through_the_gguf_pair(unseen, tmp_path):
    """Its tokenizer has the chat template's special tokens, so it can be written as the official
    GGUF pair; read back (F32), it is the same model."""
    vlm, root = unseen
    write_release(vlm.model, vlm.tokenizer, tmp_path, "F32")
    model, tokenizer = load_release(find_release(tmp_path))
    back, ours = model.config.processing, vlm.config.processing
    assert back.image_mean == pytest.approx(ours.image_mean, abs=1e-7)  # the GGUF keeps float32
    assert dataclasses.replace(back, image_mean=ours.image_mean) == ours
    assert model.config.projector.compression == "spatial3x3"
    for name, value in vlm.model.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name
    assert tokenizer.encode("Describe the image.") == vlm.tokenizer.encode("Describe the image.")
