"""Collation: right padding, image bookkeeping, and a training step of the tiny model on a real batch."""

from __future__ import annotations

import pytest
import torch

from omnivision.config import OmniVisionConfig
from omnivision.model import OmniVisionModel
from omnivision.processing.byte_tokenizer import byte_level_tokenizer
from omnivision.train.collate import Batch, collate_examples
from omnivision.train.encode import EncodedExample, encode_caption, encode_conversation
from omnivision.train.losses import IGNORE_INDEX, lm_loss, lm_loss_sum, sequence_logps

X = IGNORE_INDEX
PAD = 256  # the byte tokenizer's <|endoftext|>


def test_right_padding_shapes_and_values() -> None:
    a = EncodedExample([1, 2, 3, 4, 5], [X, X, 3, 4, 5], 0)
    b = EncodedExample([7, 8], [X, 8], 0)
    batch = collate_examples([a, b], pad_id=PAD)
    assert batch.input_ids.tolist() == [[1, 2, 3, 4, 5], [7, 8, PAD, PAD, PAD]]
    assert batch.labels.tolist() == [[X, X, 3, 4, 5], [X, 8, X, X, X]]
    assert batch.key_valid.tolist() == [[True] * 5, [True, True, False, False, False]]
    assert batch.input_ids.dtype == batch.labels.dtype == torch.long
    assert batch.key_valid.dtype == torch.bool
    assert batch.attention_mask is batch.key_valid
    assert batch.pixel_values is None
    assert batch.num_label_tokens == 4


def test_images_are_concatenated_in_order_and_counted() -> None:
    one = EncodedExample([9, 262, 9], [X, X, 9], 1)
    text = EncodedExample([9, 9], [X, 9], 0)
    first, second = torch.zeros(3, 8, 8), torch.ones(1, 3, 8, 8)
    batch = collate_examples([one, text, one], PAD, [first, second])
    assert batch.pixel_values is not None and batch.pixel_values.shape == (2, 3, 8, 8)
    assert batch.pixel_values[0].sum() == 0 and batch.pixel_values[1].sum() == 3 * 64
    with pytest.raises(ValueError, match="2 images but 1"):
        collate_examples([one, text, one], PAD, [first])
    with pytest.raises(ValueError, match="1 images but 0"):
        collate_examples([one], PAD, None)
    with pytest.raises(ValueError, match="0 images but 1"):
        collate_examples([text], PAD, [first])
    with pytest.raises(ValueError, match="expected"):
        collate_examples([one], PAD, [torch.zeros(8, 8)])
    with pytest.raises(ValueError, match="no examples"):
        collate_examples([], PAD)


def test_cached_features_take_the_place_of_pixels() -> None:
    one = EncodedExample([9, 262, 9], [X, X, 9], 1)
    text = EncodedExample([9, 9], [X, 9], 0)
    first, second = torch.zeros(4, 6), torch.ones(4, 6)  # [P, D_v] each
    batch = collate_examples([one, text, one], PAD, vision_features=[first, second])
    assert batch.pixel_values is None
    assert batch.vision_features is not None and batch.vision_features.shape == (2, 4, 6)
    assert batch.vision_features[0].sum() == 0 and batch.vision_features[1].sum() == 24
    assert collate_examples([text], PAD, vision_features=[]).vision_features is None
    with pytest.raises(ValueError, match="2 images but 1 feature"):
        collate_examples([one, text, one], PAD, vision_features=[first])
    with pytest.raises(ValueError, match="not both"):
        collate_examples([one], PAD, [torch.zeros(3, 8, 8)], vision_features=[first])


def test_batch_to_moves_every_tensor() -> None:
    ex = EncodedExample([9, 262, 9], [X, X, 9], 1)
    batch = collate_examples([ex], PAD, [torch.zeros(3, 8, 8, dtype=torch.bfloat16)])
    moved = batch.to("meta")
    assert isinstance(moved, Batch)
    for name in ("input_ids", "labels", "key_valid", "pixel_values"):
        assert getattr(moved, name).device.type == "meta"
        assert getattr(moved, name).dtype == getattr(batch, name).dtype
    assert batch.input_ids.device.type == "cpu"
    features = collate_examples([ex], PAD, vision_features=[torch.zeros(4, 6, dtype=torch.bfloat16)])
    assert features.to("meta").vision_features.device.type == "meta"
    assert features.to("meta").vision_features.dtype == torch.bfloat16
    assert collate_examples([EncodedExample([1], [X], 0)], PAD).to("meta").pixel_values is None


def _examples(config: OmniVisionConfig) -> list[EncodedExample]:
    tok = byte_level_tokenizer()
    n = config.num_image_tokens
    return [
        encode_caption(tok, "A red cube.", "omnivision", "Be brief.", n),
        encode_conversation(tok, [("user", "Hi"), ("assistant", "Hello!"), ("user", "Bye"),
                                  ("assistant", "Goodbye.")], False, "omnivision", None, n),
        encode_conversation(tok, [("user", "Colour?"), ("assistant", "Blue.")], True, "chatml", "S", n),
    ]


def test_tiny_model_trains_on_a_collated_batch(tiny_model: OmniVisionModel,
                                              tiny_config: OmniVisionConfig) -> None:
    examples = _examples(tiny_config)
    assert tiny_config.image_token_id == byte_level_tokenizer().image_pad_id
    size = tiny_config.vision.image_size
    images = [torch.randn(3, size, size), torch.randn(3, size, size)]
    batch = collate_examples(examples, PAD, images)
    assert batch.input_ids.shape == (3, max(len(e) for e in examples))
    logits = tiny_model(batch.input_ids, pixel_values=batch.pixel_values, key_valid=batch.key_valid)
    assert logits.shape == (*batch.input_ids.shape, tiny_config.text.vocab_size)
    loss = lm_loss(logits, batch.labels)
    assert torch.isfinite(loss)
    loss.backward()
    grad = tiny_model.projector[0].weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert tiny_model.vision.embeddings.patch_embedding.weight.grad is not None


@torch.no_grad()
def test_right_padding_leaves_each_row_unchanged(tiny_model: OmniVisionModel,
                                                tiny_config: OmniVisionConfig) -> None:
    """Each row of the padded batch scores exactly as the same example run alone without padding."""
    examples = _examples(tiny_config)
    size = tiny_config.vision.image_size
    images = [torch.randn(3, size, size), torch.randn(3, size, size)]
    batch = collate_examples(examples, PAD, images)
    logits = tiny_model(batch.input_ids, pixel_values=batch.pixel_values, key_valid=batch.key_valid)
    batched = sequence_logps(logits, batch.labels)  # [B]
    total, count = lm_loss_sum(logits, batch.labels)
    per_image = iter(images)
    alone_total = torch.zeros(())
    for row, ex in enumerate(examples):
        pixels = next(per_image)[None] if ex.num_images else None
        single = collate_examples([ex], PAD, None if pixels is None else [pixels])
        out = tiny_model(single.input_ids, pixel_values=single.pixel_values)
        alone = sequence_logps(out, single.labels)[0]
        torch.testing.assert_close(batched[row], alone, rtol=1e-4, atol=1e-4)
        alone_total = alone_total - alone
    torch.testing.assert_close(total, alone_total, rtol=1e-4, atol=1e-4)
    assert int(count) == batch.num_label_tokens == sum(e.num_label_tokens for e in examples)
