"""Pretraining the language model on text alone (the nano model's first language step).

Every token of every text is a target (plain language modelling); the texts are chat-formatted with
the model's own template, so the model also learns the turn structure before it sees an image. Only
the `language` component learns.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from omnivision.model import OmniVisionModel
from omnivision.processing.tokenizer import Tokenizer
from omnivision.train.collate import Batch, collate_examples
from omnivision.train.config import TrainConfig
from omnivision.train.encode import EncodedExample
from omnivision.train.loop import TrainResult, train
from omnivision.train.losses import lm_loss
from omnivision.train.parts import trainable_parts


class TextTask:
    def loss(self, model, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        logits = model(batch.input_ids, key_valid=batch.key_valid)
        return lm_loss(logits, batch.labels), {}


def text_examples(tokenizer: Tokenizer, texts: Sequence[str], max_len: int) -> list[EncodedExample]:
    out = []
    for text in texts:
        ids = tokenizer.encode(text)[:max_len]
        out.append(EncodedExample(ids, list(ids), 0))
    return out


def pretrain_text(model: OmniVisionModel, tokenizer: Tokenizer, texts: Sequence[str], cfg: TrainConfig,
                  max_len: int = 256) -> TrainResult:
    items = text_examples(tokenizer, texts, max_len)
    return train(model, TextTask(), items,
                 lambda batch: collate_examples(batch, tokenizer.endoftext_id), cfg,
                 trainable=trainable_parts(["language"]))
