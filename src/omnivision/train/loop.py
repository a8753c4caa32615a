"""The one training loop of all stages: `train(model, task, dataset, collate, cfg)`.

A recipe supplies a `Task` (the loss of one micro-batch), a dataset (any sequence), a collate
function and a `TrainConfig`; the loop owns everything else: freezing, AdamW with decay on matrices
only and a rate per component (`lr_scales`), warmup + cosine, gradient accumulation, global-norm
clipping, bf16 autocast, gradient checkpointing, compiling, DDP/FSDP, the progress bar, metrics, checkpoints
and exact resumption.

Steps. `train` reads as the sequence of its steps: `_set_up` (process group, freezing, wrapping,
AdamW, schedule, autocast, gathered in a `_Run`), `_resume_or_refuse` (the start step), then per
optimizer step `_train_step` (reseed, grad_accum `_micro_step`s, clip, step), `_StepLog.record`
(throughput, metrics line, progress bar) and, when due, `_save` (checkpoint plus `on_checkpoint`).

Data order (`train/data_order.py`). Samples are read as one endless stream of shuffled epochs;
micro-step m of optimizer step s covers the W*B positions starting at `(s*A + m) * W*B` (B =
batch_size, A = grad_accum, W processes) and process r takes the r-th B of them. A single process
with batch_size W*B therefore sees exactly the same micro-batches as W processes with B, and since
each process's loss is a mean over its B samples and DDP averages gradients over processes, the
update is the same (up to float summation order). The position is a pure function of the step, so
resuming needs only the step. `cfg.group_by_length` batches samples of similar length (the recipe
passes their `lengths`).

Randomness. Before each optimizer step the torch, Python and NumPy generators are reseeded from
(seed, rank, step), so dropout or augmentation inside the task is also a pure function of the step
and identical after a resume. On CPU a killed-and-resumed run ends bit-identical to an uninterrupted
one (tests/train/test_resume.py); on GPU only as far as its kernels are deterministic.

Knows nothing of the model's architecture (it calls `model.set_gradient_checkpointing(True)` if the
model has it), of tokens or of losses. Shape follows `karpathy/nanochat: scripts/chat_sft.py` and
`pytorch/torchtune: recipes/full_finetune_distributed.py`, as plain functions.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from tqdm import tqdm

from omnivision.process_group import DistInfo, all_reduce_means, barrier, broadcast_object, setup
from omnivision.train.checkpoint import (clean_incomplete, complete_checkpoints, latest_checkpoint,
                                         load_checkpoint, save_checkpoint)
from omnivision.train.config import TrainConfig, config_to_dict
from omnivision.train.data_order import DataOrder
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


def train(model: nn.Module, task: Task, dataset: Sequence[Any], collate: Callable[[list[Any]], Any],
          cfg: TrainConfig, *,
          trainable: Callable[[nn.Module], list[tuple[str, nn.Parameter]]] | None = None,
          resume: bool = False,
          on_checkpoint: Callable[[nn.Module, Path, dict[str, torch.Tensor]], None] | None = None,
          lengths: Sequence[int] | None = None,
          ) -> TrainResult:
    """Train `model` in place for `cfg.steps` optimizer steps (continuing the latest checkpoint in
    `cfg.out_dir` when `resume`). Under torchrun, call it on every process.

    `trainable(model)` picks the parameters that learn (default: those with requires_grad); all
    others are frozen. `on_checkpoint(model, dir, state)` runs on rank 0 after each checkpoint
    (including the final one) with the unwrapped model and its complete state dict (under FSDP
    gathered from the shards first: the model's own parameters are then sharded DTensors), e.g. to
    save a native model next to it. `lengths` (one per sample, e.g. its token count) is needed
    only by `cfg.group_by_length`.

    Without `resume`, an `out_dir` that already holds checkpoints is refused (FileExistsError). A
    resumed run must have the same schedule, optimizer settings, seed, global micro-batch and
    grouping by length as the checkpoint (its `extra.trajectory`), else ValueError names what
    changed. The frozen parameters are not in the checkpoint: build the model the same way as the
    first time.
    """
    if len(dataset) == 0:
        raise ValueError("the dataset is empty")
    run = _set_up(model, cfg, trainable)
    start, final_dir = _resume_or_refuse(run, resume)
    batch_at = _micro_batches(dataset, collate, cfg, run.info, lengths)
    steplog = _StepLog(run, start)
    run.wrapped.train()
    if cfg.compile:
        _switch(model, "set_compiled", True)
    try:
        with attention_backend(run.info.device):
            for step in range(start, cfg.steps):
                done = step + 1
                stats = _train_step(run, task, batch_at, step)
                steplog.record(done, stats, write=_due(cfg.log_every, done, cfg.steps))
                if _due(cfg.save_every, done, cfg.steps):
                    final_dir = _save(run, done, on_checkpoint)
    finally:
        if cfg.compile:
            _switch(model, "set_compiled", False)
        steplog.close()
    _plot_curves(run)
    assert final_dir is not None  # the last step always saves; a finished run resumes from it
    return TrainResult(cfg.steps, float(broadcast_object(steplog.final_loss)), run.metrics_path, final_dir)


# -- set-up ------------------------------------------------------------------------------------


@dataclass
class _Run:
    """Everything `_set_up` prepares for the steps of one run on this process."""

    cfg: TrainConfig
    info: DistInfo
    how: str
    """The wrapping actually used: none | ddp | fsdp."""
    model: nn.Module
    """The user's module (under FSDP sharded in place)."""
    wrapped: nn.Module
    """What the task calls: `model`, or its DDP wrapper."""
    params: list[nn.Parameter]
    """The trainable parameters (under FSDP their shards), in optimizer order."""
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    autocast: torch.autocast
    identity: dict[str, Any]
    """`_run_identity`: saved in each checkpoint's extra, checked on resume."""

    @property
    def out(self) -> Path:
        return Path(self.cfg.out_dir)

    @property
    def ckpt_root(self) -> Path:
        return self.out / CHECKPOINTS

    @property
    def metrics_path(self) -> Path:
        return self.out / METRICS


def _set_up(model: nn.Module, cfg: TrainConfig,
            trainable: Callable[[nn.Module], list[tuple[str, nn.Parameter]]] | None) -> _Run:
    """Join the process group, move and freeze `model`, wrap it for DDP/FSDP, build AdamW, the
    schedule and autocast."""
    info = setup(cfg.device)
    model.to(info.device)
    decay = _freeze(model, trainable)
    if cfg.grad_checkpointing:
        _switch(model, "set_gradient_checkpointing", True)
    how = mode(cfg, info)
    wrapped = wrap(model, cfg, info)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]  # FSDP: sharded now
    optimizer = _adamw(named, decay, cfg, info.device)
    scheduler = make_scheduler(optimizer, cfg)
    amp = autocast_dtype(cfg, info.device)
    autocast = torch.autocast(info.device.type, dtype=amp or torch.float32, enabled=amp is not None)
    return _Run(cfg, info, how, model, wrapped, [p for _, p in named], optimizer, scheduler, autocast,
                _run_identity(cfg, info.world_size, amp))


