"""Training the nano tokenizer: size, special tokens, round trips, compression, GGUF form."""

from __future__ import annotations

import pytest

from omnivision.processing.byte_tokenizer import SPECIAL_TOKENS
from omnivision.processing.tokenizer import Tokenizer
from omnivision.processing.tokenizer_training import train_byte_level_bpe

CORPUS = [f"A large {c} {s} at the top left and a small blue square at the bottom right."
          for c in ("red", "green", "yellow") for s in ("circle", "triangle", "star")] * 20


def test_trained_tokenizer_has_specials_and_compresses():
    tok = train_byte_level_bpe(CORPUS, vocab_size=400)
    assert tok.vocab_size <= 400
    for t in SPECIAL_TOKENS:
        assert tok.encode(t) == [tok.token_to_id(t)]
    text = "A large red circle at the top left."
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert len(ids) < len(text.encode()) / 2  # merges were learned
    assert tok.image_pad_id != tok.im_end_id


def test_unseen_text_still_round_trips():
    tok = train_byte_level_bpe(CORPUS, vocab_size=300)
    text = "Ünïcödé ✓ and numbers 12345\n<|im_start|>user"
    assert tok.decode(tok.encode(text)) == text


def test_gguf_metadata_round_trip_gives_the_same_ids():
    tok = train_byte_level_bpe(CORPUS, vocab_size=400)
    again = Tokenizer.from_gguf_metadata(tok.to_gguf_metadata(pad_to=512))
    for text in CORPUS[:5] + ["<|im_start|>system\nhi<|im_end|>\n<|vision_start|><|image_pad|>"]:
        assert again.encode(text) == tok.encode(text)


def test_vocab_too_small_is_refused():
    with pytest.raises(ValueError, match="vocab_size"):
        train_byte_level_bpe(CORPUS, vocab_size=100)
