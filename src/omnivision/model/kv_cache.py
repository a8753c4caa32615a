"""A preallocated key/value cache with an explicit write position, and a fixed-shape view of it.

One `[B, kv_heads, max_len, head_dim]` buffer pair per decoder layer. All rows of a batch share the
write position; rows that are shorter are left-padded and their padding is masked out by the caller's
attention mask. The cache knows nothing about attention itself.

`KVCache` keeps its position as a Python int and hands attention the filled prefix, whose length
grows by one each step. `PositionedWrite` is the same buffers seen with the position in a tensor:
it writes there and hands back the whole buffers, so every step has the same shapes and can be
captured once as a CUDA graph or compiled once (`generation/static_decode.py`); the caller masks
the positions not yet written.
"""

from __future__ import annotations

import torch


class KVCache:
    def __init__(self, num_layers: int, batch: int, kv_heads: int, max_len: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device | str = "cpu") -> None:
        shape = (batch, kv_heads, max_len, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.max_len = max_len
        self.length = 0
        """Positions filled so far (the same for every layer once a forward pass completes)."""

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v [B, kv_heads, T, hd] at the current position; return the filled prefix."""
        start, end = self.length, self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache overflow: {end} positions needed, {self.max_len} allocated")
        self.keys[layer][:, :, start:end] = k
        self.values[layer][:, :, start:end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def advance(self, steps: int) -> None:
        """Called once per forward pass, after every layer has written `steps` positions."""
        self.length += steps


class PositionedWrite:
    """A `KVCache`'s buffers, written at `index` (a one-element long tensor the caller owns)."""

    def __init__(self, cache: KVCache, index: torch.Tensor) -> None:
        self.keys, self.values, self.index = cache.keys, cache.values, index

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v [B, kv_heads, 1, hd] at `index`; return the whole buffers [B, kv_heads, L, hd]."""
        self.keys[layer].index_copy_(2, self.index, k)
        self.values[layer].index_copy_(2, self.index, v)
        return self.keys[layer], self.values[layer]

    def advance(self, steps: int) -> None:
        self.index.add_(steps)
