"""`check_quantized`: how closely a quantized model follows the unquantized one on a fixed probe set.

Probe set (`probe_items`): procedural shapes/chart scenes (`omnivision.data.generate.sample_scenes`,
fixed seed) rendered at the model's image size, each asked for a caption and the first question of
each of its question groups, plus the repository's `assets/scene.png` captioned when the checkout has it.

Measure: the unquantized model answers each probe greedily; both models then read that same prompt +
answer (teacher forcing on the reference's own answer), and at every answer position we compare
the next-token distributions: top-1 agreement (same argmax) and KL(unquantized || quantized) in nats,
both pooled over all answer positions.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from omnivision.data.generate import sample_scenes
from omnivision.data.questions import CAPTION_PROMPT, questions_for
from omnivision.data.scenes import render_scene
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


def check_quantized(reference: OmniVision, quantized: OmniVision, scheme: str,
                    items: list[tuple[Image.Image, str]], max_new_tokens: int = 48) -> CheckResult:
    """Compare `quantized` with `reference` on `items` (see the module docstring)."""
    agree, kl, positions = 0, 0.0, 0
    for image, prompt in items:
        answer = reference.answer(image, prompt, max_new_tokens=max_new_tokens).token_ids
        if not answer:
            continue
        ref = F.log_softmax(_answer_logits(reference, image, prompt, answer), dim=-1)
        got = F.log_softmax(_answer_logits(quantized, image, prompt, answer), dim=-1)
        agree += int((ref.argmax(-1) == got.argmax(-1)).sum())
        kl += float(F.kl_div(got, ref, log_target=True, reduction="sum"))
        positions += len(answer)
    if positions == 0:
        raise ValueError("the unquantized model gave only empty answers; nothing to compare")
    return CheckResult(scheme, len(items), positions, agree / positions, kl / positions)
