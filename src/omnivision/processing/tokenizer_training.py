"""Training a small byte-level BPE tokenizer on a corpus (the nano model's tokenizer).

Same form as Qwen2's: the Qwen2 pre-tokenizer split, the 256-symbol ByteLevel alphabet (so any text
encodes), ByteLevel decoding, and the chat template's special tokens, so a model using it can be
written as a GGUF pair. Uses the `tokenizers` library's BPE trainer.
"""

from __future__ import annotations

from collections.abc import Iterable

import tokenizers
from tokenizers import AddedToken, decoders, models, processors, trainers

from omnivision.processing.byte_tokenizer import SPECIAL_TOKENS, byte_alphabet
from omnivision.processing.tokenizer import Tokenizer, qwen2_pre_tokenizer


def train_byte_level_bpe(texts: Iterable[str], vocab_size: int = 1024) -> Tokenizer:
    """A tokenizer with `vocab_size` ids: the special tokens, the byte alphabet, then merges."""
    minimum = len(SPECIAL_TOKENS) + 256
    if vocab_size < minimum:
        raise ValueError(f"vocab_size must be at least {minimum} (special tokens + bytes), got {vocab_size}")
    backend = tokenizers.Tokenizer(models.BPE(fuse_unk=False))
    backend.pre_tokenizer = qwen2_pre_tokenizer()
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, show_progress=False,
                                  initial_alphabet=byte_alphabet(),
                                  special_tokens=[AddedToken(t, special=True, normalized=False)
                                                  for t in SPECIAL_TOKENS])
    backend.train_from_iterator(texts, trainer=trainer)
    return Tokenizer(backend)
