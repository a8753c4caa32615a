"""Processes and devices: `torchrun` environment, process group, DDP / FSDP wrapping, small collectives.

One process per device, started by `torchrun` (`python -m torch.distributed.run`), which sets RANK,
WORLD_SIZE and LOCAL_RANK (and MASTER_ADDR/PORT; several machines: `--nnodes`, `--rdzv-endpoint`).
The backend is NCCL on CUDA and gloo on CPU. Without those variables (or with WORLD_SIZE=1) all of
this is a no-op and training runs in the one process.

Wrapping: DDP replicates the model and averages gradients; FSDP (`distributed="fsdp"`, for a
language model too big to replicate) uses FSDP2's `fully_shard`, once per decoder layer of
`model.language.model.layers` and once on the root, so each process holds 1/world of the
parameters, gradients and optimizer state. FSDP2 works on CPU with gloo as well (this torch, 2.13),
which is how the tests check it against a single process. Frozen parameters get no gradient and no
optimizer state in either mode.

Knows nothing of data, losses or checkpoints. Reference: PyTorch's DDP and FSDP2 tutorials
(`torch.distributed.fsdp.fully_shard`).
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel

from omnivision.train.config import TrainConfig


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the run."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device: str = "auto") -> DistInfo:
    """Join the process group torchrun describes (idempotent); a single process does nothing.

    `device`: auto | cpu | cuda (`TrainConfig.device`); under torchrun CUDA means cuda:LOCAL_RANK.
    """
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for but CUDA is not available")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_available() and dist.is_initialized():
        world = dist.get_world_size()
    if world <= 1:
        dev = torch.device("cuda", torch.cuda.current_device()) if use_cuda else torch.device("cpu")
        return DistInfo(0, 1, 0, dev)
    if use_cuda:
        torch.cuda.set_device(local_rank)
    dev = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=datetime.timedelta(minutes=30))
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, dev)


def mode(cfg: TrainConfig, info: DistInfo) -> str:
    """The wrapping actually used: none | ddp | fsdp."""
    if info.world_size == 1:
        return "none"
    if cfg.distributed == "none":
        raise ValueError(f"config field 'distributed': 'none' with {info.world_size} processes would "
                         f"train {info.world_size} unrelated models; use auto, ddp or fsdp")
    return "ddp" if cfg.distributed == "auto" else cfg.distributed


def wrap(model: nn.Module, cfg: TrainConfig, info: DistInfo) -> nn.Module:
    """`model` (already on `info.device`, frozen parameters already marked) wrapped for `cfg.distributed`."""
    how = mode(cfg, info)
    if how == "none":
        return model
    if how == "ddp":
        ids = [info.device.index] if info.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=cfg.ddp_find_unused)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    layers = getattr(getattr(getattr(model, "language", None), "model", None), "layers", None)
    if layers is None:
        raise ValueError("distributed='fsdp' shards model.language.model.layers, which this model lacks")
    # An explicit mesh: FSDP2's default one is on CUDA whenever CUDA exists, even for a CPU run.
    mesh = init_device_mesh(info.device.type, (info.world_size,))
    for layer in layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def unwrap(model: nn.Module) -> nn.Module:
    """The user's module inside a DDP wrapper (FSDP2 shards in place and has no wrapper)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The unwrapped model's complete state dict. Under FSDP the shards are gathered onto rank 0's
    CPU (the other ranks get an empty dict) and every process must call it, being a collective;
    otherwise `model.state_dict()`."""
    if any(isinstance(p, DTensor) for p in model.parameters()):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return model.state_dict()


def is_main() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_means(values: list[float], device: torch.device | None = None) -> list[float]:
    """Element-wise means over all processes (one collective; unchanged in a single process)."""
    if not (dist.is_available() and dist.is_initialized()) or not values:
        return list(values)
    if device is None:
        device = torch.device("cuda", torch.cuda.current_device()) \
            if dist.get_backend() == "nccl" else torch.device("cpu")
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return (t / dist.get_world_size()).tolist()


def all_reduce_mean(value: float) -> float:
    """The mean of `value` over all processes."""
    return all_reduce_means([value])[0]


def broadcast_object(obj: object) -> object:
    """Rank 0's `obj` on every process (picklable objects; our own small values only)."""
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def cleanup() -> None:
    """Leave the process group (no-op in a single process).

    Waits for every process first: a gloo peer that tears down while another is still finishing
    can abort the latter at exit ("terminate called without an active exception").
    """
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
