"""Many-row products of quantized layers, dequantised slice by slice, equal the whole-weight product."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from omnivision.quantize import Int4Linear, Int8Linear
from omnivision.quantize.row_blocks import BLOCK_ROWS


@pytest.mark.parametrize("make", [lambda lin: Int8Linear.from_linear(lin),
                                  lambda lin: Int4Linear.from_linear(lin, 32)],
                         ids=["int8", "int4"])
@pytest.mark.parametrize("out_features", [BLOCK_ROWS * 2 + 64, BLOCK_ROWS + 100])  # blocked / rows layout
def test_sliced_product_matches_the_dequantised_weight(make, out_features):
    torch.manual_seed(0)
    linear = nn.Linear(64, out_features)
    layer = make(linear)
    x = torch.randn(3, 100, 64)  # 300 rows: beyond the kernels' row limit
    want = x @ layer.dequantize().t() + linear.bias.detach()
    with torch.no_grad():
        got = layer(x)
    assert got.shape == (3, 100, out_features)
    assert torch.allclose(got, want, atol=1e-4, rtol=1e-4)
