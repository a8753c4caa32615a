"""Int8Linear: round-trip bound, packed-kernel forward against the dequantised reference, buffers."""

import pytest
import torch
from torch import nn

from omnivision.quantize import Int8Linear
from omnivision.quantize.int8_linear import quantize_int8


def test_round_trip_within_half_a_step():
    w = torch.randn(24, 40) * torch.logspace(-3, 1, 24)[:, None]  # rows of very different scale
    w[3] = 0.0  # an all-zero row must not divide by zero
    q, scales = quantize_int8(w)
    assert q.dtype == torch.int8 and q.abs().max() <= 127
    # symmetric per-row rounding: each element is off by at most half a step of its own row
    err = (w - q.float() * scales[:, None]).abs()
    assert (err <= scales[:, None] / 2 * (1 + 1e-6)).all()
    # the row maximum maps to +-127 exactly (scale = max|w| / 127)
    assert torch.equal(q[0].abs().max(), torch.tensor(127, dtype=torch.int8))
    assert (q[3] == 0).all()


@pytest.mark.parametrize("dtype, tol", [(torch.bfloat16, 2e-2), (torch.float32, 2e-2)])
def test_kernel_forward_matches_dequantised_matmul(dtype, tol):
    linear = nn.Linear(64, 48)
    layer = Int8Linear.from_linear(linear)
    x = torch.randn(2, 5, 64)
    # fp32 activations also run the kernel in bf16 (see the module docstring): bf16 tolerance for both
    ref = x @ layer.dequantize().t() + linear.bias.detach()  # fp32 reference
    out = layer(x.to(dtype))
    assert out.dtype == dtype and out.shape == (2, 5, 48)
    assert torch.allclose(out.float(), ref, rtol=tol, atol=tol * ref.abs().max().item())


@pytest.mark.parametrize("kernel", ["int8pack_mm", "compiled-dot"])
def test_one_row_kernels_match_dequantised_matmul(kernel, monkeypatch):
    from omnivision.quantize import int8_linear

    monkeypatch.setattr(int8_linear, "one_row_kernel", lambda n, k: kernel)
    linear = nn.Linear(80, 40)
    layer = Int8Linear.from_linear(linear)
    x = torch.randn(1, 1, 80)
    ref = x @ layer.dequantize().t() + linear.bias.detach()  # [1, 1, 40]
    out = layer(x.bfloat16())
    assert out.dtype == torch.bfloat16 and out.shape == (1, 1, 40)
    assert torch.allclose(out.float(), ref, rtol=2e-2, atol=2e-2 * ref.abs().max().item())


