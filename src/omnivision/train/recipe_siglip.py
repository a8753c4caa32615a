"""Pretraining a SigLIP vision tower with the pairwise sigmoid loss on image-text pairs.

The image side is the tower itself with its attention-pooling head (the head exists for exactly
this). The text side is a small Qwen2-architecture encoder whose last-token state, projected to the
tower's width, embeds the text (a caption, or a short description that may be true of several
images: every image of the batch it describes counts as a positive); it is thrown away after
pretraining. The learned temperature and bias start at log(10) and -10 as in Zhai et al. 2023.

Optionally a second, dense objective of the same form aligns regions of the image with texts: the
tower's tokens grouped as the projector will merge them (`merge`: one merged token per region),
averaged, and a sigmoid loss between every region of the batch and every
distinct region text ("a large red circle at the top left", "an empty cell in the center"). The
pooled objective alone is solved by whichever attributes separate the batch's images most easily,
and how much of a merged token's variance each attribute got was left to the draw: colour's share
of an object's token was 24 % in one run of the nano recipe and 2-8 % in four others
(`scripts/nano_tower.py`), and the decoder's colour answers followed it. Texts naming every
attribute of each region's own object make the tokens the decoder will read carry all of them,
whatever the draw (dense image-text objectives are also what SigLIP 2 adds to SigLIP, for local
features).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from omnivision.config import TextConfig, VisionConfig
from omnivision.model.projector import COMPRESS
from omnivision.model.qwen2 import Qwen2ForCausalLM
from omnivision.model.siglip import SiglipVisionTower
from omnivision.processing.tokenizer import Tokenizer
from omnivision.train.config import TrainConfig
from omnivision.train.image_loader import ImageLoader
from omnivision.train.loop import TrainResult, train
from omnivision.train.losses import siglip_loss


class SiglipPretrainModel(nn.Module):
    """merge: a `ProjectorConfig.compression` name; given, the model also learns the region objective
    (module docstring) on the tokens that compression makes."""

    def __init__(self, vision: VisionConfig, text: TextConfig, merge: str | None = None) -> None:
        super().__init__()
        if not vision.has_head:
            raise ValueError("SigLIP pretraining needs the tower's pooling head (vision.has_head)")
        if merge is not None and merge not in COMPRESS:
            raise ValueError(f"merge {merge!r} is not a compression: {sorted(COMPRESS)}")
        self.vision = SiglipVisionTower(vision)
        self.text = Qwen2ForCausalLM(text)
        self.text_proj = nn.Linear(text.hidden_size, vision.hidden_size)
        self.t_prime = nn.Parameter(torch.tensor(math.log(10.0)))
        self.bias = nn.Parameter(torch.tensor(-10.0))
        self.merge = merge
        if merge is not None:
            self.region_text_proj = nn.Linear(text.hidden_size, vision.hidden_size)
            self.region_t_prime = nn.Parameter(torch.tensor(math.log(10.0)))
            self.region_bias = nn.Parameter(torch.tensor(-10.0))

    def encode_texts(self, ids: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """The text encoder's last-token state [N, Dt] (right padding)."""
        positions = (valid.long().cumsum(-1) - 1).clamp(min=0)
        hidden = self.text(self.text.embed(ids), positions, valid)  # [N, T, Dt]
        return hidden[torch.arange(ids.shape[0]), valid.long().sum(-1) - 1]  # [N, Dt]

    def embed_regions(self, tokens: torch.Tensor, rows: torch.Tensor, picked: torch.Tensor) -> torch.Tensor:
        """Tower tokens [N, P, D] -> the mean of each picked region's tokens [M, D], with no learned
        map in between: a cosine against the texts is then a cosine of the tower's own features, so
        every attribute the texts tell apart must take a real part of their direction (through a
        learned map a faint direction would do, and the decoder's projector learns faint directions
        slowly)."""
        merged = COMPRESS[self.merge](tokens)  # [N, R, k*D]
        n, r, _ = merged.shape
        return merged.view(n, r, -1, tokens.shape[-1]).mean(2)[rows, picked]  # [M, D]

    def forward(self, pixels: torch.Tensor, ids: torch.Tensor, valid: torch.Tensor,
               positives: torch.Tensor | None = None, regions: dict[str, torch.Tensor] | None = None
               ) -> dict[str, torch.Tensor]:
        """The objectives' losses by name: "pooled", and "regions" when the batch has region texts."""
        tokens = self.vision(pixels)  # [N, P, D]
        out = {"pooled": siglip_loss(self.vision.head(tokens), self.text_proj(self.encode_texts(ids, valid)),
                                     self.t_prime.exp(), self.bias, positives)}
        if regions is not None:
            if self.merge is None:
                raise ValueError("the batch has region texts but the model was built without merge")
            texts = self.region_text_proj(self.encode_texts(regions["ids"], regions["valid"]))  # [U, D]
            out["regions"] = siglip_loss(self.embed_regions(tokens, regions["rows"], regions["tokens"]), texts,
                                         self.region_t_prime.exp(), self.region_bias, regions["positives"])
        return out


