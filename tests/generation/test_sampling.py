"""Sampling filters on hand-made logits."""

from __future__ import annotations


import pytest
import torch

from omnivision.generation.sampling import (SamplingConfig, apply_repetition_penalty, filter_top_k,
                                            filter_top_p, sample)


def test_top_k_keeps_exactly_k():
    logits = torch.tensor([[1.0, 4.0, 3.0, 2.0]])
    out = filter_top_k(logits, 2)
    assert torch.isinf(out).tolist() == [[True, False, False, True]]


def test_top_p_keeps_smallest_set_reaching_p():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    out = filter_top_p(probs.log(), 0.8)
    assert torch.isinf(out).tolist() == [[False, False, True, True]]
    out = filter_top_p(probs.log(), 0.81)
    assert torch.isinf(out).tolist() == [[False, False, False, True]]
    # permuted input gives the permuted answer
    out = filter_top_p(probs[:, [3, 0, 2, 1]].log(), 0.8)
    assert torch.isinf(out).tolist() == [[True, False, True, False]]


def test_repetition_penalty_formula():
    logits = torch.tensor([[2.0, -2.0, 1.0]])
    seen = torch.tensor([[True, True, False]])
    out = apply_repetition_penalty(logits, seen, 2.0)
    assert out.tolist() == [[1.0, -4.0, 1.0]]


def test_greedy_is_argmax_and_sampling_respects_filters():
    logits = torch.tensor([[0.0, 3.0, 2.9, -1.0]])
    assert sample(logits, SamplingConfig()).item() == 1
    g = torch.Generator().manual_seed(0)
    draws = {sample(logits, SamplingConfig(temperature=1.0, top_k=2), generator=g).item()
             for _ in range(200)}
    assert draws == {1, 2}


@pytest.mark.parametrize("kwargs", [dict(temperature=-1), dict(top_p=0), dict(top_p=1.5),
                                    dict(top_k=-2), dict(repetition_penalty=0)])
def test_bad_settings_raise(kwargs):
    with pytest.raises(ValueError):
        SamplingConfig(**kwargs)
