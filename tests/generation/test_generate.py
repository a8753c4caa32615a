"""The decode loop: cached decoding equals full recomputation, batches equal single runs, stops."""

from __future__ import annotations

import pytest
import torch

from omnivision.generation.generate import (ContextOverflowError, GenerationConfig, decode_step, generate,
                                            generate_batch, prefill)
from omnivision.generation.sampling import SamplingConfig


def _prompt(cfg, n_text: int, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    text = torch.randint(0, 256, (n_text,), generator=g).tolist()
    return text[:2] + [cfg.image_token_id] * cfg.num_image_tokens + text[2:]


def _greedy_without_cache(model, ids: list[int], image_embeds, n: int) -> list[int]:
    out = []
    for _ in range(n):
        x = torch.tensor([ids + out])
        logits = model(x, image_embeds=image_embeds)
        out.append(int(logits[0, -1].argmax()))
    return out


@torch.no_grad()
def test_cached_decoding_equals_full_recomputation(tiny_model, tiny_config):
    ids = _prompt(tiny_config, 9, seed=1)
    embeds = tiny_model.encode_images(torch.randn(1, 3, 84, 84))
    got = list(generate(tiny_model, ids, embeds, GenerationConfig(max_new_tokens=12)))
    assert got == _greedy_without_cache(tiny_model, ids, embeds, 12)


@torch.no_grad()
def test_batched_equals_single(tiny_model, tiny_config):
    prompts = [_prompt(tiny_config, n, seed=n) for n in (3, 11, 7)]
    pixels = torch.randn(3, 3, 84, 84)
    embeds = tiny_model.encode_images(pixels)
    cfg = GenerationConfig(max_new_tokens=10)
    singles = [list(generate(tiny_model, p, embeds[i:i + 1], cfg)) for i, p in enumerate(prompts)]
    assert generate_batch(tiny_model, prompts, embeds, cfg) == singles
    assert all(len(s) == 10 for s in singles)


@torch.no_grad()
def test_stop_token_ends_generation_and_is_not_yielded(tiny_model, tiny_config):
    ids = _prompt(tiny_config, 5, seed=3)
    embeds = tiny_model.encode_images(torch.randn(1, 3, 84, 84))
    free = list(generate(tiny_model, ids, embeds, GenerationConfig(max_new_tokens=8)))
    stop = free[3]
    first = free.index(stop)
    stopped = list(generate(tiny_model, ids, embeds,
                            GenerationConfig(max_new_tokens=8, stop_token_ids=(stop,))))
    assert stopped == free[:first]


@torch.no_grad()
def test_seeded_sampling_is_reproducible_and_differs_from_greedy(tiny_model, tiny_config):
    ids = _prompt(tiny_config, 5, seed=4)
    embeds = tiny_model.encode_images(torch.randn(1, 3, 84, 84))
    hot = SamplingConfig(temperature=5.0, top_k=50, top_p=0.95)
    a = list(generate(tiny_model, ids, embeds, GenerationConfig(20, hot, seed=7)))
    b = list(generate(tiny_model, ids, embeds, GenerationConfig(20, hot, seed=7)))
    c = list(generate(tiny_model, ids, embeds, GenerationConfig(20, hot, seed=8)))
    greedy = list(generate(tiny_model, ids, embeds, GenerationConfig(20)))
    assert a == b
    assert a != c and a != greedy


def test_context_overflow_is_refused_before_work(tiny_model, tiny_config):
    ids = _prompt(tiny_config, 5, seed=5)
    with pytest.raises(ContextOverflowError, match="exceeds the context"):
        next(generate(tiny_model, ids, None, GenerationConfig(max_new_tokens=5000)))


def test_image_placeholder_count_is_checked(tiny_model, tiny_config):
    ids = _prompt(tiny_config, 5, seed=6)
    with pytest.raises(ValueError, match="image placeholder"):
        next(generate(tiny_model, ids, None, GenerationConfig(max_new_tokens=2)))


@torch.no_grad()
def test_prefill_and_decode_steps_match_full_recomputation(tiny_model):
    """The two steps on their own: a left-padded batch, fed chosen tokens, gives each row the logits
    that a full forward pass over that row alone gives."""
    lm = tiny_model.language
    rows = [[5, 9, 17, 3, 8, 2], [11, 4]]
    fed = [[7, 1, 30], [2, 2, 9]]
    ids, valid = _left_pad_for_test(rows)
    logits, state = prefill(lm, lm.embed(ids), valid, 6 + 3)
    steps = [logits]
    for n in range(2):
        steps.append(decode_step(lm, torch.tensor([fed[0][n], fed[1][n]]), state))
    for row, prompt in enumerate(rows):
        for n, got in enumerate(steps):
            full = torch.tensor([prompt + fed[row][:n]])
            want = tiny_model(full)[0, -1]
            torch.testing.assert_close(got[row], want, atol=1e-5, rtol=1e-5)
    assert state.cache.length == 6 + 2


def _left_pad_for_test(rows):
    width = max(map(len, rows))
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    valid = torch.zeros(len(rows), width, dtype=torch.bool)
    for r, seq in enumerate(rows):
        ids[r, width - len(seq):] = torch.tensor(seq)
        valid[r, width - len(seq):] = True
    return ids, valid
