"""Generation slots and the bounded queue in front of them.

A fixed number of worker threads (`slots`) each run one generation at a time; requests beyond them
wait in a queue of bounded length, and a request that finds the queue full is refused at once with
503 and `Retry-After` (the app maps `Overloaded`). Each job carries a cancel flag that the app sets
when its client goes away: a waiting job leaves the queue at once, a running one stops before its
next decoding step. Results travel to the event loop through `loop.call_soon_threadsafe`.

The slots do not share a decoding batch: the KV cache keeps one write position per batch, so a
request cannot join a batch mid-flight (continuous batching would need per-row positions). Slots
overlap where torch releases the GIL, and the image-embedding cache is shared (under a lock), so a
follow-up question about the same image skips the vision tower.
"""

from __future__ import annotations

import asyncio
import collections
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch

from omnivision.generation.generate import GenerationConfig, generate
from omnivision.generation.sampling import SamplingConfig
from omnivision.generation.text_stream import TextStream
from omnivision.vlm import OmniVision


class Overloaded(Exception):
    """Every slot is busy and the queue is full."""


@dataclass
class Choice:
    """What one choice needs besides the prompt."""

    max_tokens: int
    temperature: float
    top_p: float
    seed: int | None
    stop: tuple[str, ...]
    top_logprobs: int | None
    """None: no logprobs; 0..20: the chosen token's logprob and this many alternatives."""
    constraint_factory: Callable[[], Any] | None = None
    """Makes a fresh constraint (`StepHooks` with `constrain`/`observe`) for JSON output."""


@dataclass
class Job:
    prompt_ids: list[int]
    images: list  # decoded PIL images, in prompt order
    choices: list[Choice]
    deadline_s: float
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancel: threading.Event = field(default_factory=threading.Event)

    def emit(self, event: tuple) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)


class _LogprobRecorder:
    """StepHooks that keep, per generated token, its logprob and the top alternatives, and pass
    the logits through an optional constraint."""

    def __init__(self, top: int | None, constraint: Any | None) -> None:
        self.top, self.constraint = top, constraint
        self.records: collections.deque = collections.deque()

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
        self.records.append((int(tokens[0]), float(logp[tokens[0]]), alternatives))


class Engine:
    def __init__(self, vlm: OmniVision, slots: int = 1, queue: int = 64) -> None:
        self.vlm = vlm
        self.queue_limit = queue
        self._waiting: collections.deque[Job] = collections.deque()
        self._lock = threading.Condition()
        self._encode_lock = threading.Lock()
        self.running = 0
        self._admitted = 0  # requests past admission, still decoding their images
        self.cancelled = 0
        """Jobs stopped by their client leaving: taken out of the queue, or stopped mid-answer."""
        self._closed = False
        self._threads = [threading.Thread(target=self._work, name=f"omnivision-slot-{i}", daemon=True)
                         for i in range(slots)]
        for t in self._threads:
            t.start()

    # --- the app's side -------------------------------------------------------------------------

    def admit(self) -> None:
        """Reserve a place (a slot or the queue) before the request's images are decoded, so that
        a flood of requests is refused before it costs any decoding; `submit` or `release` ends it."""
        with self._lock:
            if self._closed:
                raise Overloaded("the server is shutting down")
            ahead = self.running + len(self._waiting) + self._admitted
            if ahead >= len(self._threads) + self.queue_limit:
                raise Overloaded(f"all {len(self._threads)} slots are busy and {self.queue_limit} "
                                 "requests are waiting")
            self._admitted += 1

    def release(self) -> None:
        """Give back an admission that will not be submitted (its request failed)."""
        with self._lock:
            self._admitted -= 1

    def submit(self, job: Job) -> None:
        """Queue an admitted job for the next free slot."""
        with self._lock:
            self._admitted -= 1
            if self._closed:
                raise Overloaded("the server is shutting down")
            self._waiting.append(job)
            self._lock.notify()

    def cancel(self, job: Job) -> None:
        job.cancel.set()
        with self._lock:
            try:
                self._waiting.remove(job)
                self.cancelled += 1
            except ValueError:
                pass

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for job in self._waiting:
                job.cancel.set()
            self._waiting.clear()
            self._lock.notify_all()

    # --- the slots' side ------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            with self._lock:
                while not self._waiting and not self._closed:
                    self._lock.wait()
                if self._closed:
                    return
                job = self._waiting.popleft()
                self.running += 1
            try:
                self._run(job)
            except Exception as e:  # reported to the client as a 500 envelope; the slot lives on
                job.emit(("error", f"generation failed: {type(e).__name__}"))
            finally:
                with self._lock:
                    self.running -= 1

    def _run(self, job: Job) -> None:
        embeds = None
        if job.images:
            with self._encode_lock:
                embeds = self.vlm.encode_images(job.images)  # [N, K, D]
        completion = 0
        for index, choice in enumerate(job.choices):
            if job.cancel.is_set():
                break
            completion += self._run_choice(job, index, choice, embeds)
        job.emit(("done", len(job.prompt_ids), completion))

    def _run_choice(self, job: Job, index: int, choice: Choice, embeds) -> int:
        vlm = self.vlm
        sampling = SamplingConfig(temperature=choice.temperature, top_p=choice.top_p)
        seed = None if choice.seed is None else (choice.seed + index) % 2**64
        cfg = GenerationConfig(max_new_tokens=choice.max_tokens, sampling=sampling, seed=seed,
                               stop_token_ids=vlm.config.stop_token_ids)
        constraint = choice.constraint_factory() if choice.constraint_factory else None
        hooks = _LogprobRecorder(choice.top_logprobs, constraint)
        state = {"reason": "stop"}

        def tokens() -> Iterator[int]:
            produced = 0
            steps = generate(vlm.model, job.prompt_ids, embeds, cfg, hooks)
            try:
                for token in steps:
                    produced += 1
                    yield token
                    if job.cancel.is_set():
                        state["reason"] = "cancelled"
                        return
                    if time.monotonic() > job.deadline_s:
                        state["reason"] = "length"
                        return
                if produced >= choice.max_tokens:
                    state["reason"] = "length"
            finally:
                steps.close()

        text = TextStream(tokens(), vlm.tokenizer, choice.stop)
        tokenizer = vlm.tokenizer
        for piece in text:
            records = []
            while hooks.records:
                token, logprob, alternatives = hooks.records.popleft()
                records.append(_logprob_entry(tokenizer, token, logprob, alternatives))
            job.emit(("piece", index, piece, records))
        if state["reason"] == "cancelled":
            with self._lock:
                self.cancelled += 1
            return len(text.token_ids)
        reason = "stop" if text.stopped_by is not None else state["reason"]
        job.emit(("finish", index, reason))
        return len(text.token_ids)


def _logprob_entry(tokenizer, token: int, logprob: float, alternatives: list) -> dict:
    def one(t: int, lp: float) -> dict:
        text = tokenizer.decode([t], skip_special=False)
        return {"token": text, "logprob": lp if math.isfinite(lp) else -9999.0,
                "bytes": list(text.encode("utf-8"))}

    return {**one(token, logprob), "top_logprobs": [one(t, lp) for t, lp in alternatives]}
