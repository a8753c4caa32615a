"""LogprobRecorder: the chosen token's log-probability and the top alternatives from the model's own
logits, in front of a constraint that still sees every step."""

from __future__ import annotations

import math

import torch

from omnivision.generation.logprobs import LogprobRecorder


class MaskFirst:
    """A constraint that forbids token 0 and remembers what it observed."""

    def __init__(self):
        self.observed = []

    def constrain(self, logits):
        return logits.index_fill(-1, torch.tensor([0]), float("-inf"))

    def observe(self, logits, tokens):
        self.observed.append(int(tokens[0]))


def test_records_logprob_and_alternatives_of_the_model_distribution():
    logits = torch.tensor([[3.0, 1.0, 2.0, -1.0]])
    constraint = MaskFirst()
    recorder = LogprobRecorder(2, constraint)
    constrained = recorder.constrain(logits)
    assert constrained[0, 0] == float("-inf") and constrained[0, 2] == 2.0
    recorder.observe(logits, torch.tensor([2]))
    recorder.observe(logits, torch.tensor([1]))
    first, second = recorder.take()
    logp = torch.log_softmax(logits[0], -1)
    assert first.token == 2 and math.isclose(first.logprob, float(logp[2]), rel_tol=1e-6)
    assert [t for t, _ in first.alternatives] == [0, 2]  # the model's own top 2, before the mask
    assert second.token == 1 and constraint.observed == [2, 1]
    assert recorder.take() == []


def test_without_top_nothing_is_recorded_but_the_constraint_still_runs():
    constraint = MaskFirst()
    recorder = LogprobRecorder(None, constraint)
    recorder.observe(torch.zeros(1, 4), torch.tensor([3]))
    assert recorder.take() == [] and constraint.observed == [3]
    zero_top = LogprobRecorder(0)
    zero_top.observe(torch.zeros(1, 4), torch.tensor([3]))
    assert zero_top.take()[0].alternatives == []