@dataclass
class CaptionItem:
    image: str
    ids: list[int]
    text: str = ""
    true_texts: frozenset[str] = frozenset()
    """Every text true of the image (its own included); empty: only its own pair is positive."""
    regions: tuple[tuple[int, list[int]], ...] = ()
    """(merged token index, the token ids of its text) for the region objective; empty: none."""


class SiglipTask:
    def loss(self, model, batch) -> tuple[torch.Tensor, dict[str, float]]:
        parts = model(**batch)  # through the DDP/FSDP wrapper's forward
        logged = {f"{k}_loss": float(v.detach()) for k, v in parts.items()} if len(parts) > 1 else {}
        return sum(parts.values()), logged


def _padded(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids [N, T] and their mask [N, T]."""
    ids = torch.full((len(seqs), max(len(s) for s in seqs)), pad_id, dtype=torch.long)
    valid = torch.zeros(ids.shape, dtype=torch.bool)
    for row, seq in enumerate(seqs):
        ids[row, :len(seq)] = torch.tensor(seq)
        valid[row, :len(seq)] = True
    return ids, valid


def _regions(items: list[CaptionItem], pad_id: int) -> dict[str, torch.Tensor] | None:
    """Every region of the batch [M] against every distinct region text [U]: a region's only
    positive is its own text, so two regions with the same text share it."""
    found = [(row, token, tuple(ids)) for row, item in enumerate(items) for token, ids in item.regions]
    if not found:
        return None
    index: dict[tuple[int, ...], int] = {}
    text_index = torch.tensor([index.setdefault(ids, len(index)) for *_, ids in found])  # [M]
    ids, valid = _padded([list(t) for t in index], pad_id)  # [U, T], in first-seen order
    return {"rows": torch.tensor([r for r, *_ in found]), "tokens": torch.tensor([t for _, t, _ in found]),
            "ids": ids, "valid": valid,
            "positives": text_index[:, None] == torch.arange(len(index))[None, :]}  # [M, U]


def collate(loader: ImageLoader, pad_id: int):
    def fn(items: list[CaptionItem]) -> dict:
        ids, valid = _padded([i.ids for i in items], pad_id)
        positives = torch.tensor([[a is b or b.text in a.true_texts for b in items] for a in items])
        batch = {"pixels": torch.stack([loader(i.image) for i in items]), "ids": ids, "valid": valid,
                 "positives": positives}  # positives [N, N]
        regions = _regions(items, pad_id)
        return batch if regions is None else {**batch, "regions": regions}
    return fn


def pretrain_siglip(model: SiglipPretrainModel, tokenizer: Tokenizer, pairs: Sequence[tuple[str, str]],
                    loader: ImageLoader, cfg: TrainConfig,
                    true_texts: Mapping[str, frozenset[str]] | None = None,
                    region_texts: Mapping[str, Sequence[tuple[int, str]]] | None = None) -> TrainResult:
    """pairs: (image path relative to the loader's root, text). `true_texts[image]`, when given,
    holds every text that describes the image, so that a text shared by several images of a batch
    ("a red circle") is a positive for each of them. `region_texts[image]`, when given, lists
    (merged token index, text) for the region objective; the model needs `merge` for it."""
    true_texts, region_texts = true_texts or {}, region_texts or {}
    if region_texts and model.merge is None:
        raise ValueError("region_texts given but the model was built without merge")
    encoded: dict[str, list[int]] = {}

    def ids(text: str) -> list[int]:
        return encoded.setdefault(text, tokenizer.encode(text))

    items = [CaptionItem(image, tokenizer.encode(text), text, true_texts.get(image, frozenset()),
                         tuple((token, ids(t)) for token, t in region_texts.get(image, ())))
             for image, text in pairs]
    return train(model, SiglipTask(), items, collate(loader, tokenizer.endoftext_id), cfg)
