"""Image loading, the official bicubic squash (against a scalar port) and normalisation."""

from __future__ import annotations

import io
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from omnivision.config import ProcessingConfig, preset
from omnivision.processing.image import (
    ImageError,
    ImageProcessor,
    load_image,
    preprocess,
    resize_official,
    resize_pil,
)


# --- scalar reference: one output sample at a time, float32 rounding emulated op by op ------------

def _coeffs(d0: float, d2: float, d3: float) -> tuple[np.float32, np.float32, np.float32]:
    # double arithmetic, stored as float
    a1 = np.float32(-1.0 / 3 * d0 + d2 - 1.0 / 6 * d3)
    a2 = np.float32(1.0 / 2 * d0 + 1.0 / 2 * d2)
    a3 = np.float32(-1.0 / 6 * d0 - 1.0 / 2 * d2 + 1.0 / 6 * d3)
    return a1, a2, a3


def _poly(a0: np.float32, a1: np.float32, a2: np.float32, a3: np.float32, d: np.float32) -> np.float32:
    return a0 + a1 * d + a2 * d * d + a3 * d * d * d  # all np.float32 scalars


def scalar_resize(img: np.ndarray, size: int) -> np.ndarray:
    ny, nx = img.shape[:2]
    tx = np.float32(nx) / np.float32(size)
    ty = np.float32(ny) / np.float32(size)
    out = np.zeros((size, size, 3), np.uint8)

    def px(r: int, c: int, k: int) -> int:
        return int(img[min(max(r, 0), ny - 1), min(max(c, 0), nx - 1), k])

    for i in range(size):
        for j in range(size):
            x = int(tx * np.float32(j))
            y = int(ty * np.float32(i))
            dx = tx * np.float32(j) - np.float32(x)
            dy = ty * np.float32(i) - np.float32(y)
            for k in range(3):
                c = []
                for jj in range(4):
                    r = y - 1 + jj
                    a0 = px(r, x, k)
                    d0, d2, d3 = px(r, x - 1, k) - a0, px(r, x + 1, k) - a0, px(r, x + 2, k) - a0
                    c.append(_poly(np.float32(a0), *_coeffs(d0, d2, d3), dx))
                e0, e2, e3 = c[0] - c[1], c[2] - c[1], c[3] - c[1]  # float32
                v = float(_poly(c[1], *_coeffs(float(e0), float(e2), float(e3)), dy))
                rounded = np.floor(abs(v) + 0.5) * (1 if v >= 0 else -1)  # std::round
                out[i, j, k] = int(min(max(rounded, 0.0), 255.0))
    return out


@pytest.mark.parametrize("shape,size", [((23, 37), 16), ((7, 10), 21), ((1, 5), 8), ((30, 30), 30)])
def test_official_resize_matches_scalar_reference(shape: tuple[int, int], size: int) -> None:
    rng = np.random.default_rng(sum(shape) + size)
    img = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    assert np.array_equal(resize_official(img, size), scalar_resize(img, size))


def test_official_resize_overshoot_is_clamped() -> None:
    img = np.zeros((8, 8, 3), np.uint8)
    img[:, ::2] = 255  # a hard stripe pattern makes the cubic overshoot 0..255
    assert np.array_equal(resize_official(img, 13), scalar_resize(img, 13))


def test_official_resize_is_fast_and_identity_at_same_size() -> None:
    img = np.random.default_rng(0).integers(0, 256, (900, 1200, 3), dtype=np.uint8)
    t = time.perf_counter()
    out = resize_official(img, 384)
    assert time.perf_counter() - t < 2.0
    assert out.shape == (384, 384, 3) and out.dtype == np.uint8
    small = img[:40, :40]
    assert np.array_equal(resize_official(small, 40), small)  # t = 1: every tap lands on a pixel


def test_pil_resize_differs_from_official() -> None:
    # a smooth ramp: the official sampling is corner-aligned, PIL's is centre-aligned (half-pixel shift)
    ramp = np.tile(np.linspace(0, 255, 64).astype(np.uint8)[None, :, None], (64, 1, 3))
    off, pil = resize_official(ramp, 16), resize_pil(ramp, 16)
    assert pil.shape == off.shape == (16, 16, 3)
    assert off[0, 0, 0] == 0 and pil[0, 0, 0] > 0
    assert (pil.astype(int) - off.astype(int)).mean() > 3


