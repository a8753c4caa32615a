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
task's `until` strings and stripped. Requests become `Sample`s answered by the runner's
`eval.models.LocalModel`, so both paths decode alike (sampled answers seeded per request); greedy
requests run in batches of `batch_size` that share `max_new_tokens`.

lmms-eval is optional and imported by this module only.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

try:
    from lmms_eval.api.model import lmms
except ImportError as e:  # the module is only useful inside lmms-eval
    raise ImportError("omnivision.eval.lmms_adapter needs lmms-eval: "
                      "pip install 'omnivision[lmms-eval]'") from e

from omnivision.eval.evaluated_models import LocalModel
from omnivision.eval.tasks.base import Generation, Sample

MODEL_NAME = "omnivision"
DEFAULT_MAX_NEW_TOKENS = 1024  # what lmms-eval's own model wrappers use when a task sets none
_ARGS = "(context, gen_kwargs, doc_to_visual, doc_id, task, split)"


def manifest():
    """The entry point's payload: this module's class as lmms-eval's simple model `omnivision`."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_NAME, simple_class_path=f"{__name__}.OmniVisionLMMs")


def _until(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, (list, tuple)) and all(isinstance(s, str) for s in value):
        return tuple(value)
    raise ValueError(f"gen_kwargs 'until' must be a string or a list of strings, got {value!r}")


def prepare(context: str, gen_kwargs: dict, visuals: Any, task: str = "", doc_id: Any = 0) -> Sample:
    """One `generate_until` request as the sample our runner's `LocalModel` answers."""
    if not isinstance(context, str):
        raise ValueError(f"expected the request context to be text, got {type(context).__name__}")
    if int(gen_kwargs.get("num_beams") or 1) != 1:
        raise ValueError(f"beam search is not supported (num_beams={gen_kwargs['num_beams']})")
    # YAMLs write top_p 0 (or leave it out) next to greedy settings: no nucleus cut-off then
    gen = Generation(max_new_tokens=int(gen_kwargs.get("max_new_tokens") or DEFAULT_MAX_NEW_TOKENS),
                     temperature=float(gen_kwargs.get("temperature") or 0.0),
                     do_sample=bool(gen_kwargs.get("do_sample", False)),
                     top_p=float(gen_kwargs.get("top_p") or 1.0),
                     until=_until(gen_kwargs.get("until")))
    image = _first_image(visuals)
    return Sample(task, str(doc_id), [image] if image is not None else [], context, gen)


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
        self.model = LocalModel(self.vlm, source=pretrained)

    def _sample(self, request) -> Sample:
        args = request.args
        if len(args) != 6:
            raise ValueError(f"expected generate_until arguments {_ARGS}, got {len(args)} values")
        context, gen_kwargs, doc_to_visual, doc_id, task, split = args
        visuals = doc_to_visual(self.task_dict[task][split][doc_id])
        return prepare(context, dict(gen_kwargs or {}), visuals, f"{task}/{split}", doc_id)

    def generate_until(self, requests) -> list[str]:
        samples = [self._sample(r) for r in requests]
        groups: dict[tuple, list[int]] = defaultdict(list)
        for n, s in enumerate(samples):
            groups[(s.generation.max_new_tokens, s.generation.samples)].append(n)
        out: list[str] = [""] * len(samples)
        for indexes in groups.values():
            for start in range(0, len(indexes), self.batch_size):
                chunk = indexes[start:start + self.batch_size]
                for n, text in zip(chunk, self.model.predict([samples[n] for n in chunk])):
                    out[n] = text
        for request, text in zip(requests, out):
            self.cache_hook.add_partial("generate_until", request.args[:2], text)
        return out

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        raise NotImplementedError(f"{MODEL_NAME}: loglikelihood is not supported; the tasks we "
                                  f"evaluate all use generate_until")

    def generate_until_multi_round(self, requests) -> list[str]:
        raise NotImplementedError(f"{MODEL_NAME}: multi-round generation is not supported")
