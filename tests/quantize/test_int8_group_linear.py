"""Int8GroupLinear (`int8-g32`): the round trip of each 32-block, the few-row kernel and the
dequantising path against the dequantised product, the pure one-row product, embedding rows, the
layer in a quantized model and its checkpoint (fp16 scales kept when loading in bf16)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from omnivision.kernels.cpp_build import q8_linear
from omnivision.quantize import Int8GroupLinear, Int8Linear, quantize_model
from omnivision.quantize import int8_group_linear
from omnivision.quantize.int8_group_linear import DEQUANTISE, KERNEL, quantize_int8_groups


@pytest.fixture(autouse=True)
def built_kernel():
    """The kernel is built here (this machine has a compiler), whatever a test makes the choice say."""
    assert q8_linear() is not None


def test_round_trip_within_half_a_step_of_each_block():
    w = torch.randn(6, 128) * torch.logspace(-3, 1, 128)  # blocks of very different scale in one row
    w[2, 32:64] = 0.0  # an all-zero block must not divide by zero
    q, scales = quantize_int8_groups(w)
    assert q.dtype == torch.int8 and scales.dtype == torch.float16 and scales.shape == (6, 4)
    step = scales.float().repeat_interleave(32, dim=1)
    assert ((w - q.float() * step).abs() <= step / 2 * (1 + 1e-6) + 1e-12).all()
    assert (q[2, 32:64] == 0).all()
    # one scale per row would give the small blocks no codes at all; per block they keep ~7 bits
    small = w[:, :32]
    assert ((small - (q.float() * step)[:, :32]).abs() <= small.abs().amax(1, keepdim=True) / 254 * 1.01).all()


def test_in_features_must_fill_whole_blocks():
    with pytest.raises(ValueError, match="divisible by 32"):
        Int8GroupLinear(100, 8)


@pytest.mark.parametrize("path", [KERNEL, DEQUANTISE])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("rows", [1, 3, 8, 20])
def test_forward_matches_the_dequantised_product(path, dtype, bias, rows, monkeypatch):
    monkeypatch.setattr(int8_group_linear, "few_row_kernel", lambda n, k, r: path)
    torch.manual_seed(0)
    layer = Int8GroupLinear.from_linear(nn.Linear(96, 40, bias=bias))
    x = torch.randn(rows, 96)
    want = F.linear(x, layer.dequantize(), layer.bias)
    got = layer(x.to(dtype)[None])  # [1, rows, 96]
    assert got.dtype == dtype and got.shape == (1, rows, 40)
    kernel = path == KERNEL and rows <= int8_group_linear.KERNEL_MAX_ROWS
    # the kernel rounds activations per block (~1/254 of a block's largest value); bf16 its own way
    tol = 2e-2 if kernel or dtype == torch.bfloat16 else 1e-5
    assert torch.allclose(got[0].float(), want, rtol=tol, atol=tol * want.abs().max().item())
    if kernel:  # the kernel did run: its activation rounding shows
        assert not torch.allclose(layer(x)[None].float(), want[None], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("bias", [True, False])
def test_one_row_product_is_what_forward_computes(bias, monkeypatch):
    monkeypatch.setattr(int8_group_linear, "few_row_kernel", lambda n, k, r: KERNEL)
    layer = Int8GroupLinear.from_linear(nn.Linear(64, 24, bias=bias))
    x = torch.randn(1, 64, dtype=torch.bfloat16)
    function, args = layer.one_row_product()
    assert torch.equal(function(x, *args), layer(x))
    monkeypatch.setattr(int8_group_linear, "few_row_kernel", lambda n, k, r: DEQUANTISE)
    assert layer.one_row_product() is None  # the compiled step then stays eager


def test_rows_are_the_dequantised_weight_rows():
    layer = Int8GroupLinear.from_linear(nn.Linear(64, 30, bias=False))
    index = torch.tensor([[3, 0], [29, 3]])
    assert torch.equal(layer.rows(index, torch.float32), layer.dequantize()[index])


def test_without_a_kernel_the_layer_dequantises(monkeypatch):
    monkeypatch.setattr(int8_group_linear, "_chosen", {})
    monkeypatch.setattr(int8_group_linear, "q8_linear", lambda: None)
    assert int8_group_linear.few_row_kernel(40, 64, 1) == DEQUANTISE
    layer = Int8GroupLinear.from_linear(nn.Linear(64, 40))
    x = torch.randn(1, 64)
    assert torch.allclose(layer(x), F.linear(x, layer.dequantize(), layer.bias), atol=1e-5)


def test_a_model_in_int8_g32_and_its_checkpoint(tiny_model, tmp_path):
    from omnivision.processing.byte_tokenizer import byte_level_tokenizer
    from omnivision.weights.native import load_native, save_native

    model = tiny_model
    summary = quantize_model(model, "int8-g32", head=True)
    assert summary.scheme == "int8-g32"
    assert isinstance(model.language.model.layers[0].mlp.gate_proj, Int8GroupLinear)
    vision = [m for m in model.vision.modules() if isinstance(m, (Int8Linear, Int8GroupLinear))]
    assert vision and all(type(m) is Int8Linear and m.activation_quantization for m in vision)  # per row by design
    # layers whose inputs do not fill blocks of 32 fall back to per-row int8, and say so
    for name in summary.int8_fallback:
        assert not name.startswith("vision.") and model.get_submodule(name).in_features % 32
    save_native(model, byte_level_tokenizer(), tmp_path / "ckpt")
    loaded, _ = load_native(tmp_path / "ckpt", torch.bfloat16)
    layer = loaded.language.model.layers[0].self_attn.q_proj
    assert isinstance(layer, Int8GroupLinear) and layer.scales.dtype == torch.float16  # not rounded to bf16
    want = model.language.model.layers[0].self_attn.q_proj
    assert torch.equal(layer.qweight, want.qweight) and torch.equal(layer.scales, want.scales)
