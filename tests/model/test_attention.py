"""`model.attention`: every form gives SDPA's result within bf16 rounding, the choice is timed
once per shape, and short sequences, fp32 inputs and autograd keep plain SDPA."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from omnivision.kernels.choices import CHOICES, TUNING_ENV
from omnivision.model import attention as attention_module
from omnivision.model.attention import BLOCKED, IN_DTYPE, IN_FP32, MIN_TOKENS, attention, attention_kernel


@pytest.mark.parametrize("kernel", [IN_DTYPE, IN_FP32, BLOCKED])
def test_every_form_gives_sdpas_result(kernel, monkeypatch):
    monkeypatch.setattr(attention_module, "attention_kernel", lambda h, n, d: kernel)
    # 3 heads: the blocked form's last block holds one head
    q, k, v = (torch.randn(2, 3, MIN_TOKENS + 9, 24) for _ in range(3))
    want = F.scaled_dot_product_attention(q.double(), k.double(), v.double())
    got = attention(q.bfloat16(), k.bfloat16(), v.bfloat16())
    assert got.dtype == torch.bfloat16 and got.shape == want.shape
    # bf16 inputs and output: a few units of 2^-8 relative
    assert (got.double() - want).norm() / want.norm() < 2e-2


def test_short_sequences_fp32_and_autograd_keep_plain_sdpa(monkeypatch):
    def refuse(h, n, d):
        raise AssertionError("no choice should be made")

    monkeypatch.setattr(attention_module, "attention_kernel", refuse)
    q = torch.randn(1, 2, MIN_TOKENS - 1, 8).bfloat16()
    assert torch.equal(attention(q, q, q), F.scaled_dot_product_attention(q, q, q))
    long32 = torch.randn(1, 2, MIN_TOKENS, 8)
    assert torch.equal(attention(long32, long32, long32), F.scaled_dot_product_attention(long32, long32, long32))
    grad = torch.randn(1, 2, MIN_TOKENS, 8).bfloat16().requires_grad_()
    attention(grad, grad, grad).sum().backward()
    assert grad.grad is not None


def test_the_precision_is_timed_once_per_shape(tmp_path, monkeypatch):
    monkeypatch.setenv(TUNING_ENV, "on")
    monkeypatch.setattr(CHOICES, "path", tmp_path / "choices.json")
    monkeypatch.setattr(attention_module, "_chosen", {})
    first = attention_kernel(2, MIN_TOKENS, 16)
    assert first in (IN_DTYPE, IN_FP32, BLOCKED) and attention_kernel(2, MIN_TOKENS, 16) == first
    assert len(attention_module._chosen) == 1
    assert "attention-bf16/h2/n256/d16" in (tmp_path / "choices.json").read_text()
