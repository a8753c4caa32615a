"""Short CPU runs of every stage on generated data with a tiny model: what learns, what stays
frozen, the feature cache, the saved models, pair making, and the command line."""

from __future__ import annotations

import json

import pytest
import torch

from omnivision.cli.main import main
from omnivision.data.formats import read_preferences
from omnivision.loader import load
from omnivision.train.config import TrainConfig
from omnivision.train.recipe_align import AlignConfig, run_align
from omnivision.train.encode import encode_preference
from omnivision.train.image_loader import ImageLoader
from omnivision.train.losses import lm_loss
from omnivision.train.recipe_dpo import DPOConfig, DPOItem, DPOTask, collate, run_dpo
from omnivision.train.recipe_sft import SFTConfig, run_sft


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, make_workspace):
    return make_workspace(tmp_path_factory.mktemp("recipes"), 16, 3)


def _train(out, steps=3, precision="fp32", **kw) -> TrainConfig:
    return TrainConfig(out_dir=str(out), steps=steps, batch_size=4, lr=1e-2, progress=False, precision=precision,
                       distributed="none", log_every=1, **kw)


def _state(path):
    return {k: v.clone() for k, v in load(path, dtype="float32").model.state_dict().items()}


def test_align_trains_only_the_projector_and_caches_features(workspace):
    data = workspace / "data"
    cfg = AlignConfig(model=str(workspace / "start"), data=str(data / "captions.jsonl"), images=str(data),
                      train=_train(workspace / "align"), feature_cache=str(workspace / "features"))
    run_align(cfg)
    before, after = _state(workspace / "start"), _state(workspace / "align" / "model")
    for name in before:
        same = torch.equal(before[name], after[name])
        assert same != name.startswith("projector."), name  # frozen parts bit-identical, projector moved
    cached = sorted((workspace / "features").glob("*.safetensors"))
    assert len(cached) == 16
    mtimes = [p.stat().st_mtime_ns for p in cached]
    run_align(AlignConfig(model=str(workspace / "start"), data=cfg.data, images=cfg.images,
                          train=_train(workspace / "align-again"), feature_cache=cfg.feature_cache))
    assert [p.stat().st_mtime_ns for p in cached] == mtimes  # reused, not recomputed


def test_sft_learns_the_chosen_parts_and_lowers_the_loss(workspace):
    data = workspace / "data"
    result = run_sft(SFTConfig(model=str(workspace / "start"), data=str(data / "sft.json"), images=str(data),
                               train=_train(workspace / "sft", steps=12), trainable=["language"]))
    before, after = _state(workspace / "start"), _state(workspace / "sft" / "model")
    assert all(torch.equal(before[k], after[k]) for k in before if not k.startswith("language."))
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("language."))
    losses = [json.loads(line)["loss"] for line in (workspace / "sft" / "metrics.jsonl").read_text().splitlines()]
    assert losses[-1] < losses[0]
    assert result.steps == 12


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_sft_on_cached_features_trains_as_on_pixels(workspace, capsys, precision):
    # the cache computes the tower as a step does (autocast, attention kernels): the same training,
    # bit for bit, with the tower skipped
    data = workspace / "data"

    def sft(out, **kw):
        run_sft(SFTConfig(model=str(workspace / "start"), data=str(data / "sft.json"), images=str(data),
                          train=_train(workspace / f"{out}-{precision}", steps=6, precision=precision), **kw))
        return [json.loads(line)["loss"]
                for line in (workspace / f"{out}-{precision}" / "metrics.jsonl").read_text().splitlines()]

    cache = str(workspace / f"sft-cache-{precision}")
    on_pixels = sft("sft-pixels")
    on_features = sft("sft-features", feature_cache=cache)
    assert "vision features: 16 computed, 0 reused" in capsys.readouterr().out
    assert on_features == on_pixels
    pixels = _state(workspace / f"sft-pixels-{precision}" / "model")
    features = _state(workspace / f"sft-features-{precision}" / "model")
    assert all(torch.equal(pixels[k], features[k]) for k in pixels)
    sft("sft-features-again", feature_cache=cache)
    assert "vision features: 0 computed, 16 reused" in capsys.readouterr().out
    with pytest.raises(ValueError, match="frozen vision tower"):
        sft("sft-vision", feature_cache=cache, trainable=["vision", "language"])


