"""The projector: token compression, then Linear -> GELU(tanh) -> Linear into the decoder's width.

Compression modes (`ProjectorConfig.compression`):

- `concat9`, the official one: a flat reshape that concatenates every 9 consecutive tokens of the
  row-major patch sequence, `[B, 729, 1152] -> [B, 81, 10368]` (token 9g first). On the 27x27 grid each
  group is a 1x9 strip of one row (docs/official-release.md 1.1, and 0, item 1). Needs only a patch count divisible by 9.
- `spatial3x3`: each 3x3 block of the grid becomes one token, row-major inside the block. Needs a grid
  side divisible by 3.
- `none`: every patch is one token.

The MLP is an `nn.Sequential` whose indices 0 and 2 match the release's `multi_modal_projector.{0,2}`
(`mm.0` / `mm.2` in the GGUF).
"""

from __future__ import annotations

import torch
from torch import nn

from omnivision.model.linear import Linear


def concat9(x: torch.Tensor) -> torch.Tensor:
    """[B, N, D] -> [B, N/9, 9D]: consecutive tokens 9g..9g+8 concatenated."""
    b, n, d = x.shape
    if n % 9:
        raise ValueError(f"concat9 needs a token count divisible by 9, got {n}")
    return x.reshape(b, n // 9, 9 * d)


def spatial3x3(x: torch.Tensor) -> torch.Tensor:
    """[B, g*g, D] -> [B, (g/3)^2, 9D]: each 3x3 block of the grid, row-major inside the block."""
    b, n, d = x.shape
    g = int(round(n ** 0.5))
    if g * g != n or g % 3:
        raise ValueError(f"spatial3x3 needs a square grid with a side divisible by 3, got {n} tokens")
    x = x.view(b, g // 3, 3, g // 3, 3, d)  # [B, block_row, r, block_col, c, D]
    x = x.permute(0, 1, 3, 2, 4, 5)  # [B, block_row, block_col, r, c, D]
    return x.reshape(b, (g // 3) ** 2, 9 * d)


COMPRESS = {"concat9": concat9, "spatial3x3": spatial3x3, "none": lambda x: x}


class Projector(nn.Sequential):
    """Vision features [B, N, D_v] -> image embeddings [B, N/merge, D_text]."""

    def __init__(self, compression: str, in_features: int, hidden: int, out_features: int) -> None:
        super().__init__(
            Linear(in_features, hidden),
            nn.GELU(approximate="tanh"),
            Linear(hidden, out_features),
        )
        self.compression = compression

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return super().forward(COMPRESS[self.compression](features))
