"""Warmup + cosine: values at the edges, the midpoint, and the LambdaLR factory agreeing with lr_at."""

from __future__ import annotations

import math

import pytest
import torch

from omnivision.train.config import TrainConfig
from omnivision.train.schedule import lr_at, make_scheduler


def test_warmup_peak_and_end():
    cfg = TrainConfig(lr=1.0, steps=110, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.1)       # (0 + 1) / 10
    assert lr_at(4, cfg) == pytest.approx(0.5)
    assert lr_at(9, cfg) == 1.0                        # last warmup step at peak
    assert lr_at(10, cfg) == 1.0                       # first decay step at peak
    # decay over steps 10..109: t = (step - 10) / 99; the midpoint of the cosine is (peak + min) / 2
    assert lr_at(10 + 99 / 2, cfg) == pytest.approx(0.55)
    assert lr_at(109, cfg) == pytest.approx(0.1)       # the last step ends at lr * min_lr_ratio
    assert lr_at(500, cfg) == pytest.approx(0.1)       # clamped beyond the run
    values = [lr_at(s, cfg) for s in range(10, 110)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_no_warmup_and_single_step():
    assert lr_at(0, TrainConfig(lr=2.0, steps=5)) == 2.0
    assert lr_at(0, TrainConfig(lr=2.0, steps=1)) == 2.0
    cfg = TrainConfig(lr=2.0, steps=3, min_lr_ratio=0.0)
    assert [lr_at(s, cfg) for s in range(3)] == pytest.approx([2.0, 1.0, 0.0])


def test_lambda_lr_follows_lr_at():
    cfg = TrainConfig(lr=0.3, steps=20, warmup_steps=4, min_lr_ratio=0.2)
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=cfg.lr)
    sched = make_scheduler(opt, cfg)
    seen = []
    for _ in range(cfg.steps):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([lr_at(s, cfg) for s in range(cfg.steps)], rel=1e-12)
    assert math.isclose(seen[-1], 0.3 * 0.2)