def test_make_pairs_with_the_oracle_then_dpo(workspace, capsys):
    data = workspace / "data"
    pairs = workspace / "pairs.jsonl"
    assert main(["train", "make-pairs", "--model", str(workspace / "start"), "--data", str(data / "qa.jsonl"),
                 "--images", str(data), "--out", str(pairs), "--max-edit", "1.0", "--max-new-tokens", "4"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    written = read_preferences(pairs)
    assert summary["pairs"] == len(written)
    assert sum(summary["dropped"].values()) + len(written) == len(open(data / "qa.jsonl").readlines())
    if not written:  # a random model may only produce template text; make one pair by hand
        pairs.write_text(json.dumps({"image": "images/000000.png", "prompt": "How many objects are there?",
                                     "chosen": "2", "rejected": "3"}) + "\n")
    result = run_dpo(DPOConfig(model=str(workspace / "start"), data=str(pairs), images=str(data),
                               train=_train(workspace / "dpo", steps=2, max_grad_norm=0.0), beta=0.1))
    assert result.steps == 2
    assert (workspace / "dpo" / "model" / "model.safetensors").is_file()
    first = json.loads((workspace / "dpo" / "metrics.jsonl").read_text().splitlines()[0])
    assert first["loss"] == pytest.approx(0.6931, abs=2e-3)  # policy == reference at the first step: log 2


def test_dpo_nll_weight_adds_the_chosen_answers_mean_token_loss(workspace):
    vlm = load(workspace / "start", dtype="float32")
    c, pc = vlm.config, vlm.config.processing
    answers = [("2", "3"), ("a red circle at the top", "a blue circle at the top")]
    items = [DPOItem(*encode_preference(vlm.tokenizer, "Describe the image.", chosen, rejected, True, pc.template,
                                        pc.system_prompt, c.num_image_tokens), "images/000000.png")
             for chosen, rejected in answers]
    batch = collate(ImageLoader(c, workspace / "data"), vlm.tokenizer.endoftext_id)(items)
    batch[1].fill_(-5.0)  # any reference: it cancels out of the difference
    plain, _ = DPOTask(0.1).loss(vlm.model, batch)
    with_nll, logged = DPOTask(0.1, nll_weight=0.5).loss(vlm.model, batch)
    both = batch[0]
    logits = vlm.model(both.input_ids, pixel_values=both.pixel_values, key_valid=both.key_valid)
    per_answer = [float(lm_loss(logits[i:i + 1], both.labels[i:i + 1])) for i in range(len(items))]
    expected = sum(per_answer) / len(per_answer)  # a mean per answer of its mean per token, not per token
    assert logged["chosen_nll"] == pytest.approx(expected, rel=1e-5)
    assert float(with_nll - plain) == pytest.approx(0.5 * expected, rel=1e-5)
    with pytest.raises(ValueError, match="nll_weight"):
        run_dpo(DPOConfig(model=str(workspace / "start"), data="unused", nll_weight=-1.0))


def test_stage_from_yaml_with_overrides(workspace, capsys):
    data = workspace / "data"
    yaml_file = workspace / "sft.yaml"
    yaml_file.write_text(f"model: {workspace / 'start'}\ndata: {data / 'sft.json'}\nimages: {data}\n"
                         f"train:\n  steps: 50\n  batch_size: 2\n  progress: false\n  precision: fp32\n")
    out = workspace / "sft-cli"
    assert main(["train", "sft", "--config", str(yaml_file), f"train.out_dir={out}", "train.steps=2"]) == 0
    assert "2 steps" in capsys.readouterr().out
    assert load(out / "model", dtype="float32").config.name == "tiny"
    assert main(["train", "sft", "--config", str(yaml_file), "train.bogus=1"]) == 2
    assert "bogus" in capsys.readouterr().err
