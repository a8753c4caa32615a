"""Model wrapping for several processes: DDP or FSDP, and gathering a full state dict.

Wrapping: DDP replicates the model and averages gradients; FSDP (`distributed="fsdp"`, for a
language model too big to replicate) uses FSDP2's `fully_shard`, once per decoder layer of
`model.language.model.layers` and once on the root, so each process holds 1/world of the
parameters, gradients and optimizer state. FSDP2 works on CPU with gloo as well (this torch, 2.13),
which is how the tests check it against a single process. Frozen parameters get no gradient and no
optimizer state in either mode. Joining the process group is `omnivision.process_group`.

Knows nothing of data, losses or checkpoints. Reference: PyTorch's DDP and FSDP2 tutorials
(`torch.distributed.fsdp.fully_shard`).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel

from omnivision.process_group import DistInfo
from omnivision.train.config import TrainConfig


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