@pytest.mark.parametrize("kernel", ["int8pack_mm", "compiled-dot"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("bias", [True, False])
def test_one_row_product_is_what_forward_computes(kernel, dtype, bias, monkeypatch):
    """The pure function the compiled decode step traces (`model.one_row_step`) is the forward's
    product; where torch's kernel cannot take the layer there is none."""
    from omnivision.quantize import int8_linear

    monkeypatch.setattr(int8_linear, "one_row_kernel", lambda n, k: kernel)
    layer = Int8Linear.from_linear(nn.Linear(96, 40, bias=bias))
    x = torch.randn(1, 96, dtype=dtype)
    function, args = layer.one_row_product()
    got = function(x, *args)
    assert got.dtype == dtype and got.shape == (1, 40)
    torch.testing.assert_close(got, layer(x), atol=1e-2, rtol=1e-2)
    assert Int8Linear.from_linear(nn.Linear(72, 40)).one_row_product() is None


@pytest.mark.parametrize("in_features", [72, 17, 104])
def test_in_features_torchs_packed_kernel_cannot_take_are_dequantised(in_features):
    """torch 2.13's `_weight_int8pack_mm` returns garbage or crashes unless K is a multiple of 16."""
    linear = nn.Linear(in_features, 48)
    layer = Int8Linear.from_linear(linear)
    x = torch.randn(1, in_features)
    ref = x @ layer.dequantize().t() + linear.bias.detach()
    out = layer(x.bfloat16())
    assert torch.allclose(out.float(), ref, rtol=2e-2, atol=2e-2 * ref.abs().max().item())


def test_fallback_path_and_no_bias():
    linear = nn.Linear(32, 16, bias=False)
    layer = Int8Linear.from_linear(linear)
    x = torch.randn(3, 32, dtype=torch.float64)  # float64 is not a kernel dtype: dequantise path
    assert layer.bias is None
    assert torch.allclose(layer(x), x @ layer.dequantize(torch.float64).t())
    # and int8 is close to the original layer: error per output <= sum_k |x_k| * scale/2
    bound = x.abs().sum(-1, keepdim=True) * layer.scales.double() / 2
    assert ((layer(x) - linear(x.float()).double()).abs() <= bound + 1e-6).all()


def test_state_dict_holds_int8_and_reloads():
    layer = Int8Linear.from_linear(nn.Linear(32, 16))
    sd = layer.state_dict()
    assert sd["qweight"].dtype == torch.int8 and sd["scales"].shape == (16,)
    fresh = Int8Linear(32, 16)
    x = torch.randn(4, 32)
    fresh(x)  # caches bf16 placeholder scales; loading must invalidate that cache
    fresh.load_state_dict(sd)
    assert torch.equal(fresh(x), layer(x))


def test_int8_activation_product_stays_within_its_rounding_bound():
    from omnivision.quantize.int8_linear import int8_activation_product

    w = torch.randn(96, 80) * 0.05
    x = torch.randn(300, 80) * torch.logspace(-2, 1, 300)[:, None]  # rows of very different scale
    x[7] = 0.0  # an all-zero row must give zeros, not NaN
    q, scales = quantize_int8(w)
    wq = q.float() * scales[:, None]  # [N, K] the weight as stored
    got = int8_activation_product(x.bfloat16(), q, scales)  # [M, N]
    want = x.bfloat16().double() @ wq.double().t()  # [M, N]
    # each activation is off by at most half its row's step: |dx| <= max|x_row| / 254
    xb = x.bfloat16().double()
    bound = xb.abs().amax(1, keepdim=True) / 254 * wq.abs().double().sum(1)[None] + 1e-6  # [M, N]
    assert ((got.double() - want).abs() <= bound * (1 + 1e-4)).all()
    assert (got[7] == 0).all()
    assert (got - want).norm() / want.norm() < 0.02  # and about 1 % in all


def test_marked_layers_use_int8_activations_on_many_rows_only_where_chosen(monkeypatch):
    from omnivision.quantize import int8_linear

    layer = Int8Linear.from_linear(nn.Linear(64, 48)).to(torch.bfloat16)
    x = torch.randn(1, 300, 64, dtype=torch.bfloat16)
    weight_only = layer(x)
    layer.activation_quantization = True
    assert torch.equal(layer(x), weight_only)  # timing is off in tests: the default, dequantise, stays
    monkeypatch.setattr(int8_linear, "many_row_kernel", lambda n, k, dtype: int8_linear.INT8_ACTIVATIONS)
    expected = (int8_linear.int8_activation_product(x[0], layer.qweight, layer.scales).bfloat16()
                + layer.bias)
    assert torch.equal(layer(x)[0], expected)
    assert not torch.equal(layer(x), weight_only)
    assert torch.equal(layer(x[:, :200]), weight_only[:, :200])  # under ACTIVATION_MIN_ROWS rows
    monkeypatch.setenv(int8_linear.ACTIVATIONS_ENV, "off")
    assert torch.equal(layer(x), weight_only)


def test_the_int8_activation_choice_is_timed_and_remembered(monkeypatch, tmp_path):
    from omnivision.kernels.choices import KernelChoices
    from omnivision.quantize import int8_linear

    monkeypatch.setenv("OMNIVISION_KERNEL_TUNING", "on")
    choices = KernelChoices(tmp_path / "choices.json", repeats=1)
    monkeypatch.setattr(int8_linear, "CHOICES", choices)
    monkeypatch.setattr(int8_linear, "_chosen", {})
    monkeypatch.setattr(int8_linear, "ACTIVATION_TIMED_ROWS", 260)
    choice = int8_linear.many_row_kernel(64, 128, torch.bfloat16)
    kinds = {int8_linear.DEQUANTISED, int8_linear.INT8_ACTIVATIONS, int8_linear.COMPILED_ACTIVATIONS}
    assert choice in kinds
    (timed,) = choices.timings.values()
    assert set(timed) == kinds  # the compiled candidate too: this machine compiles
    assert "int8-many-rows/64x128/bfloat16" in (tmp_path / "choices.json").read_text()



def test_the_compiled_int8_activation_product_is_the_eager_one(monkeypatch):
    from omnivision.quantize import int8_linear

    layer = Int8Linear.from_linear(nn.Linear(64, 48)).to(torch.bfloat16)
    layer.activation_quantization = True
    x = torch.randn(2, 300, 64, dtype=torch.bfloat16)
    monkeypatch.setattr(int8_linear, "many_row_kernel", lambda n, k, dtype: int8_linear.INT8_ACTIVATIONS)
    eager = layer(x)
    monkeypatch.setattr(int8_linear, "many_row_kernel", lambda n, k, dtype: int8_linear.COMPILED_ACTIVATIONS)
    assert int8_linear._compiled_activations() is not None
    got = layer(x)
    assert got.shape == eager.shape == (2, 300, 48) and got.dtype == torch.bfloat16
    # the same int8 codes and int32 sums; only the fp32 rescaling may round differently
    assert torch.allclose(got.float(), eager.float(), rtol=2 ** -7, atol=1e-3)
