"""GGUF Q8_0 / Q4_0 language-model tensors straight into `Int8GroupLinear` / `Int4Linear` buffers.

No full-precision copy of the model is made: tensors are converted one at a time from the file's
memory map (Q8_0 a block of rows at a time; a Q4_0 tensor's codes, or another type's fp32 values,
for one tensor at a time).

- Q4_0 (blocks of 32: an fp16 scale d, 16 bytes of 4-bit codes, element j in the low nibble of byte
  j and element j+16 in the high nibble; w = (q - 8) * d) maps exactly onto `Int4Linear` with
  group size 32, scale d and zero 0: the dequantised fp32 weights are bit-identical. (torch's int4
  kernel takes its scales in bf16, so the product itself rounds d to 8 significant bits.)
- Q8_0 (blocks of 32: an fp16 scale d and 32 int8 codes; w = q * d) is `Int8GroupLinear`'s own
  layout: codes and scales are copied, bit-identical (a code of -128, which llama.cpp never writes,
  is clamped to -127: the kernel's sign trick has no +128; such a tensor is not counted exact).
  Where this machine cannot build that layer's kernel (no C++ compiler), the codes are requantized
  per row for torch's int8 kernel instead (`Int8Linear`): s = max |w| / 127 over the row,
  q' = round(w / s); each weight moves by at most s / 2.
- The output head, or the tied embedding that serves as one, is kept quantized only when the file
  stores it in the same type as the matrices (`release_read._quantized_llm_state`).
- A tensor of another type in such a file (llama.cpp keeps some in Q6_K, Q8_0 or F16 in its mixes)
  is dequantised and quantized into the layer's layout the usual way, one tensor at a time.
"""

from __future__ import annotations

import numpy as np
import torch
from gguf import GGMLQuantizationType

from omnivision.quantize.int4_linear import quantize_int4
from omnivision.quantize.int4_packing import pack_codes
from omnivision.quantize.int8_group_linear import quantize_int8_groups
from omnivision.quantize.int8_linear import quantize_int8
from omnivision.weights.gguf_file import GGUFFile

BLOCK = 32
ROWS_AT_ONCE = 1024
"""Rows converted together: bounds the temporary float memory to ROWS_AT_ONCE x in_features x 4 bytes."""
SCHEME_FOR_TYPE = {"Q8_0": "int8-g32", "Q4_0": "int4-g32-sym"}
"""The layer layout each GGUF type loads into (Q8_0: see `scheme_for_type`)."""


def scheme_for_type(kind: str) -> str:
    """The scheme a GGUF type loads into on this machine: Q8_0 into groups of 32 where the group-wise
    kernel builds, else per row (torch's int8 kernel; see the module docstring)."""
    from omnivision.kernels.cpp_build import q8_linear

    if kind == "Q8_0" and q8_linear() is None:
        return "int8"
    return SCHEME_FOR_TYPE[kind]


def _blocks(raw: np.ndarray, rows: int, cols: int, block_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    """(scales d fp32 [rows, cols/32], code bytes [rows, cols/32, block_bytes - 2])."""
    blocks = raw.reshape(rows, cols // BLOCK, block_bytes)
    d = np.ascontiguousarray(blocks[..., :2]).view(np.float16)[..., 0].astype(np.float32)
    return d, blocks[..., 2:]


def q4_0_to_int4(raw: np.ndarray, rows: int, cols: int) -> dict[str, torch.Tensor]:
    """Q4_0 bytes of an [rows, cols] weight -> Int4Linear buffers (group 32), exactly."""
    d, qs = _blocks(raw, rows, cols, 18)
    codes = np.concatenate([qs & 15, qs >> 4], axis=-1).reshape(rows, cols)  # elements in order
    packed = pack_codes(torch.from_numpy(codes.astype(np.int32)))
    scales = torch.from_numpy(d)
    return {"qweight": packed, "scales": scales, "zeros": torch.zeros_like(scales)}


def q8_0_to_int8_groups(raw: np.ndarray, rows: int, cols: int) -> tuple[dict[str, torch.Tensor], bool]:
    """Q8_0 bytes of an [rows, cols] weight -> Int8GroupLinear buffers (the same codes and fp16
    scales), and whether they are exact (no -128 code clamped)."""
    blocks = raw.reshape(rows, cols // BLOCK, 34)
    d = np.ascontiguousarray(blocks[..., :2]).view(np.float16)[..., 0]  # [rows, cols/32]
    codes = torch.from_numpy(np.ascontiguousarray(blocks[..., 2:]).view(np.int8).reshape(rows, cols))
    exact = not bool((codes == -128).any())
    return {"qweight": codes.clamp(-127, 127), "scales": torch.from_numpy(d.copy())}, exact


def q8_0_to_int8(raw: np.ndarray, rows: int, cols: int) -> dict[str, torch.Tensor]:
    """Q8_0 bytes of an [rows, cols] weight -> Int8Linear buffers (per-row scales; see above)."""
    qweight = torch.empty(rows, cols, dtype=torch.int8)
    scales = torch.empty(rows, dtype=torch.float32)
    for start in range(0, rows, ROWS_AT_ONCE):
        stop = min(rows, start + ROWS_AT_ONCE)
        d, qs = _blocks(raw.reshape(rows, -1)[start:stop], stop - start, cols, 34)
        w = qs.view(np.int8).astype(np.float32) * d[..., None]  # [r, cols/32, 32]
        q, s = quantize_int8(torch.from_numpy(w.reshape(stop - start, cols)))
        qweight[start:stop], scales[start:stop] = q, s
    return {"qweight": qweight, "scales": scales}


def _requantized(f: GGUFFile, name: str, scheme: str) -> dict[str, torch.Tensor]:
    weight = f.tensor(name, torch.float32)
    if scheme == "int8":
        q, s = quantize_int8(weight)
        return {"qweight": q, "scales": s}
    if scheme == "int8-g32":
        q, s = quantize_int8_groups(weight)
        return {"qweight": q, "scales": s}
    codes, scales, zeros = quantize_int4(weight, BLOCK, symmetric=True)
    return {"qweight": pack_codes(codes), "scales": scales, "zeros": zeros}


def layer_buffers(f: GGUFFile, name: str, scheme: str) -> tuple[dict[str, torch.Tensor], bool]:
    """The quantized-layer buffers for the GGUF weight `name`, and whether they are exact copies
    (False: requantized from another type, or Q8_0 regrouped per row)."""
    info = f.info(name)
    rows, cols = info.shape
    if scheme == "int4-g32-sym" and info.ggml_type == GGMLQuantizationType.Q4_0:
        return q4_0_to_int4(f.raw(name), rows, cols), True
    if scheme == "int8-g32" and info.ggml_type == GGMLQuantizationType.Q8_0:
        return q8_0_to_int8_groups(f.raw(name), rows, cols)
    if scheme == "int8" and info.ggml_type == GGMLQuantizationType.Q8_0:
        return q8_0_to_int8(f.raw(name), rows, cols), False
    return _requantized(f, name, scheme), False
