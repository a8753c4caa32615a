"""`model.one_row_step`: the compiled decode step of one sequence gives the eager step's logits and cache
(fp32, bf16, int8 per row and in groups, int4 weights), applies only where it may, follows weights changed in place, and
falls back to the eager step, with a warning, when compiling fails or the compiled layer is wrong."""

from __future__ import annotations

import warnings

import pytest
import torch

from omnivision.config import TextConfig, preset
from omnivision.generation.generate import decode_step, prefill
from omnivision.kernels.compiled_dot import COMPILE_ENV
from omnivision.model import native_decode, one_row_step
from omnivision.model.kv_cache import KVCache, PositionedWrite, RowWrite
from omnivision.model.linear import Linear
from omnivision.model.omnivision import init_weights
from omnivision.model.qwen2 import LanguageOnly, Qwen2ForCausalLM
from omnivision.quantize.apply import quantize_model

# head_dim 32 and 2 kv heads: every product has out_features a multiple of 64 (torch's int4 kernel)
CFG = TextConfig(hidden_size=128, intermediate_size=256, num_layers=2, num_heads=4, num_kv_heads=2, vocab_size=96)
FED = torch.tensor([7, 30, 2, 55, 12, 80])
"""The tokens decode steps are fed (not each path's own argmax: random weights make near-ties)."""
STEPS = len(FED)


@pytest.fixture(autouse=True)
def any_size(monkeypatch):
    """Small test decoders take the compiled step too, not the C++ layers (`test_native_decode.py`)."""
    monkeypatch.setattr(one_row_step, "MIN_WEIGHTS", 0)
    monkeypatch.setenv(native_decode.SWITCH_ENV, "off")


def decoder(scheme: str | None = None, dtype: torch.dtype = torch.float32, seed: int = 0) -> Qwen2ForCausalLM:
    torch.manual_seed(seed)
    lm = Qwen2ForCausalLM(CFG)
    with torch.no_grad():
        init_weights(lm, std=0.1)
        for layer in lm.model.layers:  # norms away from 1, so that a swapped norm weight shows
            layer.input_layernorm.weight.uniform_(0.5, 1.5)
            layer.post_attention_layernorm.weight.uniform_(0.5, 1.5)
    lm = lm.to(dtype).eval()
    if scheme is not None:
        quantize_model(LanguageOnly(lm), scheme, parts=("language",))
    return lm


@torch.inference_mode()
def decode(lm: Qwen2ForCausalLM, prompt: torch.Tensor) -> tuple[torch.Tensor, KVCache]:
    """Logits [STEPS, V] of decode steps fed `FED` after `prompt` [1, T], and the cache."""
    logits, state = prefill(lm, lm.embed(prompt), None, prompt.shape[1] + STEPS + 1)
    out = []
    for token in FED:
        logits = decode_step(lm, token[None], state)
        out.append(logits[0].float())
    return torch.stack(out), state.cache


def eager(lm: Qwen2ForCausalLM, prompt: torch.Tensor, monkeypatch) -> tuple[torch.Tensor, KVCache]:
    with monkeypatch.context() as m:
        m.setenv(COMPILE_ENV, "off")
        return decode(lm, prompt)


PROMPT = torch.tensor([[5, 17, 3, 88, 41, 9, 60]])


@pytest.mark.long
@pytest.mark.parametrize("scheme, dtype, tol", [(None, torch.float32, 1e-4), (None, torch.bfloat16, 3e-2),
                                                ("int8", torch.bfloat16, 3e-2), ("int8", torch.float32, 1e-2),
                                                ("int4-g32", torch.bfloat16, 5e-2), ("int8-g32", torch.bfloat16, 5e-2),
                                                ("int8-g32", torch.float32, 1e-2)])
