"""`DecodeBatch`: sequences joining and leaving one decoding batch between steps get, at every step,
the logits a full forward pass over each sequence alone gives; bad use is refused."""

from __future__ import annotations

import pytest
import torch

from omnivision.generation.decode_batch import DecodeBatch
from omnivision.model import one_row_step


def _admit(batch: DecodeBatch, key, prompt: list[int], chunk: int) -> torch.Tensor:
    admission = batch.admit(key, batch.lm.embed(torch.tensor([prompt])), chunk=chunk)
    chunks = 1
    while (logits := admission.advance()) is None:
        chunks += 1
    assert chunks == -(-len(prompt) // chunk)
    return logits


@pytest.mark.parametrize("chunk,compiled", [(3, False), (512, False),
                                            pytest.param(3, True, marks=pytest.mark.long)])
@torch.inference_mode()
def test_joining_and_leaving_mid_batch_keeps_every_sequence_exact(tiny_model, chunk, compiled, monkeypatch):
    """`compiled`: the tiny decoder is let through the compiled one-sequence step, which a batch with
    one sequence running takes (three steps of this schedule); the others are batched."""
    lm = tiny_model.language
    one_sequence_steps = []
    if compiled:
        monkeypatch.setattr(one_row_step, "MIN_WEIGHTS", 0)
        compiled_forward = one_row_step.forward
        monkeypatch.setattr(one_row_step, "forward", lambda *a: one_sequence_steps.append(1) or compiled_forward(*a))
    tol = 1e-4 if compiled else 1e-5
    prompts = {"a": [5, 9, 17, 3, 8], "b": [11, 4, 6, 2, 19, 23, 7, 1, 14], "c": [3, 30, 12]}
    fed = {key: [] for key in prompts}  # the tokens each sequence was given after its prompt
    checked = []

    def check(key, logits):
        want = tiny_model(torch.tensor([prompts[key] + fed[key]]))[0, -1]
        torch.testing.assert_close(logits, want, atol=tol, rtol=tol)
        checked.append(key)

    batch = DecodeBatch(lm, max_rows=2, max_len=32)
    check("a", _admit(batch, "a", prompts["a"], chunk))
    schedule = [("step",), ("step",), ("admit", "b"), ("step",), ("release", "a"), ("admit", "c"),
                ("step",), ("step",), ("release", "b"), ("step",)]
    token = iter(range(40, 400, 7))
    for action, *arg in schedule:
        if action == "admit":
            assert batch.has_room()
            check(arg[0], _admit(batch, arg[0], prompts[arg[0]], chunk))
        elif action == "release":
            batch.release(arg[0])
        else:
            tokens = [next(token) % 32 for _ in batch.keys]
            for key, t in zip(batch.keys, tokens):
                fed[key].append(t)
            logits = batch.step(torch.tensor(tokens))
            for key, row_logits in zip(batch.keys, logits):
                check(key, row_logits)
    assert batch.keys == ["c"] and len(fed["a"]) == 3 and len(fed["b"]) == 3 and len(fed["c"]) == 3
    assert len(checked) == 3 + 3 + 3 + 3  # each admission and every step of every sequence
    assert len(one_sequence_steps) == (3 if compiled else 0)


@torch.inference_mode()
def test_a_full_batch_and_an_overflowing_row_are_refused(tiny_model):
    lm = tiny_model.language
    batch = DecodeBatch(lm, max_rows=1, max_len=6)
    _admit(batch, "a", [1, 2, 3, 4], chunk=8)
    assert not batch.has_room()
    with pytest.raises(RuntimeError, match="no free row"):
        batch.admit("b", lm.embed(torch.tensor([[1]])))
    batch.step(torch.tensor([5]))  # writes position 4
    batch.step(torch.tensor([6]))  # writes position 5, the last
    with pytest.raises(ValueError, match="KV cache overflow"):
        batch.step(torch.tensor([7]))
    with pytest.raises(ValueError, match="2 tokens were given|\\(2,\\) tokens"):
        batch.step(torch.tensor([7, 8]))
    batch.release("a")
    assert batch.has_room() and batch.running == 0
    with pytest.raises(ValueError, match="does not fit 6 positions"):
        batch.admit("c", lm.embed(torch.tensor([[1] * 6])))
