"""The one training loop of all stages: `train(model, task, dataset, collate, cfg)`.

A recipe supplies a `Task` (the loss of one micro-batch), a dataset (any sequence), a collate
function and a `TrainConfig`; the loop owns everything else: freezing, AdamW with decay on matrices
only, warmup + cosine, gradient accumulation, global-norm clipping, bf16 autocast, gradient
checkpointing, DDP/FSDP, the progress bar, metrics, checkpoints and exact resumption.

Data order. Samples are read as one endless stream: position p is `perm_e[p % N]` with
`e = p // N` and `perm_e = randperm(N, generator=manual_seed(cfg.seed + e))` (batches may straddle
epochs; nothing is dropped). With B = batch_size, A = grad_accum and W processes, micro-step m of
optimizer step s (both 0-based) covers the W*B positions starting at `g = (s*A + m) * W*B`, and
process r takes the contiguous slice `[g + r*B, g + (r+1)*B)`. A single process with batch_size W*B
therefore sees exactly the same micro-batches as W processes with B, and since each process's loss
is a mean over its B samples and DDP averages gradients over processes, the update is the same (up
to float summation order). The position is a pure function of the step, so resuming needs only the
step.

Randomness. Before each optimizer step the torch, Python and NumPy generators are reseeded from
(seed, rank, step), so dropout or augmentation inside the task is also a pure function of the step
and identical after a resume. On CPU a killed-and-resumed run ends bit-identical to an uninterrupted
one (tests/train/test_resume.py); on GPU only as far as its kernels are deterministic.

Knows nothing of the model's architecture (it calls `model.set_gradient_checkpointing(True)` if the
model has it), of tokens or of losses. Shape follows `karpathy/nanochat: scripts/chat_sft.py` and
`pytorch/torchtune: recipes/full_finetune_distributed.py`, as plain functions (STYLE.md 5.9).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from tqdm import tqdm

from omnivision.process_group import all_reduce_means, barrier, broadcast_object, setup
from omnivision.train.checkpoint import (clean_incomplete, complete_checkpoints, latest_checkpoint,
                                         load_checkpoint, save_checkpoint)
from omnivision.train.config import TrainConfig, config_to_dict
from omnivision.train.distributed import full_state_dict, mode, wrap
from omnivision.train.metrics import MetricsLog, plot_curves
from omnivision.train.schedule import make_scheduler

log = logging.getLogger(__name__)

CHECKPOINTS, METRICS, CURVES = "checkpoints", "metrics.jsonl", "curves.png"


class Task(Protocol):
    """What a recipe implements: the loss of one micro-batch."""

    def loss(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        """Mean loss over this micro-batch (a 0-dim tensor) and extra metrics to log.

        `model` may be a DDP wrapper: call `model(...)` for the forward pass (so gradients are
        synchronised) and use `model.module` for other attributes. Extra metrics are averaged over
        micro-batches and processes.
        """
        ...


@dataclass
class TrainResult:
    steps: int
    """Optimizer steps done in total (cfg.steps)."""
    final_loss: float
    """Loss of the last step, averaged over processes."""
    metrics_path: Path
    checkpoint_dir: Path
    """The final checkpoint, out_dir/checkpoints/step_XXXXXXXX."""


class DataOrder:
    """Sample indices as a pure function of (step, micro-step, rank); see the module docstring."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed = n, seed
        self._perms: dict[int, list[int]] = {}

    def _perm(self, epoch: int) -> list[int]:
        if epoch not in self._perms:
            if len(self._perms) > 2:
                self._perms.pop(min(self._perms))
            g = torch.Generator().manual_seed(self.seed + epoch)
            self._perms[epoch] = torch.randperm(self.n, generator=g).tolist()
        return self._perms[epoch]

    def indices(self, step: int, micro: int, rank: int, batch_size: int, grad_accum: int,
                world_size: int) -> list[int]:
        start = (step * grad_accum + micro) * world_size * batch_size + rank * batch_size
        return [self._perm(p // self.n)[p % self.n] for p in range(start, start + batch_size)]


def train(model: nn.Module, task: Task, dataset: Sequence[Any], collate: Callable[[list[Any]], Any],
          cfg: TrainConfig, *,
          trainable: Callable[[nn.Module], list[tuple[str, nn.Parameter]]] | None = None,
          resume: bool = False,
          on_checkpoint: Callable[[nn.Module, Path, dict[str, torch.Tensor]], None] | None = None,
          ) -> TrainResult:
    """Train `model` in place for `cfg.steps` optimizer steps (continuing the latest checkpoint in
    `cfg.out_dir` when `resume`). Under torchrun, call it on every process.

    `trainable(model)` picks the parameters that learn (default: those with requires_grad); all
    others are frozen. `on_checkpoint(model, dir, state)` runs on rank 0 after each checkpoint
    (including the final one) with the unwrapped model and its complete state dict (under FSDP
    gathered from the shards first: the model's own parameters are then sharded DTensors), e.g. to
    save a native model next to it.

    Without `resume`, an `out_dir` that already holds checkpoints is refused (FileExistsError). A
    resumed run must have the same schedule, optimizer settings, seed and global micro-batch as the
    checkpoint (its `extra.trajectory`), else ValueError names what changed. The frozen parameters
    are not in the checkpoint: build the model the same way as the first time.
    """
    if len(dataset) == 0:
        raise ValueError("the dataset is empty")
    info = setup(cfg.device)
    out = Path(cfg.out_dir)
    ckpt_root, metrics_path = out / CHECKPOINTS, out / METRICS

    # -- model, optimizer, schedule ------------------------------------------------------------
    model.to(info.device)
    chosen = trainable(model) if trainable is not None else \
        [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not chosen:
        raise ValueError("nothing to train: no parameter is trainable")
    keep = {id(p) for _, p in chosen}
    for p in model.parameters():
        p.requires_grad_(id(p) in keep)
    decay = {n for n, p in model.named_parameters() if p.requires_grad and p.ndim >= 2}
    if cfg.grad_checkpointing:
        switch = getattr(model, "set_gradient_checkpointing", None)
        if callable(switch):
            switch(True)
        else:
            log.warning("grad_checkpointing: %s has no set_gradient_checkpointing(); ignored",
                        type(model).__name__)
    how = mode(cfg, info)
    wrapped = wrap(model, cfg, info)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]  # FSDP: sharded now
    groups = [{"params": [p for n, p in named if n in decay], "weight_decay": cfg.weight_decay},
              {"params": [p for n, p in named if n not in decay], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr, betas=cfg.betas,
                                  eps=1e-8, foreach=None if info.device.type == "cuda" else False)
    scheduler = make_scheduler(optimizer, cfg)
    amp = autocast_dtype(cfg, info.device)
    autocast = torch.autocast(info.device.type, dtype=amp or torch.float32, enabled=amp is not None)
    params = [p for _, p in named]

    # -- resume ------------------------------------------------------------------------------
    extra = _run_identity(cfg, info.world_size, amp)
    if info.is_main:
        for p in clean_incomplete(ckpt_root):
            log.info("removed the incomplete checkpoint %s", p)
    start = 0
    final_dir: Path | None = None
    if resume:
        latest = broadcast_object(latest_checkpoint(ckpt_root) if info.is_main else None)
        if latest is not None:
            loaded = load_checkpoint(latest, wrapped, optimizer, scheduler)
            _check_same_run(loaded.extra, extra, latest)
            start, final_dir = loaded.step, latest
            if info.is_main:
                log.info("resuming from %s (step %d of %d)", latest, start, cfg.steps)
        elif info.is_main:
            log.info("no checkpoint in %s: starting from step 0", ckpt_root)
    elif broadcast_object(bool(complete_checkpoints(ckpt_root)) if info.is_main else None):
        raise FileExistsError(f"{ckpt_root} already holds checkpoints: resume, or use another out_dir")
    metrics = MetricsLog(metrics_path, start) if info.is_main else None

    # -- steps -------------------------------------------------------------------------------
    order = DataOrder(len(dataset), cfg.seed)
    samples_per_step = cfg.batch_size * cfg.grad_accum * info.world_size
    final_loss = float(metrics.last["loss"]) if metrics and metrics.last else math.nan
    bar = tqdm(total=cfg.steps, initial=start, desc="train", unit="step", dynamic_ncols=True,
               disable=not (cfg.progress and info.is_main))
    busy, busy_steps = 0.0, 0
    wrapped.train()
    try:
        with attention_backend(info.device):
            for step in range(start, cfg.steps):
                t0 = time.perf_counter()
                seed_step(cfg.seed, info.rank, step)
                lr = optimizer.param_groups[0]["lr"]
                loss_sum = torch.zeros((), device=info.device)
                extras: dict[str, float] = {}
                for micro in range(cfg.grad_accum):
                    ids = order.indices(step, micro, info.rank, cfg.batch_size, cfg.grad_accum, info.world_size)
                    batch = to_device(collate([dataset[i] for i in ids]), info.device)
                    last = micro == cfg.grad_accum - 1
                    if how == "fsdp":
                        wrapped.set_requires_gradient_sync(last)
                    with wrapped.no_sync() if how == "ddp" and not last else nullcontext():
                        with autocast:
                            loss, task_metrics = task.loss(wrapped, batch)
                        if loss.ndim != 0:
                            raise ValueError(f"Task.loss must return a scalar, got shape {tuple(loss.shape)}")
                        (loss / cfg.grad_accum).backward()
                    loss_sum += loss.detach().float()
                    for k, v in task_metrics.items():
                        extras[k] = extras.get(k, 0.0) + float(v) / cfg.grad_accum
                norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm or math.inf)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                done = step + 1
                busy += time.perf_counter() - t0
                busy_steps += 1

                if done % cfg.log_every == 0 or done == cfg.steps:
                    keys = sorted(extras)
                    norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
                    values = all_reduce_means([loss_sum.item() / cfg.grad_accum, float(norm),
                                               *(extras[k] for k in keys)], info.device)
                    final_loss = values[0]
                    if not math.isfinite(final_loss):
                        raise FloatingPointError(f"the loss is {final_loss} at step {done}")
                    record = {"step": done, "loss": final_loss, "lr": lr, "grad_norm": values[1],
                              "samples_per_s": busy_steps * samples_per_step / max(busy, 1e-9),
                              **dict(zip(keys, values[2:]))}
                    busy, busy_steps = 0.0, 0
                    if metrics is not None:
                        metrics.log(record)
                        bar.set_postfix({"loss": f"{final_loss:.4f}", "lr": f"{lr:.2e}",
                                         "samples/s": f"{record['samples_per_s']:.1f}"}, refresh=False)
                bar.update(1)

                if (cfg.save_every and done % cfg.save_every == 0) or done == cfg.steps:
                    final_dir = save_checkpoint(ckpt_root, done, wrapped, optimizer, scheduler, extra,
                                                keep_last=cfg.keep_last)
                    if on_checkpoint is not None:
                        state = full_state_dict(model) if how == "fsdp" or info.is_main else None
                        if info.is_main:
                            on_checkpoint(model, final_dir, state)
                    barrier()
    finally:
        bar.close()
        if metrics is not None:
            metrics.close()

    if info.is_main:
        plot_curves(metrics_path, out / CURVES)
    barrier()
    assert final_dir is not None  # the last step always saves; a finished run resumes from it
    return TrainResult(cfg.steps, float(broadcast_object(final_loss)), metrics_path, final_dir)


def autocast_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """bfloat16 when autocast should run, None for plain fp32."""
    if cfg.precision == "fp32":
        return None
    if cfg.precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    native = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return torch.bfloat16 if device.type == "cpu" and native is not None and native() else None


def attention_backend(device: torch.device):
    """The attention kernels of training steps. On CPU the math path: measured on the 2-core
    machine, the CPU flash-attention backward took 45 % of a nano SFT step (about 20 ms a call at
    117 tokens); with the math kernels the step ran 26 % faster."""
    if device.type == "cpu":
        return sdpa_kernel([SDPBackend.MATH])
    return nullcontext()


def seed_step(seed: int, rank: int, step: int) -> None:
    """Reseed torch, Python and NumPy from (seed, rank, step)."""
    digest = hashlib.sha256(f"omnivision/{seed}/{rank}/{step}".encode()).digest()
    value = int.from_bytes(digest[:8], "little")
    torch.manual_seed(value)
    random.seed(value)
    np.random.seed(value % 2**32)


def to_device(batch: Any, device: torch.device) -> Any:
    """Tensors inside dicts, lists, tuples, named tuples and dataclasses moved to `device`."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):
        return type(batch)(*(to_device(v, device) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    if dataclasses.is_dataclass(batch) and not isinstance(batch, type):
        return dataclasses.replace(batch, **{f.name: to_device(getattr(batch, f.name), device)
                                             for f in dataclasses.fields(batch) if f.init})
    return batch


def _run_identity(cfg: TrainConfig, world_size: int, amp: torch.dtype | None) -> dict[str, Any]:
    """What a checkpoint must share with the run resuming it for the result to be exact."""
    trajectory = {k: v for k, v in config_to_dict(cfg).items()
                  if k in ("steps", "grad_accum", "lr", "weight_decay", "betas", "warmup_steps",
                           "min_lr_ratio", "max_grad_norm", "seed")}
    trajectory["global_micro_batch"] = cfg.batch_size * world_size
    trajectory["autocast"] = str(amp) if amp is not None else "fp32"
    digest = hashlib.sha256(json.dumps(trajectory, sort_keys=True).encode()).hexdigest()
    return {"config_hash": digest, "trajectory": trajectory, "world_size": world_size,
            "config": config_to_dict(cfg)}


def _check_same_run(saved: dict[str, Any], now: dict[str, Any], path: Path) -> None:
    if saved.get("config_hash") == now["config_hash"]:
        return
    old, new = saved.get("trajectory", {}), now["trajectory"]
    diffs = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in new if old.get(k) != new.get(k)]
    raise ValueError(f"{path}: cannot resume exactly, the run changed ({'; '.join(diffs)}); "
                     "start a new out_dir instead")
