"""The next-token task of stages 1 and 2: a model and a `Batch` in, the mean loss over its labels out.

The images of a batch enter as pixels (the tower runs in the step) or as the frozen tower's cached
features (`Batch.vision_features`, `train/feature_cache.py`: the step runs the projector and the
decoder only). The loop (`train/loop.py`) calls `loss` once per micro-batch.
"""

from __future__ import annotations

import torch

from omnivision.train.collate import Batch
from omnivision.train.losses import next_token_targets, token_loss


class LMTask:
    """Mean next-token loss over the labelled tokens of a batch of conversations. The output head
    runs only where a label is scored (about a quarter of the positions of the nano recipe's
    conversations; the prompt, the image and the padding need no logits)."""

    def loss(self, model, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        at, targets = next_token_targets(batch.labels)  # [B, T], [M]
        logits = model(batch.input_ids, pixel_values=batch.pixel_values, vision_features=batch.vision_features,
                       key_valid=batch.key_valid, logits_at=at)  # [M, V]
        return token_loss(logits, targets), {"label_tokens": float(batch.num_label_tokens)}
