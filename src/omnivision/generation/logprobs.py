"""`LogprobRecorder`: step hooks that record, for every generated token, its log-probability and the
most likely alternatives, optionally in front of a constraint (e.g. JSON output) that they chain to.

The log-probabilities are those of the model's own distribution (before the constraint masks it),
as OpenAI's API reports them. Records are taken by the consumer as the text they belong to is
released (`take`), so they travel with the piece of text they explain. One row (batch of 1).
"""

from __future__ import annotations

import collections
from dataclasses import dataclass

import torch

from omnivision.generation.generate import StepHooks


@dataclass(frozen=True)
class TokenLogprob:
    token: int
    logprob: float
    alternatives: list[tuple[int, float]]
    """The `top` most likely tokens with their log-probabilities, most likely first."""


class LogprobRecorder:
    """`StepHooks` recording `TokenLogprob`s (none when `top` is None) around an optional constraint."""

    def __init__(self, top: int | None, constraint: StepHooks | None = None) -> None:
        self.top, self.constraint = top, constraint
        self._records: collections.deque[TokenLogprob] = collections.deque()

    def constrain(self, logits: torch.Tensor) -> torch.Tensor:
        return logits if self.constraint is None else self.constraint.constrain(logits)

    def observe(self, logits: torch.Tensor, tokens: torch.Tensor) -> None:
        if self.constraint is not None:
            self.constraint.observe(logits, tokens)
        if self.top is None:
            return
        logp = torch.log_softmax(logits[0], dim=-1)  # [V]
        alternatives = []
        if self.top:
            values, ids = torch.topk(logp, self.top)
            alternatives = list(zip(ids.tolist(), values.tolist()))
        self._records.append(TokenLogprob(int(tokens[0]), float(logp[tokens[0]]), alternatives))

    def take(self) -> list[TokenLogprob]:
        """The records made since the last call, oldest first."""
        out = list(self._records)
        self._records.clear()
        return out
