"""Checkpoint files: exact round trip without pickle, trainable-only weights, pruning, atomicity."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from omnivision.train.checkpoint import (FILES, clean_incomplete, complete_checkpoints,
                                         latest_checkpoint, load_checkpoint, save_checkpoint)
from omnivision.train.config import TrainConfig
from omnivision.train.schedule import make_scheduler
from omnivision.weights.errors import CheckpointError


def _setup(toy, cfg):
    model = toy.make_model()
    model.embed.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, foreach=False)
    return model, opt, make_scheduler(opt, cfg)


def _step(model, opt, sched, toy, n=3):
    batch = toy.collate(toy.make_dataset()[:8])
    for _ in range(n):
        ((model(batch["x"]) - batch["y"]) ** 2).mean().backward()
        opt.step()
        sched.step()
        opt.zero_grad()


def test_round_trip_restores_everything_exactly(toy, tmp_path):
    cfg = TrainConfig(steps=10, warmup_steps=2, lr=1e-2)
    model, opt, sched = _setup(toy, cfg)
    _step(model, opt, sched, toy)
    torch.manual_seed(123)
    random.seed(5)
    np.random.seed(7)
    path = save_checkpoint(tmp_path, 3, model, opt, sched, {"note": "x"})
    expect_rng = (torch.rand(3), random.random(), np.random.rand())

    assert path.name == "step_00000003" and sorted(p.name for p in path.iterdir()) == sorted(FILES)
    saved = load_file(str(path / "trainable.safetensors"))
    assert "embed.weight" not in saved and torch.equal(saved["head.weight"], model.head.weight)
    meta = json.loads((path / "state.json").read_text())  # plain JSON: nothing is unpickled
    assert meta["step"] == 3 and meta["extra"] == {"note": "x"}

    fresh, opt2, sched2 = _setup(toy, cfg)
    loaded = load_checkpoint(path, fresh, opt2, sched2)
    assert (loaded.step, loaded.extra) == (3, {"note": "x"})
    assert (torch.rand(3).tolist(), random.random(), np.random.rand()) == \
        (expect_rng[0].tolist(), *expect_rng[1:])
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values()):
        assert torch.equal(a, b)
    assert sched2.last_epoch == 3 and opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    # one more identical step on both gives identical weights: the optimizer moments came back exact
    _step(model, opt, sched, toy, 1)
    _step(fresh, opt2, sched2, toy, 1)
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values()):
        assert torch.equal(a, b)


def test_keep_last_prunes_and_latest_ignores_incomplete(toy, tmp_path):
    cfg = TrainConfig()
    model, opt, sched = _setup(toy, cfg)
    _step(model, opt, sched, toy, 1)
    for step in range(1, 6):
        save_checkpoint(tmp_path, step, model, opt, sched, {}, keep_last=2)
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["step_00000004", "step_00000005"]

    # leftovers of a crash: a temp dir, and a step dir someone copied half-way
    tmp = tmp_path / ".tmp-step_00000009-4242"
    tmp.mkdir()
    (tmp / "trainable.safetensors").write_bytes(b"partial")
    (tmp_path / "step_00000008").mkdir()
    assert latest_checkpoint(tmp_path).name == "step_00000005"
    assert clean_incomplete(tmp_path) == [tmp] and not tmp.exists()
    with pytest.raises(CheckpointError, match="incomplete"):
        load_checkpoint(tmp_path / "step_00000008", model, opt, sched)
    assert latest_checkpoint(tmp_path / "nothing-here") is None


def test_every_step_dir_is_complete_and_no_temp_dir_remains(toy, tmp_path):
    cfg = TrainConfig()
    model, opt, sched = _setup(toy, cfg)
    _step(model, opt, sched, toy, 1)
    save_checkpoint(tmp_path, 1, model, opt, sched, {}, keep_last=5)
    save_checkpoint(tmp_path, 1, model, opt, sched, {"again": True}, keep_last=5)  # replaces in place
    entries = list(tmp_path.iterdir())
    assert [p.name for p in entries] == ["step_00000001"]
    assert all((entries[0] / f).is_file() for f in FILES)
    assert json.loads((entries[0] / "state.json").read_text())["extra"] == {"again": True}


def test_mismatched_trainable_set_is_refused(toy, tmp_path):
    cfg = TrainConfig()
    model, opt, sched = _setup(toy, cfg)
    _step(model, opt, sched, toy, 1)
    path = save_checkpoint(tmp_path, 1, model, opt, sched, {})
    other = toy.make_model()  # embed trainable too
    opt2 = torch.optim.AdamW(other.parameters(), lr=cfg.lr)
    with pytest.raises(CheckpointError, match="missing.*embed"):
        load_checkpoint(path, other, opt2, make_scheduler(opt2, cfg))
