"""Bar-chart scenes: 3 or 4 bars labelled A to D with distinct integer values 1 to 9.

Each bar carries its letter underneath and its value above, drawn with PIL's bundled default font
(no font files needed; available offline) without anti-aliasing. Bar heights are proportional to
the values on a fixed 0-9 scale, so the value can be read from the height or from the digit.
Values are distinct, so "the tallest" and "the shortest" bar are always unique.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import lru_cache

from PIL import Image, ImageDraw, ImageFont

from omnivision.data.shape_scenes import BACKGROUND

BAR_LABELS = ("A", "B", "C", "D")
MAX_VALUE = 9
BAR_COLOR = (60, 90, 150)
INK = (20, 20, 20)


@dataclass(frozen=True)
class ChartScene:
    """Bar values in label order: `values[0]` is bar A."""

    values: tuple[int, ...]

    @property
    def labels(self) -> tuple[str, ...]:
        return BAR_LABELS[:len(self.values)]


def sample_chart_scene(rng: random.Random) -> ChartScene:
    """A random chart of 3 or 4 bars with distinct values, drawn from `rng` only."""
    n = rng.choice((3, 4))
    return ChartScene(tuple(rng.sample(range(1, MAX_VALUE + 1), n)))


@lru_cache(maxsize=8)
def _font(px: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=px)
    except (ImportError, OSError):  # Pillow without FreeType: the fixed-size bitmap font
        return ImageFont.load_default()


def _text(draw: ImageDraw.ImageDraw, x: float, top: float, text: str, font) -> None:
    """Draw `text` horizontally centred on `x` with its ink starting at row `top`."""
    left, upper, right, _ = draw.textbbox((0, 0), text, font=font)
    draw.text((round(x - (left + right) / 2), round(top - upper)), text, font=font, fill=INK)


def _text_height(draw: ImageDraw.ImageDraw, font) -> int:
    _, upper, _, lower = draw.textbbox((0, 0), "0123456789ABCD", font=font)
    return lower - upper


def render_chart(scene: ChartScene, image_size: int = 96) -> Image.Image:
    """The chart as an RGB image of `image_size` x `image_size` pixels."""
    image = Image.new("RGB", (image_size, image_size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    draw.fontmode = "1"  # no anti-aliasing: two-colour glyphs
    font = _font(max(8, round(image_size * 0.11)))
    text_h = _text_height(draw, font)
    gap = max(1, image_size // 48)
    baseline = image_size - text_h - 2 * gap  # the bars stand on this row
    plot_top = text_h + 2 * gap  # the value above a full bar stays inside the image
    margin = round(image_size * 0.06)
    slot = (image_size - 2 * margin) / len(scene.values)
    half_bar = slot * 0.3
    draw.line((margin, baseline, image_size - margin, baseline), fill=INK, width=1)
    for n, (label, value) in enumerate(zip(scene.labels, scene.values)):
        cx = margin + (n + 0.5) * slot
        top = baseline - round(value / MAX_VALUE * (baseline - plot_top))
        draw.rectangle((round(cx - half_bar), top, round(cx + half_bar), baseline - 1), fill=BAR_COLOR)
        _text(draw, cx, top - gap - text_h, str(value), font)
        _text(draw, cx, baseline + gap + 1, label, font)
    return image
