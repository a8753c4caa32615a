"""`model.native_decode` and `kernels/decode_layers.cpp`: the decode step's layers in one C++ call give
the eager step's logits and cache, are taken only where every product is one of the op's kinds, and
give way, with a warning, to the compiled step when they disagree with the eager layer or fail."""

from __future__ import annotations

import warnings

import pytest
import torch

from omnivision.kernels.compiled_dot import COMPILE_ENV
from omnivision.kernels.cpp_build import ops
from omnivision.model import linear as linear_module
from omnivision.model import native_decode, one_row_step
from omnivision.model.linear import DENSE_KERNEL

from .test_one_row_step import PROMPT, STEPS, decode, decoder, eager

pytestmark = pytest.mark.skipif(ops() is None, reason="this project's C++ kernels do not build here")


@pytest.fixture(autouse=True)
def any_size(monkeypatch):
    """Small test decoders take the fast step too; the compiled one must not run unless a test allows it."""
    monkeypatch.setattr(one_row_step, "MIN_WEIGHTS", 0)
    monkeypatch.delenv(native_decode.SWITCH_ENV, raising=False)

    def refuse():
        raise AssertionError("the compiled step ran")

    monkeypatch.setattr(one_row_step, "_step_function", refuse)


class Generation:
    """Stands for a generation's decoding state (weakly referenced by the step)."""


def plans(lm):
    return one_row_step._decoder(lm, Generation()).plans


def uncompiled(monkeypatch, calls: list | None = None):
    """The compiled step's maths without the compiler, counting its calls."""
    def step(*args):
        if calls is not None:
            calls.append(args[-1])
        return one_row_step.layer_step(*args)

    monkeypatch.setattr(one_row_step, "_step_function", lambda: step)


@pytest.mark.parametrize("scheme, dtype, tol", [(None, torch.float32, 1e-5), (None, torch.bfloat16, 1e-5),
                                                ("int8-g32", torch.bfloat16, 1e-5), ("int8-g32", torch.float32, 1e-5),
                                                ("int4-g32", torch.bfloat16, 1e-5), ("int4", torch.float32, 1e-5)])
def test_the_cpp_layers_give_the_eager_logits_and_cache(scheme, dtype, tol, monkeypatch):
    # the loop rounds where the eager layer rounds and calls the same product kernels: bf16 results
    # are the eager ones bit for bit here, fp32 ones differ by the order of the norm's sum
    lm = decoder(scheme, dtype)
    want, want_cache = eager(lm, PROMPT, monkeypatch)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="decode steps")  # no fallback of any kind
        got, got_cache = decode(lm, PROMPT)
    known = one_row_step._decoders[lm]
    assert known.native is not None and known.native_checked
    for got_step, want_step in zip(got, want):
        assert (got_step - want_step).norm() <= tol * want_step.norm()
    assert got_cache.length == want_cache.length == PROMPT.shape[1] + STEPS
    for k_got, k_want in zip(got_cache.keys + got_cache.values, want_cache.keys + want_cache.values):
        assert (k_got.float() - k_want.float()).norm() <= tol * k_want.float().norm()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_dense_kernel_runs_in_the_cpp_layers(dtype, monkeypatch):
    monkeypatch.setattr(linear_module, "few_row_kernel", lambda weight, m: DENSE_KERNEL)
    lm = decoder(None, dtype)
    assert native_decode.native_layers(plans(lm)).kinds == [native_decode.DENSE] * 14
    want, _ = eager(lm, PROMPT, monkeypatch)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="decode steps")
        got, _ = decode(lm, PROMPT)
    assert one_row_step._decoders[lm].native is not None
    for got_step, want_step in zip(got, want):
        assert (got_step - want_step).norm() <= 1e-5 * want_step.norm()


def test_the_product_kinds(monkeypatch):
    monkeypatch.setenv("OMNIVISION_KERNEL_TUNING", "off")  # int8-g32 and int4 take the project's kernels
    kinds = {scheme: native_decode.native_layers(plans(decoder(scheme)))
             for scheme in (None, "int8-g32", "int4-g32")}
    assert set(kinds[None].kinds) <= {native_decode.LINEAR, native_decode.WEIGHT_MAJOR, native_decode.DENSE}
    assert kinds["int8-g32"].kinds == [native_decode.Q8] * 14 and kinds["int4-g32"].kinds == [native_decode.Q4] * 14
    assert kinds["int4-g32"].groups == [32] * 14 and kinds["int8-g32"].groups == [0] * 14
    q8 = kinds["int8-g32"]
    assert len(q8.weights) == 42 and len(q8.norms) == 4
    assert all(w.dtype == torch.float16 for w in q8.weights[1::3])  # the scales as the op takes them
    assert q8.layers(1, 2).weights == q8.weights[21:] and q8.layers(1, 2).kinds == q8.kinds[7:]


