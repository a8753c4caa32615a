"""The nano recipe end to end at a tiny scale: every stage runs and logs falling losses, the report
and its table are written, and the shipped model is the last stage's."""

from __future__ import annotations

import json
import math

import pytest
import torch

from omnivision.data.records import PreferencePair
from omnivision.loader import load
from omnivision.train.nano_report import markdown_table
from omnivision.train.recipe_nano import (
    NanoConfig,
    balance_yes_no,
    nano_config,
    run_nano,
)


def test_nano_config_gives_one_token_per_scene_cell():
    config = nano_config(256)
    assert config.vision.grid == 9 and config.projector.compression == "spatial3x3"
    assert config.num_image_tokens == 9


def test_yes_no_corrections_are_balanced():
    probe = "Is there a red circle in the image?"
    pairs = [PreferencePair("a.png", probe, "no", "yes") for _ in range(3)]
    pairs += [PreferencePair("b.png", probe, "yes", "no"),
              PreferencePair("c.png", "Describe the image.", "A red circle.", "A blue circle.")]
    kept, dropped = balance_yes_no(pairs)
    assert dropped == 2 and len(kept) == 3
    assert sorted(p.chosen for p in kept) == ["A red circle.", "no", "yes"]
    assert balance_yes_no(pairs[:3]) == ([], 3)  # corrections one way only: none kept


def _losses(run_dir) -> list[float]:
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.long
def test_tiny_scale_run_writes_every_stage(tmp_path):
    report = run_nano(NanoConfig(out=str(tmp_path / "nano"), scale=0.01, eval_scenes=30))
    out = tmp_path / "nano"
    assert list(report["stages"]) == ["1-align", "2-sft", "3-dpo"]
    for scores in report["stages"].values():
        assert {"overall", "color", "shape", "count", "position", "chart"} <= scores["qa"].keys()
        assert all(0.0 <= v <= 1.0 for v in scores["qa"].values())
        assert set(scores["pope"]) == {"random", "popular", "adversarial"}
    assert list(report["timings_s"]) == ["data", "tokenizer", "text pretraining", "vision pretraining",
                                         "stage 1", "stage 2", "stage 3"]
    assert json.loads((out / "report.json").read_text()) == report
    table = (out / "report.md").read_text()
    assert table == markdown_table(report) and table.count("\n") == 5
    # every training stage logged finite losses, and the ones long enough to learn at this scale fell
    for stage in ("text", "siglip", "align", "sft"):
        losses = _losses(out / "runs" / stage)
        assert losses and all(math.isfinite(v) for v in losses), stage
    for stage in ("text", "sft"):
        losses = _losses(out / "runs" / stage)
        quarter = max(1, len(losses) // 4)
        assert sum(losses[-quarter:]) / quarter < sum(losses[:quarter]) / quarter, (stage, losses)
    pairs = (out / "pairs.jsonl").read_text().splitlines()
    assert report["pairs"]["kept"] == len(pairs)
    # the shipped model is the last stage's, in its own named config
    vlm = load(out / "model", dtype="float32")
    last = load(out / "runs" / ("dpo" if pairs else "sft") / "model", dtype="float32")
    assert vlm.config.name == "omnivision-nano"
    for (name, got), (_, want) in zip(vlm.model.state_dict().items(), last.model.state_dict().items()):
        assert torch.equal(got, want), name
