"""Training checkpoints: written atomically, pickle-free, restored exactly.

Layout of `dir_root/step_XXXXXXXX/` (the step count, zero-padded):

- `trainable.safetensors`: the trainable parameters (requires_grad), by name. Frozen parameters and
  buffers are NOT saved: the run rebuilds them the way it built them the first time (same base
  checkpoint or same seeded init), which keeps a checkpoint of a LoRA or projector-only run small.
- `optimizer.safetensors`: every optimizer state tensor, as `optim/<parameter name>/<key>`.
- `state.json`: the step, the optimizer's param groups and non-tensor state, the scheduler's state,
  the torch (CPU and CUDA), Python and NumPy random states, and the caller's `extra` (the loop puts
  the config hash there). Floats survive JSON exactly (shortest repr round-trips).

Nothing is unpickled on load, so a checkpoint from elsewhere cannot run code.

Atomicity: files are written into `dir_root/.tmp-step_XXXXXXXX-<pid>/`, each file fsynced, then the
directory, then it is renamed to `step_XXXXXXXX` and `dir_root` fsynced. A crash leaves at most a
`.tmp-*` directory, which `latest_checkpoint` ignores and `clean_incomplete` removes; a `step_*`
directory is always complete. After a save, all but the newest `keep_last` checkpoints are deleted.

Under torchrun, `save_checkpoint` and `load_checkpoint` are collective (call them on every process):
states are gathered to / broadcast from rank 0 with `torch.distributed.checkpoint.state_dict`, which
also handles FSDP shards, and only rank 0 touches the files. Knows nothing of data, losses or configs.
"""

from __future__ import annotations

import base64
import json
import os
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch import nn
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_state_dict,
                                                     set_model_state_dict, set_optimizer_state_dict)

from omnivision.process_group import barrier, broadcast_object, is_main
from omnivision.train.distributed import unwrap
from omnivision.weights.errors import CheckpointError

TRAINABLE, OPTIMIZER, STATE = "trainable.safetensors", "optimizer.safetensors", "state.json"
FILES = (TRAINABLE, OPTIMIZER, STATE)
FORMAT, FORMAT_VERSION = "omnivision-train-checkpoint", 1
TMP_PREFIX = ".tmp-"
CRASH_ENV = "OMNIVISION_TEST_CRASH_IN_CHECKPOINT"
"""Test hook: when it equals the step being saved, the process exits half-way through the write."""

_STEP_DIR = re.compile(r"step_(\d{8})")


@dataclass
class LoadedCheckpoint:
    step: int
    extra: dict[str, Any]


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


def save_checkpoint(dir_root: str | os.PathLike, step: int, model: nn.Module,
                    optimizer: torch.optim.Optimizer, scheduler: Any, extra: dict[str, Any], *,
                    keep_last: int = 2) -> Path:
    """Write `dir_root/step_{step:08d}/` atomically and prune to `keep_last`; returns its path."""
    root = Path(dir_root)
    model_sd, optim_sd = _gather(model, optimizer)
    path = root / step_dir_name(step)
    if is_main():
        _write(root, step, model_sd, optim_sd, scheduler, extra)
        prune(root, keep_last)
    barrier()
    return path


def load_checkpoint(path: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: Any) -> LoadedCheckpoint:
    """Restore parameters, optimizer, scheduler and random states from a checkpoint directory."""
    path = Path(path)
    meta: dict[str, Any] | None = None
    model_sd: dict[str, torch.Tensor] = {}
    optim_sd: dict[str, Any] = {}
    if is_main():
        meta = _read_meta(path)
        model_sd = load_file(str(path / TRAINABLE))
        names = set(_trainable_names(model))
        if set(model_sd) != names:
            raise CheckpointError(path / TRAINABLE, "trainable parameters differ from the model's: "
                                  f"missing {sorted(names - set(model_sd))[:3]}, "
                                  f"unexpected {sorted(set(model_sd) - names)[:3]}")
        optim_sd = _optimizer_state(load_file(str(path / OPTIMIZER)), meta["optimizer"])
    meta = broadcast_object(meta)
    distributed = dist.is_available() and dist.is_initialized()
    options = StateDictOptions(full_state_dict=True, ignore_frozen_params=True, strict=False,
                               broadcast_from_rank0=distributed)
    # Separately, not with set_state_dict: that one skips the model on ranks whose dict is empty,
    # which with broadcast_from_rank0 is every rank but 0 (torch 2.13).
    set_optimizer_state_dict(unwrap(model), optimizer, optim_sd, options=options)
    set_model_state_dict(unwrap(model), model_sd, options=options)
    if scheduler is not None and meta.get("scheduler") is not None:
        scheduler.load_state_dict(meta["scheduler"])
    _set_rng(meta["rng"])
    return LoadedCheckpoint(int(meta["step"]), meta.get("extra", {}))


def latest_checkpoint(dir_root: str | os.PathLike) -> Path | None:
    """The complete checkpoint with the highest step under `dir_root` (temporary dirs ignored)."""
    found = complete_checkpoints(dir_root)
    return found[-1] if found else None


def complete_checkpoints(dir_root: str | os.PathLike) -> list[Path]:
    """`step_*` directories holding every file, oldest first."""
    root = Path(dir_root)
    if not root.is_dir():
        return []
    dirs = [p for p in root.iterdir() if p.is_dir() and _STEP_DIR.fullmatch(p.name)
            and all((p / f).is_file() for f in FILES)]
    return sorted(dirs, key=lambda p: int(p.name[5:]))


