"""A preallocated key/value cache with an explicit write position, and a fixed-shape view of it.

One `[B, kv_heads, max_len, head_dim]` buffer pair per decoder layer. All rows of a batch share the
write position; rows that are shorter are left-padded and their padding is masked out by the caller's
attention mask. The cache knows nothing about attention itself.

`KVCache` keeps its position as a Python int and hands attention the filled prefix, whose length
grows by one each step. `PositionedWrite` is the same buffers seen with the position in a tensor:
it writes there and hands back the whole buffers, so every step has the same shapes and can be
captured once as a CUDA graph or compiled once (`generation/static_decode.py`); the caller masks
the positions not yet written. `RowWrite` gives each of the first n rows a position of its own, so
sequences of different lengths decode in one batch and join or leave it between steps
(`generation/decode_batch.py`); `KVCache.row` is one row as a cache of its own, for prefilling a
sequence into its row alone.
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

    def row(self, index: int) -> KVCache:
        """Row `index` as a one-row cache sharing these buffers, empty (length 0)."""
        view = KVCache.__new__(KVCache)
        view.keys = [k[index:index + 1] for k in self.keys]
        view.values = [v[index:index + 1] for v in self.values]
        view.max_len, view.length = self.max_len, 0
        return view

    def move_row(self, source: int, target: int, length: int) -> None:
        """Copy the first `length` positions of row `source` into row `target`, in every layer."""
        for buffers in (self.keys, self.values):
            for b in buffers:
                b[target, :, :length] = b[source, :, :length]


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


class RowWrite:
    """A `KVCache`'s first n rows, row i written at position lengths[i] (lengths [n] long, the
    caller's, advanced in place; one step writes one position per row). Attention reads the first
    `span` positions of each row (at least the longest row's length + 1); the caller masks the
    positions a row has not written."""

    def __init__(self, cache: KVCache, lengths: torch.Tensor, span: int) -> None:
        if span > cache.max_len or int(lengths.max()) >= span:
            raise ValueError(f"KV cache overflow: a row needs position {int(lengths.max())}, "
                             f"{min(span, cache.max_len)} available")
        self.keys, self.values, self.lengths, self.span = cache.keys, cache.values, lengths, span
        self.rows = torch.arange(lengths.shape[0], device=lengths.device)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v [n, kv_heads, 1, hd] at each row's position; return [n, kv_heads, span, hd]."""
        n = self.rows.shape[0]
        self.keys[layer][self.rows, :, self.lengths] = k[:, :, 0]
        self.values[layer][self.rows, :, self.lengths] = v[:, :, 0]
        return self.keys[layer][:n, :, :self.span], self.values[layer][:n, :, :self.span]

    def advance(self, steps: int) -> None:
        self.lengths += steps
