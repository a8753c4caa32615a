"""The many-row products of `kernels/dequantized_products.cpp`: the weights it dequantises against
their definition, its products against F.linear of those weights (whole and cut into slices), and
its refusals of malformed arguments."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from omnivision.kernels.cpp_build import ops
from omnivision.quantize import Int4Linear, Int8GroupLinear, Int8Linear
from omnivision.quantize.int4_packing import unpack_codes


@pytest.fixture(scope="module")
def kernels():
    built = ops()
    assert built is not None  # this machine builds the project's kernels
    return built


def _int4(n: int, k: int, group: int, seed: int = 0) -> Int4Linear:
    torch.manual_seed(seed)
    return Int4Linear.from_linear(nn.Linear(k, n), group)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("n, k, group", [(64, 64, 32), (192, 256, 128), (128, 512, 256), (40, 96, 32), (100, 256, 128)])
def test_int4_weights_are_their_definition(kernels, dtype, n, k, group):
    layer = _int4(n, k, group)
    codes = unpack_codes(layer.qweight, n).double().view(n, -1, group)  # [N, K/G, G], from the layout
    scales, zeros = layer.scales.double()[..., None], layer.zeros.double()[..., None]
    want = ((codes - 8) * scales + zeros).view(n, k)
    got = kernels.q4_dequantize(layer.qweight, layer.scales, layer.zeros, group, torch.empty(0, dtype=dtype))
    assert got.dtype == dtype and got.shape == (n, k)
    # one rounding to the dtype, plus the fp32 sum q * s + (z - 8 s): a few fp32 ulps of its terms
    terms = (codes * scales).abs() + (zeros - 8 * scales).abs()
    bound = torch.finfo(dtype).eps / 2 * want.abs() + 4 * torch.finfo(torch.float32).eps * terms.view(n, k)
    assert ((got.double() - want).abs() <= bound).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_int8_weights_are_their_definition(kernels, dtype):
    torch.manual_seed(1)
    grouped = Int8GroupLinear.from_linear(nn.Linear(96, 40))  # fp16 scales per 32 inputs
    per_row = Int8Linear.from_linear(nn.Linear(72, 24))  # fp32 scales per row: one column
    like = torch.empty(0, dtype=dtype)
    assert torch.equal(kernels.q8_dequantize(grouped.qweight, grouped.scales, like), grouped.dequantize(dtype))
    assert torch.equal(kernels.q8_dequantize(per_row.qweight, per_row.scales[:, None], like), per_row.dequantize(dtype))


def _close(got: torch.Tensor, want: torch.Tensor) -> None:
    tol = 1e-5 if got.dtype == torch.float32 else 2e-2  # fp32 summation order; bf16 products and result
    assert got.shape == want.shape and got.dtype == want.dtype
    torch.testing.assert_close(got.float(), want.float(), rtol=tol, atol=tol * want.float().abs().max().item())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [1, 33, 200])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("n", [192, 100])  # the blocked layout, the row layout
def test_int4_product_is_the_float_product_of_its_weights(kernels, dtype, rows, bias, n):
    layer = _int4(n, 256, 64, seed=rows)
    x = torch.randn(rows, 256, dtype=dtype)
    b = torch.randn(n, dtype=dtype) if bias else None
    got = kernels.q4_dequantized_linear(x, layer.qweight, layer.scales, layer.zeros, 64, b)
    _close(got, F.linear(x, layer.dequantize(dtype), b))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bias", [True, False])
def test_int8_products_are_the_float_products_of_their_weights(kernels, dtype, bias):
    torch.manual_seed(2)
    grouped = Int8GroupLinear.from_linear(nn.Linear(128, 72))
    per_row = Int8Linear.from_linear(nn.Linear(40, 56))
    for layer, scales, k in ((grouped, grouped.scales, 128), (per_row, per_row.scales[:, None], 40)):
        x = torch.randn(70, k, dtype=dtype)
        b = torch.randn(layer.out_features, dtype=dtype) if bias else None
        got = kernels.q8_dequantized_linear(x, layer.qweight, scales, b)
        _close(got, F.linear(x, layer.dequantize(dtype), b))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_weights_larger_than_the_buffer_go_in_slices(kernels, dtype):
    """A weight of more than 10 MiB in the product's dtype is dequantised and multiplied in slices
    (bf16: two; fp32: three), and the slices' products land in their own columns."""
    n, k = 5888, 1024  # 12 MB in bf16
    torch.manual_seed(3)
    codes = torch.randint(0, 256, (n, k // 2), dtype=torch.uint8)
    scales, zeros = torch.rand(n, k // 128) * 0.01, torch.randn(n, k // 128) * 0.01
    x = torch.randn(7, k, dtype=dtype)
    weight = kernels.q4_dequantize(codes, scales, zeros, 128, x)
    _close(kernels.q4_dequantized_linear(x, codes, scales, zeros, 128, None), F.linear(x, weight))
    q = torch.randint(-127, 128, (n, k), dtype=torch.int8)
    row_scales = torch.rand(n, 1) * 0.01
    _close(kernels.q8_dequantized_linear(x, q, row_scales, None), F.linear(x, q.to(dtype) * row_scales.to(dtype)))


def test_malformed_arguments_are_refused(kernels):
    layer = _int4(64, 128, 32)
    x = torch.randn(3, 128)
    args = (layer.qweight, layer.scales, layer.zeros)
    with pytest.raises(RuntimeError, match=r"x \[M, K\] with K = 128"):
        kernels.q4_dequantized_linear(torch.randn(3, 64), *args, 32, None)
    with pytest.raises(RuntimeError, match=r"packed \[N, K/2\] uint8"):
        kernels.q4_dequantized_linear(x, layer.qweight.view(torch.int8), *args[1:], 32, None)
    with pytest.raises(RuntimeError, match="group size must divide"):
        kernels.q4_dequantized_linear(x, *args, 48, None)
    with pytest.raises(RuntimeError, match=r"scales and zeros \[N, K/G\] fp32"):
        kernels.q4_dequantized_linear(x, layer.qweight, layer.scales.half(), layer.zeros, 32, None)
    with pytest.raises(RuntimeError, match=r"bias \[N\]"):
        kernels.q4_dequantized_linear(x, *args, 32, torch.zeros(63))
    with pytest.raises(RuntimeError, match="x fp32 or bf16"):
        kernels.q4_dequantized_linear(x.half(), *args, 32, None)
    q = torch.zeros(8, 96, dtype=torch.int8)
    with pytest.raises(RuntimeError, match=r"q \[N, K\] int8"):
        kernels.q8_dequantized_linear(torch.randn(2, 96), q.float(), torch.ones(8, 3), None)
    with pytest.raises(RuntimeError, match="G dividing K"):
        kernels.q8_dequantized_linear(torch.randn(2, 96), q, torch.ones(8, 5), None)
    assert kernels.q8_dequantized_linear(torch.randn(2, 96), q[:0], torch.ones(0, 3), None).shape == (2, 0)
