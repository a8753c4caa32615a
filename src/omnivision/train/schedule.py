"""The learning-rate schedule: linear warmup, then cosine decay to `lr * min_lr_ratio`.

`step` is the 0-based index of the optimizer step the rate is used for, so a run of `steps` steps
uses `lr_at(0) ... lr_at(steps - 1)`:

- warmup, `step < warmup_steps`: `lr * (step + 1) / warmup_steps` (the last warmup step is at peak);
- decay: `t = (step - warmup_steps) / (steps - warmup_steps - 1)` clamped to [0, 1], and
  `min_lr + (lr - min_lr) * (1 + cos(pi * t)) / 2`: the first decay step is at peak, the last step
  of the run at exactly `min_lr`.

A pure function of the step, so resuming needs nothing but the step. Knows nothing of optimizers
beyond the `LambdaLR` factory.
"""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR

from omnivision.train.config import TrainConfig


def lr_at(step: int, cfg: TrainConfig) -> float:
    """The learning rate of the optimizer step with 0-based index `step`."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    min_lr = cfg.lr * cfg.min_lr_ratio
    decay_steps = cfg.steps - cfg.warmup_steps - 1
    t = min(1.0, (step - cfg.warmup_steps) / decay_steps) if decay_steps > 0 else 0.0
    return min_lr + (cfg.lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * t))


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> LambdaLR:
    """A `LambdaLR` following `lr_at` (the optimizer's groups must have been built with lr=cfg.lr).

    Call `scheduler.step()` after each `optimizer.step()`; its state (`last_epoch`) is the step count.
    """
    def factor(step: int) -> float:
        return lr_at(step, cfg) / cfg.lr

    return LambdaLR(optimizer, factor)
