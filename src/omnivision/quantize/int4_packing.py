"""How `Int4Linear` stores its 4-bit codes: two layouts, chosen by the number of output rows N.

- `blocked` (N divisible by 64): for each block of 64 rows and each input column k, 32 bytes; byte i
  holds row i of the block in its low nibble and row i + 32 in its high nibble. This is the layout
  torch's CPU kernel `_weight_int4pack_mm_for_cpu` reads (checked once per process against
  `_convert_weight_to_int4pack_for_cpu`, see `kernel_reads_blocked`), so the stored codes feed the
  kernel with no second, converted copy in memory.
- `rows` (any other N): row-major, column 2j in the high nibble of byte j.

Both hold exactly N x K / 2 bytes and are defined here, not by a torch version: a torch whose
kernel layout differs still loads and runs the same files (through a converted copy, `to_kernel`).
"""

from __future__ import annotations

import functools

import torch

BLOCK_ROWS = 64
_INNER_K_TILES = 8  # the tile count torchao's int4 "tinygemm" layout uses by default


def is_blocked(out_features: int) -> bool:
    return out_features % BLOCK_ROWS == 0


def pack_codes(codes: torch.Tensor) -> torch.Tensor:
    """int codes 0..15 [N, K] (K even) -> uint8 [N, K/2] in the layout N implies."""
    n, k = codes.shape
    c = codes.to(torch.uint8)
    if not is_blocked(n):
        return c[:, 0::2] << 4 | c[:, 1::2]
    c = c.view(n // BLOCK_ROWS, 2, BLOCK_ROWS // 2, k)  # [block, half, i, K]: row = block*64 + half*32 + i
    packed = c[:, 1] << 4 | c[:, 0]  # [block, 32, K]
    return packed.transpose(1, 2).contiguous().view(n, k // 2)  # [block, K, 32]


def unpack_codes(packed: torch.Tensor, rows: int, blocked: bool | None = None) -> torch.Tensor:
    """uint8 [rows, K/2] -> uint8 codes [rows, K]. `blocked`: the layout of the layer these rows come
    from (default: implied by `rows`); a slice of a blocked layer must start and end on 64-row bounds."""
    n = rows
    if not (is_blocked(n) if blocked is None else blocked):
        return torch.stack((packed >> 4, packed & 15), dim=-1).view(n, -1)
    k = packed.numel() * 2 // n
    b = packed.view(n // BLOCK_ROWS, k, BLOCK_ROWS // 2).transpose(1, 2)  # [block, 32, K]
    return torch.stack((b & 15, b >> 4), dim=1).reshape(n, k)  # [block, half, 32, K] -> rows


def gather_codes(packed: torch.Tensor, out_features: int, index: torch.Tensor) -> torch.Tensor:
    """The codes of rows `index` [R] -> uint8 [R, K], without unpacking the other rows."""
    n = out_features
    if not is_blocked(n):
        return unpack_codes(packed.view(n, -1)[index], index.numel(), blocked=False)
    k = packed.numel() * 2 // n
    blocks = packed.view(n // BLOCK_ROWS, k, BLOCK_ROWS // 2)
    within = index % BLOCK_ROWS
    bytes_ = blocks[index // BLOCK_ROWS, :, within % (BLOCK_ROWS // 2)]  # [R, K]
    return (bytes_ >> (4 * (within // (BLOCK_ROWS // 2)))[:, None].to(torch.uint8)) & 15


@functools.cache
def kernel_reads_blocked() -> bool:
    """Whether this torch's CPU int4 kernel layout is the blocked one (a 128 x 64 probe)."""
    try:
        codes = torch.randint(0, 16, (2 * BLOCK_ROWS, 64), generator=torch.Generator().manual_seed(0),
                              dtype=torch.int32)
        theirs = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, _INNER_K_TILES)
    except (AttributeError, RuntimeError):
        return False
    return theirs.dtype == torch.uint8 and torch.equal(theirs.view(-1), pack_codes(codes).view(-1))


def to_kernel(packed: torch.Tensor, out_features: int) -> torch.Tensor:
    """The kernel's layout of these codes: the stored tensor itself when the layouts agree."""
    if is_blocked(out_features) and kernel_reads_blocked():
        return packed
    codes = unpack_codes(packed, out_features).to(torch.int32).contiguous()
    return torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, _INNER_K_TILES)
