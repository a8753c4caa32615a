"""The fixed benchmark workload and the timing rules every implementation is measured by.

One 384x384 image (drawn here, deterministic) and a question of about 30 tokens; each phase is timed
after one warm-up call, `runs` times, and the median is reported. Peak resident memory is the
process's own high-water mark (`VmHWM`), so each measurement runs in a fresh process.
"""

from __future__ import annotations

import resource
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image

QUESTION = ("Look at the picture carefully. What objects can you see, what colours are they, and "
            "where in the picture is each one placed?")
"""About 30 tokens with the Qwen2.5 tokenizer."""


@dataclass(frozen=True)
class Workload:
    runs: int = 5
    decode_tokens: int = 128
    """Decode speed is measured over this many tokens after the first."""
    answer_tokens: int = 64
    """End to end: image and question in, an answer of this many tokens out."""
    threads: int = 0
    """torch / llama.cpp threads; 0 = torch's default (the physical cores)."""

    def __post_init__(self) -> None:
        if self.runs < 1 or self.decode_tokens < 1 or self.answer_tokens < 1 or self.threads < 0:
            raise ValueError("runs, decode tokens and answer tokens must be >= 1 and threads >= 0")


def bench_image(size: int = 384) -> Image.Image:
    """A deterministic picture with a few shapes and a gradient (content does not affect timing)."""
    y, x = np.mgrid[0:size, 0:size]
    rgb = np.stack([x * 255 // size, y * 255 // size, (x + y) * 127 // size], axis=-1).astype(np.uint8)
    rgb[size // 8: size // 3, size // 8: size // 3] = (220, 30, 30)  # square, top left
    disc = (x - 2 * size // 3) ** 2 + (y - 2 * size // 3) ** 2 < (size // 6) ** 2
    rgb[disc] = (30, 60, 220)  # disc, bottom right
    return Image.fromarray(rgb)


def median_seconds(fn: Callable[[], Any], runs: int) -> float:
    """Median wall time of `fn` over `runs` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MB (10^6 bytes).

    Linux's `VmHWM` starts afresh with each program; `ru_maxrss` (the fallback elsewhere) is kept
    across exec, so in a worker it would report the parent's peak when that was higher.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / 1e6  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6
