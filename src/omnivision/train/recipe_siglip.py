"""Pretraining a SigLIP vision tower with the pairwise sigmoid loss on image-text pairs.

The image side is the tower itself with its attention-pooling head (the head exists for exactly
this). The text side is a small Qwen2-architecture encoder whose last-token state, projected to the
tower's width, embeds the text (a caption, or a short description that may be true of several
images: every image of the batch it describes counts as a positive); it is thrown away after
pretraining. The learned temperature and
bias start at log(10) and -10 as in Zhai et al. 2023.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from omnivision.config import TextConfig, VisionConfig
from omnivision.model.qwen2 import Qwen2ForCausalLM
from omnivision.model.siglip import SiglipVisionTower
from omnivision.processing.tokenizer import Tokenizer
from omnivision.train.config import TrainConfig
from omnivision.train.image_loader import ImageLoader
from omnivision.train.loop import TrainResult, train
from omnivision.train.losses import siglip_loss


class SiglipPretrainModel(nn.Module):
    def __init__(self, vision: VisionConfig, text: TextConfig) -> None:
        super().__init__()
        if not vision.has_head:
            raise ValueError("SigLIP pretraining needs the tower's pooling head (vision.has_head)")
        self.vision = SiglipVisionTower(vision)
        self.text = Qwen2ForCausalLM(text)
        self.text_proj = nn.Linear(text.hidden_size, vision.hidden_size)
        self.t_prime = nn.Parameter(torch.tensor(math.log(10.0)))
        self.bias = nn.Parameter(torch.tensor(-10.0))

    def embed_images(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.vision.head(self.vision(pixels))  # [N, D]

    def embed_texts(self, ids: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        positions = (valid.long().cumsum(-1) - 1).clamp(min=0)
        hidden = self.text(self.text.embed(ids), positions, valid)  # [N, T, Dt]
        last = valid.long().sum(-1) - 1  # right padding: the last real token
        return self.text_proj(hidden[torch.arange(ids.shape[0]), last])  # [N, D]

    def forward(self, pixels: torch.Tensor, ids: torch.Tensor, valid: torch.Tensor,
                positives: torch.Tensor | None = None) -> torch.Tensor:
        return siglip_loss(self.embed_images(pixels), self.embed_texts(ids, valid),
                           self.t_prime.exp(), self.bias, positives)


@dataclass
class CaptionItem:
    image: str
    ids: list[int]
    text: str = ""
    true_texts: frozenset[str] = frozenset()
    """Every text true of the image (its own included); empty: only its own pair is positive."""


class SiglipTask:
    def loss(self, model, batch) -> tuple[torch.Tensor, dict[str, float]]:
        return model(*batch), {}


def collate(loader: ImageLoader, pad_id: int):
    def fn(items: list[CaptionItem]):
        width = max(len(i.ids) for i in items)
        ids = torch.full((len(items), width), pad_id, dtype=torch.long)
        valid = torch.zeros(len(items), width, dtype=torch.bool)
        for row, item in enumerate(items):
            ids[row, :len(item.ids)] = torch.tensor(item.ids)
            valid[row, :len(item.ids)] = True
        positives = torch.tensor([[a is b or b.text in a.true_texts for b in items] for a in items])
        return torch.stack([loader(i.image) for i in items]), ids, valid, positives  # positives [N, N]
    return fn


def pretrain_siglip(model: SiglipPretrainModel, tokenizer: Tokenizer, pairs: Sequence[tuple[str, str]],
                    loader: ImageLoader, cfg: TrainConfig,
                    true_texts: Mapping[str, frozenset[str]] | None = None) -> TrainResult:
    """pairs: (image path relative to the loader's root, text). `true_texts[image]`, when given,
    holds every text that describes the image, so that a text shared by several images of a batch
    ("a red circle") is a positive for each of them."""
    true_texts = true_texts or {}
    items = [CaptionItem(image, tokenizer.encode(text), text, true_texts.get(image, frozenset()))
             for image, text in pairs]
    return train(model, SiglipTask(), items, collate(loader, tokenizer.endoftext_id), cfg)
