"""filled_from: every quantized layer built from a float `nn.Linear` holds its quantized tensors, the
exact bias (or none), and the float layer's dtype."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from omnivision.quantize import Int4Linear, Int8GroupLinear, Int8Linear
from omnivision.quantize.from_linear import filled_from

BUILDERS = {
    "int8": Int8Linear.from_linear,
    "int8-g32": Int8GroupLinear.from_linear,
    "int4": lambda linear: Int4Linear.from_linear(linear, group_size=32),
}


@pytest.mark.parametrize("scheme", BUILDERS)
@pytest.mark.parametrize("bias", [True, False])
def test_layers_keep_bias_and_approximate_the_weight(scheme, bias):
    torch.manual_seed(0)
    linear = nn.Linear(64, 8, bias=bias)
    layer = BUILDERS[scheme](linear)
    if bias:
        assert torch.equal(layer.bias, linear.bias.detach())
    else:
        assert layer.bias is None
    error = (layer.dequantize() - linear.weight.detach()).abs().max()
    assert 0 < error < 0.1 * linear.weight.abs().max()  # quantized (not a copy), and close


def test_filled_from_copies_named_buffers():
    layer = Int8Linear(4, 2, True, torch.float32)
    linear = nn.Linear(4, 2)
    q = torch.tensor([[1, -2, 3, -4], [5, 6, -7, 8]], dtype=torch.int8)
    scales = torch.tensor([0.5, 0.25])
    out = filled_from(layer, linear, qweight=q, scales=scales)
    assert out is layer
    assert torch.equal(layer.qweight, q) and torch.equal(layer.scales, scales.to(layer.scales.dtype))
    assert torch.equal(layer.bias, linear.bias.detach())
