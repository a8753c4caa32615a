"""Int4Linear: group-wise round-trip bound, nibble packing, both few-row kernels' forward (the
project's and torch's) and the choice between them, the table the project's kernel reads, fallbacks."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from omnivision.kernels.cpp_build import q4_linear
from omnivision.quantize import Int4Linear, int4_few_rows, many_rows
from omnivision.quantize.many_rows import DEQUANTISED
from omnivision.quantize.int4_few_rows import Q4_KERNEL, Q4_MAX_ROWS, TORCH_KERNEL, q4_product, q4_table
from omnivision.quantize.int4_linear import ROW_BLOCKS, fitting_group_size, packed_product, quantize_int4


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
    assert layer._kernel(x.to(dtype), 6) != ROW_BLOCKS
    assert out.dtype == dtype and out.shape == (3, 2, 64)
    assert torch.allclose(out.float(), ref, rtol=tol, atol=tol * ref.abs().max().item())


@pytest.mark.parametrize("path", [Q4_KERNEL, TORCH_KERNEL])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("bias", [True, False])
def test_one_row_product_is_what_forward_computes(path, dtype, bias, monkeypatch):
    """The pure function the compiled decode step traces (`model.one_row_step`) is the forward's
    product, on whichever kernel is chosen; where the forward dequantises there is none."""
    monkeypatch.setattr(int4_few_rows, "few_row_kernel", lambda n, k, g, rows: path)
    layer = Int4Linear.from_linear(nn.Linear(128, 64, bias=bias), 32)
    x = torch.randn(1, 128, dtype=dtype)
    function, args = layer.one_row_product()
    assert function.func is (q4_product if path == Q4_KERNEL else packed_product)
    got = function(x, *args)
    assert got.dtype == dtype and got.shape == (1, 64)
    assert torch.equal(got, layer(x))
    assert Int4Linear.from_linear(nn.Linear(128, 96), 32).one_row_product() is None


@pytest.mark.parametrize("path", [Q4_KERNEL, TORCH_KERNEL])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [1, 3, Q4_MAX_ROWS, Q4_MAX_ROWS + 1])
def test_each_few_row_kernel_gives_the_dequantised_product(path, dtype, rows, monkeypatch):
    assert q4_linear() is not None  # this machine builds the project's kernels
    monkeypatch.setattr(int4_few_rows, "few_row_kernel", lambda n, k, g, r: path)
    torch.manual_seed(0)
    linear = nn.Linear(256, 128)
    layer = Int4Linear.from_linear(linear, 64)
    x = torch.randn(rows, 256)
    want = F.linear(x, layer.dequantize(), linear.bias.detach())
    got = layer(x.to(dtype)[None])  # [1, rows, 128]
    assert got.dtype == dtype and got.shape == (1, rows, 128)
    # both kernels round the activations (to bf16, or to int8 per 32-block: ~1/254 of a block's largest)
    tol = 2e-2
    assert torch.allclose(got[0].float(), want, rtol=tol, atol=tol * want.abs().max().item())
    if path == Q4_KERNEL and rows <= Q4_MAX_ROWS:  # the project's kernel did run: its int8 rounding shows
        torch_kernel = packed_product(x.to(dtype), *layer._kernel_tensors(), linear.bias.detach(), group_size=64)
        assert not torch.equal(got[0], torch_kernel)
        assert torch.equal(got[0], q4_product(x.to(dtype), layer.qweight, layer._q4_table(), layer.bias, group_size=64))


def test_the_table_holds_each_blocks_scales_then_zeros():
    scales, zeros = torch.rand(128, 3), torch.rand(128, 3)
    table = q4_table(scales, zeros)
    assert table.shape == (2, 3, 2, 64) and table.is_contiguous()
    for block in range(2):
        for group in range(3):
            assert torch.equal(table[block, group, 0], scales[64 * block:64 * (block + 1), group])
            assert torch.equal(table[block, group, 1], zeros[64 * block:64 * (block + 1), group])
    assert q4_table(scales.bfloat16(), zeros).dtype == torch.bfloat16  # a model cast to bf16 keeps its scales' dtype


def test_the_choice_of_few_row_kernel(monkeypatch):
    monkeypatch.setattr(int4_few_rows, "_chosen", {})
    assert int4_few_rows.few_row_kernel(128, 256, 64, 1) == Q4_KERNEL  # tests run with timing off: the default
    monkeypatch.setattr(int4_few_rows, "_chosen", {})
    monkeypatch.setattr(int4_few_rows, "q4_linear", lambda: None)  # no compiler, or the build failed
    assert int4_few_rows.few_row_kernel(128, 256, 64, 1) == TORCH_KERNEL


def test_timing_picks_the_faster_kernel_and_keeps_it(monkeypatch, tmp_path):
    from omnivision.kernels.choices import KernelChoices

    choices = KernelChoices(tmp_path / "choices.json", repeats=3)
    monkeypatch.setattr(int4_few_rows, "CHOICES", choices)
    monkeypatch.setattr(int4_few_rows, "_chosen", {})
    monkeypatch.setenv("OMNIVISION_KERNEL_TUNING", "on")
    chosen = int4_few_rows.few_row_kernel(128, 256, 64, 3)
    (key, medians), = choices.timings.items()
    assert key.endswith("int4-few-rows/128x256/g64/rows=8") and set(medians) == {Q4_KERNEL, TORCH_KERNEL}
    fastest = min(medians, key=medians.get)
    assert chosen == fastest or medians[chosen] <= medians[fastest] * (1 + choices.noise)
    assert int4_few_rows.few_row_kernel(128, 256, 64, 5) == chosen  # the same bucket, not timed again
    assert len(choices.timings) == 1


@pytest.mark.parametrize("out_features", [10, 96])
def test_outputs_not_divisible_by_64_are_dequantised(out_features, monkeypatch):
    """The row layout: no kernel reads it; the C++ loops dequantise it, torch operators without them."""
    linear = nn.Linear(64, out_features, bias=False)
    layer = Int4Linear.from_linear(linear, 32, symmetric=True)
    x = torch.randn(4, 64)
    assert layer._kernel(x, 4) == DEQUANTISED
    assert torch.allclose(layer(x), x @ layer.dequantize().t(), atol=1e-5)
    monkeypatch.setattr(many_rows, "dequantised_products", lambda: None)
    assert layer._kernel(x, 4) == ROW_BLOCKS
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
    fresh(x[:1])  # and the project's kernel's table
    fresh.load_state_dict(sd)
    assert torch.equal(fresh(x), layer(x))
    assert torch.equal(fresh(x[:1]), layer(x[:1]))
