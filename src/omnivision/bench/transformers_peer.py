"""The peer pipeline in transformers: `SiglipVisionModel` + the projector + `Qwen2ForCausalLM`.

The same architecture and shapes as the model under test, random weights, SDPA attention, in the
asked dtype. Its image preprocessing is transformers' `SiglipImageProcessor` (the PIL backend), the
projector is this project's (transformers has no OmniVision class; it is under 2 % of the work), and
generation is `generate()` with its default dynamic cache, fed the spliced input embeddings, as a
user of transformers would run it. Decode speed comes from the times at which `generate` hands each
new token to a streamer. The phases are those of `bench.ours`.
"""

from __future__ import annotations

import statistics
import time

import torch

from omnivision.bench.workload import Workload, bench_image, median_seconds, peak_rss_mb
from omnivision.config import OmniVisionConfig
from omnivision.model.omnivision import init_weights
from omnivision.model.projector import Projector


def vision_config(config: OmniVisionConfig):
    """transformers' `SiglipVisionConfig` of the model's tower (SDPA attention)."""
    import transformers

    v = config.vision
    return transformers.SiglipVisionConfig(
        hidden_size=v.hidden_size, intermediate_size=v.intermediate_size, num_hidden_layers=v.num_layers,
        num_attention_heads=v.num_heads, num_channels=v.num_channels, image_size=v.image_size,
        patch_size=v.patch_size, layer_norm_eps=v.layer_norm_eps, hidden_act="gelu_pytorch_tanh",
        attn_implementation="sdpa")


def image_processor(config: OmniVisionConfig):
    """transformers' SigLIP image processor at the model's size (the PIL backend where there is one)."""
    import transformers

    processor_cls = getattr(transformers, "SiglipImageProcessorPil", None) or transformers.SiglipImageProcessor
    return processor_cls(size={"height": config.vision.image_size, "width": config.vision.image_size})


def build(config: OmniVisionConfig, dtype: torch.dtype):
    """(image processor, vision model, projector, language model) of transformers, random weights."""
    import transformers

    t = config.text
    vision_cfg = vision_config(config)
    text_cfg = transformers.Qwen2Config(
        vocab_size=t.vocab_size, hidden_size=t.hidden_size, intermediate_size=t.intermediate_size,
        num_hidden_layers=t.num_layers, num_attention_heads=t.num_heads, num_key_value_heads=t.num_kv_heads,
        rope_theta=t.rope_theta, rms_norm_eps=t.rms_norm_eps, max_position_embeddings=t.max_position_embeddings,
        tie_word_embeddings=t.tie_word_embeddings, attn_implementation="sdpa")
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # built in the compute dtype: no full-precision copy first
    try:
        vision = transformers.SiglipVisionModel(vision_cfg).eval()
        language = transformers.Qwen2ForCausalLM(text_cfg).eval()
        projector = Projector(config.projector.compression, config.projector_in_features,
                              config.projector.hidden_size, t.hidden_size)
        init_weights(projector)
    finally:
        torch.set_default_dtype(default)
    return image_processor(config), vision, projector.eval(), language


class _TokenTimes:
    """A `generate` streamer that notes when each new token arrives."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.times: list[float] = []

    def put(self, value: torch.Tensor) -> None:
        if value.numel():  # the first call passes the (here empty) prompt ids
            self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


@torch.inference_mode()
def measure(config: OmniVisionConfig, prompt_ids: list[int], dtype: torch.dtype, work: Workload) -> dict:
    processor, vision, projector, language = build(config, dtype)
    image = bench_image(config.vision.image_size)
    ids = torch.tensor([prompt_ids])
    slots = ids == config.image_token_id

    def pixels():
        return processor(images=image, return_tensors="pt")["pixel_values"].to(dtype)

    def embeds(pixel_values):
        features = vision(pixel_values=pixel_values).last_hidden_state
        out = language.get_input_embeddings()(ids)
        return out.masked_scatter(slots[..., None], projector(features))

    def run(new_tokens: int) -> _TokenTimes:
        times = _TokenTimes()
        language.generate(inputs_embeds=embeds(pixels()), attention_mask=torch.ones_like(ids),
                          max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                          eos_token_id=None, pad_token_id=0, streamer=times)
        if len(times.times) != new_tokens:
            raise RuntimeError(f"transformers generated {len(times.times)} of {new_tokens} tokens")
        return times

    px = pixels()
    features = vision(pixel_values=px).last_hidden_state
    ready = embeds(px)
    ms = lambda seconds: round(seconds * 1000, 2)  # noqa: E731
    result = {
        "prompt_tokens": len(prompt_ids),
        "preprocess_ms": ms(median_seconds(pixels, work.runs)),
        "vision_ms": ms(median_seconds(lambda: vision(pixel_values=px), work.runs)),
        "projector_ms": ms(median_seconds(lambda: projector(features), work.runs)),
        "prefill_ms": ms(median_seconds(lambda: language(inputs_embeds=ready, use_cache=True,
                                                         logits_to_keep=1), work.runs)),
        "ttft_ms": ms(median_seconds(lambda: run(1), work.runs)),
    }
    run(8)  # warm-up of the decode path
    rates = []
    for _ in range(work.runs):
        times = run(work.decode_tokens + 1).times
        rates.append(work.decode_tokens / (times[-1] - times[0]))
    result["decode_tok_s"] = round(statistics.median(rates), 2)
    ends = []
    for _ in range(work.runs):
        times = run(work.answer_tokens)
        ends.append(times.times[-1] - times.start)
    result["e2e_ms"] = ms(statistics.median(ends))
    result["peak_rss_mb"] = round(peak_rss_mb(), 1)
    return result
