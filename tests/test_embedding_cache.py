"""Image embeddings are reused for a repeated image, by content, and the answers do not change."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from omnivision.embedding_cache import ImageEmbeddingCache, pixel_key
from omnivision.processing.byte_tokenizer import byte_level_tokenizer
from omnivision.vlm import OmniVision


def _counting_encoder(calls: list):
    def encode(pixels: torch.Tensor) -> torch.Tensor:
        calls.append(pixels.shape[0])
        return pixels.mean(dim=(2, 3))[:, None, :].repeat(1, 4, 1)  # [N, 4, C]
    return encode


def test_only_new_images_are_encoded_and_order_is_kept():
    calls: list = []
    cache = ImageEmbeddingCache(capacity=8)
    a, b, c = (torch.full((3, 4, 4), float(v)) for v in (1, 2, 3))
    first = cache.encode(torch.stack([a, b]), _counting_encoder(calls))
    second = cache.encode(torch.stack([b, c, a]), _counting_encoder(calls))
    assert calls == [2, 1]  # only c was new the second time
    assert torch.equal(second[0], first[1]) and torch.equal(second[2], first[0])
    assert second[1, 0, 0] == 3.0
    assert (cache.hits, cache.misses) == (2, 3)


def test_least_recently_used_images_are_dropped_and_zero_turns_it_off():
    calls: list = []
    cache = ImageEmbeddingCache(capacity=2)
    images = [torch.full((3, 2, 2), float(v)) for v in range(3)]
    for image in images:
        cache.encode(image[None], _counting_encoder(calls))
    assert len(cache) == 2
    cache.encode(images[0][None], _counting_encoder(calls))  # dropped: encoded again
    assert calls == [1, 1, 1, 1]
    off = ImageEmbeddingCache(capacity=0)
    off.encode(images[1][None], _counting_encoder(calls))
    off.encode(images[1][None], _counting_encoder(calls))
    assert len(off) == 0 and calls[-2:] == [1, 1]
    with pytest.raises(ValueError, match="capacity"):
        ImageEmbeddingCache(-1)


def test_the_key_depends_on_content_dtype_and_shape():
    x = torch.zeros(3, 4, 4)
    assert pixel_key(x) == pixel_key(x.clone())
    assert pixel_key(x) != pixel_key(x.to(torch.bfloat16))
    assert pixel_key(x) != pixel_key(torch.zeros(3, 2, 8))
    y = x.clone()
    y[0, 0, 0] = 1e-7
    assert pixel_key(x) != pixel_key(y)


def test_a_second_question_about_the_same_image_skips_the_tower(tiny_model, monkeypatch):
    vlm = OmniVision(tiny_model, byte_level_tokenizer())
    image = Image.new("RGB", (84, 84), (200, 30, 30))
    first = vlm.answer(image, "What colour?", max_new_tokens=5)
    towers: list = []
    original = tiny_model.vision.forward
    monkeypatch.setattr(tiny_model.vision, "forward", lambda px: towers.append(1) or original(px))
    again = vlm.answer(image.copy(), "What colour?", max_new_tokens=5)
    assert towers == [] and again.token_ids == first.token_ids
    vlm.answer(Image.new("RGB", (84, 84), (30, 30, 200)), "What colour?", max_new_tokens=5)
    assert towers == [1]


def test_a_new_context_empties_the_cache():
    calls: list = []
    cache = ImageEmbeddingCache()
    image = torch.ones(1, 3, 2, 2)
    cache.encode(image, _counting_encoder(calls), context="weights v1")
    cache.encode(image, _counting_encoder(calls), context="weights v1")
    cache.encode(image, _counting_encoder(calls), context="weights v2")
    assert calls == [1, 1]


def test_changed_weights_are_not_served_stale_embeddings(tiny_model):
    from omnivision.quantize import quantize_model

    vlm = OmniVision(tiny_model, byte_level_tokenizer())
    image = Image.new("RGB", (84, 84), (200, 30, 30))
    before = vlm.encode_images([image])
    with torch.no_grad():
        tiny_model.projector[2].bias.add_(1.0)  # fine-tuned in place
    assert not torch.equal(vlm.encode_images([image]), before)
    quantize_model(tiny_model, "int8", ("projector",))  # new modules
    after = vlm.encode_images([image])
    assert torch.equal(after, tiny_model.encode_images(vlm.image_processor([image])))
