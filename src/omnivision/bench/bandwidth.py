"""How fast this machine streams memory, and what that allows a decoder.

Decoding one token reads every weight of the language model once (the tied head included), so on a
CPU its speed is bounded by memory bandwidth / bytes per token. `read_bandwidth_gbs` measures the
first (a timed sum over a buffer far larger than the last-level caches, on the benchmark's threads);
`decode_bytes_per_token` counts the second for a loaded model; the report puts each measured decode
rate against the bound.
"""

from __future__ import annotations

import torch
from torch import nn

from omnivision.bench.workload import median_seconds

BUFFER_BYTES = 512 * 2**20
"""Far beyond the caches of the CPUs measured (32 MB last-level cache on the EPYC)."""


@torch.inference_mode()
def read_bandwidth_gbs(nbytes: int = BUFFER_BYTES, runs: int = 5) -> float:
    """Median streaming-read bandwidth in GB/s (10^9 bytes per second)."""
    buffer = torch.ones(nbytes // 4, dtype=torch.float32)  # [n], pages touched once here
    seconds = median_seconds(lambda: buffer.sum(), runs)
    return round(buffer.nbytes / seconds / 1e9, 2)


def decode_bytes_per_token(language: nn.Module) -> int:
    """Bytes of the decoder's weights (parameters and stored buffers such as int8/int4 codes and
    scales; a tied head counted once), each read once per decoded token."""
    # parameters() and buffers() yield a shared tensor once: the tied head is the embedding table
    return sum(t.nbytes for t in [*language.parameters(), *language.buffers()])
