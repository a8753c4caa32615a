"""The nano recipe end to end at a tiny scale: every stage runs and logs falling losses, the report
and its table are written, and the shipped model is the last stage's."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math

import pytest
import torch

from omnivision.data.formats import read_qa
from omnivision.embedding_cache import ImageEmbeddingCache
from omnivision.data.records import PreferencePair
from omnivision.data.shapes_dataset import generate_shapes_dataset
from omnivision.loader import BUNDLED, load
from omnivision.train.nano_report import markdown_table
from omnivision.data.scenes import read_scenes
from omnivision.data.shape_scenes import POSITIONS, ShapeScene
from omnivision.train import recipe_nano
from omnivision.train.nano_config import NanoConfig
from omnivision.train.recipe_nano import (
    EMPTY_CELL,
    _cell_texts,
    balance_yes_no,
    evaluate,
    nano_tokenizer,
    pair_sources,
    pretrain_tower,
    run_nano,
    run_stage1,
    stage1_config,
    stage2_config,
)

HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None  # the curves are skipped without it


def test_stage2_config_is_the_recipes_stage_2(tmp_path):
    # what `run_nano` and `scripts/nano_spread.py` both run: the recipe's stage-2 settings, scaled
    cfg = NanoConfig(sft_steps=1000, scale=0.5, sft_lr=4e-4, sft_language_lr_scale=0.5, seed=7,
                     sft_trainable=("projector", "language"), sft_feature_cache=True, sft_group_by_length=8,
                     sft_weight_decay=0.1, batch_size=8, sft_batch_size=24)
    sft = stage2_config(cfg, tmp_path / "data", tmp_path / "align", tmp_path / "runs")
    assert (sft.model, sft.data, sft.images) == (str(tmp_path / "align"), str(tmp_path / "data" / "sft.json"),
                                                 str(tmp_path / "data"))
    assert sft.trainable == ["projector", "language"] and sft.cache_images
    assert sft.feature_cache == str(tmp_path / "runs" / "features")
    train = sft.train
    assert (train.out_dir, train.steps, train.lr, train.warmup_steps) == (str(tmp_path / "runs" / "sft"), 500, 4e-4, 50)
    assert (train.lr_scales, train.group_by_length, train.seed, train.weight_decay) == ({"language": 0.5}, 8, 7, 0.1)
    assert train.batch_size == 24  # stage 2's own batch; 0 falls back to the one every stage uses
    assert stage2_config(NanoConfig(batch_size=8, sft_batch_size=0), tmp_path, tmp_path, tmp_path).train.batch_size == 8
    default = stage2_config(NanoConfig(), tmp_path, tmp_path, tmp_path)
    assert default.train.lr_scales == {} and default.train.weight_decay == 0.01
    assert default.trainable == ["projector", "language"] and default.train.batch_size == 72  # the bundled run's
    assert default.feature_cache == str(tmp_path / "features") and default.train.compile


def test_stage1_trains_the_projector_alone_on_captions_or_on_the_conversations(tmp_path, monkeypatch):
    cfg = NanoConfig(align_steps=300, scale=0.5, align_lr=2e-4, seed=5)
    data, start, runs = tmp_path / "data", tmp_path / "stage0", tmp_path / "runs"
    captions = stage1_config(cfg, data, start, runs)
    assert isinstance(captions, recipe_nano.AlignConfig)
    assert (captions.model, captions.data, captions.images) == (str(start), str(data / "captions.jsonl"), str(data))
    conversations = stage1_config(dataclasses.replace(cfg, align_data="conversations"), data, start, runs)
    assert isinstance(conversations, recipe_nano.SFTConfig)
    assert (conversations.model, conversations.data, conversations.trainable) == (
        str(start), str(data / "sft.json"), ["projector"])
    for config in (captions, conversations):  # the same steps, rate, folder and feature cache either way
        train = config.train
        assert (train.out_dir, train.steps, train.lr, train.seed) == (str(runs / "align"), 150, 2e-4, 5)
        assert config.feature_cache == str(runs / "align" / "features")
    ran = []
    monkeypatch.setattr(recipe_nano, "run_align", lambda c: ran.append(("align", c)))
    monkeypatch.setattr(recipe_nano, "run_sft", lambda c: ran.append(("sft", c)))
    run_stage1(captions)
    run_stage1(conversations)
    assert ran == [("align", captions), ("sft", conversations)]
    with pytest.raises(ValueError, match="align_data: 'questions' is not one of"):
        stage1_config(NanoConfig(align_data="questions"), data, start, runs)
    with pytest.raises(ValueError, match="align_data"):  # before any stage runs
        run_nano(NanoConfig(out=str(tmp_path / "never"), align_data="questions"))
    assert not (tmp_path / "never" / "data").exists()


def test_every_cell_of_a_shapes_scene_is_named_with_its_place(tmp_path):
    generate_shapes_dataset(tmp_path, 12, seed=3, image_size=90, chart_fraction=0.25)
    texts = _cell_texts(tmp_path)
    records = list(read_scenes(tmp_path / "scenes.jsonl"))
    shapes = [r for r in records if isinstance(r.scene, ShapeScene)]
    assert 0 < len(shapes) < len(records) and set(texts) == {r.image for r in shapes}  # charts have none
    for r in shapes:
        cells = texts[r.image]
        assert [c for c, _ in cells] == list(range(9))
        for o in r.scene.objects:
            cell = POSITIONS.index(o.position)
            place = "in the center" if o.position == "center" else f"at the {o.position}"
            assert cells[cell][1] == f"a {o.size} {o.color} {o.shape} {place}", (r.image, o)
        empty = [t for c, t in cells if POSITIONS[c] not in {o.position for o in r.scene.objects}]
        assert len(empty) == 9 - len(r.scene.objects) and all(t.startswith(EMPTY_CELL + " ") for t in empty)
    assert texts[shapes[0].image][4][1].endswith(" in the center")


@pytest.mark.parametrize("cell_texts", [False, True])
def test_tower_pretraining_adds_the_cell_objective_when_asked(tmp_path, cell_texts):
    generate_shapes_dataset(tmp_path / "data", 40, seed=4, image_size=90)
    config, tokenizer = nano_tokenizer(tmp_path / "data", 300)
    torch.manual_seed(0)
    cfg = NanoConfig(siglip_cell_texts=cell_texts, scale=0.01)  # 3 steps
    tower = pretrain_tower(cfg, config, tokenizer, tmp_path / "data", tmp_path / "run")
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(logged) == 3 and all(math.isfinite(m["loss"]) for m in logged)
    assert all(("regions_loss" in m) == cell_texts for m in logged), logged
    assert tower(torch.zeros(1, 3, 90, 90)).shape == (1, 81, config.vision.hidden_size)


def test_yes_no_corrections_are_balanced():
    probe = "Is there a red circle in the image?"
    pairs = [PreferencePair("a.png", probe, "no", "yes") for _ in range(3)]
    pairs += [PreferencePair("b.png", probe, "yes", "no"),
              PreferencePair("c.png", "Describe the image.", "A red circle.", "A blue circle.")]
    kept, dropped = balance_yes_no(pairs)
    assert dropped == 2 and len(kept) == 3
    assert sorted(p.chosen for p in kept) == ["A red circle.", "no", "yes"]
    assert balance_yes_no(pairs[:3]) == ([], 3)  # corrections one way only: none kept


def test_pair_sources_draw_each_kind_with_its_edit_threshold(tmp_path):
    generate_shapes_dataset(tmp_path, 12, seed=4, image_size=90)
    questions = {(q.image, q.question): q.answer for q in read_qa(tmp_path / "qa.jsonl")}
    probes = {(q.image, q.question): q.answer for q in read_qa(tmp_path / "pope.jsonl")}
    sources = pair_sources(tmp_path, 5, seed=0, kinds=("probe", "question"))
    assert len(sources) == 10 and all(threshold == 1.0 for _, threshold in sources)
    assert [probes[s.image, s.prompt] for s, _ in sources[:5]] == [s.reference for s, _ in sources[:5]]
    assert [questions[s.image, s.prompt] for s, _ in sources[5:]] == [s.reference for s, _ in sources[5:]]
    captions = pair_sources(tmp_path, 3, seed=0, kinds=("caption",))
    assert len(captions) == 3 and all(t == 0.5 and s.prompt == "Describe the image." for s, t in captions)
    assert pair_sources(tmp_path, 5, seed=0, kinds=("probe", "question")) == sources  # seeded
    with pytest.raises(ValueError, match="'charts'"):
        pair_sources(tmp_path, 5, seed=0, kinds=("caption", "charts"))


def test_evaluation_encodes_each_held_out_image_once_and_scores_as_without_a_cache(tmp_path, monkeypatch):
    generate_shapes_dataset(tmp_path, 10, seed=5, image_size=90)
    vlm = load(BUNDLED, dtype="float32")
    own = vlm.image_cache
    encoded = []
    uncached = vlm._encode_uncached
    monkeypatch.setattr(vlm, "_encode_uncached", lambda pixels: encoded.append(len(pixels)) or uncached(pixels))
    scores = evaluate(vlm, tmp_path)
    assert vlm.image_cache is own  # the model's own cache is back, untouched
    asked = len(read_qa(tmp_path / "qa.jsonl")) + len(read_qa(tmp_path / "pope.jsonl"))
    assert asked > 10 * 10 and sum(encoded) <= 2 * 10  # ~once per image (a batch may hold an image twice)
    monkeypatch.setattr(recipe_nano, "ImageEmbeddingCache", lambda capacity: ImageEmbeddingCache(0))
    encoded.clear()
    assert evaluate(vlm, tmp_path) == scores  # every question through the tower: the same scores
    assert sum(encoded) >= asked


def _losses(run_dir) -> list[float]:
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _mean(values) -> float:
    return sum(values) / len(values)


@pytest.mark.long
def test_tiny_scale_run_writes_every_stage(tmp_path):
    report = run_nano(NanoConfig(out=str(tmp_path / "nano"), scale=0.01, eval_scenes=30))
    out = tmp_path / "nano"
    # the report: every stage scored on the held-out set, each score in its range
    assert list(report["stages"]) == ["1-align", "2-sft", "3-dpo"]
    for stage, scores in report["stages"].items():
        assert {"overall", "color", "shape", "count", "position", "chart"} <= scores["qa"].keys(), stage
        assert all(0.0 <= v <= 1.0 for v in scores["qa"].values()), (stage, scores["qa"])
        assert scores["qa_second_turn"].keys() == scores["qa"].keys(), stage  # every kind asked second too
        assert all(0.0 <= v <= 1.0 for v in scores["qa_second_turn"].values()), (stage, scores["qa_second_turn"])
        assert set(scores["pope"]) == {"random", "popular", "adversarial"}, stage
        for pope in scores["pope"].values():
            assert pope["n"] > 0, (stage, pope)
            for key in ("accuracy", "precision", "recall", "f1", "yes_ratio"):
                assert 0.0 <= pope[key] <= 1.0, (stage, key, pope)
        absent = scores["absent_objects"]
        assert 0.0 <= absent["object_rate"] <= 1.0 and 0.0 <= absent["caption_rate"] <= 1.0, (stage, absent)
        assert absent["objects_named"] >= 0, (stage, absent)
    assert list(report["timings_s"]) == ["data", "tokenizer", "text pretraining", "vision pretraining",
                                         "stage 1", "stage 2", "stage 3"]
    assert all(t >= 0 for t in report["timings_s"].values())
    assert report["total_s"] == pytest.approx(sum(report["timings_s"].values()), abs=0.11)
    assert json.loads((out / "report.json").read_text()) == report
    table = (out / "report.md").read_text()
    assert table == markdown_table(report) and table.count("\n") == 5
    # every training stage logged finite losses, and the ones long enough to learn at this scale fell
    # (at this scale: text 2 logged steps, SigLIP 3, align 2, SFT 27, whose loss falls from ~5 to
    # well under 0.6 of its start with the projector and the decoder at 5e-4, the defaults)
    for stage in ("text", "siglip", "align", "sft"):
        losses = _losses(out / "runs" / stage)
        assert losses and all(math.isfinite(v) for v in losses), (stage, losses)
        assert (out / "runs" / stage / "curves.png").is_file() or not HAS_MATPLOTLIB, stage
    text = _losses(out / "runs" / "text")
    assert text[-1] < text[0], text
    sft = _losses(out / "runs" / "sft")
    quarter = len(sft) // 4
    assert quarter >= 4 and _mean(sft[-quarter:]) < 0.6 * _mean(sft[:quarter]), sft
    assert (out / "stage0").is_dir() and (out / "runs" / "align" / "model").is_dir()
    # the DPO pairs: every one of the 40 caption requests, 40 yes/no probes and 40 single questions
    # about stage 3's 40 fresh scenes (none of them a training scene) is kept or counted as
    # dropped, what is kept is what was written, and DPO trained on it (at this scale the model's
    # answers usually hold chat-template text, so none is kept and stage 3 ships the SFT model)
    meta = json.loads((out / "dpo-data" / "meta.json").read_text())
    assert (meta["n"], meta["seed"]) == (40, NanoConfig().dpo_seed)
    def content(path):  # what each scene shows, without its id and file name
        return [repr(r.scene) for r in read_scenes(path / "scenes.jsonl")]
    trained = set(content(out / "data"))
    assert sum(c in trained for c in content(out / "dpo-data")) < 10  # another draw (one object alike can recur)
    pairs = (out / "pairs.jsonl").read_text().splitlines()
    assert report["pairs"]["kept"] == len(pairs)
    assert all(n > 0 for n in report["pairs"]["dropped"].values()), report["pairs"]
    assert len(pairs) + sum(report["pairs"]["dropped"].values()) == 120, report["pairs"]
    assert all((out / "dpo-data" / json.loads(p)["image"]).is_file() for p in pairs)
    if pairs:
        losses = _losses(out / "runs" / "dpo")
        assert losses and all(math.isfinite(v) for v in losses), losses
    # the shipped model is the last stage's, in its own named config
    vlm = load(out / "model", dtype="float32")
    last = load(out / "runs" / ("dpo" if pairs else "sft") / "model", dtype="float32")
    assert vlm.config.name == "omnivision-nano"
    got, want = vlm.model.state_dict(), last.model.state_dict()
    assert got.keys() == want.keys()
    for name in want:
        assert torch.equal(got[name], want[name]), name
    # stage 2 trains the projector and the decoder, stage 3 the decoder alone; the tower stays as
    # its pretraining made it (the defaults)
    aligned = load(out / "runs" / "align" / "model", dtype="float32").model.state_dict()
    tuned = load(out / "runs" / "sft" / "model", dtype="float32").model.state_dict()
    parts = {part: [n for n in aligned if n.startswith(part + ".")] for part in ("vision", "projector", "language")}
    assert all(parts.values())
    assert all(torch.equal(got[n], aligned[n]) for n in parts["vision"])
    assert not all(torch.equal(tuned[n], aligned[n]) for n in parts["projector"])
    assert all(torch.equal(got[n], tuned[n]) for n in parts["projector"])
    assert not all(torch.equal(tuned[n], aligned[n]) for n in parts["language"])

