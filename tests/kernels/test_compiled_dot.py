"""`kernels.compiled_dot`: the compiled one-row products give the eager (and F.linear's) result on
odd shapes, and a process that must not or cannot compile gets None, with a warning for a failure."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from omnivision.kernels import compiled_dot
from omnivision.kernels.compiled_dot import COMPILE_ENV, compiled


@pytest.fixture
def fresh(monkeypatch):
    """No compiled kernel carried over from another test."""
    monkeypatch.setattr(compiled_dot, "_compiled", {})


@pytest.mark.parametrize("n, k", [(80, 96), (7, 37), (130, 200)])
def test_compiled_products_equal_f_linear(n, k, fresh):
    torch.manual_seed(0)
    x = torch.randn(1, k).bfloat16()
    w = torch.randn(n, k).bfloat16()
    bf16 = compiled("bf16")
    assert bf16 is not None
    got = bf16(x, w)
    want = F.linear(x.float(), w.float())
    assert got.shape == (1, n) and got.dtype == torch.bfloat16
    assert torch.allclose(got.float(), want, rtol=2 ** -7, atol=2 ** -7 * want.abs().max().item())

    q = torch.randint(-127, 128, (n, k), dtype=torch.int8)
    scales = torch.rand(n) * 0.02
    int8 = compiled("int8")
    got = int8(x, q, scales)
    want = F.linear(x.float(), q.float() * scales[:, None])
    assert got.shape == (1, n) and got.dtype == torch.bfloat16
    assert torch.allclose(got.float(), want, rtol=2 ** -7, atol=2 ** -7 * want.abs().max().item())


def test_compile_off_gives_none(monkeypatch, fresh):
    monkeypatch.setenv(COMPILE_ENV, "off")
    assert compiled("bf16") is None and compiled("int8") is None


def test_a_failing_compiler_gives_none_with_a_warning(monkeypatch, fresh):
    def broken(fn, **kwargs):
        def run(*args):
            raise RuntimeError("no C++ compiler found")
        return run

    monkeypatch.setattr(torch, "compile", broken)
    with pytest.warns(UserWarning, match="no C\\+\\+ compiler"):
        assert compiled("int8") is None
    assert compiled("int8") is None  # decided once per process


def test_a_wrong_compiled_kernel_is_refused(monkeypatch, fresh):
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: (lambda *args: fn(*args) + 1))
    with pytest.warns(UserWarning, match="disagrees"):
        assert compiled("bf16") is None


def test_a_kernel_wrong_on_one_shape_is_not_verified_there():
    from omnivision.kernels.compiled_dot import verified

    x, w = torch.randn(1, 40).bfloat16(), torch.randn(24, 40).bfloat16()
    want = F.linear(x, w)
    assert verified(lambda a, b: F.linear(a, b), want, x, w)
    with pytest.warns(UserWarning, match="wrong on a 24x40 weight"):
        assert not verified(lambda a, b: F.linear(a, b) * float("nan"), want, x, w)
