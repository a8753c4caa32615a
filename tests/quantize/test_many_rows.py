"""The choice of product for many rows of a quantized layer (`quantize.many_rows`), and what each
layer runs on those rows: every candidate gives the product of the dequantised weights, the
choice is timed per bucket of rows and kept, and without the C++ kernels the layers fall back."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from omnivision.kernels.choices import KernelChoices
from omnivision.quantize import Int4Linear, Int8GroupLinear, Int8Linear, int4_linear, int8_group_linear, many_rows
from omnivision.quantize.int4_few_rows import Q4_KERNEL, TORCH_KERNEL
from omnivision.quantize.many_rows import DEQUANTISED, MID_MAX_ROWS


@pytest.fixture
def timing(monkeypatch, tmp_path):
    """Timing on, into a file of this test's own."""
    choices = KernelChoices(tmp_path / "choices.json", repeats=1)
    monkeypatch.setattr(many_rows, "CHOICES", choices)
    monkeypatch.setattr(many_rows, "_chosen", {})
    monkeypatch.setenv("OMNIVISION_KERNEL_TUNING", "on")
    return choices


def test_timing_off_takes_the_dequantised_product_without_building_candidates(monkeypatch):
    monkeypatch.setattr(many_rows, "_chosen", {})

    def candidates(rows):
        raise AssertionError("built with timing off")

    assert many_rows.choose("op", "8x8", 200, lambda rows: [DEQUANTISED, "other"], candidates) == DEQUANTISED


def test_each_bucket_is_timed_once_at_its_own_rows(timing):
    asked = []

    def candidates(rows):
        asked.append(rows)
        return {DEQUANTISED: lambda: None, "other": lambda: None}

    names = lambda rows: [DEQUANTISED, "other"]  # noqa: E731
    first = many_rows.choose("op", "8x8", 9, names, candidates)
    assert many_rows.choose("op", "8x8", MID_MAX_ROWS, names, candidates) == first  # same bucket: not timed again
    many_rows.choose("op", "8x8", MID_MAX_ROWS + 1, names, candidates)
    assert asked == [many_rows.MID_TIMED_ROWS, many_rows.MANY_TIMED_ROWS]
    assert [key.rsplit("/", 1)[1] for key in timing.timings] == ["rows=32", "rows=128"]


def test_a_kept_choice_is_used_without_building_the_candidates(timing, monkeypatch):
    """A later process reads the choice from disk: building the candidates (a random weight of the
    layer's shape, a converted copy for torch's kernel) would only cost memory."""
    names = lambda rows: [DEQUANTISED, "other"]  # noqa: E731
    chosen = many_rows.choose("op", "8x8", 200, names, lambda rows: {DEQUANTISED: lambda: None, "other": lambda: None})
    monkeypatch.setattr(many_rows, "_chosen", {})  # a new process, the same file

    def refuse(rows):
        raise AssertionError("candidates built for a kept choice")

    assert many_rows.choose("op", "8x8", 200, names, refuse) == chosen
    monkeypatch.setattr(many_rows, "_chosen", {})
    with pytest.raises(AssertionError, match="built for a kept choice"):  # another set of candidates: timed
        many_rows.choose("op", "8x8", 200, lambda rows: [DEQUANTISED, "third"], refuse)


def test_int4_candidates_per_bucket(timing):
    """torch's int4 kernel competes only in the middle bucket: its cost grows with the rows."""
    int4_linear.many_row_kernel(128, 256, 64, 20, torch.bfloat16)
    int4_linear.many_row_kernel(128, 256, 64, 300, torch.bfloat16)
    mid, many = timing.timings.values()
    assert set(mid) == {DEQUANTISED, Q4_KERNEL, TORCH_KERNEL} and set(many) == {DEQUANTISED, Q4_KERNEL}
    int8_group_linear.many_row_kernel(40, 64, 300, torch.float32)
    assert set(list(timing.timings.values())[-1]) == {DEQUANTISED, int8_group_linear.KERNEL}
    # each activation dtype is timed apart: the float product runs in it
    int4_linear.many_row_kernel(128, 256, 64, 300, torch.float32)
    wanted = ["/int4-many-rows/128x256/g64/bfloat16/rows=32", "/int4-many-rows/128x256/g64/bfloat16/rows=128",
              "/int8-g32-many-rows/40x64/float32/rows=128", "/int4-many-rows/128x256/g64/float32/rows=128"]
    assert len(timing.timings) == len(wanted)
    assert all(key.endswith(want) for key, want in zip(timing.timings, wanted)), list(timing.timings)


def _close(got: torch.Tensor, want: torch.Tensor, tol: float) -> None:
    assert got.shape == want.shape and got.dtype == want.dtype
    torch.testing.assert_close(got.float(), want.float(), rtol=tol, atol=tol * want.float().abs().max().item())


@pytest.mark.parametrize("kind", [DEQUANTISED, Q4_KERNEL, TORCH_KERNEL])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [20, 100])
def test_int4_many_rows_give_the_dequantised_product(kind, dtype, rows, monkeypatch):
    monkeypatch.setattr(int4_linear, "many_row_kernel", lambda n, k, g, r, dtype: kind)
    torch.manual_seed(rows)
    linear = nn.Linear(256, 128)
    layer = Int4Linear.from_linear(linear, 64)
    x = torch.randn(2, rows // 2, 256, dtype=dtype)
    want = F.linear(x, layer.dequantize(dtype), linear.bias.detach().to(dtype))
    # the dequantised product is exact to the stored weights; the kernels round activations (int8 / bf16)
    _close(layer(x), want, 1e-5 if kind == DEQUANTISED and dtype == torch.float32 else 2e-2)


@pytest.mark.parametrize("kind", [DEQUANTISED, int8_group_linear.KERNEL])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_int8_group_many_rows_give_the_dequantised_product(kind, dtype, monkeypatch):
    monkeypatch.setattr(int8_group_linear, "many_row_kernel", lambda n, k, r, dtype: kind)
    torch.manual_seed(4)
    layer = Int8GroupLinear.from_linear(nn.Linear(96, 40))
    x = torch.randn(3, 30, 96, dtype=dtype)
    want = F.linear(x, layer.dequantize(dtype), layer.bias.to(dtype))
    _close(layer(x), want, 1e-5 if kind == DEQUANTISED and dtype == torch.float32 else 2e-2)


def test_without_the_cpp_kernels_the_layers_dequantise_with_torch(monkeypatch):
    monkeypatch.setattr(many_rows, "dequantised_products", lambda: None)

    def refuse(*args):
        raise AssertionError("a many-row choice without the C++ kernels")

    monkeypatch.setattr(int4_linear, "many_row_kernel", refuse)
    monkeypatch.setattr(int8_group_linear, "many_row_kernel", refuse)
    torch.manual_seed(5)
    int4 = Int4Linear.from_linear(nn.Linear(128, 64), 32)
    assert int4._kernel(torch.randn(1), 48) == TORCH_KERNEL
    assert int4._kernel(torch.randn(1), 49) == int4_linear.ROW_BLOCKS
    grouped = Int8GroupLinear.from_linear(nn.Linear(128, 64))
    per_row = Int8Linear.from_linear(nn.Linear(128, 64))
    x = torch.randn(100, 128)
    for layer in (int4, grouped, per_row):
        _close(layer(x), F.linear(x, layer.dequantize(), layer.bias), 1e-5)
