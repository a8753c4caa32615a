"""Writing .safetensors files whose tensors start on 64-byte boundaries, so they can run in place.

Native checkpoints are memory-mapped and their tensors used where they lie. torch's CPU kernels
stream a weight with 64-byte vector loads, and a tensor that starts off a cache-line boundary makes
every load straddle two lines: a bf16 decoding step over the language model measured 19 % slower
with the weights at offset 48 than aligned (24 layers of matrix-vector products, 2 threads, 44.4
against 37.4 ms). `safetensors.torch.save_file` packs tensors in its own order after a header
padded to 8 bytes, so most land unaligned; this writer lays the same format out for alignment:

- the header is padded with spaces (which the format allows) so the data section starts at a
  multiple of 64 bytes from the start of the file;
- tensors whose size is a multiple of 64 bytes come first, largest first, so each of them starts
  aligned; the few others (odd-sized biases, scalars) follow, unaligned and small.

The result is an ordinary safetensors file: no gaps, every byte indexed, read by any safetensors
reader (tested against the `safetensors` package).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import torch

ALIGNMENT = 64

_DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
           torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
           torch.uint8: "U8", torch.bool: "BOOL"}


def _layout(state: Mapping[str, torch.Tensor]) -> list[str]:
    """Tensor names in file order: 64-byte multiples first, largest first, then the rest."""
    def key(name: str) -> tuple[bool, int, str]:
        nbytes = state[name].numel() * state[name].element_size()
        return nbytes % ALIGNMENT != 0, -nbytes, name
    return sorted(state, key=key)


def save_aligned(state: Mapping[str, torch.Tensor], path: str | os.PathLike,
                 metadata: Mapping[str, str] | None = None) -> None:
    """Write `state` (CPU tensors) to `path` in the safetensors format, tensors 64-byte aligned."""
    for name, tensor in state.items():
        if tensor.dtype not in _DTYPES:
            raise ValueError(f"tensor {name!r} has dtype {tensor.dtype}, which safetensors cannot hold")
        if tensor.device.type != "cpu":
            raise ValueError(f"tensor {name!r} is on {tensor.device}; move it to the CPU first")
    order = _layout(state)
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    for name in order:
        t = state[name]
        nbytes = t.numel() * t.element_size()
        header[name] = {"dtype": _DTYPES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-(8 + len(raw)) % ALIGNMENT)  # the data section starts on a 64-byte boundary
    with open(Path(path), "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for name in order:
            t = state[name].detach().contiguous().reshape(-1)
            if t.numel():
                f.write(memoryview(t.view(torch.uint8).numpy()))