def test_compiled_step_gives_the_eager_logits_and_cache(scheme, dtype, tol, monkeypatch):
    # int8-g32 and int4 (the project's kernels) round each product's input to int8 per 32-block, a
    # rounding that a bf16 step and a compiled one (fp32 intermediates) meet at different points:
    # each is ~3 % from the dequantised product's logits on this small random decoder, so 5 %
    # between them
    lm = decoder(scheme, dtype)
    want, want_cache = eager(lm, PROMPT, monkeypatch)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="decode steps stay eager")  # must not happen here
        got, got_cache = decode(lm, PROMPT)
    assert one_row_step._decoders[lm].checked and one_row_step._decoders[lm].plans is not None
    # relative to the logits' size: the eager step rounds every intermediate in bf16
    for got_step, want_step in zip(got, want):
        assert (got_step - want_step).norm() <= tol * want_step.norm()
    assert got_cache.length == want_cache.length == PROMPT.shape[1] + STEPS
    for k_got, k_want in zip(got_cache.keys + got_cache.values, want_cache.keys + want_cache.values):
        assert (k_got.float() - k_want.float()).norm() <= tol * k_want.float().norm()


@pytest.mark.long
def test_weights_changed_in_place_are_followed(monkeypatch):
    """int4 plans hold tensors derived from the weights (torch's kernel layout), so a stale plan
    would keep computing with the old weights."""
    lm = decoder("int4-g32", torch.bfloat16)
    before, _ = decode(lm, PROMPT)
    first = one_row_step._decoders[lm]
    lm.load_state_dict(decoder("int4-g32", torch.bfloat16, seed=1).state_dict())  # in place
    got, _ = decode(lm, PROMPT)
    assert one_row_step._decoders[lm] is not first
    want, _ = eager(lm, PROMPT, monkeypatch)
    assert (got - want).norm() <= 3e-2 * want.norm()
    assert (got - before).norm() > 0.1 * want.norm()


def fake_step(result):
    calls = []

    def step(plan, x, cos, sin, keys, values, position):
        calls.append(position)
        return result(x)
    return step, calls


@pytest.mark.parametrize("broken", ["wrong", "fails"])
def test_a_wrong_or_failing_compiled_layer_keeps_the_eager_step(broken, monkeypatch):
    lm = decoder()
    want, _ = eager(lm, PROMPT, monkeypatch)

    def result(x):
        if broken == "fails":
            raise RuntimeError("no C++ compiler")
        return x * 0 + 3.0

    step, calls = fake_step(result)
    monkeypatch.setattr(one_row_step, "_step_function", lambda: step)
    with pytest.warns(UserWarning, match="decode steps stay eager"):
        got, cache = decode(lm, PROMPT)
    assert len(calls) == 1  # tried once, on the first step, then never again for this decoder
    assert one_row_step._decoders[lm].plans is None
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert cache.length == PROMPT.shape[1] + STEPS


