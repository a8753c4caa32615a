"""Shape scenes: sampling rules, and rendering that matches the scene pixel for pixel."""

from __future__ import annotations

import math
import random
from collections import Counter

import numpy as np
import pytest

from omnivision.data.shape_scenes import (BACKGROUND, COLORS, MAX_OBJECTS, POSITIONS, SHAPES,
                                    ShapeObject, ShapeScene, cell_center, render_shapes,
                                    sample_shape_scene)


def _scenes(n: int, seed: int = 0) -> list[ShapeScene]:
    rng = random.Random(seed)
    return [sample_shape_scene(rng) for _ in range(n)]


def test_sampling_rules_and_determinism():
    scenes = _scenes(500)
    assert scenes == _scenes(500) and scenes != _scenes(500, seed=1)
    sizes = Counter(len(s.objects) for s in scenes)
    assert set(sizes) == set(range(1, MAX_OBJECTS + 1))
    for s in scenes:
        cells = [POSITIONS.index(o.position) for o in s.objects]
        assert cells == sorted(set(cells))  # distinct cells, reading order
        assert len({o.name for o in s.objects}) == len(s.objects)
    repeated = sum(max(Counter(o.shape for o in s.objects).values()) > 1 for s in scenes)
    assert repeated > 50  # counting questions with answers above 1 are common
    used = Counter((o.shape, o.color, o.size) for s in scenes for o in s.objects)
    assert len(used) == len(SHAPES) * len(COLORS) * 2


def _cell_box(position: str, size: int) -> tuple[int, int, int, int]:
    row, col = divmod(POSITIONS.index(position), 3)
    return (math.floor(col * size / 3), math.floor(row * size / 3),
            math.ceil((col + 1) * size / 3), math.ceil((row + 1) * size / 3))


@pytest.mark.parametrize("size", [96, 64, 100])
def test_every_pixel_is_background_or_its_cells_object_colour(size):
    for scene in _scenes(60, seed=size):
        pixels = np.asarray(render_shapes(scene, size))
        assert pixels.shape == (size, size, 3)
        covered = np.zeros((size, size), dtype=bool)
        for obj in scene.objects:
            x, y = (int(v) for v in cell_center(obj.position, size))
            assert tuple(pixels[y, x]) == COLORS[obj.color], obj
            x0, y0, x1, y1 = _cell_box(obj.position, size)
            cell = pixels[y0:y1, x0:x1].reshape(-1, 3)
            is_obj = (cell == COLORS[obj.color]).all(axis=1)
            is_bg = (cell == BACKGROUND).all(axis=1)
            assert (is_obj | is_bg).all() and is_obj.sum() > 0.1 * len(cell)
            covered[y0:y1, x0:x1] = True
        assert (pixels[~covered] == BACKGROUND).all()  # empty cells stay empty


def _mask(shape: str, size: str = "large") -> np.ndarray:
    scene = ShapeScene((ShapeObject(shape, "red", size, "center"),))
    pixels = np.asarray(render_shapes(scene, 96))
    mask = (pixels == COLORS["red"]).all(axis=2)
    ys, xs = np.nonzero(mask)
    return mask[ys.min():ys.max() + 1, xs.min():xs.max() + 1]


def test_shapes_have_their_geometric_signatures():
    square, circle, triangle, cross = (_mask(s) for s in ("square", "circle", "triangle", "cross"))
    corners = lambda m: [m[0, 0], m[0, -1], m[-1, 0], m[-1, -1]]  # noqa: E731
    assert all(corners(square)) and square.mean() == 1.0
    assert not any(corners(circle)) and abs(circle.mean() - math.pi / 4) < 0.05
    assert not any(corners(cross)) and cross[cross.shape[0] // 2].all()
    assert cross[:, cross.shape[1] // 2].all() and cross.mean() < 0.65
    h, w = circle.shape
    assert circle[h // 5, w // 5] and not cross[h // 5, w // 5]  # round vs. plus
    assert triangle[-1, 0] and triangle[-1, -1] and not triangle[0, 0] and not triangle[0, -1]
    assert abs(triangle.mean() - 0.5) < 0.08


def test_large_is_clearly_larger_than_small():
    for shape in SHAPES:
        assert _mask(shape, "large").sum() > 2.5 * _mask(shape, "small").sum()


def test_unknown_shape_is_refused():
    with pytest.raises(ValueError, match="unknown shape"):
        render_shapes(ShapeScene((ShapeObject("hexagon", "red", "large", "center"),)))
