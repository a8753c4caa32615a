"""page_out: mapped weight pages leave resident memory, nothing changes value, anonymous memory is
left alone; `OmniVision(low_memory=True)` answers the same with one tower resident at a time."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from omnivision.model import OmniVisionModel, init_weights
from omnivision.processing.byte_tokenizer import byte_level_tokenizer
from omnivision.vlm import OmniVision
from omnivision.weights.native import WEIGHTS, load_native, save_native
from omnivision.weights.residency import page_out


def _resident_kb(path: Path) -> int:
    """Resident kB of this process's mappings of `path` (Linux /proc/self/smaps)."""
    smaps = Path("/proc/self/smaps")
    if not smaps.is_file():
        pytest.skip("needs /proc/self/smaps")
    target, total, inside = str(path.resolve()), 0, False
    for line in smaps.read_text().splitlines():
        fields = line.split()
        if fields and "-" in fields[0] and len(fields) >= 5 and fields[0][0] in "0123456789abcdef":
            inside = len(fields) == 6 and fields[5] == target
        elif inside and fields[0] == "Rss:":
            total += int(fields[1])
    return total


@pytest.fixture
def checkpoint(tiny_config, tmp_path: Path) -> Path:
    # tensors of many pages each, so that edge pages shared between tensors do not dominate
    vision = dataclasses.replace(tiny_config.vision, hidden_size=512, intermediate_size=2048)
    config = dataclasses.replace(tiny_config, vision=vision)
    torch.manual_seed(0)
    model = OmniVisionModel(config).eval()
    init_weights(model, std=0.1)
    return save_native(model, byte_level_tokenizer(), tmp_path / "ckpt")


def _image(size: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)


def test_mapped_pages_leave_and_values_come_back(checkpoint: Path) -> None:
    model, _ = load_native(checkpoint)
    before = {k: v.clone() for k, v in model.state_dict().items()}  # touches every page
    with torch.no_grad():  # a weight written in place lives in private pages and must survive
        model.language.model.norm.weight.add_(1.0)
    resident = _resident_kb(checkpoint / WEIGHTS)
    advised = page_out(model)
    if advised == 0:
        pytest.skip("this kernel has no MADV_PAGEOUT")
    assert _resident_kb(checkpoint / WEIGHTS) < resident - 0.5 * advised // 1024
    for name, tensor in model.state_dict().items():
        want = before[name] + 1 if name == "language.model.norm.weight" else before[name]
        assert torch.equal(tensor, want), name


def test_memory_that_is_not_a_file_mapping_is_left_alone(tiny_model) -> None:
    assert page_out(tiny_model) == 0


def test_low_memory_answers_the_same_with_one_tower_resident(checkpoint: Path, tiny_config) -> None:
    model, tokenizer = load_native(checkpoint)
    image = _image(tiny_config.vision.image_size)
    plain = OmniVision(model, tokenizer).answer(image, "what is it?", max_new_tokens=6)
    vlm = OmniVision(model, tokenizer, low_memory=True)
    vision = sum(t.numel() * t.element_size() for t in vlm.model.vision.state_dict().values())
    page_out(model)
    lean = vlm.answer(image, "what is it?", max_new_tokens=6)
    assert lean.token_ids == plain.token_ids
    # the vision tower's pages went back right after the encoding: with the language model's
    # given back too, only edge pages shared with neighbours remain
    if page_out(vlm.model.language) == 0:
        pytest.skip("this kernel has no MADV_PAGEOUT")
    assert _resident_kb(checkpoint / WEIGHTS) * 1024 < 0.3 * vision