def test_a_layer_failing_after_the_check_keeps_the_eager_step(monkeypatch):
    """A later compile (a new cache length, another layer) can fail too: the step falls back, and
    the cache is written once per position."""
    lm = decoder()
    want, want_cache = eager(lm, PROMPT, monkeypatch)
    calls = []

    def step(*args):
        calls.append(args[-1])
        if len(calls) > 1:
            raise RuntimeError("recompilation failed")
        return one_row_step.layer_step(*args)  # the layer's maths, uncompiled: passes the check

    monkeypatch.setattr(one_row_step, "_step_function", lambda: step)
    with pytest.warns(UserWarning, match="a compiled decoder layer failed"):
        got, cache = decode(lm, PROMPT)
    assert len(calls) == 2 and one_row_step._decoders[lm].plans is None
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert cache.length == want_cache.length
    for k_got, k_want in zip(cache.keys + cache.values, want_cache.keys + want_cache.values):
        torch.testing.assert_close(k_got, k_want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("wrong", [False, True])
def test_a_step_that_compiles_a_graph_is_checked_again(wrong, monkeypatch):
    """A recompilation (a new position or cache length) makes a graph the first step's check never saw:
    that step's layer 0 is checked against the eager layer too; a wrong one keeps the decoder eager,
    and the cache holds the eager keys and values."""
    lm = decoder()
    want, want_cache = eager(lm, PROMPT, monkeypatch)
    graphs = iter(range(1 << 30))
    calls = []

    def step(*args):
        calls.append(args[-1])
        if len(calls) == 3:  # the second step's layer 0 "compiles" a graph, wrong where asked
            monkeypatch.setattr(one_row_step, "_graphs_compiled", lambda: next(graphs) + 1)
            out = one_row_step.layer_step(*args)
            return out * 1.5 if wrong else out
        return one_row_step.layer_step(*args)  # the layer's maths, uncompiled

    monkeypatch.setattr(one_row_step, "_step_function", lambda: step)
    monkeypatch.setattr(one_row_step, "_graphs_compiled", lambda: 0)
    if wrong:
        with pytest.warns(UserWarning, match="a recompiled decoder layer disagrees"):
            got, cache = decode(lm, PROMPT)
        assert one_row_step._decoders[lm].plans is None and len(calls) == 3  # never compiled again
    else:
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message="decode steps stay eager")
            got, cache = decode(lm, PROMPT)
        assert one_row_step._decoders[lm].plans is not None and len(calls) > 3
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    for k_got, k_want in zip(cache.keys + cache.values, want_cache.keys + want_cache.values):
        torch.testing.assert_close(k_got, k_want, atol=1e-4, rtol=1e-4)


def test_steps_it_does_not_take(monkeypatch):
    lm = decoder()
    embeds = torch.zeros(1, 1, CFG.hidden_size)
    cache = lm.new_cache(1, 8)
    with torch.inference_mode():
        assert one_row_step.applies(lm, embeds, None, cache)
        assert not one_row_step.applies(lm, torch.zeros(2, 1, CFG.hidden_size), None, lm.new_cache(2, 8))
        assert not one_row_step.applies(lm, torch.zeros(1, 2, CFG.hidden_size), None, cache)
        assert not one_row_step.applies(lm, embeds, torch.ones(1, 3, dtype=torch.bool), cache)
        assert not one_row_step.applies(lm, embeds.half(), None, cache)
        assert not one_row_step.applies(lm, embeds, None, PositionedWrite(cache, torch.zeros(1, dtype=torch.long)))
        assert not one_row_step.applies(lm, embeds, None, RowWrite(cache, torch.zeros(1, dtype=torch.long), 4))
        monkeypatch.setenv(COMPILE_ENV, "off")
        assert not one_row_step.applies(lm, embeds, None, cache)
        monkeypatch.delenv(COMPILE_ENV)
        monkeypatch.setattr(one_row_step, "MIN_WEIGHTS", one_row_step.layer_weights(lm) + 1)
        assert not one_row_step.applies(lm, embeds, None, cache)
    assert not one_row_step.applies(lm, embeds, None, cache)  # autograd records here


def test_the_968m_decoder_is_large_enough():
    cfg = preset("omnivision-968m").text
    lm = Qwen2ForCausalLM.__new__(Qwen2ForCausalLM)
    lm.config = cfg
    assert one_row_step.layer_weights(lm) == 357_826_560 >= 50_000_000


class ScaledLinear(Linear):
    """Changes `forward` and inherits `one_row_product`: its product description would be wrong."""

    def forward(self, x):
        return 2 * super().forward(x)


@pytest.mark.parametrize("replacement", [torch.nn.Linear, ScaledLinear])
def test_a_layer_without_its_own_one_row_product_keeps_the_decoder_eager(replacement, monkeypatch):
    step, calls = fake_step(lambda x: x)
    monkeypatch.setattr(one_row_step, "_step_function", lambda: step)
    lm = decoder()
    lm.model.layers[1].mlp.down_proj = replacement(CFG.intermediate_size, CFG.hidden_size, bias=False)
    want, _ = eager(lm, PROMPT, monkeypatch)
    got, _ = decode(lm, PROMPT)
    assert calls == [] and one_row_step._decoders[lm].plans is None
    torch.testing.assert_close(got, want)
