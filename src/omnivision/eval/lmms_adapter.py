"""`OmniVisionLMMs`: an OmniVision model as an lmms-eval model, so lmms-eval's own tasks and
scorers can run it.

    pip install 'omnivision[lmms-eval]'
    lmms-eval --model omnivision --model_args pretrained=PATH_OR_REPO,dtype=float32 \\
        --tasks pope,scienceqa_img --batch_size 8 --device cpu

lmms-eval finds the class through the entry point `omnivision` in the group `lmms_eval.models`
(`manifest` below; read by lmms-eval versions with `ModelRegistryV2`). lmms-eval 0.3.x has no
entry points: there, pass an instance to `lmms_eval.evaluator.simple_evaluate(model=...)`.

Model args: `pretrained` (anything `omnivision.load` takes; default: the bundled nano model),
`device` (default: cuda when available, else cpu), `dtype` ("auto"), `mmproj`, `gguf_type`, and
lmms-eval's `batch_size` (a positive integer).

Only `generate_until` is supported, the request type of every task we evaluate. For each request
the images come from the task's `doc_to_visual`; OmniVision has one image slot, so the first image
is used (a text-only request gets none), with the context as the single user turn of our chat
template. Decoding is greedy unless a task asks for sampling (`Generation.samples`, the rule our own
runner uses: `do_sample` with a temperature above 0). The answer is cut at the earliest of the
task's `until` strings and stripped (`tasks.base.cut_at_stop`). Greedy requests
run in batches of `batch_size` that share `max_new_tokens`.

lmms-eval is optional and imported by this module only.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

try:
    from lmms_eval.api.model import lmms
except ImportError as e:  # the module is only useful inside lmms-eval
    raise ImportError("omnivision.eval.lmms_adapter needs lmms-eval: "
                      "pip install 'omnivision[lmms-eval]'") from e

from omnivision.eval.tasks.base import Generation, cut_at_stop

MODEL_NAME = "omnivision"
DEFAULT_MAX_NEW_TOKENS = 1024  # what lmms-eval's own model wrappers use when a task sets none
_ARGS = "(context, gen_kwargs, doc_to_visual, doc_id, task, split)"


def manifest():
    """The entry point's payload: this module's class as lmms-eval's simple model `omnivision`."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_NAME, simple_class_path=f"{__name__}.OmniVisionLMMs")


@dataclass(frozen=True)
class Prepared:
    """One request turned into what our runtime takes."""

    image: Any  # a PIL image or None
    prompt: str
    max_new_tokens: int
    until: tuple[str, ...]
    temperature: float  # 0 for greedy decoding
    top_p: float


def _until(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, (list, tuple)) and all(isinstance(s, str) for s in value):
        return tuple(value)
    raise ValueError(f"gen_kwargs 'until' must be a string or a list of strings, got {value!r}")


def prepare(context: str, gen_kwargs: dict, visuals: Any) -> Prepared:
    """The image, prompt and decoding settings of one `generate_until` request."""
    if not isinstance(context, str):
        raise ValueError(f"expected the request context to be text, got {type(context).__name__}")
    if int(gen_kwargs.get("num_beams") or 1) != 1:
        raise ValueError(f"beam search is not supported (num_beams={gen_kwargs['num_beams']})")
    gen = Generation(max_new_tokens=int(gen_kwargs.get("max_new_tokens") or DEFAULT_MAX_NEW_TOKENS),
                     temperature=float(gen_kwargs.get("temperature") or 0.0),
                     do_sample=bool(gen_kwargs.get("do_sample", False)),
                     until=_until(gen_kwargs.get("until")))
    # YAMLs write top_p 0 (or leave it out) next to greedy settings: no nucleus cut-off then
    top_p = float(gen_kwargs.get("top_p") or 1.0)
    return Prepared(_first_image(visuals), context, gen.max_new_tokens, gen.until,
                    gen.temperature if gen.samples else 0.0, top_p)


def _first_image(visuals: Any):
    from PIL import Image

    if visuals is None:
        return None
    items = list(visuals) if isinstance(visuals, (list, tuple)) else [visuals]
    if not items:
        return None
    if not isinstance(items[0], Image.Image):
        raise ValueError(f"expected PIL images from doc_to_visual, got {type(items[0]).__name__} "
                         f"(video and audio are not supported)")
    return items[0].convert("RGB")


def _batch_size(value: Any) -> int:
    try:
        size = int(value)
    except (TypeError, ValueError):
        size = 0
    if isinstance(value, bool) or size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {value!r}")
    return size


class OmniVisionLMMs(lmms):
    """lmms-eval's "simple" model interface over `omnivision.load(pretrained)`."""

    is_simple = True

    def __init__(self, pretrained: str | None = None, device: str | None = None,
                 dtype: str = "auto", batch_size: int | str = 1, max_batch_size: int | None = None,
                 mmproj: str | None = None, gguf_type: str | None = None, **unknown: Any) -> None:
        super().__init__()
        if unknown:
            raise ValueError(f"unknown model_args for {MODEL_NAME}: {', '.join(sorted(unknown))} "
                             f"(known: pretrained, device, dtype, batch_size, mmproj, gguf_type)")
        import torch

        from omnivision.loader import BUNDLED, load

        self.batch_size = _batch_size(batch_size)  # max_batch_size: only for "auto" sizes, unused
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.vlm = load(pretrained or BUNDLED, device=device, dtype=dtype, gguf_type=gguf_type,
                        mmproj=mmproj)

    def _prepared(self, request) -> Prepared:
        args = request.args
        if len(args) != 6:
            raise ValueError(f"expected generate_until arguments {_ARGS}, got {len(args)} values")
        context, gen_kwargs, doc_to_visual, doc_id, task, split = args
        visuals = doc_to_visual(self.task_dict[task][split][doc_id])
        return prepare(context, dict(gen_kwargs or {}), visuals)

    def _generate(self, batch: list[Prepared]) -> list[str]:
        if batch[0].temperature > 0:  # sampling: one at a time, stopping at the stop strings
            return [self.vlm.chat(p.image, p.prompt, stop=p.until, max_new_tokens=p.max_new_tokens,
                                  temperature=p.temperature, top_p=p.top_p) for p in batch]
        # greedy: a stop string only ends the text early, so cutting afterwards gives the same
        texts = self.vlm.answer_batch([p.image for p in batch], [p.prompt for p in batch],
                                      max_new_tokens=batch[0].max_new_tokens)
        return [cut_at_stop(t, p.until) for t, p in zip(texts, batch)]

    def generate_until(self, requests) -> list[str]:
        prepared = [self._prepared(r) for r in requests]
        groups: dict[tuple, list[int]] = defaultdict(list)
        for n, p in enumerate(prepared):
            groups[(p.max_new_tokens, p.temperature > 0)].append(n)
        out: list[str] = [""] * len(prepared)
        for indexes in groups.values():
            for start in range(0, len(indexes), self.batch_size):
                chunk = indexes[start:start + self.batch_size]
                for n, text in zip(chunk, self._generate([prepared[n] for n in chunk])):
                    out[n] = text
        for request, text in zip(requests, out):
            self.cache_hook.add_partial("generate_until", request.args[:2], text)
        return out

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        raise NotImplementedError(f"{MODEL_NAME}: loglikelihood is not supported; the tasks we "
                                  f"evaluate all use generate_until")

    def generate_until_multi_round(self, requests) -> list[str]:
        raise NotImplementedError(f"{MODEL_NAME}: multi-round generation is not supported")
