"""The checklist of docs/official-release.md section 8, run on the official files a user has downloaded.

Each check reads metadata and tensor shapes only (no tensor data) and yields one `Check` with a
status: `pass`, `fail`, or `info` for facts the reference leaves open (the BOS flag, OCR tokens).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

from omnivision.processing.tokenizer import Tokenizer
from omnivision.weights.release_read import ReleaseFiles

MMPROJ_KEYS = {
    "general.architecture": "siglip",
    "general.description": "image encoder for omni-vlm",
    "siglip.vision.image_size": 384,
    "siglip.vision.patch_size": 14,
    "siglip.vision.embedding_length": 1152,
    "siglip.vision.attention.head_count": 16,
    "siglip.vision.feed_forward_length": 4304,
    "siglip.vision.block_count": 27,
    "siglip.vision.projection_dim": 4096,
    "siglip.vision.image_mean": [0.5, 0.5, 0.5],
    "siglip.vision.image_std": [0.5, 0.5, 0.5],
}
LLM_KEYS = {
    "general.architecture": "qwen2",
    "qwen2.block_count": 24,
    "qwen2.embedding_length": 896,
    "qwen2.feed_forward_length": 4864,
    "qwen2.attention.head_count": 14,
    "qwen2.attention.head_count_kv": 2,
    "qwen2.rope.freq_base": 1_000_000.0,
    "qwen2.attention.layer_norm_rms_epsilon": 1e-6,
    "tokenizer.ggml.model": "gpt2",
    "tokenizer.ggml.pre": "qwen2",
}
SHAPES = {"mm.0.weight": (4096, 10368), "mm.2.weight": (896, 4096),
          "v.patch_embd.weight": (1152, 3, 14, 14), "v.position_embd.weight": (729, 1152)}
SPECIAL_IDS = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645,
               "<|vision_start|>": 151652, "<|vision_end|>": 151653, "<|image_pad|>": 151655}


@dataclass
class Check:
    name: str
    status: str  # "pass" | "fail" | "info"
    detail: str


def _same(a, b) -> bool:
    if isinstance(b, float) or isinstance(a, float):
        return isinstance(a, (int, float)) and abs(a - b) <= 1e-6 * max(1.0, abs(b))
    if isinstance(b, list):
        return isinstance(a, list) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _keys(f, expected: dict) -> Iterator[Check]:
    for key, want in expected.items():
        got = f.metadata.get(key)
        ok = _same(got, want)
        yield Check(f"{f.path.name}: {key}", "pass" if ok else "fail",
                    f"{got!r}" if ok else f"{got!r}, expected {want!r}")


def check_release(files: ReleaseFiles) -> list[Check]:
    mm, llm = files.mmproj, files.llm
    checks = list(_keys(mm, MMPROJ_KEYS))
    for name, want in SHAPES.items():
        got = mm.tensors[name].shape if name in mm.tensors else None
        checks.append(Check(f"shape of {name}", "pass" if got == want else "fail",
                            f"{got}" if got == want else f"{got}, expected {want}"))
    blocks = {n.split(".")[2] for n in mm.tensors if n.startswith("v.blk.")}
    checks.append(Check("27 vision blocks v.blk.0-26", "pass" if blocks == {str(i) for i in range(27)}
                        else "fail", f"{len(blocks)} blocks"))
    for prefix in ("v.post_ln.", "v.head."):
        present = any(n.startswith(prefix) for n in mm.tensors)
        checks.append(Check(f"{prefix}* tensors present", "pass" if present else "fail", str(present)))
    checks += _keys(llm, LLM_KEYS)
    tied = "output.weight" not in llm.tensors
    checks.append(Check("language model has no output.weight (tied embeddings)",
                        "pass" if tied else "fail", "tied" if tied else "separate output.weight"))
    checks.append(Check("tokenizer.ggml.add_bos_token", "info",
                        repr(llm.metadata.get("tokenizer.ggml.add_bos_token"))))
    tokens = llm.metadata.get("tokenizer.ggml.tokens", [])
    checks.append(Check("<|ocr_start|> in the vocabulary", "info", str("<|ocr_start|>" in tokens)))
    checks += _tokenizer_checks(Tokenizer.from_gguf_metadata(llm.metadata))
    return checks


def _tokenizer_checks(tok: Tokenizer) -> list[Check]:
    out = []
    for text, want in SPECIAL_IDS.items():
        got = tok.encode(text)
        out.append(Check(f"token id of {text}", "pass" if got == [want] else "fail",
                         f"{got}" if got == [want] else f"{got}, expected [{want}]"))
    got = tok.encode("Hello world!")
    out.append(Check("'Hello world!' encodes to [9707, 1879, 0]",
                     "pass" if got == [9707, 1879, 0] else "fail", str(got)))
    return out
