"""`ContinuousBatcher`: many requests decoded together, each joining and leaving between steps.

One thread owns a `DecodeBatch` and loops: it admits a waiting request when a row is free (its
prompt prefilled in chunks of `chunk` tokens, one chunk per turn of the loop, so running requests
wait at most one chunk), then decodes one token for every running request in one forward pass.
Decoding reads every weight once per step whatever the batch size, so on a bandwidth-bound CPU a
batch of 8 costs little more than one.

`submit` returns the request's token ids as an iterator with `generate`'s meaning: sampled with the
request's own settings, seed and repetition penalty, through its own step hooks (JSON mode,
logprobs), ending before a stop id or after `max_new_tokens`. Closing the iterator (or dropping
it) cancels the request: its row is freed before the next step. Each request is checked against
the batcher's context (`max_len` positions) when submitted.

Greedy answers are the ones a request gets alone (`tests/generation/test_continuous.py`): each row
attends only to its own positions, at its own rotary positions.
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import torch

from omnivision.generation.decode_batch import Admission, DecodeBatch
from omnivision.generation.generate import (ContextOverflowError, GenerationConfig, StepHooks, check_fits,
                                            choose, seen_tokens)
from omnivision.model import OmniVisionModel

_END = object()
DEFAULT_MAX_LEN = 4096
"""Positions per row when the model's context is longer (the cache holds max_batch + 1 rows of it)."""


@dataclass(eq=False)
class _Request:
    embeds: torch.Tensor  # [1, T, D]
    cfg: GenerationConfig
    hooks: StepHooks | None
    seen: torch.Tensor | None  # [1, V] bool, for a repetition penalty
    generator: torch.Generator | None
    out: queue.Queue = field(default_factory=queue.Queue)
    produced: int = 0
    last: torch.Tensor | None = None  # [1] the token to feed at the next step
    cancelled: bool = False


class TokenStream:
    """A request's token ids, as an iterator; `close` (or dropping it) cancels the request."""

    def __init__(self, request: _Request, wake: threading.Condition) -> None:
        self._request, self._wake = request, wake

    def __iter__(self) -> TokenStream:
        return self

    def __next__(self) -> int:
        if self._request.cancelled:
            raise StopIteration
        item = self._request.out.get()
        if item is _END or isinstance(item, BaseException):
            self.close()
            if item is _END:
                raise StopIteration
            raise item
        return item

    def close(self) -> None:
        """Cancel the request (nothing if it has ended): its row is freed before the next step."""
        if not self._request.cancelled:
            self._request.cancelled = True
            with self._wake:
                self._wake.notify()

    def __del__(self) -> None:
        self.close()


