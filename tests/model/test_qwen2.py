"""The Qwen2 decoder's own paths: one-query attention (decode steps) against SDPA's grouped-query path."""

import pytest
import torch
import torch.nn.functional as F

from omnivision.model.qwen2 import one_query_attention


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
