"""`check_quantized`: how closely a quantized model follows the unquantized one on a fixed probe set.

Probe set (`probe_items`): procedural shapes/chart scenes (`omnivision.data.shapes_dataset.sample_scenes`,
fixed seed) rendered at the model's image size, each asked for a caption and the first question of
each of its question groups, plus the repository's `assets/scene.png` captioned when the checkout has it.

Measure: the unquantized model answers each probe greedily; both models then read that same prompt +
answer (teacher forcing on the reference's own answer), and at every answer position we compare
the next-token distributions: top-1 agreement (same argmax) and KL(unquantized || quantized) in nats,
both pooled over all answer positions.

`check_language_model` does the same for a decoder alone (a language-model GGUF without an mmproj),
on a fixed set of text prompts in the ChatML template.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from PIL import Image

from omnivision.data.shapes_dataset import sample_scenes
from omnivision.data.questions import CAPTION_PROMPT, questions_for
from omnivision.data.scenes import render_scene
from omnivision.generation.generate import decode_step, prefill
from omnivision.model.qwen2 import Qwen2ForCausalLM
from omnivision.processing.prompt import Message, build_inputs
from omnivision.processing.tokenizer import Tokenizer
from omnivision.vlm import OmniVision

SCENE_PNG = Path(__file__).resolve().parents[3] / "assets" / "scene.png"
"""The photo-like example shipped at the repository root (absent from an installed wheel)."""


@dataclass
class CheckResult:
    scheme: str
    probes: int  # (image, prompt) pairs
    positions: int  # answer tokens compared
    top1_agreement: float  # fraction of positions with the same argmax
    mean_kl: float  # nats, KL(unquantized || quantized) averaged over positions

    def as_dict(self) -> dict:
        return asdict(self)


def probe_items(image_size: int, scenes: int = 6, seed: int = 0) -> list[tuple[Image.Image, str]]:
    """(image, prompt) pairs, the same for the same arguments."""
    items = []
    for record in sample_scenes(scenes, seed):
        image = render_scene(record.scene, image_size)
        items.append((image, CAPTION_PROMPT))
        items += [(image, group[0].text) for group in questions_for(record.scene).values()]
    if SCENE_PNG.is_file():
        items.append((Image.open(SCENE_PNG).convert("RGB"), CAPTION_PROMPT))
    return items


def _answer_logits(vlm: OmniVision, image: Image.Image, prompt: str, answer: list[int]) -> torch.Tensor:
    """fp32 logits [len(answer), vocab] predicting each answer token after prompt + earlier answer."""
    ids, images = vlm.prompt_ids(prompt, image)
    full = torch.tensor([ids + answer], device=vlm.model.device)
    pixels = vlm.image_processor(images).to(vlm.model.device)
    with torch.inference_mode():
        logits = vlm.model(full, pixel_values=pixels)[0]
    return logits[len(ids) - 1: len(ids) + len(answer) - 1].float()


class _Tally:
    """Top-1 agreement and KL summed over answer positions."""

    def __init__(self) -> None:
        self.agree, self.kl, self.positions = 0, 0.0, 0

    def add(self, reference_logits: torch.Tensor, quantized_logits: torch.Tensor) -> None:
        ref = F.log_softmax(reference_logits, dim=-1)  # [A, V]
        got = F.log_softmax(quantized_logits, dim=-1)
        self.agree += int((ref.argmax(-1) == got.argmax(-1)).sum())
        self.kl += float(F.kl_div(got, ref, log_target=True, reduction="sum"))
        self.positions += ref.shape[0]

    def result(self, scheme: str, probes: int) -> CheckResult:
        if self.positions == 0:
            raise ValueError("the unquantized model gave only empty answers; nothing to compare")
        return CheckResult(scheme, probes, self.positions, self.agree / self.positions, self.kl / self.positions)


def check_quantized(reference: OmniVision, quantized: OmniVision, scheme: str,
                    items: list[tuple[Image.Image, str]], max_new_tokens: int = 48) -> CheckResult:
    """Compare `quantized` with `reference` on `items` (see the module docstring)."""
    tally = _Tally()
    for image, prompt in items:
        answer = reference.answer(image, prompt, max_new_tokens=max_new_tokens).token_ids
        if answer:
            tally.add(_answer_logits(reference, image, prompt, answer),
                      _answer_logits(quantized, image, prompt, answer))
    return tally.result(scheme, len(items))


TEXT_PROBES = (
    "Explain in two sentences why the sky looks blue.",
    "Write a Python function that returns the n-th Fibonacci number.",
    "What is the capital of Australia, and what is it known for?",
    "Summarise the plot of a heist film in three short sentences.",
    "List four ways to save energy at home.",
    "Translate 'good morning, how are you?' into French and Spanish.",
    "What is 17 times 23? Show the steps.",
    "Describe a red bicycle leaning against a brick wall.",
    "Give a short definition of a hash table and one use of it.",
    "Why do cats purr? Answer briefly.",
    "Write a haiku about autumn rain.",
    "How does a refrigerator keep food cold?",
)
"""Fixed prompts for checking a language model alone."""
TEXT_SYSTEM_PROMPT = "You are a helpful assistant."


def _greedy(lm: Qwen2ForCausalLM, ids: list[int], max_new_tokens: int, stops: set[int]) -> list[int]:
    """The decoder's greedy answer to one prompt, up to a stop token."""
    logits, state = prefill(lm, lm.embed(torch.tensor([ids])), None, len(ids) + max_new_tokens)
    out: list[int] = []
    while len(out) < max_new_tokens and (token := int(logits[0].argmax())) not in stops:
        out.append(token)
        logits = decode_step(lm, torch.tensor([token]), state)
    return out


@torch.inference_mode()
def check_language_model(reference: Qwen2ForCausalLM, quantized: Qwen2ForCausalLM, tokenizer: Tokenizer,
                         scheme: str, prompts: Sequence[str] = TEXT_PROBES,
                         max_new_tokens: int = 48) -> CheckResult:
    """Compare two decoders on text prompts, teacher-forced on the reference's greedy answers."""
    tally, stops = _Tally(), {tokenizer.im_end_id, tokenizer.endoftext_id}
    for prompt in prompts:
        ids = build_inputs(tokenizer, [Message("user", prompt)], "chatml", TEXT_SYSTEM_PROMPT, 0)
        answer = _greedy(reference, ids, max_new_tokens, stops)
        if not answer:
            continue
        full = torch.tensor([ids + answer])
        positions = torch.arange(full.shape[1])[None]
        window = slice(len(ids) - 1, len(ids) + len(answer) - 1)
        tally.add(*(lm.logits(lm(lm.embed(full), positions)[0, window]).float() for lm in (reference, quantized)))
    return tally.result(scheme, len(prompts))