def test_a_product_of_another_kind_keeps_the_compiled_step(monkeypatch):
    """Per-row int8 multiplies on torch's packed kernel or the compiled multiply-and-sum: not the op's."""
    lm = decoder("int8", torch.bfloat16)
    calls = []
    uncompiled(monkeypatch, calls)
    want, _ = eager(lm, PROMPT, monkeypatch)
    got, _ = decode(lm, PROMPT)
    assert one_row_step._decoders[lm].native is None and len(calls) == 2 * STEPS
    assert (got - want).norm() <= 3e-2 * want.norm()


def test_the_switch_keeps_the_compiled_step(monkeypatch):
    lm = decoder("int8-g32", torch.bfloat16)
    calls = []
    uncompiled(monkeypatch, calls)
    monkeypatch.setenv(native_decode.SWITCH_ENV, "off")
    decode(lm, PROMPT)
    assert len(calls) == 2 * STEPS and not one_row_step._decoders[lm].native_checked


@pytest.mark.parametrize("broken", ["wrong", "fails"])
def test_a_wrong_or_failing_first_layer_leaves_the_cpp_layers(broken, monkeypatch):
    lm = decoder("int8-g32", torch.bfloat16)
    want, want_cache = eager(lm, PROMPT, monkeypatch)
    calls = []
    uncompiled(monkeypatch, calls)
    real = native_decode.run

    def run(native, x, *args, **kwargs):
        if broken == "fails":
            raise RuntimeError("decode_layers: a product gave other than one row in x's dtype")
        return real(native, x, *args, **kwargs) * 1.5

    monkeypatch.setattr(native_decode, "run", run)
    message = "disagrees with the eager one" if broken == "wrong" else "decode_layers failed"
    with pytest.warns(UserWarning, match=f"decode steps leave the C\\+\\+ layers: .*{message}"):
        got, cache = decode(lm, PROMPT)
    assert one_row_step._decoders[lm].native is None and len(calls) == 2 * STEPS  # then compiled, every step
    assert (got - want).norm() <= 1e-5 * want.norm()
    for k_got, k_want in zip(cache.keys + cache.values, want_cache.keys + want_cache.values):
        assert (k_got.float() - k_want.float()).norm() <= 1e-5 * k_want.float().norm()


def test_a_failure_after_the_check_leaves_the_cpp_layers(monkeypatch):
    """The cache has not advanced: the compiled step writes the same position again, once."""
    lm = decoder("int4-g32", torch.bfloat16)
    want, want_cache = eager(lm, PROMPT, monkeypatch)
    calls = []
    uncompiled(monkeypatch, calls)
    real, runs = native_decode.run, []

    def run(*args, **kwargs):
        runs.append(1)
        if len(runs) > 4:  # the first step's two calls, the second step's, then a failure
            raise RuntimeError("decode_layers: position 12 outside the cache")
        return real(*args, **kwargs)

    monkeypatch.setattr(native_decode, "run", run)
    with pytest.warns(UserWarning, match="decode steps leave the C\\+\\+ layers: decode_layers: position"):
        got, cache = decode(lm, PROMPT)
    assert one_row_step._decoders[lm].native is None and len(calls) == 2 * (STEPS - 3)
    assert cache.length == want_cache.length
    assert (got - want).norm() <= 1e-5 * want.norm()
    for k_got, k_want in zip(cache.keys + cache.values, want_cache.keys + want_cache.values):
        assert (k_got.float() - k_want.float()).norm() <= 1e-5 * k_want.float().norm()


def test_the_op_names_bad_arguments():
    lm = decoder("int8-g32", torch.bfloat16)
    native = native_decode.native_layers(plans(lm))
    cache = lm.new_cache(1, 4)
    cos = sin = torch.ones(1, 1, 1, lm.config.head_dim, dtype=torch.bfloat16)
    x = torch.zeros(1, lm.config.hidden_size, dtype=torch.bfloat16)
    with torch.inference_mode():
        with pytest.raises(RuntimeError, match="position 4 outside the cache"):
            native_decode.run(native, x, cos, sin, cache, 4)
        with pytest.raises(RuntimeError, match="x fp32 or bf16"):
            native_decode.run(native, x.half(), cos, sin, cache, 0)
        with pytest.raises(RuntimeError, match="per layer 2 norms"):
            native_decode.run(native._replace(kinds=native.kinds[:-1]), x, cos, sin, cache, 0)
        with pytest.raises(RuntimeError, match="unknown product kind 9"):
            native_decode.run(native._replace(kinds=[9] * len(native.kinds)), x, cos, sin, cache, 0)
        with pytest.raises(RuntimeError, match="cos and sin"):
            native_decode.run(native, x, cos[..., :2], sin, cache, 0)
    assert all(not k.any() for k in cache.keys + cache.values)  # nothing was written


def test_compile_off_keeps_every_decoder_eager(monkeypatch):
    """`OMNIVISION_COMPILE=off` keeps the eager step, C++ layers included."""
    lm = decoder("int8-g32", torch.bfloat16)
    monkeypatch.setenv(COMPILE_ENV, "off")
    decode(lm, PROMPT)
    assert lm not in one_row_step._decoders
