"""An offline fallback tokenizer built in code: one id per byte plus the chat special tokens.

Used by the `tiny` preset (config.py) and by tests, where no real vocabulary is at hand. Ids 0..255
are the bytes 0..255, each written as its ByteLevel alphabet symbol so the vocabulary has the same
form as Qwen's (and survives `Tokenizer.to_gguf_metadata`); there are no merges. The special tokens
follow from id 256 in the order of `SPECIAL_TOKENS`. No normaliser: any text round-trips exactly.
"""

from __future__ import annotations

import tokenizers
from tokenizers import AddedToken, decoders, models, processors

from omnivision.processing.tokenizer import Tokenizer, qwen2_pre_tokenizer

SPECIAL_TOKENS = (
    "<|endoftext|>",  # 256
    "<|im_start|>",  # 257
    "<|im_end|>",  # 258
    "<|vision_start|>",  # 259
    "<|vision_end|>",  # 260
    "<|vision_pad|>",  # 261
    "<|image_pad|>",  # 262
    "<|video_pad|>",  # 263
)


def byte_alphabet() -> list[str]:
    """The ByteLevel symbol of each byte value 0..255 (GPT-2's printable remapping)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    symbols: dict[int, str] = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in symbols:
            symbols[b] = chr(256 + extra)
            extra += 1
    return [symbols[b] for b in range(256)]


def byte_level_tokenizer() -> Tokenizer:
    """A byte-level BPE without merges: 256 byte ids, then the 8 special tokens (264 ids)."""
    vocab = {s: i for i, s in enumerate(byte_alphabet())}
    for i, t in enumerate(SPECIAL_TOKENS):
        vocab[t] = 256 + i
    backend = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=[], fuse_unk=False))
    backend.pre_tokenizer = qwen2_pre_tokenizer()
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    return Tokenizer(backend)
