"""Int4Linear: group-wise round-trip bound, nibble packing, packed-kernel forward, fallbacks."""

import pytest
import torch
from torch import nn

from omnivision.quantize import Int4Linear
from omnivision.quantize.int4_linear import fitting_group_size, quantize_int4


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("group", [32, 64])
def test_round_trip_within_half_a_step(group, symmetric):
    w = torch.randn(16, 128) * 0.05 + 0.02
    q, scales, zeros = quantize_int4(w, group, symmetric)
    assert q.min() >= 0 and q.max() <= 15
    dq = (q.float().view(16, -1, group) - 8) * scales[..., None] + zeros[..., None]
    err = (w.view(16, -1, group) - dq).abs()
    # every element of a group is off by at most half of that group's step
    assert (err <= scales[..., None] / 2 * (1 + 1e-5) + 1e-7).all()
    if symmetric:
        assert (zeros == 0).all() and q.min() >= 1  # codes 1..15 around 8
    else:
        # asymmetric: step = (max - min) / 15, so each group's min and max are exact codes 0 and 15
        assert (q.view(16, -1, group).amin(-1) == 0).all() and (q.view(16, -1, group).amax(-1) == 15).all()


@pytest.mark.parametrize("dtype, tol", [(torch.bfloat16, 2e-2), (torch.float32, 2e-2)])
@pytest.mark.parametrize("in_features, group", [(128, 32), (96, 32), (256, 128)])
def test_kernel_forward_matches_dequantised_matmul(dtype, tol, in_features, group):
    linear = nn.Linear(in_features, 64)  # 64 outputs: the blocked layout, so the packed kernel runs
    layer = Int4Linear.from_linear(linear, group)
    x = torch.randn(3, 2, in_features)
    # fp32 activations also run the kernel in bf16 (see the module docstring): bf16 tolerance for both
    ref = x @ layer.dequantize().t() + linear.bias.detach()
    out = layer(x.to(dtype))
    assert layer._use_kernel(x.to(dtype))
    assert out.dtype == dtype and out.shape == (3, 2, 64)
    assert torch.allclose(out.float(), ref, rtol=tol, atol=tol * ref.abs().max().item())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("bias", [True, False])
def test_one_row_product_is_what_forward_computes(dtype, bias):
    """The pure function the compiled decode step traces (`model.one_row_step`) is the forward's
    product; where the forward dequantises there is none."""
    layer = Int4Linear.from_linear(nn.Linear(128, 64, bias=bias), 32)
    x = torch.randn(1, 128, dtype=dtype)
    function, args = layer.one_row_product()
    got = function(x, *args)
    assert got.dtype == dtype and got.shape == (1, 64)
    torch.testing.assert_close(got, layer(x), atol=1e-2, rtol=1e-2)
    assert Int4Linear.from_linear(nn.Linear(128, 96), 32).one_row_product() is None


@pytest.mark.parametrize("out_features", [10, 96])
def test_outputs_not_divisible_by_64_use_the_fallback(out_features):
    linear = nn.Linear(64, out_features, bias=False)
    layer = Int4Linear.from_linear(linear, 32, symmetric=True)
    x = torch.randn(4, 64)
    assert not layer._use_kernel(x)
    assert torch.allclose(layer(x), x @ layer.dequantize().t(), atol=1e-5)


def test_group_size_must_divide_in_features():
    with pytest.raises(ValueError, match="not divisible by the int4 group size 64"):
        Int4Linear.from_linear(nn.Linear(96, 16), 64)
    assert fitting_group_size(96, 128) == 32  # 96 = 3 * 32: the largest allowed group that divides
    assert fitting_group_size(512, 128) == 128
    with pytest.raises(ValueError, match="48 is not"):
        fitting_group_size(48, 128)


def test_state_dict_holds_uint8_and_reloads():
    layer = Int4Linear.from_linear(nn.Linear(128, 64), 64)  # 64 rows: the kernel runs
    sd = layer.state_dict()
    assert sd["qweight"].dtype == torch.uint8 and sd["qweight"].shape == (64, 64)
    assert sd["scales"].shape == sd["zeros"].shape == (64, 2)
    fresh = Int4Linear(128, 64, 64)
    x = torch.randn(2, 128)
    fresh(x)  # caches kernel scales for the placeholder weights; loading must invalidate that cache
    fresh.load_state_dict(sd)
    assert torch.equal(fresh(x), layer(x))
