"""`model.linear`: the weight-major, compiled and dense-kernel paths give F.linear's result for any row
count and shape in bf16 and fp32, the choice times the dense kernel only where it is built, and
autograd is left alone."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from omnivision.kernels.choices import CHOICES, TUNING_ENV
from omnivision.model import linear as linear_module
from omnivision.model.linear import (COMPILED_DOT, DENSE_KERNEL, F_LINEAR, FEW_ROWS, WEIGHT_MAJOR, Linear,
                                     few_row_kernel, linear)

KERNELS = [F_LINEAR, WEIGHT_MAJOR, COMPILED_DOT, DENSE_KERNEL]


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("shape", [(1, 96), (1, 1, 96), (4, 96), (2, 3, 96), (FEW_ROWS + 5, 96)])
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_same_result_as_f_linear(shape, with_bias, kernel, dtype, monkeypatch):
    """Whichever kernel a machine chooses gives F.linear's result."""
    monkeypatch.setattr(linear_module, "few_row_kernel", lambda weight, m: kernel)
    torch.manual_seed(0)
    w = torch.randn(80, 96).to(dtype)
    b = torch.randn(80).to(dtype) if with_bias else None
    x = torch.randn(*shape).to(dtype)
    got = linear(x, w, b)
    want = F.linear(x.double(), w.double(), None if b is None else b.double())
    assert got.shape == (*shape[:-1], 80) and got.dtype == dtype and got.is_contiguous()
    # bf16 output rounding (2^-8 relative) on values up to ~30; fp32: the order of the sums
    atol, rtol = (0.25, 2 ** -7) if dtype == torch.bfloat16 else (1e-4, 1e-5)
    assert torch.allclose(got.double(), want, atol=atol, rtol=rtol)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("with_bias", [True, False])
def test_one_row_product_is_what_forward_computes(kernel, with_bias, monkeypatch):
    """The pure function the compiled decode step traces (`model.one_row_step`) is the chosen kernel's
    product (torch's own behind this project's opaque ops where they are built), in bf16 and fp32."""
    monkeypatch.setattr(linear_module, "few_row_kernel", lambda weight, m: kernel)
    torch.manual_seed(0)
    layer = Linear(96, 80, bias=with_bias).bfloat16()
    x = torch.randn(1, 96).bfloat16()
    function, args = layer.one_row_product()
    torch.testing.assert_close(function(x, *args), layer(x), atol=2 ** -6, rtol=2 ** -7)
    fp32 = Linear(96, 80, bias=with_bias)
    function, args = fp32.one_row_product()
    torch.testing.assert_close(function(x.float(), *args), fp32(x.float()), atol=1e-5, rtol=1e-5)
    ops = torch.ops.omnivision
    opaque = {F_LINEAR: ops.linear, WEIGHT_MAJOR: ops.weight_major, DENSE_KERNEL: ops.dense_linear}
    if kernel != COMPILED_DOT:  # the library's ops go in opaque to the compiler
        for one in (layer, fp32):
            assert one.one_row_product()[0] is opaque[kernel]


def test_fp32_is_exactly_f_linear_and_gradients_flow():
    layer = Linear(16, 8)
    x = torch.randn(3, 16, requires_grad=True)
    assert torch.equal(layer(x), F.linear(x, layer.weight, layer.bias))
    layer_bf16 = Linear(16, 8).bfloat16()
    xb = torch.randn(2, 16, dtype=torch.bfloat16, requires_grad=True)
    layer_bf16(xb).sum().backward()
    assert xb.grad is not None and layer_bf16.weight.grad is not None


def test_the_kernel_is_chosen_by_timing_once_per_shape_and_row_bucket(tmp_path, monkeypatch):
    monkeypatch.setenv(TUNING_ENV, "on")
    monkeypatch.setattr(CHOICES, "path", tmp_path / "choices.json")
    monkeypatch.setattr(linear_module, "_chosen", {})
    w = torch.randn(64, 32).bfloat16()
    picked = {m: few_row_kernel(w, m) for m in (1, 5, 16, 17, FEW_ROWS)}
    assert set(picked.values()) <= set(KERNELS)
    assert {picked[5], picked[FEW_ROWS]} <= {F_LINEAR, WEIGHT_MAJOR}  # the loops only for one row
    assert picked[5] == picked[16] and picked[17] == picked[FEW_ROWS]  # one timing per bucket
    assert len(linear_module._chosen) == 3
    entries = json.loads((tmp_path / "choices.json").read_text())
    assert len(entries) == 3
    one_row = next(entry for key, entry in entries.items() if key.endswith("/rows<=1"))
    assert DENSE_KERNEL in one_row["median_s"]  # the C++ kernel was timed with the others
    # fp32 weights of the same shape are chosen apart, under their own name
    assert few_row_kernel(w.float(), 1) in KERNELS
    assert len(linear_module._chosen) == 4
    assert any("/fp32-few-rows/64x32/rows<=1" in key for key in json.loads((tmp_path / "choices.json").read_text()))


def test_without_timing_the_default_is_f_linear(monkeypatch):
    monkeypatch.setenv(TUNING_ENV, "off")
    monkeypatch.setattr(linear_module, "_chosen", {})
    assert few_row_kernel(torch.randn(8, 4).bfloat16(), 1) == F_LINEAR


def test_without_the_cpp_kernels_the_choice_is_kept_apart(tmp_path, monkeypatch):
    monkeypatch.setenv(TUNING_ENV, "on")
    monkeypatch.setattr(CHOICES, "path", tmp_path / "choices.json")
    monkeypatch.setattr(linear_module, "_chosen", {})
    monkeypatch.setattr(linear_module, "cpp_ops", lambda: None)
    assert few_row_kernel(torch.randn(64, 32).bfloat16(), 1) != DENSE_KERNEL
    (key, entry), = json.loads((tmp_path / "choices.json").read_text()).items()
    assert "-no-cpp/64x32/rows<=1" in key and DENSE_KERNEL not in entry["median_s"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_inside_a_compiled_graph_the_compiler_picks_the_kernel(dtype):
    # the per-machine choice (a timing, a dict lookup) cannot be traced: the whole graph must compile
    w, x = torch.randn(24, 16).to(dtype), torch.randn(1, 16).to(dtype)
    compiled = torch.compile(lambda x: linear(x, w) * 2, fullgraph=True, dynamic=False)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x) / 2, F.linear(x, w))
