"""The masked attention of a compiled training step, timed in its three forms on this CPU.

    python scripts/decoder_attention_speed.py [--threads 2] [--batch 32] [--positions 60 120 190]

Forward and backward of grouped-query attention in bf16 (the nano decoder's shape: 6 query heads over
2 key/value heads, head size 32; the last 10 positions of every row are padding), under the
decoder's mask (`qwen2.attention_mask`): SDPA's math path compiled by torch.compile (what the
compiled decoder ran before `qwen2.masked_attention_products`), SDPA eager, the products form
compiled with the bool mask, and with the mask's additive terms made beforehand (`qwen2.additive_mask`,
what the compiled decoder passes now: made once, outside the layers' graph). Prints the CPU and the
median of 10 timed calls of each, in ms.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from omnivision.model.qwen2 import additive_mask, attention_mask, masked_attention_products


def _sdpa(q, k, v, mask):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)


def _median_ms(fn, q, k, v, mask, grad) -> float:
    def once() -> None:
        with sdpa_kernel([SDPBackend.MATH]):  # the training steps' backend on the CPU (`loop.attention_backend`)
            fn(q, k, v, mask).backward(grad)
        q.grad = k.grad = v.grad = None

    for _ in range(3):
        once()
    times = []
    for _ in range(10):
        start = time.perf_counter()
        once()
        times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times)


def _cpu() -> str:
    """The CPU's model name (Linux), else "unknown CPU"."""
    info = Path("/proc/cpuinfo")
    lines = info.read_text(encoding="utf-8").splitlines() if info.exists() else []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return names[0] if names else "unknown CPU"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--positions", type=int, nargs="+", default=[60, 120, 190])
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    products = torch.compile(masked_attention_products, dynamic=True)
    forms = {"SDPA math, compiled": (torch.compile(_sdpa, dynamic=True), False), "SDPA, eager": (_sdpa, False),
             "two products + float32 softmax, compiled": (products, False),
             "the same, additive mask made before": (products, True)}
    print(f"{_cpu()}, torch {torch.__version__}, {args.threads} threads, "
          f"batch {args.batch}, bf16, forward + backward, median ms")
    print("| positions | " + " | ".join(forms) + " |")
    print("| --- |" + " --- |" * len(forms))
    for n in args.positions:
        torch.manual_seed(0)
        valid = torch.ones(args.batch, n, dtype=torch.bool)
        valid[:, -10:] = False
        mask = attention_mask(valid, n)  # [B, 1, T, T]
        q = torch.randn(args.batch, n, 6, 32, dtype=torch.bfloat16).transpose(1, 2).requires_grad_()
        k, v = (torch.randn(args.batch, 2, n, 32, dtype=torch.bfloat16).requires_grad_() for _ in range(2))
        grad = torch.randn(args.batch, 6, n, 32, dtype=torch.bfloat16)
        bias = additive_mask(mask)  # [B, 1, T, T] float32
        cells = [f"{_median_ms(fn, q, k, v, bias if additive else mask, grad):.1f}"
                 for fn, additive in forms.values()]
        print(f"| {n} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
