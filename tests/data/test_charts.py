"""Bar charts: distinct values, heights proportional to values, labels and values drawn."""

from __future__ import annotations

import random

import numpy as np
import pytest

from omnivision.data.charts import (BAR_COLOR, INK, MAX_VALUE, ChartScene, render_chart,
                                    sample_chart_scene)


def test_sampling():
    rng = random.Random(0)
    charts = [sample_chart_scene(rng) for _ in range(300)]
    assert {len(c.values) for c in charts} == {3, 4}
    for c in charts:
        assert len(set(c.values)) == len(c.values)
        assert all(1 <= v <= MAX_VALUE for v in c.values)
    assert ChartScene((3, 9, 1)).labels == ("A", "B", "C")


def _bars(pixels: np.ndarray) -> list[tuple[int, int, int]]:
    """(first column, last column, height) of each bar, left to right."""
    bar = (pixels == BAR_COLOR).all(axis=2)
    cols = np.nonzero(bar.any(axis=0))[0]
    runs = np.split(cols, np.nonzero(np.diff(cols) > 1)[0] + 1)
    return [(int(r[0]), int(r[-1]), int(bar[:, r[len(r) // 2]].sum())) for r in runs]


@pytest.mark.parametrize("values,size", [((3, 9, 1, 6), 96), ((2, 5, 8), 96), ((9, 1, 4, 7), 128),
                                         ((1, 2, 3), 64)])
def test_bar_heights_follow_values_and_text_is_drawn(values, size):
    pixels = np.asarray(render_chart(ChartScene(values), size))
    bars = _bars(pixels)
    assert len(bars) == len(values)
    heights = [h for _, _, h in bars]
    unit = heights[values.index(MAX_VALUE)] / MAX_VALUE if MAX_VALUE in values else None
    for v, h in zip(values, heights):
        assert h > 0
        if unit:
            assert abs(h - v * unit) <= 1.0
    assert np.argsort(heights).tolist() == np.argsort(values).tolist()
    ink = (pixels == INK).all(axis=2)
    for x0, x1, h in bars:
        column = ink[:, x0:x1 + 1].any(axis=1)
        rows = np.nonzero(column)[0]
        bar_rows = np.nonzero((pixels[:, (x0 + x1) // 2] == BAR_COLOR).all(axis=1))[0]
        assert (rows < bar_rows.min()).any(), "no value drawn above the bar"
        assert (rows > bar_rows.max() + 1).any(), "no letter drawn under the bar"
    assert set(map(tuple, pixels.reshape(-1, 3))) <= {BAR_COLOR, INK, (240, 240, 240)}
