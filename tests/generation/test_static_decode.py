"""Fixed-shape decoding (the CUDA-graph path), run eagerly here: the same logits as `decode_step`,
the same answers through `generate_steps`, decoders reused across requests, and overflow refused."""

from __future__ import annotations

import pytest
import torch

from omnivision.generation import static_decode
from omnivision.generation.generate import GenerationConfig, decode_step, generate_batch, prefill
from omnivision.generation.static_decode import StaticDecoder

from tests.generation.test_generate import _left_pad_for_test, _prompt


@torch.no_grad()
def test_fixed_shape_steps_give_the_logits_of_decode_step(tiny_model):
    lm = tiny_model.language
    rows = [[5, 9, 17, 3, 8, 2], [11, 4]]
    fed = [[7, 1], [2, 2], [30, 9], [4, 6]]
    ids, valid = _left_pad_for_test(rows)
    want_logits, state = prefill(lm, lm.embed(ids), valid, 6 + len(fed))
    fixed = StaticDecoder(lm, batch=2, max_len=16, capture=False)
    got_logits, fixed_state = prefill(lm, lm.embed(ids), valid, 16, fixed.cache)
    fixed.start(fixed_state.cache.length, fixed_state.next_positions, fixed_state.key_valid)
    torch.testing.assert_close(got_logits, want_logits)
    for tokens in fed:
        want = decode_step(lm, torch.tensor(tokens), state)
        got = fixed.step(torch.tensor(tokens))
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert int(fixed.index) == 6 + len(fed) and fixed.length == 6 + len(fed)
    assert fixed.written.sum(1).tolist() == [6 + len(fed), 2 + len(fed)]


@torch.no_grad()
def test_generate_steps_on_fixed_shapes_answers_as_before(tiny_model, tiny_config, monkeypatch):
    prompts = [_prompt(tiny_config, n, seed=n) for n in (3, 11)]
    embeds = tiny_model.encode_images(torch.randn(2, 3, 84, 84))
    cfg = GenerationConfig(max_new_tokens=9)
    before = generate_batch(tiny_model, prompts, embeds, cfg)
    monkeypatch.setattr(static_decode, "wanted", lambda device: True)
    static_decode._idle.clear()
    assert generate_batch(tiny_model, prompts, embeds, cfg) == before
    (kept,) = static_decode._idle[tiny_model.language][(2, static_decode.LENGTH_BUCKET, torch.float32)]
    # a second request of the same shape reuses that decoder, and its stale state does not leak in
    other = [_prompt(tiny_config, n, seed=n + 7) for n in (5, 4)]
    monkeypatch.setattr(static_decode, "wanted", lambda device: False)
    other_before = generate_batch(tiny_model, other, embeds, cfg)
    monkeypatch.setattr(static_decode, "wanted", lambda device: True)
    assert generate_batch(tiny_model, other, embeds, cfg) == other_before
    assert static_decode._idle[tiny_model.language][(2, static_decode.LENGTH_BUCKET, torch.float32)] == [kept]


@torch.no_grad()
def test_a_full_fixed_cache_refuses_another_step(tiny_model):
    lm = tiny_model.language
    fixed = StaticDecoder(lm, batch=1, max_len=4, capture=False)
    _, state = prefill(lm, lm.embed(torch.tensor([[1, 2, 3]])), None, 4, fixed.cache)
    fixed.start(state.cache.length, state.next_positions, state.key_valid)
    fixed.step(torch.tensor([4]))
    with pytest.raises(ValueError, match="KV cache overflow"):
        fixed.step(torch.tensor([5]))


@pytest.mark.long
@torch.no_grad()
def test_the_compiled_step_serves_every_batch_size_with_the_eager_logits(tiny_model):
    """What CUDA captures: `torch.compile` of the step, with dynamic shapes, at two batch sizes and
    two cache lengths, gives the eager step's logits."""
    lm = tiny_model.language
    for batch, max_len in ((1, 16), (3, 32)):
        ids = torch.randint(0, 200, (batch, 5))
        runs = []
        for compiled in (False, True):
            fixed = StaticDecoder(lm, batch, max_len, capture=False, compile=compiled)
            _, state = prefill(lm, lm.embed(ids), None, max_len, fixed.cache)
            fixed.start(state.cache.length, state.next_positions, state.key_valid)
            runs.append([fixed.step(torch.full((batch,), t)) for t in (7, 3, 11)])
        for eager, compiled in zip(*runs):
            torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=1e-5)
