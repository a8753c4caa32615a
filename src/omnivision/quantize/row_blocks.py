"""`linear_in_row_blocks`: a quantized layer's product on many rows, dequantising its weight in slices
with torch operators: the fallback where this project's C++ loops (`quantize.many_rows`) do not run
(no compiler, other devices, other dtypes), about five times slower than they are on the CPU.

A prompt or the 729-token vision tower runs faster on AMX bf16 products than through the packed
low-bit kernels, but dequantising a whole weight first would put a full-precision copy of it in
memory: 470 MB of fp32 and bf16 temporaries for the projector's 4096 x 10368 matrix, more than the
rest of an int4 model's working set. Slices of `BLOCK_ROWS` output rows keep that to a few tens of
MB whatever the layer's size, for the same arithmetic.
"""

from __future__ import annotations

from typing import Callable

import torch

from omnivision.model.linear import linear

BLOCK_ROWS = 512
"""Output rows dequantised at once (a multiple of 64, so int4's blocked layout slices cleanly)."""


def linear_in_row_blocks(x: torch.Tensor, out_features: int, weight_rows: Callable[[int, int], torch.Tensor],
                         bias: torch.Tensor | None) -> torch.Tensor:
    """x [..., K] @ W^T (+ bias) -> [..., N], where weight_rows(start, stop) gives W[start:stop] in x.dtype."""
    parts = [linear(x, weight_rows(start, min(start + BLOCK_ROWS, out_features)))
             for start in range(0, out_features, BLOCK_ROWS)]
    out = parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)
    return out if bias is None else out + bias
