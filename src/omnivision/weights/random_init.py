"""Random-weight models for tests and benchmarks (`omnivision init --random-weights`).

The tokenizer is, in order: the file given; a Qwen2.5 tokenizer found locally (offline); else the
small byte-level tokenizer that has the chat template's special tokens. The config's vocabulary and
special-token ids are made to agree with the tokenizer chosen.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

import torch

from torch import nn

from omnivision.config import OmniVisionConfig, preset
from omnivision.model import OmniVisionModel, init_weights
from omnivision.processing.byte_tokenizer import byte_level_tokenizer
from omnivision.processing.tokenizer import (Tokenizer, find_local_qwen_tokenizer,
                                             qwen25_from_qwen3_tokenizer_json)


def pick_tokenizer(tokenizer_file: str | os.PathLike | None = None) -> tuple[Tokenizer, str]:
    """The tokenizer to use and a few words on where it came from."""
    if tokenizer_file is not None:
        return Tokenizer.from_file(tokenizer_file), f"tokenizer {tokenizer_file}"
    found = find_local_qwen_tokenizer()
    if found is not None:
        return qwen25_from_qwen3_tokenizer_json(found), f"Qwen2.5 tokenizer from {found}"
    return byte_level_tokenizer(), "byte-level fallback tokenizer"


def fit_to_tokenizer(config: OmniVisionConfig, tokenizer: Tokenizer) -> OmniVisionConfig:
    """The config with a vocabulary that covers the tokenizer and its special-token ids."""
    text = dataclasses.replace(config.text, vocab_size=max(config.text.vocab_size, tokenizer.vocab_size))
    return dataclasses.replace(config, text=text, image_token_id=tokenizer.image_pad_id,
                               stop_token_ids=(tokenizer.im_end_id, tokenizer.endoftext_id))


def random_model(preset_name: str, tokenizer: Tokenizer, seed: int = 0,
                 dtype: torch.dtype = torch.float32) -> OmniVisionModel:
    config = fit_to_tokenizer(preset(preset_name), tokenizer)
    torch.manual_seed(seed)
    with torch.device("meta"):
        model = OmniVisionModel(config)
    model = model.to_empty(device="cpu").to(dtype)
    init_weights(model)
    # Linear weights scaled by fan-in keep every layer's contribution comparable to the residual;
    # with the small training init a random model mostly repeats its last input token.
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear):
                module.weight.normal_(0.0, 1.0 / math.sqrt(module.in_features))
    return model.eval()


def write_random_checkpoint(preset_name: str, out: str | os.PathLike,
                            tokenizer_file: str | os.PathLike | None = None, seed: int = 0,
                            dtype: torch.dtype = torch.float32) -> tuple[Path, str]:
    from omnivision.weights.native import save_native

    tokenizer, origin = pick_tokenizer(tokenizer_file)
    model = random_model(preset_name, tokenizer, seed).to(dtype)
    return save_native(model, tokenizer, out, extra={"random_weights": True}), origin
