"""Collation: a list of `EncodedExample`s (plus their images) -> one padded `Batch` of tensors.

Training pads on the RIGHT: each row is `[ids..., pad...]`, its labels `[labels..., IGNORE_INDEX...]`
and `key_valid` is True on the real tokens. Real tokens then sit at the same positions as in an
unpadded forward pass, no real query ever has a padded key before it, and the padded tail is never
scored. `OmniVisionModel.forward(input_ids, pixel_values=..., key_valid=...)` derives positions from
`key_valid.cumsum(-1) - 1`, which is 0..L-1 on the real tokens for right padding too. (Generation pads
on the left instead, so that every row's next token lands in the same column.)

Knows nothing of tokenizers or templates; images arrive as already preprocessed tensors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from omnivision.train.encode import EncodedExample
from omnivision.train.losses import IGNORE_INDEX


@dataclass
class Batch:
    """Right-padded model inputs and labels for one (micro-)batch."""

    input_ids: torch.Tensor
    """[B, T] long; padding is `pad_id`."""
    labels: torch.Tensor
    """[B, T] long; `IGNORE_INDEX` on the prompt, image slots and padding."""
    key_valid: torch.Tensor
    """[B, T] bool; True on real tokens (the model's `key_valid`, a.k.a. attention mask)."""
    pixel_values: torch.Tensor | None
    """[N, 3, H, W] for the N images in row-major placeholder order, or None without images."""
    vision_features: torch.Tensor | None = None
    """[N, P, D_v]: the same images as the frozen vision tower's cached output, in place of
    `pixel_values` (`train/feature_cache.py`), or None."""

    @property
    def attention_mask(self) -> torch.Tensor:
        return self.key_valid

    @property
    def num_label_tokens(self) -> int:
        """Tokens counted by `lm_loss` (the shift drops column 0)."""
        return int((self.labels[:, 1:] != IGNORE_INDEX).sum())

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """A copy with every tensor on `device` (pixel values keep their dtype)."""
        return Batch(
            input_ids=self.input_ids.to(device, non_blocking=non_blocking),
            labels=self.labels.to(device, non_blocking=non_blocking),
            key_valid=self.key_valid.to(device, non_blocking=non_blocking),
            pixel_values=None if self.pixel_values is None
            else self.pixel_values.to(device, non_blocking=non_blocking),
            vision_features=None if self.vision_features is None
            else self.vision_features.to(device, non_blocking=non_blocking),
        )


def collate_examples(examples: Sequence[EncodedExample], pad_id: int,
                     pixel_values: Sequence[torch.Tensor] | None = None, *,
                     vision_features: Sequence[torch.Tensor] | None = None) -> Batch:
    """Pad `examples` on the right to the longest one and stack them.

    `pixel_values` holds the images of the examples in order, each [3, H, W] (or [k, 3, H, W] for k
    images); their total must equal the examples' `num_images`, so the model's row-major splice gives
    each placeholder block its own image. Text-only batches pass None. With a frozen tower the images
    may come as its cached features instead, `vision_features`, each [P, D_v], one per image.
    """
    if not examples:
        raise ValueError("no examples to collate")
    b, t = len(examples), max(len(e) for e in examples)
    input_ids = torch.full((b, t), pad_id, dtype=torch.long)  # [B, T]
    labels = torch.full((b, t), IGNORE_INDEX, dtype=torch.long)  # [B, T]
    key_valid = torch.zeros((b, t), dtype=torch.bool)  # [B, T]
    for row, e in enumerate(examples):
        n = len(e)
        input_ids[row, :n] = torch.tensor(e.input_ids, dtype=torch.long)
        labels[row, :n] = torch.tensor(e.labels, dtype=torch.long)
        key_valid[row, :n] = True

    num_images = sum(e.num_images for e in examples)
    if vision_features is not None:
        if pixel_values:
            raise ValueError("give the images as pixel_values or as vision_features, not both")
        if len(vision_features) != num_images:
            raise ValueError(f"the examples hold {num_images} images but {len(vision_features)} "
                             "feature tensors were given")
        features = torch.stack(list(vision_features)) if vision_features else None  # [N, P, D_v]
        return Batch(input_ids, labels, key_valid, None, features)
    images = None
    if pixel_values:
        for n, p in enumerate(pixel_values):
            if p.dim() not in (3, 4):
                raise ValueError(f"pixel_values[{n}] has shape {tuple(p.shape)}; expected [3, H, W] "
                                 "or [k, 3, H, W]")
        images = torch.cat([p if p.dim() == 4 else p[None] for p in pixel_values])  # [N, 3, H, W]
    got = 0 if images is None else images.shape[0]
    if got != num_images:
        raise ValueError(f"the examples hold {num_images} images but {got} pixel tensors were given")
    return Batch(input_ids, labels, key_valid, images)
