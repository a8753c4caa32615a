"""Generation slots and the bounded queue in front of them.

A fixed number of worker threads (`slots`) each run one generation at a time; requests beyond them
wait in a queue of bounded length, and a request that finds the queue full is refused at once with
503 and `Retry-After` (the app maps `Overloaded`). Each job carries a cancel flag that the app sets
when its client goes away: a waiting job leaves the queue at once, a running one stops before its
next decoding step. Results travel to the event loop as `events` through
`loop.call_soon_threadsafe`.

A slot answers through the Python API only: `OmniVision.encode_images` (with the server's pixel
limit) and `OmniVision.stream_prompt` (with logprob and JSON-output step hooks and an interrupt for
cancellation and the deadline); it never touches the model or the decoding loop itself.

With `max_batch` above 1 the app turns on the API's batching (`OmniVision.start_batching`): each
slot's `stream_prompt` then hands its request to one decoding batch that every slot shares, which
it joins after its prefill and leaves when it ends or is cancelled (`generation.continuous`); the
slot thread waits on the request's tokens. Image encoding runs in the slots, outside the batch.
The image-embedding cache is shared, so a follow-up question about the same image skips the
vision tower.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from omnivision.generation.logprobs import LogprobRecorder
from omnivision.serve.events import Done, Event, Failed, Finished, Piece
from omnivision.serve.openai_format import logprob_entry
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

    def emit(self, event: Event) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)

    def interrupted(self) -> str | None:
        """Why generation must stop now, if it must: the client left, or the deadline passed."""
        if self.cancel.is_set():
            return "cancelled"
        return "length" if time.monotonic() > self.deadline_s else None


class Engine:
    def __init__(self, vlm: OmniVision, slots: int = 1, queue: int = 64, max_pixels: int | None = None) -> None:
        self.vlm = vlm
        self.queue_limit = queue
        self.max_pixels = max_pixels
        """The server's image limit, handed to the image processor (None: the processor's own)."""
        self._waiting: collections.deque[Job] = collections.deque()
        self._lock = threading.Condition()
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
                job.emit(Failed(f"generation failed: {type(e).__name__}"))
            finally:
                with self._lock:
                    self.running -= 1

    def _run(self, job: Job) -> None:
        embeds = self.vlm.encode_images(job.images, self.max_pixels) if job.images else None  # [N, K, D]
        completion = 0
        for index, choice in enumerate(job.choices):
            if job.cancel.is_set():
                break
            completion += self._run_choice(job, index, choice, embeds)
        job.emit(Done(len(job.prompt_ids), completion))

    def _run_choice(self, job: Job, index: int, choice: Choice, embeds) -> int:
        """Stream one choice's answer as events; the number of tokens it generated."""
        constraint = choice.constraint_factory() if choice.constraint_factory else None
        hooks = LogprobRecorder(choice.top_logprobs, constraint)
        seed = None if choice.seed is None else (choice.seed + index) % 2**64
        text = self.vlm.stream_prompt(job.prompt_ids, embeds, stop=choice.stop, hooks=hooks,
                                      interrupt=job.interrupted, max_new_tokens=choice.max_tokens,
                                      temperature=choice.temperature, top_p=choice.top_p, seed=seed)
        tokenizer = self.vlm.tokenizer
        for piece in text:
            job.emit(Piece(index, piece, [logprob_entry(tokenizer, r) for r in hooks.take()]))
        if text.finish_reason == "cancelled":
            with self._lock:
                self.cancelled += 1
        else:
            job.emit(Finished(index, text.finish_reason))
        return len(text.token_ids)
