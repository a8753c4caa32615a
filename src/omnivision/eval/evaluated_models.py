"""The models a benchmark run can ask: a local `OmniVision` and any OpenAI-compatible endpoint.

Both take a batch of `Sample`s and return one answer per sample, in order, honouring the task's
generation settings the way lmms-eval's model wrappers do:

- greedy unless the task samples (`Generation.samples`: `do_sample` set and a temperature above
  0, so MM-Vet's temperature 0.2 with do_sample false is greedy, as the reference states; an
  endpoint is then sent temperature 0). A sampled answer uses a seed derived from the run seed and
  the sample's task and id, so it does not depend on batching, sharding or resuming;
- `max_new_tokens` as the answer length limit;
- the answer is cut at the earliest of the task's `until` stop strings and stripped, as the
  wrappers strip their decoded text (`tasks.base.cut_at_stop`).

`LocalModel` batches greedy samples through `OmniVision.answer_batch` (the same answers as one by
one) and answers sampled ones one at a time with `OmniVision.answer`. OmniVision's prompt has one
image slot, so it is given a sample's first image only; `images_used` says so, and the runner counts
such samples. `EndpointModel` sends every image as a data URL, with a bounded number of requests
in flight, so peers served by vLLM, llama.cpp, Ollama, ... are scored by the same code.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from omnivision.chat_client import ChatClient, image_data_url, user_message
from omnivision.eval.tasks import Generation, Sample
from omnivision.eval.tasks.base import cut_at_stop
from omnivision.vlm import OmniVision

DEFAULT_SEED = 1234
"""lmms-eval seeds torch with 1234 by default."""


class EvalModel(Protocol):
    def predict(self, samples: Sequence[Sample]) -> list[str]:
        """One answer per sample, in order."""
        ...

    def images_used(self, sample: Sample) -> int:
        """How many of the sample's images the model is shown."""
        ...

    def describe(self) -> dict:
        """What answered, for the run metadata."""
        ...


def sample_seed(seed: int, sample: Sample) -> int:
    """A seed for one sample that depends only on the run seed, the task and the id."""
    return (seed + zlib.crc32(f"{sample.task}/{sample.id}".encode())) % 2**31


def _check_supported(gen: Generation) -> None:
    if gen.num_beams != 1:
        raise ValueError(f"beam search (num_beams={gen.num_beams}) is not supported")


class LocalModel:
    def __init__(self, vlm: OmniVision, source: str | None = None, seed: int = DEFAULT_SEED) -> None:
        self.vlm, self.source, self.seed = vlm, source, seed

    def images_used(self, sample: Sample) -> int:
        return min(1, len(sample.images))

    def describe(self) -> dict:
        return {"backend": "local", "source": self.source, "note": self.vlm.note,
                "dtype": str(self.vlm.dtype).removeprefix("torch."),
                "device": str(self.vlm.model.device), "seed": self.seed}

    def predict(self, samples: Sequence[Sample]) -> list[str]:
        answers: list[str | None] = [None] * len(samples)
        greedy: dict[int, list[int]] = {}  # max_new_tokens -> rows decoded together
        for i, sample in enumerate(samples):
            _check_supported(sample.generation)
            if sample.generation.samples:
                answers[i] = self._sampled(sample)
            else:
                greedy.setdefault(sample.generation.max_new_tokens, []).append(i)
        for max_new_tokens, rows in greedy.items():
            texts = self.vlm.answer_batch([self._image(samples[i]) for i in rows],
                                          [samples[i].prompt for i in rows],
                                          max_new_tokens=max_new_tokens)
            for i, text in zip(rows, texts):
                # greedy: a stop string only ends the text early, so cutting afterwards is the same
                answers[i] = cut_at_stop(text, samples[i].generation.until)
        return answers

    @staticmethod
    def _image(sample: Sample):
        return sample.images[0] if sample.images else None

    def _sampled(self, sample: Sample) -> str:
        gen = sample.generation
        reply = self.vlm.answer(self._image(sample), sample.prompt, stop=gen.until,
                                max_new_tokens=gen.max_new_tokens, temperature=gen.temperature,
                                top_p=gen.top_p if gen.top_p else 1.0,
                                seed=sample_seed(self.seed, sample))
        return reply.text.strip()


class EndpointModel:
    def __init__(self, client: ChatClient, model: str, concurrency: int = 4,
                 seed: int = DEFAULT_SEED) -> None:
        if concurrency < 1:
            raise ValueError(f"endpoint concurrency must be >= 1, got {concurrency}")
        self.client, self.model, self.concurrency, self.seed = client, model, concurrency, seed
        self.served_model: str | None = None
        """The model name the server reported last."""

    def images_used(self, sample: Sample) -> int:
        return len(sample.images)

    def describe(self) -> dict:
        return {"backend": "endpoint", "url": self.client.url, "model": self.model,
                "served_model": self.served_model, "seed": self.seed}

    def request(self, sample: Sample) -> dict:
        """The chat-completions body for one sample."""
        gen = sample.generation
        _check_supported(gen)
        urls = [image_data_url(image) for image in sample.images]
        body = {"model": self.model, "messages": [user_message(sample.prompt, urls)],
                "max_tokens": gen.max_new_tokens, "temperature": 0.0}
        if gen.until:
            body["stop"] = list(gen.until)
        if gen.samples:
            body.update(temperature=gen.temperature, seed=sample_seed(self.seed, sample))
            if gen.top_p:
                body["top_p"] = gen.top_p
        return body

    def _answer(self, sample: Sample) -> str:
        reply = self.client.post(self.request(sample))
        if reply.model:
            self.served_model = reply.model
        # a server may ignore `stop`, so the answer is cut here as well
        return cut_at_stop(reply.text, sample.generation.until)

    def predict(self, samples: Sequence[Sample]) -> list[str]:
        with ThreadPoolExecutor(max_workers=min(self.concurrency, max(1, len(samples)))) as pool:
            return list(pool.map(self._answer, samples))