def clean_incomplete(dir_root: str | os.PathLike) -> list[Path]:
    """Delete the `.tmp-*` leftovers of interrupted saves; returns what was removed."""
    root = Path(dir_root)
    removed = [p for p in root.glob(TMP_PREFIX + "*")] if root.is_dir() else []
    for p in removed:
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    return removed


def prune(dir_root: str | os.PathLike, keep_last: int) -> None:
    """Delete all but the newest `keep_last` complete checkpoints."""
    for old in complete_checkpoints(dir_root)[:-keep_last]:
        shutil.rmtree(old)


# -- writing --------------------------------------------------------------------------------------


def _trainable_names(model: nn.Module) -> list[str]:
    return [n for n, p in unwrap(model).named_parameters() if p.requires_grad]


def _gather(model: nn.Module, optimizer: torch.optim.Optimizer
            ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Full (unsharded) trainable parameters and optimizer state; empty except on rank 0."""
    distributed = dist.is_available() and dist.is_initialized()
    options = StateDictOptions(full_state_dict=True, cpu_offload=distributed, ignore_frozen_params=True)
    model_sd, optim_sd = get_state_dict(unwrap(model), optimizer, options=options)
    names = set(_trainable_names(model))
    model_sd = {k: v for k, v in model_sd.items() if k in names}
    return model_sd, optim_sd


def _cpu(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to("cpu", copy=True).contiguous()


def _write(root: Path, step: int, model_sd: dict[str, torch.Tensor], optim_sd: dict[str, Any],
           scheduler: Any, extra: dict[str, Any]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    clean_incomplete(root)
    name = step_dir_name(step)
    tmp = root / f"{TMP_PREFIX}{name}-{os.getpid()}"
    tmp.mkdir()
    save_file({k: _cpu(v) for k, v in model_sd.items()}, str(tmp / TRAINABLE),
              metadata={"format": "pt", "step": str(step)})
    _fsync(tmp / TRAINABLE)
    if os.environ.get(CRASH_ENV) == str(step):
        os._exit(1)  # test hook: die with a half-written checkpoint directory
    tensors, scalars = {}, {}
    for fqn, entries in optim_sd.get("state", {}).items():
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim/{fqn}/{key}"] = _cpu(value)
            else:
                scalars.setdefault(str(fqn), {})[key] = value
    save_file(tensors, str(tmp / OPTIMIZER), metadata={"format": "pt", "step": str(step)})
    _fsync(tmp / OPTIMIZER)
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "step": step,
            "optimizer": {"param_groups": _plain(optim_sd.get("param_groups", [])), "scalars": scalars},
            "scheduler": _plain(scheduler.state_dict()) if scheduler is not None else None,
            "rng": _get_rng(), "extra": extra}
    with open(tmp / STATE, "w", encoding="utf-8") as fh:
        json.dump(meta, fh, indent=1)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    umask = os.umask(0)
    os.umask(umask)
    for f in (tmp, *tmp.iterdir()):  # safetensors writes owner-only files; use the usual modes
        os.chmod(f, (0o777 if f.is_dir() else 0o666) & ~umask)
    _fsync(tmp)
    final = root / name
    if final.exists():  # e.g. re-saving a step after a manual rollback: swap, then delete the old one
        old = root / f"{TMP_PREFIX}old-{name}-{os.getpid()}"
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old)
    else:
        tmp.rename(final)
    _fsync(root)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _plain(value: Any) -> Any:
    """JSON-ready copy (tuples become lists); fails loudly on anything else."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot store {type(value).__name__} in {STATE}: {value!r}")


def _get_rng() -> dict[str, Any]:
    def b64(t: torch.Tensor) -> str:
        return base64.b64encode(t.numpy().tobytes()).decode("ascii")
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    return {"torch": b64(torch.get_rng_state()),
            "cuda": [b64(s) for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
            "python": [version, list(internal), gauss],
            "numpy": [kind, keys.tolist(), pos, has_gauss, cached]}


# -- reading --------------------------------------------------------------------------------------


def _read_meta(path: Path) -> dict[str, Any]:
    missing = [f for f in FILES if not (path / f).is_file()]
    if missing:
        raise CheckpointError(path, f"incomplete checkpoint, missing {missing}")
    try:
        meta = json.loads((path / STATE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(path / STATE, f"cannot read: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(path / STATE, f"not a training checkpoint (no format {FORMAT!r})")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(path / STATE, f"unsupported format_version {meta.get('format_version')!r}")
    return meta


def _optimizer_state(tensors: dict[str, torch.Tensor], saved: dict[str, Any]) -> dict[str, Any]:
    state: dict[str, dict[str, Any]] = {}
    for key, t in tensors.items():
        fqn, _, name = key.removeprefix("optim/").rpartition("/")
        state.setdefault(fqn, {})[name] = t
    for fqn, entries in saved["scalars"].items():
        state.setdefault(fqn, {}).update(entries)
    groups = [{k: (tuple(v) if isinstance(v, list) and k != "params" else v) for k, v in g.items()}
              for g in saved["param_groups"]]
    return {"state": state, "param_groups": groups}


def _set_rng(rng: dict[str, Any]) -> None:
    def tensor(s: str) -> torch.Tensor:
        return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8)
    torch.set_rng_state(tensor(rng["torch"]))
    if torch.cuda.is_available() and len(rng["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([tensor(s) for s in rng["cuda"]])
    version, internal, gauss = rng["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = rng["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
