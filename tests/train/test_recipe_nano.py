"""The nano recipe end to end at a tiny scale: every stage runs, the report and its table are
written, and the final model loads and answers."""

from __future__ import annotations

import json

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


def test_tiny_scale_run_writes_every_stage(tmp_path):
    report = run_nano(NanoConfig(out=str(tmp_path / "nano"), scale=0.01, eval_scenes=30))
    out = tmp_path / "nano"
    assert list(report["stages"]) == ["1-align", "2-sft", "3-dpo"]
    for scores in report["stages"].values():
        assert {"overall", "color", "shape", "count", "position", "chart"} <= scores["qa"].keys()
        assert set(scores["pope"]) == {"random", "popular", "adversarial"}
    assert json.loads((out / "report.json").read_text()) == report
    table = (out / "report.md").read_text()
    assert table == markdown_table(report) and table.count("\n") == 5
    vlm = load(out / "model")
    assert vlm.config.name == "omnivision-nano"
    assert isinstance(vlm.answer_batch([out / "eval-data" / "images" / "000000.png"],
                                       ["How many objects are there?"], max_new_tokens=4)[0], str)
