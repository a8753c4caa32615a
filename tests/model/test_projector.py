"""Golden tests of the token compressions on a grid of known numbers."""

from __future__ import annotations

import pytest
import torch

from omnivision.model.projector import Projector, concat9, spatial3x3


def _grid(g: int, d: int = 2) -> torch.Tensor:
    # token t = row*g + col carries the values [t*10, t*10 + 1, ...]: [1, g*g, d]
    t = torch.arange(g * g, dtype=torch.float32)[:, None] * 10 + torch.arange(d)
    return t[None]


def test_concat9_joins_consecutive_row_major_tokens():
    x = _grid(6)  # 36 tokens, 4 groups
    out = concat9(x)
    assert out.shape == (1, 4, 18)
    # group 1 holds tokens 9..17: grid row 1 cols 3..5, then row 2 cols 0..5
    expected = torch.cat([x[0, t] for t in range(9, 18)])
    assert torch.equal(out[0, 1], expected)


def test_concat9_on_the_official_grid_is_a_1x9_strip():
    x = _grid(27, d=1)  # token value = 10 * (row*27 + col)
    out = concat9(x)[0]  # [81, 9]
    assert out.shape == (81, 9)
    for g in (0, 1, 2, 40, 80):
        row, col0 = g // 3, 9 * (g % 3)
        assert out[g].tolist() == [10.0 * (row * 27 + col0 + c) for c in range(9)]


def test_spatial3x3_merges_blocks():
    x = _grid(6, d=1)
    out = spatial3x3(x)[0]  # [4, 9]
    # block (0, 1) covers rows 0..2, cols 3..5
    assert out[1].tolist() == [10.0 * (r * 6 + c) for r in range(3) for c in range(3, 6)]


@pytest.mark.parametrize("fn,n", [(concat9, 10), (spatial3x3, 16), (spatial3x3, 27)])
def test_compressions_reject_bad_counts(fn, n):
    with pytest.raises(ValueError):
        fn(torch.zeros(1, n, 4))


def test_projector_shapes_and_tanh_gelu():
    p = Projector("concat9", 9 * 4, 8, 5)
    out = p(torch.randn(2, 18, 4))
    assert out.shape == (2, 2, 5)
    assert p[1].approximate == "tanh"
