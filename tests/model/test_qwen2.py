"""The Qwen2 decoder's own paths against SDPA's grouped-query path: one-query attention (decode steps) and
the masked attention of the compiled decoder (training steps)."""

import pytest
import torch
import torch.nn.functional as F

from omnivision.config import TextConfig
from omnivision.model.qwen2 import (
    Qwen2ForCausalLM,
    additive_mask,
    attention_mask,
    masked_attention_products,
    one_query_attention,
)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("padded", [False, True])
def test_one_query_attention_equals_grouped_query_sdpa(dtype, padded):
    torch.manual_seed(0)
    b, s, hd = 3, 11, 8
    q = torch.randn(b, 8, 1, hd, dtype=dtype)
    k, v = torch.randn(b, 2, s, hd, dtype=dtype), torch.randn(b, 2, s, hd, dtype=dtype)
    mask = None
    if padded:  # rows 1 and 2 are left-padded by 3 and 7 positions
        valid = torch.ones(b, s, dtype=torch.bool)
        valid[1, :3], valid[2, :7] = False, False
        mask = valid[:, None, None, :]  # [B, 1, 1, S]
    expected = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask, enable_gqa=True)
    got = one_query_attention(q, k, v, mask)
    assert got.shape == (b, 8, 1, hd) and got.dtype == dtype
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(got.float(), expected, atol=tol, rtol=tol)
    # a wrong head-to-group mapping (heads interleaved over the kv heads) must not pass
    wrong = F.scaled_dot_product_attention(q.float(), k.float().repeat(1, 4, 1, 1), v.float().repeat(1, 4, 1, 1),
                                           attn_mask=mask)
    assert not torch.allclose(wrong, expected, atol=tol, rtol=tol)


def _padded_mask(b: int, s: int, t: int, right: bool) -> torch.Tensor:
    """The decoder's causal mask [B, 1, T, S] of the last T of S positions, rows 1 and 2 padded by 3
    and 7 (right: training batches; left: generation)."""
    valid = torch.ones(b, s, dtype=torch.bool)
    if right:
        valid[1, -3:], valid[2, -7:] = False, False
    else:
        valid[1, :3], valid[2, :7] = False, False
    return attention_mask(valid, t)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("right", [True, False])
@pytest.mark.parametrize("cached", [0, 5])
@pytest.mark.parametrize("additive", [False, True])
def test_masked_attention_products_equal_grouped_query_sdpa_and_its_gradients(dtype, right, cached, additive):
    """Queries laid out as the decoder makes them ([B, T, H, hd] transposed), over the last T = S -
    `cached` positions; the mask as it is (bool) or as the compiled decoder passes it (`additive_mask`)."""
    torch.manual_seed(0)
    b, s, hd = 3, 13, 8
    t = s - cached
    mask = _padded_mask(b, s, t, right)
    leaves = [torch.randn(b, t, 6, hd).transpose(1, 2), torch.randn(b, 2, s, hd), torch.randn(b, 2, s, hd)]
    q, k, v = (x.clone().to(dtype).requires_grad_() for x in leaves)
    qf, kf, vf = (x.clone().requires_grad_() for x in leaves)
    got = masked_attention_products(q, k, v, additive_mask(mask) if additive else mask)
    expected = F.scaled_dot_product_attention(qf, kf, vf, attn_mask=mask, enable_gqa=True)
    assert got.shape == (b, 6, t, hd) and got.dtype == dtype
    tol = 1e-5 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(got.float(), expected, atol=tol, rtol=tol)
    grad = torch.randn(b, 6, t, hd)
    got.backward(grad.to(dtype))
    expected.backward(grad)
    for mine, theirs in ((q, qf), (k, kf), (v, vf)):
        torch.testing.assert_close(mine.grad.float(), theirs.grad, atol=5 * tol, rtol=5 * tol)
    # heads mapped to the wrong key/value head (interleaved) must not pass
    wrong = F.scaled_dot_product_attention(qf, kf.repeat(1, 3, 1, 1), vf.repeat(1, 3, 1, 1), attn_mask=mask)
    assert not torch.allclose(wrong, expected, atol=tol, rtol=tol)


def test_additive_mask_is_zero_where_attended_and_minus_infinity_elsewhere():
    mask = _padded_mask(3, 6, 6, right=True)
    bias = additive_mask(mask)
    assert bias.dtype == torch.float32 and bias.shape == mask.shape
    assert (bias[mask] == 0).all() and torch.isneginf(bias[~mask]).all() and (~mask).any()


def test_the_compiled_decoder_attends_through_the_products_form(monkeypatch):
    """Compiled whole, and compiled as the training step compiles it (`set_compiled`: the shared
    inputs in one graph, the layers in another, which then get the additive mask)."""
    from omnivision.model import qwen2
    from omnivision.model.omnivision import _compile_problem

    if _compile_problem(torch.device("cpu")):
        pytest.skip(f"no compiled decoder here: {_compile_problem(torch.device('cpu'))}")
    calls = []

    def counted(q, k, v, mask):
        calls.append((tuple(q.shape), mask.dtype))
        return masked_attention_products(q, k, v, mask)

    monkeypatch.setattr(qwen2, "masked_attention_products", counted)
    torch.manual_seed(0)
    cfg = TextConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2)
    lm = Qwen2ForCausalLM(cfg)
    x = torch.randn(2, 9, 32)
    valid = torch.ones(2, 9, dtype=torch.bool)
    valid[1, -4:] = False
    positions = torch.arange(9).expand(2, -1)
    eager = lm(x, positions, valid)
    assert calls == []  # eager: SDPA
    torch._dynamo.reset()
    compiled = torch.compile(lm.forward, dynamic=True)(x, positions, valid)
    assert len(calls) == cfg.num_layers  # traced once per layer
    torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=1e-5)
    calls.clear()
    lm.prepare = torch.compile(lm.prepare, dynamic=True)
    lm.run_layers = torch.compile(lm.run_layers, dynamic=True)
    split = lm(x, positions, valid)
    assert calls == [((2, 4, 9, 8), torch.float32)] * cfg.num_layers  # the mask made once, additive
    torch.testing.assert_close(split, eager, atol=1e-5, rtol=1e-5)
