"""This process's place in a `torchrun` run: joining and leaving the process group, and small
collectives (barrier, means, broadcast). Training and evaluation both use it.

One process per device, started by `torchrun` (`python -m torch.distributed.run`), which sets RANK,
WORLD_SIZE and LOCAL_RANK (and MASTER_ADDR/PORT; several machines: `--nnodes`, `--rdzv-endpoint`).
The backend is NCCL on CUDA and gloo on CPU. Without those variables (or with WORLD_SIZE=1) all of
this is a no-op and the work runs in the one process. Model wrapping (DDP, FSDP) is training's
business (`train/distributed.py`).
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


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
