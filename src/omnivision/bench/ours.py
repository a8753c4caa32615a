"""This project's model on the workload: each phase of answering, decode speed, end to end, memory.

Phases (milliseconds, medians): `preprocess` (PIL image to pixels), `vision` (SigLIP tower), `projector`
(compression + MLP), `prefill` (the prompt with its image embeddings through the decoder, up to the
first token's logits), `ttft` (image and question in, first token out, everything included), `e2e`
(first token plus the rest of a `answer_tokens` answer), `ttft_repeat` (another question about an
image asked before: its embeddings come from the cache). `decode_tok_s` is the rate of the
`decode_tokens` steps after the first token. Generation ignores stop tokens so every run has the
same length. `ttft_uncompressed_ms` swaps in a projector without token compression (729 image
tokens, random weights: only its timing matters) after the memory figure was read.

Two memory figures: `answer_peak_rss_mb` is the process's peak right after its first act, answering
the image question once (an `answer_tokens` answer) in low-memory mode, which is what a one-shot
`omnivision run --low-memory` costs; `peak_rss_mb` is the peak over the whole benchmark, with both
towers resident and every phase's buffers.
"""

from __future__ import annotations

import dataclasses
import statistics
import time

import torch

from omnivision.bench.bandwidth import decode_bytes_per_token
from omnivision.bench.workload import QUESTION, Workload, bench_image, median_seconds, peak_rss_mb
from omnivision.generation.generate import GenerationConfig, generate, prefill
from omnivision.model.omnivision import init_weights
from omnivision.model.projector import Projector
from omnivision.vlm import OmniVision


def _first_token_and_rest(vlm: OmniVision, image, new_tokens: int, cached: bool = False) -> tuple[float, float]:
    """(seconds to the first token, seconds for the following new_tokens - 1), image included;
    `cached`: a question about an image asked before (its embeddings come from the cache)."""
    start = time.perf_counter()
    ids, _ = vlm.prompt_ids(QUESTION, image)
    if cached:
        embeds = vlm.encode_images([image])
    else:
        embeds = vlm.model.encode_images(vlm.image_processor([image]).to(vlm.model.device))
    steps = generate(vlm.model, ids, embeds, GenerationConfig(max_new_tokens=new_tokens))
    next(steps)
    first = time.perf_counter()
    count = sum(1 for _ in steps)
    if count != new_tokens - 1:
        raise RuntimeError(f"generation stopped after {count + 1} of {new_tokens} tokens")
    return first - start, time.perf_counter() - first


@torch.inference_mode()
def measure(vlm: OmniVision, work: Workload) -> dict:
    model, image = vlm.model, bench_image(vlm.config.vision.image_size)
    vlm.low_memory = True
    vlm.answer(image, QUESTION, max_new_tokens=work.answer_tokens)
    answer_peak = peak_rss_mb()
    vlm.low_memory = False
    pixels = vlm.image_processor([image]).to(model.device)
    features = model.vision(pixels)
    image_embeds = model.projector(features.to(model.dtype))
    ids, _ = vlm.prompt_ids(QUESTION, image)
    input_ids = torch.tensor([ids], device=model.device)

    def prefill_prompt() -> torch.Tensor:
        return prefill(model.language, model.embed(input_ids, image_embeds), None, len(ids) + 1)[0]

    ms = lambda seconds: round(seconds * 1000, 2)  # noqa: E731
    result = {
        "prompt_tokens": len(ids),
        "preprocess_ms": ms(median_seconds(lambda: vlm.image_processor([image]), work.runs)),
        "vision_ms": ms(median_seconds(lambda: model.vision(pixels), work.runs)),
        "projector_ms": ms(median_seconds(lambda: model.projector(features.to(model.dtype)), work.runs)),
        "prefill_ms": ms(median_seconds(prefill_prompt, work.runs)),
        "ttft_ms": ms(median_seconds(lambda: _first_token_and_rest(vlm, image, 1), work.runs)),
        "ttft_repeat_ms": ms(median_seconds(lambda: _first_token_and_rest(vlm, image, 1, cached=True), work.runs)),
    }
    _first_token_and_rest(vlm, image, 8)  # warm-up of the decode path
    timings = [_first_token_and_rest(vlm, image, work.decode_tokens + 1) for _ in range(work.runs)]
    result["decode_tok_s"] = round(statistics.median(work.decode_tokens / rest for _, rest in timings), 2)
    ends = [sum(_first_token_and_rest(vlm, image, work.answer_tokens)) for _ in range(work.runs)]
    result["e2e_ms"] = ms(statistics.median(ends))
    result["peak_rss_mb"] = round(peak_rss_mb(), 1)
    result["answer_peak_rss_mb"] = round(answer_peak, 1)
    result["decode_bytes_per_token"] = decode_bytes_per_token(vlm.model.language)
    result["ttft_uncompressed_ms"] = ms(_uncompressed_ttft(vlm, image, work.runs))
    return result


def _uncompressed_ttft(vlm: OmniVision, image, runs: int) -> float:
    """TTFT with every one of the tower's patches as an image token (no 9x compression)."""
    cfg = vlm.config
    plain = dataclasses.replace(cfg, projector=dataclasses.replace(cfg.projector, compression="none"))
    model = vlm.model
    original = model.projector, model.config
    projector = Projector("none", plain.projector_in_features, cfg.projector.hidden_size, cfg.text.hidden_size)
    init_weights(projector)
    model.projector, model.config = projector.to(model.dtype).to(model.device), plain
    try:
        uncompressed = OmniVision(model, vlm.tokenizer)
        return median_seconds(lambda: _first_token_and_rest(uncompressed, image, 1), runs)
    finally:
        model.projector, model.config = original
