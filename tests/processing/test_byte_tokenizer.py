"""The offline byte-level fallback tokenizer: exact round trips and the tiny preset's ids."""

from __future__ import annotations

import pytest

from omnivision.config import preset
from omnivision.processing.byte_tokenizer import SPECIAL_TOKENS, byte_level_tokenizer
from omnivision.processing.tokenizer import Tokenizer

TEXTS = [
    "",
    "plain ascii",
    "naïve café Ünïcödé 東京タワー",
    "e\u0301 vs \u00e9 (not NFC-normalised)",
    "🐱🏳️‍🌈 \U0010ffff \x00\x01\x7f\t\r\n   trailing  ",
    "def f(x):\n    return x ** 2  # 3.14",
]


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip(text: str) -> None:
    tok = byte_level_tokenizer()
    ids = tok.encode(text)
    assert ids == list(text.encode("utf-8"))  # id == byte value
    assert tok.decode(ids) == text


def test_special_ids() -> None:
    tok = byte_level_tokenizer()
    expected = {"<|endoftext|>": 256, "<|im_start|>": 257, "<|im_end|>": 258, "<|vision_start|>": 259,
                "<|vision_end|>": 260, "<|vision_pad|>": 261, "<|image_pad|>": 262, "<|video_pad|>": 263}
    assert {t: tok.token_to_id(t) for t in SPECIAL_TOKENS} == expected
    assert tok.vocab_size == 264
    assert (tok.endoftext_id, tok.im_start_id, tok.im_end_id) == (256, 257, 258)
    assert (tok.vision_start_id, tok.vision_end_id, tok.image_pad_id) == (259, 260, 262)


def test_matches_tiny_preset() -> None:
    tok, cfg = byte_level_tokenizer(), preset("tiny")
    assert tok.image_pad_id == cfg.image_token_id
    assert (tok.im_end_id, tok.endoftext_id) == cfg.stop_token_ids
    assert tok.vocab_size <= cfg.text.vocab_size


def test_special_tokens_in_text() -> None:
    tok = byte_level_tokenizer()
    text = "<|im_start|>user\nhi<|im_end|>"
    ids = tok.encode(text)
    assert ids[0] == 257 and ids[-1] == 258 and tok.decode(ids) == text
    literal = tok.encode(text, allow_special=False)
    assert literal == list(text.encode()) and tok.decode(literal) == text
    assert tok.decode(ids, skip_special=True) == "user\nhi"


def test_gguf_round_trip() -> None:
    tok = byte_level_tokenizer()
    meta = tok.to_gguf_metadata(pad_to=320)
    # llama.cpp needs the merges key: one merge of two control tokens, which never applies
    assert meta["tokenizer.ggml.merges"] == ["<|endoftext|> <|endoftext|>"]
    assert len(meta["tokenizer.ggml.tokens"]) == 320
    assert meta["tokenizer.ggml.eos_token_id"] == 258
    rebuilt = Tokenizer.from_gguf_metadata(meta, nfc=False)
    for text in TEXTS + ["<|im_start|>x<|image_pad|><|im_end|>"]:
        assert rebuilt.encode(text) == tok.encode(text)
        assert rebuilt.decode(tok.encode(text)) == text


def test_an_inert_merge_is_dropped_and_an_ordinary_one_is_kept() -> None:
    meta = byte_level_tokenizer().to_gguf_metadata()
    meta["tokenizer.ggml.merges"] = ["<|im_start|> <|im_end|>", "a b"]
    vocab = meta["tokenizer.ggml.tokens"]
    vocab.append("ab")
    meta["tokenizer.ggml.token_type"].append(1)
    rebuilt = Tokenizer.from_gguf_metadata(meta, nfc=False)
    assert rebuilt.encode("ab") == [len(vocab) - 1]  # the ordinary merge applies
    assert rebuilt.encode("<|im_start|><|im_end|>") == [257, 258]
