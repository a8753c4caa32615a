"""Shape scenes: the closed vocabulary, random scenes, and their rendering.

A scene holds 1 to 4 objects, each a (shape, colour, size) at its own cell of a 3x3 grid, on a
plain light background. No two objects share both colour and shape, so "the red circle" always
names one object. The world is kept small and unambiguous so that a tiny model can learn it at
96x96: objects fill most of their cell (large) or about half of it (small), cells never overlap,
and shapes are drawn without anti-aliasing so that every object pixel has exactly its colour.
Rendering is a pure function of the scene and the image size.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "cross")
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles", "cross": "crosses"}
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 160, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 200, 20),
    "purple": (140, 60, 190),
    "orange": (245, 140, 20),
}
SIZES = ("small", "large")
POSITIONS = ("top left", "top", "top right",
             "left", "center", "right",
             "bottom left", "bottom", "bottom right")
"""The 3x3 grid cells in reading order; index = row * 3 + column."""
BACKGROUND = (240, 240, 240)
MAX_OBJECTS = 4

_EXTENT = {"large": 0.8, "small": 0.45}  # object extent as a fraction of the cell side
_REUSE_SHAPE = 0.3  # chance that an object repeats an earlier shape, so counts above 1 are common


@dataclass(frozen=True)
class ShapeObject:
    """One object of a scene; `position` is one of `POSITIONS`."""

    shape: str
    color: str
    size: str
    position: str

    @property
    def name(self) -> str:
        """The object's name in questions and probes, such as "red circle"."""
        return f"{self.color} {self.shape}"


@dataclass(frozen=True)
class ShapeScene:
    """Objects at distinct cells, in reading order of their cells."""

    objects: tuple[ShapeObject, ...]


def all_object_names() -> list[str]:
    """Every nameable object ("red circle", ...), colour-major: the POPE object vocabulary."""
    return [f"{c} {s}" for c in COLORS for s in SHAPES]


def sample_shape_scene(rng: random.Random, max_objects: int = MAX_OBJECTS) -> ShapeScene:
    """A random scene of 1 to `max_objects` objects, drawn from `rng` only."""
    cells = sorted(rng.sample(range(len(POSITIONS)), rng.randint(1, max_objects)))
    objects: list[ShapeObject] = []
    for cell in cells:
        if objects and rng.random() < _REUSE_SHAPE:
            shape = rng.choice([o.shape for o in objects])
        else:
            shape = rng.choice(SHAPES)
        taken = {o.color for o in objects if o.shape == shape}
        color = rng.choice([c for c in COLORS if c not in taken])
        objects.append(ShapeObject(shape, color, rng.choice(SIZES), POSITIONS[cell]))
    return ShapeScene(tuple(objects))


def cell_center(position: str, image_size: int) -> tuple[float, float]:
    """The (x, y) pixel centre of a grid cell."""
    row, col = divmod(POSITIONS.index(position), 3)
    cell = image_size / 3
    return (col + 0.5) * cell, (row + 0.5) * cell


def _draw(draw: ImageDraw.ImageDraw, obj: ShapeObject, image_size: int) -> None:
    cx, cy = cell_center(obj.position, image_size)
    half = _EXTENT[obj.size] * image_size / 3 / 2
    x0, y0, x1, y1 = (round(v) for v in (cx - half, cy - half, cx + half, cy + half))
    fill = COLORS[obj.color]
    if obj.shape == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=fill)
    elif obj.shape == "square":
        inset = round(half * 0.08)  # a square drawn to the full extent looks larger than the rest
        draw.rectangle((x0 + inset, y0 + inset, x1 - inset, y1 - inset), fill=fill)
    elif obj.shape == "triangle":
        draw.polygon([(round(cx), y0), (x0, y1), (x1, y1)], fill=fill)
    elif obj.shape == "cross":
        arm = max(1, round(half / 3))  # the arms are a third of the extent wide
        draw.rectangle((x0, round(cy) - arm, x1, round(cy) + arm), fill=fill)
        draw.rectangle((round(cx) - arm, y0, round(cx) + arm, y1), fill=fill)
    else:
        raise ValueError(f"unknown shape {obj.shape!r}; choose from {SHAPES}")


def render_shapes(scene: ShapeScene, image_size: int = 96) -> Image.Image:
    """The scene as an RGB image of `image_size` x `image_size` pixels."""
    image = Image.new("RGB", (image_size, image_size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        _draw(draw, obj, image_size)
    return image
