"""`attention`: scaled dot-product attention without a mask over many tokens (the vision tower), in
whichever of three forms this machine runs fastest.

torch's CPU flash-attention kernel is not fastest in bf16 everywhere. On the AVX-512 EPYC without
AMX (torch 2.13, 2 threads), the SigLIP shape (16 heads, 729 tokens, head size 72) took 18-22 ms
in bf16 and 18.6 ms in fp32 including the conversions, while the same attention written as two bf16
matrix products and a softmax, a pair of heads at a time, took 10.5-11.7 ms: its products run on
the CPU's bf16 dot products at the matrix peak, and a pair of heads' scores (2 x 729 x 729 bf16,
2 MB) stay in the caches where all 16 heads' (17 MB, allocated afresh each call) do not; on the
AMX Xeon torch's bf16 kernel is the fast one. So for bf16 inputs on the CPU the form is chosen
per machine and shape by timing once (`kernels.choices`), torch's bf16 kernel being the default.
The fp32 form is the most exact; the blocked one rounds the probabilities to bf16 before the
second product (twice torch's bf16 error on the SigLIP shape, 4.6e-3 against 2.2e-3 relative),
so every form is the bf16 one within bf16 rounding (`tests/model/test_attention.py`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from omnivision.kernels.choices import CHOICES

MIN_TOKENS = 256
"""From this many tokens on the form is chosen; shorter sequences stay in torch's kernel."""
IN_DTYPE, IN_FP32, BLOCKED = "sdpa", "sdpa-fp32", "bf16-products"
HEADS_PER_BLOCK = 2
"""Heads whose scores the blocked form holds at once (the fastest of 1, 2, 4 and 8 on the EPYC)."""

_chosen: dict[tuple[int, int, int, int], str] = {}
"""This process's choices by (heads, tokens, head size, threads)."""


def _applies(q: torch.Tensor) -> bool:
    return (q.device.type == "cpu" and q.dtype == torch.bfloat16 and q.shape[-2] >= MIN_TOKENS
            and not (torch.is_grad_enabled() and q.requires_grad))


@torch.inference_mode()
def attention_kernel(heads: int, tokens: int, head_dim: int) -> str:
    """IN_DTYPE, IN_FP32 or BLOCKED for bf16 attention of this shape (one image) on this machine."""
    key = (heads, tokens, head_dim, torch.get_num_threads())
    if key not in _chosen:
        q, k, v = (torch.randn(1, heads, tokens, head_dim, dtype=torch.bfloat16) for _ in range(3))
        candidates = {IN_DTYPE: lambda: F.scaled_dot_product_attention(q, k, v),
                      IN_FP32: lambda: _in_fp32(q, k, v), BLOCKED: lambda: _blocked(q, k, v)}
        _chosen[key] = CHOICES.choose("attention-bf16", f"h{heads}/n{tokens}/d{head_dim}", candidates)
    return _chosen[key]


def _in_fp32(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return F.scaled_dot_product_attention(q.float(), k.float(), v.float()).to(q.dtype)


def _blocked(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    out = torch.empty_like(q)  # [B, H, N, hd]
    q = q * q.shape[-1] ** -0.5
    kt = k.transpose(-1, -2)  # [B, H, hd, N]
    step = HEADS_PER_BLOCK
    for h in range(0, q.shape[1], step):
        scores = torch.matmul(q[:, h:h + step], kt[:, h:h + step])  # [B, step, N, N]
        torch.matmul(torch.softmax(scores, dim=-1), v[:, h:h + step], out=out[:, h:h + step])
    return out


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """q, k, v [B, H, N, hd] -> [B, H, N, hd], no mask, as `F.scaled_dot_product_attention`."""
    if _applies(q):
        kernel = attention_kernel(*q.shape[1:])
        if kernel == IN_FP32:
            return _in_fp32(q, k, v)
        if kernel == BLOCKED:
            return _blocked(q, k, v)
    return F.scaled_dot_product_attention(q, k, v)