def _freeze(model: nn.Module, trainable: Callable[[nn.Module], list[tuple[str, nn.Parameter]]] | None
            ) -> set[str]:
    """Let only the chosen parameters learn; the names of those that get weight decay (matrices)."""
    chosen = trainable(model) if trainable is not None else \
        [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not chosen:
        raise ValueError("nothing to train: no parameter is trainable")
    keep = {id(p) for _, p in chosen}
    for p in model.parameters():
        p.requires_grad_(id(p) in keep)
    return {n for n, p in model.named_parameters() if p.requires_grad and p.ndim >= 2}


def _switch(model: nn.Module, method: str, enabled: bool) -> None:
    """Call `model.<method>(enabled)` (set_gradient_checkpointing, set_compiled), or warn that the
    model has no such switch."""
    switch = getattr(model, method, None)
    if callable(switch):
        switch(enabled)
    else:
        log.warning("%s has no %s(); ignored", type(model).__name__, method)


def _adamw(named: list[tuple[str, nn.Parameter]], decay: set[str], cfg: TrainConfig,
           device: torch.device) -> torch.optim.AdamW:
    """AdamW with weight decay on the parameters named in `decay` only, and each component at
    `lr * cfg.lr_scales[component]` (1 where not named); the groups at the base rate come first."""
    unknown = set(cfg.lr_scales) - {n.split(".", 1)[0] for n, _ in named}
    if unknown:
        raise ValueError(f"lr_scales names {sorted(unknown)}, which have no trainable parameters")
    scales = sorted({cfg.lr_scales.get(n.split(".", 1)[0], 1.0) for n, _ in named}, key=lambda s: s != 1.0)
    groups = []
    for scale in scales:
        mine = [(n, p) for n, p in named if cfg.lr_scales.get(n.split(".", 1)[0], 1.0) == scale]
        groups += [{"params": [p for n, p in mine if n in decay], "weight_decay": cfg.weight_decay,
                    "lr": cfg.lr * scale, "lr_scale": scale},
                   {"params": [p for n, p in mine if n not in decay], "weight_decay": 0.0,
                    "lr": cfg.lr * scale, "lr_scale": scale}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr, betas=cfg.betas,
                             eps=1e-8, foreach=None if device.type == "cuda" else False)


# -- resume or refuse --------------------------------------------------------------------------


def _resume_or_refuse(run: _Run, resume: bool) -> tuple[int, Path | None]:
    """The step to start from and the checkpoint it was loaded from (0 and None for a fresh run).

    Incomplete checkpoints are removed first. Without `resume`, complete ones are refused.
    """
    info, root = run.info, run.ckpt_root
    if info.is_main:
        for p in clean_incomplete(root):
            log.info("removed the incomplete checkpoint %s", p)
    if not resume:
        if broadcast_object(bool(complete_checkpoints(root)) if info.is_main else None):
            raise FileExistsError(f"{root} already holds checkpoints: resume, or use another out_dir")
        return 0, None
    latest = broadcast_object(latest_checkpoint(root) if info.is_main else None)
    if latest is None:
        if info.is_main:
            log.info("no checkpoint in %s: starting from step 0", root)
        return 0, None
    loaded = load_checkpoint(latest, run.wrapped, run.optimizer, run.scheduler)
    _check_same_run(loaded.extra, run.identity, latest)
    if info.is_main:
        log.info("resuming from %s (step %d of %d)", latest, loaded.step, run.cfg.steps)
    return loaded.step, latest


# -- one optimizer step ------------------------------------------------------------------------


@dataclass
class _StepStats:
    """What one optimizer step measured on this process."""

    lr: float
    """The learning rate the step used."""
    loss_sum: torch.Tensor
    """[] float32: the micro-batch losses summed (divide by grad_accum for the mean)."""
    grad_norm: torch.Tensor
    """[] the global gradient norm before clipping (under FSDP a replicated DTensor)."""
    extras: dict[str, float]
    """The task's extra metrics, averaged over micro-batches."""
    seconds: float


def _micro_batches(dataset: Sequence[Any], collate: Callable[[list[Any]], Any], cfg: TrainConfig,
                   info: DistInfo, lengths: Sequence[int] | None) -> Callable[[int, int], Any]:
    """`batch_at(step, micro)`: this process's micro-batch (see Data order), collated, on its device."""
    if cfg.group_by_length and lengths is None:
        raise ValueError("train.group_by_length needs the samples' lengths, and this recipe gives none")
    order = DataOrder(len(dataset), cfg.seed, lengths=lengths, group=cfg.group_by_length,
                      window=cfg.batch_size * info.world_size)

    def batch_at(step: int, micro: int) -> Any:
        ids = order.indices(step, micro, info.rank, cfg.batch_size, cfg.grad_accum, info.world_size)
        return to_device(collate([dataset[i] for i in ids]), info.device)

    return batch_at


def _train_step(run: _Run, task: Task, batch_at: Callable[[int, int], Any], step: int) -> _StepStats:
    """Reseed, accumulate the gradients of grad_accum micro-batches, clip, step AdamW and the schedule."""
    t0 = time.perf_counter()
    cfg = run.cfg
    seed_step(cfg.seed, run.info.rank, step)
    group = run.optimizer.param_groups[0]
    lr = group["lr"] if group.get("lr_scale", 1.0) == 1.0 else group["lr"] / group["lr_scale"]  # the base rate
    loss_sum = torch.zeros((), device=run.info.device)  # []
    extras: dict[str, float] = {}
    for micro in range(cfg.grad_accum):
        loss, task_metrics = _micro_step(run, task, batch_at(step, micro), last=micro == cfg.grad_accum - 1)
        loss_sum += loss
        for k, v in task_metrics.items():
            extras[k] = extras.get(k, 0.0) + float(v) / cfg.grad_accum
    norm = torch.nn.utils.clip_grad_norm_(run.params, cfg.max_grad_norm or math.inf)  # []
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    return _StepStats(lr, loss_sum, norm, extras, time.perf_counter() - t0)


def _micro_step(run: _Run, task: Task, batch: Any, *, last: bool
                ) -> tuple[torch.Tensor, dict[str, float]]:
    """Forward and backward of one micro-batch (gradients are synchronised across processes on the
    `last` only); its loss ([] float32, detached) and the task's extra metrics."""
    if run.how == "fsdp":
        run.wrapped.set_requires_gradient_sync(last)
    with run.wrapped.no_sync() if run.how == "ddp" and not last else nullcontext():
        with run.autocast:
            loss, task_metrics = task.loss(run.wrapped, batch)  # [] mean over the micro-batch
        if loss.ndim != 0:
            raise ValueError(f"Task.loss must return a scalar, got shape {tuple(loss.shape)}")
        (loss / run.cfg.grad_accum).backward()
    return loss.detach().float(), task_metrics


def _due(every: int, done: int, steps: int) -> bool:
    """Whether step `done` (1-based) logs or saves: every `every` steps (0: never) and on the last."""
    return bool(every and done % every == 0) or done == steps


# -- logging -----------------------------------------------------------------------------------


class _StepLog:
    """The metrics lines (written by rank 0), the progress bar and the samples per second."""

    def __init__(self, run: _Run, start: int) -> None:
        cfg, info = run.cfg, run.info
        self.device, self.grad_accum = info.device, cfg.grad_accum
        self.samples_per_step = cfg.batch_size * cfg.grad_accum * info.world_size
        self.metrics = MetricsLog(run.metrics_path, start) if info.is_main else None
        last = self.metrics.last if self.metrics is not None else None
        self.final_loss = float(last["loss"]) if last else math.nan  # the loss last logged, all processes
        self.bar = tqdm(total=cfg.steps, initial=start, desc="train", unit="step", dynamic_ncols=True,
                        disable=not (cfg.progress and info.is_main))
        self.busy, self.busy_steps = 0.0, 0

    def record(self, done: int, stats: _StepStats, *, write: bool) -> None:
        """Count step `done` (1-based); when `write`, average its metrics over processes (every
        process must call) and write them. Raises FloatingPointError on a non-finite loss."""
        self.busy += stats.seconds
        self.busy_steps += 1
        if write:
            self._write(done, stats)
        self.bar.update(1)

    def _write(self, done: int, stats: _StepStats) -> None:
        keys = sorted(stats.extras)
        norm = stats.grad_norm.full_tensor() if hasattr(stats.grad_norm, "full_tensor") else stats.grad_norm
        values = all_reduce_means([stats.loss_sum.item() / self.grad_accum, float(norm),
                                   *(stats.extras[k] for k in keys)], self.device)
        self.final_loss = values[0]
        if not math.isfinite(self.final_loss):
            raise FloatingPointError(f"the loss is {self.final_loss} at step {done}")
        record = {"step": done, "loss": self.final_loss, "lr": stats.lr, "grad_norm": values[1],
                  "samples_per_s": self.busy_steps * self.samples_per_step / max(self.busy, 1e-9),
                  **dict(zip(keys, values[2:]))}
        self.busy, self.busy_steps = 0.0, 0
        if self.metrics is not None:
            self.metrics.log(record)
            self.bar.set_postfix({"loss": f"{self.final_loss:.4f}", "lr": f"{stats.lr:.2e}",
                                  "samples/s": f"{record['samples_per_s']:.1f}"}, refresh=False)

    def close(self) -> None:
        self.bar.close()
        if self.metrics is not None:
            self.metrics.close()


def _plot_curves(run: _Run) -> None:
    """curves.png from metrics.jsonl (rank 0), then wait for every process."""
    if run.info.is_main:
        plot_curves(run.metrics_path, run.out / CURVES)
    barrier()


# -- saving ------------------------------------------------------------------------------------


def _save(run: _Run, done: int, on_checkpoint: Callable[[nn.Module, Path, dict[str, torch.Tensor]], None] | None
          ) -> Path:
    """Checkpoint step `done` (every process calls), run `on_checkpoint` on rank 0, wait for all."""
    path = save_checkpoint(run.ckpt_root, done, run.wrapped, run.optimizer, run.scheduler, run.identity,
                           keep_last=run.cfg.keep_last)
    if on_checkpoint is not None:
        state = full_state_dict(run.model) if run.how == "fsdp" or run.info.is_main else None
        if run.info.is_main:
            on_checkpoint(run.model, path, state)
    barrier()
    return path


# -- helpers -----------------------------------------------------------------------------------


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


@contextmanager
def step_numerics(cfg: TrainConfig, device: torch.device) -> Iterator[None]:
    """The autocast and attention kernels under which a step of a run with `cfg` computes on `device`,
    for code that must give what a step would (the SFT feature cache)."""
    amp = autocast_dtype(cfg, device)
    with attention_backend(device), torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
        yield


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
    if cfg.lr_scales:  # only when set, so that checkpoints written before it existed still resume
        trajectory["lr_scales"] = dict(sorted(cfg.lr_scales.items()))
    if cfg.group_by_length:  # likewise
        trajectory["group_by_length"] = cfg.group_by_length
    if cfg.compile:  # likewise: the compiled kernels sum in another order
        trajectory["compile"] = True
    trajectory["global_micro_batch"] = cfg.batch_size * world_size
    trajectory["autocast"] = str(amp) if amp is not None else "fp32"
    digest = hashlib.sha256(json.dumps(trajectory, sort_keys=True).encode()).hexdigest()
    return {"config_hash": digest, "trajectory": trajectory, "world_size": world_size,
            "config": config_to_dict(cfg)}


def _check_same_run(saved: dict[str, Any], now: dict[str, Any], path: Path) -> None:
    if saved.get("config_hash") == now["config_hash"]:
        return
    old, new = saved.get("trajectory", {}), now["trajectory"]
    diffs = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in dict.fromkeys([*new, *old])
             if old.get(k) != new.get(k)]
    raise ValueError(f"{path}: cannot resume exactly, the run changed ({'; '.join(diffs)}); "
                     "start a new out_dir instead")
