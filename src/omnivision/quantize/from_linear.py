"""`filled_from`: the shared last step of every quantized layer's `from_linear`.

Each layer class quantizes a float `nn.Linear`'s weight its own way; what follows is the same for
all of them: copy the quantized tensors into the new layer's buffers of the same names, copy the
bias unchanged, and put the layer on the float layer's device.
"""

from __future__ import annotations

from typing import TypeVar

import torch
from torch import nn

Layer = TypeVar("Layer", bound=nn.Module)


def filled_from(layer: Layer, linear: nn.Linear, **tensors: torch.Tensor) -> Layer:
    """`layer` with each named buffer set to its tensor and `linear`'s bias, on `linear`'s device."""
    for name, value in tensors.items():
        getattr(layer, name).copy_(value)
    if linear.bias is not None:
        layer.bias.data.copy_(linear.bias.detach())
    return layer.to(linear.weight.device)