class ContinuousBatcher:
    def __init__(self, model: OmniVisionModel, max_batch: int, max_len: int | None = None,
                 chunk: int = 256) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")
        context = model.config.text.max_position_embeddings
        self.model, self.chunk = model, chunk
        self.max_len = min(context, max_len or DEFAULT_MAX_LEN)
        self.batch = DecodeBatch(model.language, max_batch, self.max_len)
        self._inbox: deque[_Request] = deque()
        self._wake = threading.Condition()
        self._closed = False
        self._ids = itertools.count()
        self._thread = threading.Thread(target=self._loop, name="omnivision-batcher", daemon=True)
        self._thread.start()

    # --- the callers' side ---------------------------------------------------------------------

    @torch.inference_mode()
    def submit(self, prompt_ids: Sequence[int], image_embeds: torch.Tensor | None, cfg: GenerationConfig,
               hooks: StepHooks | None = None) -> Iterator[int]:
        """The request's token ids as they are generated, a `TokenStream` (see the module docstring)."""
        check_fits(self.model, [prompt_ids], cfg)
        if len(prompt_ids) + cfg.max_new_tokens > self.max_len:
            raise ContextOverflowError(f"prompt of {len(prompt_ids)} tokens plus {cfg.max_new_tokens} new "
                                       f"tokens exceeds the batcher's {self.max_len} positions per request")
        device = self.model.device
        ids = torch.tensor([list(prompt_ids)], device=device)  # [1, T]
        seen = None
        if cfg.sampling.repetition_penalty != 1.0:
            seen = seen_tokens(ids, torch.ones_like(ids, dtype=torch.bool), self.model.config.text.vocab_size)
        generator = None if cfg.seed is None else torch.Generator(device=device).manual_seed(cfg.seed)
        request = _Request(self.model.embed(ids, image_embeds), cfg, hooks, seen, generator)
        if cfg.max_new_tokens == 0:
            return iter(())
        with self._wake:
            if self._closed:
                raise RuntimeError("the batcher is closed")
            self._inbox.append(request)
            self._wake.notify()
        return TokenStream(request, self._wake)

    def close(self) -> None:
        """Stop the thread; requests still running end with an error."""
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._thread.join()

    # --- the batcher's thread ------------------------------------------------------------------

    def _loop(self) -> None:
        waiting: deque[_Request] = deque()
        running: dict[int, _Request] = {}
        admitting: tuple[Admission, _Request] | None = None
        while True:
            with self._wake:
                while not (self._closed or self._inbox or waiting or running or admitting):
                    self._wake.wait()
                if self._closed:
                    break
                waiting.extend(self._inbox)
                self._inbox.clear()
            try:
                with torch.inference_mode():
                    admitting = self._turn(waiting, running, admitting)
            except Exception as err:  # noqa: BLE001 - a failed step fails its requests, not the thread
                for request in [*running.values(), *([admitting[1]] if admitting else [])]:
                    request.out.put(err)
                for key in list(running):
                    self.batch.release(key)
                running.clear()
                admitting = None
                self.batch.abandon_admission()
        error = RuntimeError("the batcher was closed")
        for request in [*waiting, *running.values(), *([admitting[1]] if admitting else [])]:
            request.out.put(error)

    def _turn(self, waiting: deque[_Request], running: dict[int, _Request],
              admitting: tuple[Admission, _Request] | None) -> tuple[Admission, _Request] | None:
        """One turn of the loop: drop cancelled requests, prefill one chunk, decode one step."""
        for key in [k for k, r in running.items() if r.cancelled]:
            self.batch.release(key)
            del running[key]
        for request in [r for r in waiting if r.cancelled]:
            waiting.remove(request)
        if admitting is not None and admitting[1].cancelled:
            self.batch.abandon_admission()
            admitting = None
        if admitting is None and waiting and self.batch.has_room():
            request = waiting.popleft()
            admitting = (self.batch.admit(next(self._ids), request.embeds, self.chunk), request)
        if admitting is not None:
            admission, request = admitting
            logits = admission.advance()
            if logits is not None:
                admitting = None
                running[admission.key] = request
                self._emit(admission.key, request, logits[None], running)
        if running:
            keys = list(self.batch.keys)
            logits = self.batch.step(torch.cat([running[k].last for k in keys]))  # [n, V]
            for row, key in enumerate(keys):
                self._emit(key, running[key], logits[row:row + 1], running)
        return admitting

    def _emit(self, key: int, request: _Request, logits: torch.Tensor, running: dict[int, _Request]) -> None:
        """Choose the request's next token from logits [1, V]; hand it over, or end the request."""
        if request.cancelled:
            self._drop(key, running)
            return
        token = choose(logits, request.cfg, request.seen, request.generator, request.hooks)  # [1]
        request.produced += 1
        if int(token) in request.cfg.stop_token_ids:
            self._finish(key, request, running)
            return
        request.out.put(int(token))
        if request.seen is not None:
            request.seen[0, token] = True
        if request.produced == request.cfg.max_new_tokens:
            self._finish(key, request, running)
            return
        request.last = token

    def _finish(self, key: int, request: _Request, running: dict[int, _Request]) -> None:
        request.out.put(_END)
        self._drop(key, running)

    def _drop(self, key: int, running: dict[int, _Request]) -> None:
        self.batch.release(key)
        del running[key]
