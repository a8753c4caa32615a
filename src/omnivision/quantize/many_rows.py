"""Which product a quantized layer runs on more rows than its few-row kernel takes: prompts, the
vision tower's 729 tokens, the projector's 81, batches of decode steps.

Candidates (each layer module lists its own):

- `dequantised`: the weight turned back into the activations' dtype in one pass of C++ loops into a
  buffer the thread keeps, then one float matrix product on torch's own path
  (`kernels/dequantized_products.cpp`; exact to the stored weights). On the AMX Xeon, 140 rows times
  a 4864x896 int4 weight took 1.8 ms this way against 9.0 ms dequantising with torch operators
  slice by slice (`row_blocks`, what runs where the C++ kernels do not build) and 1.0 ms for the
  bf16 product of the unquantized weight (2 threads, torch 2.13);
- the layer's few-row kernels on all rows (the project's int8 / int4 kernels, torch's packed ones):
  their cost grows with the rows, but below a few tens of rows, or where the float product is slow
  (no AMX, no native bf16), they can win.

The choice is timed per machine, shape and activation dtype (the float product runs in it: bf16 on
a CPU without native bf16 is many times slower than fp32) in two buckets of rows, up to
`MID_MAX_ROWS` (timed at `MID_TIMED_ROWS`) and beyond (timed at `MANY_TIMED_ROWS`); with timing off
it is `dequantised`, the first candidate.
"""

from __future__ import annotations

from typing import Callable, Mapping

import torch

from omnivision.kernels.choices import CHOICES, tuning_enabled
from omnivision.kernels.cpp_build import ops

DEQUANTISED = "dequantised"
MID_MAX_ROWS = 64
MID_TIMED_ROWS = 32
MANY_TIMED_ROWS = 128
"""Rows the two buckets are timed at (a batch of decode steps; a prompt)."""

_chosen: dict[tuple, str] = {}
"""This process's choices by (op, shape, timed rows, threads), so the hot path asks the disk cache once."""


def dequantised_products():
    """`torch.ops.omnivision` with the dequantised products, or None where the C++ kernels are off."""
    return ops()


def dtype_name(dtype: torch.dtype) -> str:
    """The activations' dtype in a choice's shape key: `bfloat16`, `float32`."""
    return str(dtype).removeprefix("torch.")


def timed_rows(rows: int) -> int:
    """The row count `rows` rows are timed at: its bucket's."""
    return MID_TIMED_ROWS if rows <= MID_MAX_ROWS else MANY_TIMED_ROWS


def choose(op: str, shape: str, rows: int, names: Callable[[int], list[str]],
           candidates: Callable[[int], Mapping[str, Callable[[], object]]]) -> str:
    """The candidate to run for `rows` rows of `op` on `shape` here. `names(timed rows)` lists the
    candidates, `DEQUANTISED` first; `candidates(timed rows)` builds them for timing, which only
    happens where no choice among those names is kept (building copies a weight of the shape)."""
    timed = timed_rows(rows)
    key = (op, shape, timed, torch.get_num_threads())
    if key not in _chosen:
        if not tuning_enabled():
            return DEQUANTISED
        entry = f"{shape}/rows={timed}"
        kept = CHOICES.remembered(op, entry, names(timed))
        if kept is None:
            with torch.inference_mode(False):  # normal tensors for the layers' caches, also under generate
                timed_candidates = candidates(timed)
            with torch.inference_mode():
                kept = CHOICES.choose(op, entry, timed_candidates)
        _chosen[key] = kept
    return _chosen[key]
