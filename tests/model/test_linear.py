"""`model.linear`: the weight-major bf16 path gives F.linear's result for any row count and shape,
and stays out of the way of autograd."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from omnivision.model.linear import FEW_ROWS, Linear, linear


@pytest.mark.parametrize("shape", [(1, 96), (1, 1, 96), (4, 96), (2, 3, 96), (FEW_ROWS + 5, 96)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_same_result_as_f_linear(shape, with_bias):
    torch.manual_seed(0)
    w = torch.randn(80, 96).bfloat16()
    b = torch.randn(80).bfloat16() if with_bias else None
    x = torch.randn(*shape).bfloat16()
    got = linear(x, w, b)
    want = F.linear(x.float(), w.float(), None if b is None else b.float())
    assert got.shape == (*shape[:-1], 80) and got.dtype == torch.bfloat16 and got.is_contiguous()
    # bf16 output rounding (2^-8 relative) on values up to ~30
    assert torch.allclose(got.float(), want, atol=0.25, rtol=2 ** -7)


def test_fp32_is_exactly_f_linear_and_gradients_flow():
    layer = Linear(16, 8)
    x = torch.randn(3, 16, requires_grad=True)
    assert torch.equal(layer(x), F.linear(x, layer.weight, layer.bias))
    layer_bf16 = Linear(16, 8).bfloat16()
    xb = torch.randn(2, 16, dtype=torch.bfloat16, requires_grad=True)
    layer_bf16(xb).sum().backward()
    assert xb.grad is not None and layer_bf16.weight.grad is not None
