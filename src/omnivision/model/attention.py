"""`attention`: scaled dot-product attention without a mask over many tokens (the vision tower), in
bf16 or in fp32, whichever this machine runs faster.

torch's CPU flash-attention kernel is not fastest in bf16 everywhere. On the AVX-512 EPYC without
AMX (torch 2.13, 2 threads), the SigLIP shape (16 heads, 729 tokens, head size 72) took 22.6 ms in
bf16 and 18.6 ms in fp32 including the conversions; on the AMX Xeon bf16 is the fast one. So for
bf16 inputs on the CPU the precision is chosen per machine and shape by timing both once
(`kernels.choices`), bf16 being the default. fp32 is the more exact of the two, so either result is
the bf16 one within bf16 rounding (`tests/model/test_attention.py`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from omnivision.kernels.choices import CHOICES

MIN_TOKENS = 256
"""From this many tokens on the precision is chosen; shorter sequences stay in their dtype."""
IN_DTYPE, IN_FP32 = "sdpa", "sdpa-fp32"

_chosen: dict[tuple[int, int, int, int], str] = {}
"""This process's choices by (heads, tokens, head size, threads)."""


def _applies(q: torch.Tensor) -> bool:
    return (q.device.type == "cpu" and q.dtype == torch.bfloat16 and q.shape[-2] >= MIN_TOKENS
            and not (torch.is_grad_enabled() and q.requires_grad))


@torch.inference_mode()
def attention_kernel(heads: int, tokens: int, head_dim: int) -> str:
    """IN_DTYPE or IN_FP32 for bf16 attention of this shape (one image) on this machine."""
    key = (heads, tokens, head_dim, torch.get_num_threads())
    if key not in _chosen:
        q, k, v = (torch.randn(1, heads, tokens, head_dim, dtype=torch.bfloat16) for _ in range(3))
        candidates = {IN_DTYPE: lambda: F.scaled_dot_product_attention(q, k, v),
                      IN_FP32: lambda: _in_fp32(q, k, v)}
        _chosen[key] = CHOICES.choose("attention-bf16", f"h{heads}/n{tokens}/d{head_dim}", candidates)
    return _chosen[key]


def _in_fp32(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return F.scaled_dot_product_attention(q.float(), k.float(), v.float()).to(q.dtype)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """q, k, v [B, H, N, hd] -> [B, H, N, hd], no mask, as `F.scaled_dot_product_attention`."""
    if _applies(q) and attention_kernel(*q.shape[1:]) == IN_FP32:
        return _in_fp32(q, k, v)
    return F.scaled_dot_product_attention(q, k, v)
