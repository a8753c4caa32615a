"""SigLIP pretraining of the vision tower: a description shared by several images is a positive for
each of them, a short run lowers the loss by training the tower, and the region objective scores
each region's own merged token against the batch's distinct region texts."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from omnivision.config import preset
from omnivision.data.shapes_dataset import generate_shapes_dataset
from omnivision.data.questions import caption, descriptions
from omnivision.data.scenes import read_scenes
from omnivision.model import init_weights
from omnivision.model.projector import spatial3x3
from omnivision.processing.byte_tokenizer import byte_level_tokenizer
from omnivision.train.config import TrainConfig
from omnivision.train.losses import siglip_loss
from omnivision.train.image_loader import ImageLoader
from omnivision.train.recipe_siglip import (
    CaptionItem,
    SiglipPretrainModel,
    collate,
    pretrain_siglip,
)


def test_positives_follow_the_true_texts(tmp_path):
    generate_shapes_dataset(tmp_path, 2, seed=1, image_size=42, chart_fraction=0.0)
    config = preset("tiny")
    loader = ImageLoader(config, tmp_path)
    a = CaptionItem("images/000000.png", [1, 2], "a red circle", frozenset({"a red circle", "a cross"}))
    b = CaptionItem("images/000001.png", [3], "a cross", frozenset({"a cross"}))
    c = CaptionItem("images/000001.png", [4], "no shared texts")  # only its own pair
    positives = collate(loader, 0)([a, b, c])["positives"]
    assert positives.tolist() == [[True, True, False], [False, True, False], [False, False, True]]


def test_short_run_lowers_the_contrastive_loss(tmp_path):
    generate_shapes_dataset(tmp_path, 8, seed=2, image_size=42, chart_fraction=0.25)
    config = preset("tiny")
    vision = dataclasses.replace(config.vision, has_head=True)
    model = SiglipPretrainModel(vision, config.text)
    init_weights(model)
    before = {k: v.clone() for k, v in model.vision.state_dict().items()}
    pairs, true_texts = [], {}
    for r in read_scenes(tmp_path / "scenes.jsonl"):
        texts = [caption(r.scene), *descriptions(r.scene)]
        true_texts[r.image] = frozenset(texts)
        pairs += [(r.image, t) for t in texts[:2]]
    cfg = TrainConfig(out_dir=str(tmp_path / "run"), steps=16, batch_size=8, lr=3e-3, progress=False,
                      precision="fp32", distributed="none", log_every=1, warmup_steps=2)
    result = pretrain_siglip(model, byte_level_tokenizer(), pairs, ImageLoader(config, tmp_path), cfg, true_texts)
    losses = [json.loads(line)["loss"] for line in result.metrics_path.read_text().splitlines()]
    assert len(losses) == 16 and result.final_loss == pytest.approx(losses[-1])
    # seed 0 falls from ~15 (mean of the first 4 steps) to ~4.5; with the optimiser's step a no-op
    # the loss only wanders with the batches (16-28 here), so a mean ratio below 0.5 means learning
    assert sum(losses[-4:]) / 4 < 0.5 * sum(losses[:4]) / 4, losses
    after = model.vision.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the tower itself learned


def _region_model() -> tuple[SiglipPretrainModel, object]:
    config = preset("tiny")  # a 6x6 patch grid: 4 merged tokens under spatial3x3
    model = SiglipPretrainModel(dataclasses.replace(config.vision, has_head=True), config.text, merge="spatial3x3")
    init_weights(model)
    return model, config


def test_region_texts_are_shared_positives_and_picked_by_token(tmp_path):
    generate_shapes_dataset(tmp_path, 2, seed=1, image_size=42, chart_fraction=0.0)
    model, config = _region_model()
    loader = ImageLoader(config, tmp_path)
    a = CaptionItem("images/000000.png", [1, 2], "x", regions=((0, [5, 6]), (3, [7])))
    b = CaptionItem("images/000001.png", [3], "y", regions=((2, [5, 6]),))  # same text as a's token 0
    c = CaptionItem("images/000001.png", [4], "z")  # no regions
    batch = collate(loader, 0)([a, b, c])
    regions = batch["regions"]
    assert regions["rows"].tolist() == [0, 0, 1] and regions["tokens"].tolist() == [0, 3, 2]
    assert regions["ids"].tolist() == [[5, 6], [7, 0]] and regions["valid"].tolist() == [[True, True], [True, False]]
    assert regions["positives"].tolist() == [[True, False], [False, True], [True, False]]
    # the region loss is the sigmoid loss of exactly those merged tokens against those texts
    with torch.no_grad():
        losses = model(**batch)
        merged = spatial3x3(model.vision(batch["pixels"]))  # [3, 4, 9D]
        blocks = merged.view(3, 4, 9, -1)[[0, 0, 1], [0, 3, 2]]  # [3, 9, D]: each region's own 9 tokens
        want = siglip_loss(blocks.mean(1), model.region_text_proj(model.encode_texts(regions["ids"], regions["valid"])),
                           model.region_t_prime.exp(), model.region_bias, regions["positives"])
    assert set(losses) == {"pooled", "regions"}
    assert torch.allclose(losses["regions"], want) and losses["regions"] > 0
    # without region texts in the batch only the pooled objective runs
    assert set(model(**collate(loader, 0)([c]))) == {"pooled"}


def test_region_texts_need_a_model_that_merges(tmp_path):
    generate_shapes_dataset(tmp_path, 2, seed=1, image_size=42, chart_fraction=0.0)
    config = preset("tiny")
    model = SiglipPretrainModel(dataclasses.replace(config.vision, has_head=True), config.text)
    cfg = TrainConfig(out_dir=str(tmp_path / "run"), steps=2, batch_size=2, progress=False,
                      precision="fp32", distributed="none")
    with pytest.raises(ValueError, match="without merge"):
        pretrain_siglip(model, byte_level_tokenizer(), [("images/000000.png", "a")], ImageLoader(config, tmp_path),
                        cfg, region_texts={"images/000000.png": [(0, "a red circle")]})
    with pytest.raises(ValueError, match="not a compression"):
        SiglipPretrainModel(dataclasses.replace(config.vision, has_head=True), config.text, merge="pool4")


def test_region_loss_is_logged_beside_the_pooled_one(tmp_path):
    generate_shapes_dataset(tmp_path, 8, seed=2, image_size=42, chart_fraction=0.0)
    model, config = _region_model()
    pairs, regions = [], {}
    for r in read_scenes(tmp_path / "scenes.jsonl"):
        pairs.append((r.image, caption(r.scene)))
        regions[r.image] = [(i % 4, f"a {o.color} {o.shape}") for i, o in enumerate(r.scene.objects)]
    cfg = TrainConfig(out_dir=str(tmp_path / "run"), steps=4, batch_size=8, lr=3e-3, progress=False,
                      precision="fp32", distributed="none", log_every=1, warmup_steps=1)
    result = pretrain_siglip(model, byte_level_tokenizer(), pairs, ImageLoader(config, tmp_path), cfg,
                             region_texts=regions)
    logged = [json.loads(line) for line in result.metrics_path.read_text().splitlines()]
    assert len(logged) == 4
    for m in logged:  # the step's loss is the sum of the two objectives
        assert m["loss"] == pytest.approx(m["pooled_loss"] + m["regions_loss"], rel=1e-4), m


def _coloured_regions(g: torch.Generator, n: int = 6) -> tuple[dict, torch.Tensor]:
    """n 84-pixel images whose 4 regions (2x2 blocks of 42 pixels: spatial3x3's blocks of the tiny
    tower's 6x6 grid) are each filled with one of 3 colours, and the region batch naming each
    region's colour by a one-token text."""
    colours = torch.tensor([[1.0, -1, -1], [-1, 1, -1], [-1, -1, 1]])
    labels = torch.randint(0, 3, (n, 4), generator=g)  # [n, 4]
    pixels = colours[labels].view(n, 2, 2, 3).permute(0, 3, 1, 2)  # [n, 3, 2, 2]
    pixels = pixels.repeat_interleave(42, 2).repeat_interleave(42, 3)  # [n, 3, 84, 84]
    regions = {"rows": torch.arange(n).repeat_interleave(4), "tokens": torch.arange(4).repeat(n),
               "ids": torch.tensor([[5], [6], [7]]), "valid": torch.ones(3, 1, dtype=torch.bool),
               "positives": labels.reshape(-1, 1) == torch.arange(3)}  # [4n, 3]
    return {"pixels": pixels, "ids": torch.ones(n, 1, dtype=torch.long),
            "valid": torch.ones(n, 1, dtype=torch.bool), "regions": regions}, labels


def test_region_objective_learns_what_each_region_holds():
    torch.manual_seed(0)
    model, _ = _region_model()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(40):
        loss = model(**_coloured_regions(g)[0])["regions"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    batch, _ = _coloured_regions(g)  # unseen draws
    with torch.no_grad():
        right = float(model(**batch)["regions"])
        batch["regions"]["positives"] = batch["regions"]["positives"][:, [1, 2, 0]]  # every colour named wrong
        wrong = float(model(**batch)["regions"])
    # measured: 0.28 against 16.6; a model blind to the regions' colours scores both alike (~3.8)
    assert right < 1.0 and wrong > 5 * right, (right, wrong)
