"""`DecodeBatch`: sequences that join and leave one decoding batch between steps, the core of
continuous batching.

Rows 0..n-1 of one KV cache hold the running sequences, each at a length of its own. `step` decodes
one token for every running row in a single forward pass (`model.kv_cache.RowWrite`: each row
writes at its own position and attends to its own written positions; its rotary position is its
length, since every sequence was prefilled alone, without padding). `admit` prefills a new prompt
alone, in chunks, into a staging row past the running ones (`Admission`: the caller may run decode
steps between chunks, so a long prompt holds the others up for one chunk at a time) and moves it
into row n when done. `release` frees a row by moving the last running row into it, so the running
rows stay 0..n-1 and a step works on views of the cache, never on gathered copies. Rows are named
by the caller's keys (`keys`, in row order), which is how per-request state follows a moved row.
While a single sequence runs, its step is the one-sequence decode step (`model.one_row_step`, each
layer compiled where the decoder is large enough), as it would be outside the batch: one user of a
batching server decodes as fast as one without it.

Sampling, stop conditions and everything per request are the caller's (a scheduler); this holds
only the cache and the forward passes.
"""

from __future__ import annotations

from typing import Hashable

import torch

from omnivision.model import one_row_step
from omnivision.model.kv_cache import RowWrite
from omnivision.model.qwen2 import Qwen2ForCausalLM


class _Membership:
    """Lives while the running sequences stay the same ones (an object the compiled step can hold a
    weak reference to)."""


class Admission:
    """A prompt being prefilled into the staging row, one chunk per `advance`."""

    def __init__(self, batch: DecodeBatch, key: Hashable, embeds: torch.Tensor, chunk: int) -> None:
        self.batch, self.key, self.embeds, self.chunk = batch, key, embeds, chunk
        self.view = batch.cache.row(batch.max_rows)  # the staging row, as a one-row cache
        self.done = 0
        self.logits: torch.Tensor | None = None  # [V] of the token after the prompt, once done

    @property
    def finished(self) -> bool:
        return self.logits is not None

    def advance(self) -> torch.Tensor | None:
        """Prefill the next chunk; on the last one, move the sequence into the running rows and
        return the logits [V] of its first new token (None before that)."""
        if self.finished:
            raise RuntimeError("this prompt has been admitted already")
        lm, total = self.batch.lm, self.embeds.shape[1]
        stop = min(total, self.done + self.chunk)
        positions = torch.arange(self.done, stop, device=self.embeds.device)[None]  # [1, t]
        hidden = lm(self.embeds[:, self.done:stop], positions, None, self.view)  # [1, t, D]
        self.done = stop
        if stop < total:
            return None
        self.logits = lm.logits(hidden[:, -1])[0]
        self.batch._join(self.key, total)
        return self.logits


class DecodeBatch:
    def __init__(self, lm: Qwen2ForCausalLM, max_rows: int, max_len: int) -> None:
        if max_rows < 1 or max_len < 1:
            raise ValueError(f"max_rows and max_len must be >= 1, got {max_rows} and {max_len}")
        self.lm, self.max_rows, self.max_len = lm, max_rows, max_len
        self.cache = lm.new_cache(max_rows + 1, max_len)  # the last row stages admissions
        device = lm.model.norm.weight.device
        self.lengths = torch.zeros(max_rows, dtype=torch.long, device=device)  # [max_rows]
        self.keys: list[Hashable] = []
        """The running sequences' keys, in row order."""
        self._admitting: Admission | None = None
        self._membership = _Membership()
        """Replaced whenever a sequence joins: the compiled one-sequence step takes the weights as
        unchanged while it lives (`one_row_step.forward`), so they are looked at again on each join."""

    @property
    def running(self) -> int:
        return len(self.keys)

    def has_room(self) -> bool:
        return self.running < self.max_rows and self._admitting is None

    def admit(self, key: Hashable, embeds: torch.Tensor, chunk: int = 512) -> Admission:
        """Start prefilling embeds [1, T, D] (one prompt) for the sequence `key`; drive it with
        `Admission.advance` until it returns the first logits."""
        if not self.has_room():
            raise RuntimeError("no free row (or another admission is under way)")
        if key in self.keys:
            raise ValueError(f"sequence {key!r} is running already")
        if embeds.ndim != 3 or embeds.shape[0] != 1:
            raise ValueError(f"admit takes one prompt's embeddings [1, T, D], got {tuple(embeds.shape)}")
        if not 1 <= embeds.shape[1] < self.max_len:
            raise ValueError(f"a prompt of {embeds.shape[1]} tokens does not fit {self.max_len} positions "
                             f"with room to generate")
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")
        self._admitting = Admission(self, key, embeds, chunk)
        return self._admitting

    def abandon_admission(self) -> None:
        """Give up the admission under way, if any (its prompt is never joined)."""
        self._admitting = None

    def _join(self, key: Hashable, length: int) -> None:
        row = self.running
        self.cache.move_row(self.max_rows, row, length)
        self.lengths[row] = length
        self.keys.append(key)
        self._admitting = None
        self._membership = _Membership()

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Append tokens [n] (one per running row, in row order); return the logits [n, V] of the next."""
        n = self.running
        if tokens.shape != (n,):
            raise ValueError(f"{n} sequences are running but {tuple(tokens.shape)} tokens were given")
        embeds = self.lm.embed(tokens[:, None])  # [n, 1, D]
        if n == 1:
            logits = self._one_sequence_step(embeds)
            if logits is not None:
                return logits
        lengths = self.lengths[:n]  # a view: advanced in place by the forward pass
        span = int(lengths.max()) + 1
        write = RowWrite(self.cache, lengths, span)
        positions = lengths[:, None].clone()  # [n, 1]
        written = torch.arange(span, device=lengths.device)[None] <= lengths[:, None]  # [n, span]
        hidden = self.lm(embeds, positions, cache=write,
                         mask=written[:, None, None, :])  # [n, 1, D]
        return self.lm.logits(hidden[:, -1])

    def _one_sequence_step(self, embeds: torch.Tensor) -> torch.Tensor | None:
        """Row 0 alone (embeds [1, 1, D]) through the compiled one-sequence step: logits [1, V], or
        None where that step does not apply (then the batched step runs)."""
        view = self.cache.row(0)
        view.length = int(self.lengths[0])
        if not one_row_step.applies(self.lm, embeds, None, view):
            return None
        hidden = one_row_step.forward(self.lm, embeds, self.lengths[:1, None].clone(), view, self._membership)
        if hidden is None:
            return None
        self.lengths[0] += 1
        return self.lm.logits(hidden[:, -1])

    def release(self, key: Hashable) -> None:
        """Free the row of sequence `key` at once (finished or cancelled)."""
        row = self.keys.index(key)
        last = self.running - 1
        if row != last:
            length = int(self.lengths[last])
            self.cache.move_row(last, row, length)
            self.lengths[row] = length
            self.keys[row] = self.keys[last]
        self.keys.pop()
        self.lengths[last] = 0