def test_preprocess_range_and_layout() -> None:
    img = np.zeros((20, 30, 3), np.uint8)
    img[..., 0] = 255  # pure red
    x = preprocess(img, 14, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert x.shape == (3, 14, 14) and x.dtype == torch.float32
    assert torch.all(x[0] == 1.0) and torch.all(x[1:] == -1.0)
    noise = np.random.default_rng(1).integers(0, 256, (50, 40, 3), dtype=np.uint8)
    y = preprocess(Image.fromarray(noise), 28, (0.5,) * 3, (0.5,) * 3, resize="pil")
    assert y.min() >= -1.0 and y.max() <= 1.0
    expected = (resize_pil(noise, 28).astype(np.float32) / 255 - 0.5) / 0.5
    assert torch.equal(y, torch.from_numpy(expected).permute(2, 0, 1))
    with pytest.raises(ValueError, match="unknown resize"):
        preprocess(img, 14, (0.5,) * 3, (0.5,) * 3, resize="nearest")


def test_image_processor_batches(tmp_path: Path) -> None:
    cfg = preset("tiny")
    path = tmp_path / "a.png"
    Image.new("RGB", (50, 30), (10, 20, 30)).save(path)
    proc = ImageProcessor(cfg.vision.image_size, cfg.processing)
    batch = proc([path, np.full((9, 9, 3), 255, np.uint8)])
    assert batch.shape == (2, 3, 84, 84) and batch.dtype == torch.float32
    assert torch.all(batch[1] == 1.0)
    assert ImageProcessor(84, ProcessingConfig(resize="pil"))([path]).shape == (1, 3, 84, 84)


# --- decoding ------------------------------------------------------------------------------------

def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_supported_formats_load_as_rgb(fmt: str) -> None:
    img = load_image(_encode(Image.new("RGB", (12, 7), (200, 100, 50)), fmt))
    assert img.mode == "RGB" and img.size == (12, 7)


def test_alpha_dropped_and_grey_replicated() -> None:
    rgba = Image.new("RGBA", (4, 4), (200, 100, 50, 0))  # fully transparent: still its colour
    assert load_image(_encode(rgba, "PNG")).getpixel((0, 0)) == (200, 100, 50)
    grey = Image.new("L", (4, 4), 77)
    assert load_image(_encode(grey, "PNG")).getpixel((1, 1)) == (77, 77, 77)
    grey16 = Image.fromarray(np.full((3, 3), 0x1234, np.uint16))
    assert load_image(_encode(grey16, "PNG")).getpixel((0, 0)) == (0x12, 0x12, 0x12)


def test_no_exif_rotation() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW" orientation tag
    data = _encode(Image.new("RGB", (30, 10)), "JPEG", exif=exif)
    assert load_image(data).size == (30, 10)


def test_unsupported_format_is_named(tmp_path: Path) -> None:
    path = tmp_path / "image.gif"
    Image.new("RGB", (4, 4)).save(path, "GIF")
    with pytest.raises(ImageError, match=r"^image\.gif: unsupported image format GIF \(use PNG, JPEG or WEBP\)"):
        load_image(path)
    with pytest.raises(ImageError, match="unsupported image format BMP"):
        load_image(_encode(Image.new("RGB", (4, 4)), "BMP"))


def test_broken_data_is_refused(tmp_path: Path) -> None:
    png = _encode(Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)), "PNG")
    with pytest.raises(ImageError, match="could not decode image"):
        load_image(png[: len(png) // 2])
    with pytest.raises(ImageError, match="could not decode image"):
        load_image(np.random.default_rng(1).integers(0, 256, 2000, dtype=np.uint8).tobytes())
    with pytest.raises(ImageError, match="could not decode image"):
        load_image(png[:20])  # cut inside the header
    with pytest.raises(ImageError, match="missing.png: could not read file"):
        load_image(tmp_path / "missing.png")


def _png_claiming(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b""))
            + chunk(b"IEND", b""))


def test_decompression_bomb_refused_from_header() -> None:
    t = time.perf_counter()
    with pytest.raises(ImageError, match=r"20000x20000 = 400000000 pixels, over the limit of 16777216"):
        load_image(_png_claiming(20000, 20000))
    assert time.perf_counter() - t < 0.5
    with pytest.raises(ImageError, match="over the limit of 5000 pixels"):
        load_image(_encode(Image.new("RGB", (100, 100)), "PNG"), max_pixels=5000)
    with pytest.raises(ImageError, match="over the limit"):
        load_image(Image.new("RGB", (100, 100)), max_pixels=5000)
    assert load_image(_encode(Image.new("RGB", (100, 50)), "PNG"), max_pixels=5000).size == (100, 50)
