"""Image input: safe decoding, the reference runtime's bicubic squash, normalisation to a tensor.

This module owns everything between "a file, some bytes or a PIL image" and the `[B, 3, H, W]` float
tensor the vision tower eats:

- `load_image` accepts PNG, JPEG and WEBP only, refuses decompression bombs from the header before
  decoding, and converts to RGB the way the official runtime (stb_image with 3 channels) does: alpha
  dropped, grey replicated, 16-bit samples shifted down to 8 bits, no EXIF rotation.
- `resize_official` ports llama.cpp `clip.cpp` `bicubic_resize` (docs/official-release.md section 4) exactly,
  vectorised with numpy; `resize_pil` is the PIL bicubic alternative.
- `preprocess` / `ImageProcessor` squash, normalise `(x/255 - mean)/std` in float32 and lay out CHW.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Union

import numpy as np
import torch
from PIL import Image, JpegImagePlugin, PngImagePlugin, WebPImagePlugin

from omnivision.config import ProcessingConfig

ImageSource = Union[str, os.PathLike, bytes, bytearray, memoryview, Image.Image, np.ndarray]
"""Anything `preprocess` accepts: a path, encoded bytes, a PIL image or a uint8 HWC RGB array."""

DEFAULT_MAX_PIXELS = 4096 * 4096

_PLUGINS = {
    "PNG": PngImagePlugin.PngImageFile,
    "JPEG": JpegImagePlugin.JpegImageFile,
    "WEBP": WebPImagePlugin.WebPImageFile,
}


class ImageError(ValueError):
    """An image that cannot or must not be decoded; the message names the problem and `code` its
    kind: `invalid_image`, `unsupported_image_format` or `image_too_large`."""

    def __init__(self, message: str, code: str = "invalid_image") -> None:
        super().__init__(message)
        self.code = code


def _sniff(head: bytes) -> str | None:
    """The container format from the first bytes, or None when unrecognised."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if head.startswith(b"BM"):
        return "BMP"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF"
    if head[:4] == b"\x00\x00\x01\x00":
        return "ICO"
    if head[:4] == b"8BPS":
        return "PSD"
    if head[4:8] == b"ftyp":
        return "AVIF" if head[8:12] in (b"avif", b"avis") else "HEIF"
    if head.startswith(b"\x00\x00\x00\x0cjP  ") or head.startswith(b"\xff\x4f\xff\x51"):
        return "JPEG2000"
    return None


def _check_pixels(width: int, height: int, max_pixels: int, prefix: str) -> None:
    if width <= 0 or height <= 0:
        raise ImageError(f"{prefix}image has an empty size {width}x{height}")
    if width * height > max_pixels:
        raise ImageError(f"{prefix}image is {width}x{height} = {width * height} pixels, "
                         f"over the limit of {max_pixels} pixels", "image_too_large")


def _to_rgb(img: Image.Image) -> Image.Image:
    """RGB like stb_image with 3 channels: alpha dropped (not composited), grey replicated."""
    if img.mode in ("I", "I;16", "I;16B", "I;16L"):
        # 16-bit greyscale: keep the high byte, as stb_image does
        grey = (np.asarray(img).astype(np.int64) >> 8).clip(0, 255).astype(np.uint8)  # [H, W]
        img = Image.fromarray(grey, mode="L")
    return img if img.mode == "RGB" else img.convert("RGB")


def load_image(source: str | os.PathLike | bytes | bytearray | memoryview | Image.Image,
               max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode `source` into an RGB PIL image, refusing anything but PNG, JPEG and WEBP.

    The size is read from the header and checked against `max_pixels` before any pixel data is
    decoded. A PIL image passed in is only size-checked and converted. Raises `ImageError`.
    """
    if isinstance(source, Image.Image):
        _check_pixels(source.width, source.height, max_pixels, "")
        return _to_rgb(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        data, prefix = bytes(source), ""
    else:
        path = Path(source)
        prefix = f"{path.name}: "
        try:
            data = path.read_bytes()
        except OSError as e:
            raise ImageError(f"{prefix}could not read file: {e.strerror or e}") from e

    fmt = _sniff(data[:16])
    if fmt is None:
        raise ImageError(f"{prefix}could not decode image: not a PNG, JPEG or WEBP file")
    if fmt not in _PLUGINS:
        raise ImageError(f"{prefix}unsupported image format {fmt} (use PNG, JPEG or WEBP)",
                         "unsupported_image_format")
    try:
        # the plugin class parses the header only; Image.open's own bomb check is bypassed so that
        # `max_pixels` is the one limit
        img = _PLUGINS[fmt](io.BytesIO(data))
    except Exception as e:  # PIL raises SyntaxError, OSError, struct.error, ... on bad headers
        raise ImageError(f"{prefix}could not decode image: {e}") from e
    _check_pixels(img.width, img.height, max_pixels, prefix)
    try:
        img.load()
        return _to_rgb(img)
    except Exception as e:
        raise ImageError(f"{prefix}could not decode image: {e}") from e


# --- resizing ---------------------------------------------------------------------------------

_THIRD = -1.0 / 3  # these three constants are doubles in the reference
_SIXTH = 1.0 / 6


def _cubic(p0: np.ndarray, p1: np.ndarray, p2: np.ndarray, p3: np.ndarray,
           d: np.ndarray) -> np.ndarray:
    """The reference's cubic through samples at -1, 0, 1, 2, evaluated at fraction `d`.

    Differences are float32; the coefficients are computed in double and stored as float32; the
    polynomial is evaluated term by term in float32, left to right (no fused multiply-add).
    """
    d0 = (p0 - p1).astype(np.float64)
    d2 = (p2 - p1).astype(np.float64)
    d3 = (p3 - p1).astype(np.float64)
    a1 = (_THIRD * d0 + d2 - _SIXTH * d3).astype(np.float32)
    a2 = (0.5 * d0 + 0.5 * d2).astype(np.float32)
    a3 = (-_SIXTH * d0 - 0.5 * d2 + _SIXTH * d3).astype(np.float32)
    return p1 + a1 * d + a2 * d * d + a3 * d * d * d


def _taps(src: int, dst: int) -> tuple[np.ndarray, np.ndarray]:
    """Corner-aligned sample points: clamped indices [dst, 4] of x-1..x+2 and fractions [dst]."""
    t = np.float32(src) / np.float32(dst)
    pos = t * np.arange(dst, dtype=np.float32)  # float32 product, as in the reference
    base = pos.astype(np.int64)  # truncation; pos >= 0
    frac = pos - base.astype(np.float32)
    idx = np.clip(base[:, None] + np.arange(-1, 3)[None, :], 0, src - 1)
    return idx, frac


def resize_official(img: np.ndarray, size: int) -> np.ndarray:
    """Squash a uint8 HWC RGB image to `size` x `size` with llama.cpp's `bicubic_resize`.

    Exact port: source point `t*j` with `t = src/dst` (no half-pixel offset), taps x-1..x+2 clamped
    to the edge, horizontal pass then vertical pass over the four unclamped float32 row results,
    final value rounded half away from zero and clamped to 0..255. No antialiasing. Assumes the
    reference was built without fused multiply-add contraction (otherwise rare values differ by 1).
    """
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected a uint8 HxWx3 array, got {img.dtype} {img.shape}")
    if size <= 0:
        raise ValueError(f"size must be positive, got {size}")
    ny, nx = img.shape[:2]
    if ny == nx == size:  # t = 1: every tap lands on its pixel with fraction 0, so the port returns the input
        return img.copy()
    cols, dx = _taps(nx, size)  # [size, 4], [size]
    rows, dy = _taps(ny, size)  # [size, 4], [size]

    # horizontal pass, only on the source rows the vertical pass needs
    used, row_pos = np.unique(rows, return_inverse=True)  # [R], [size * 4]
    taps = [img[np.ix_(used, cols[:, k])].astype(np.float32) for k in range(4)]  # 4 x [R, size, 3]
    horiz = _cubic(*taps, dx[None, :, None])  # [R, size, 3] float32

    # vertical pass over the four row results
    vtaps = horiz[row_pos.reshape(size, 4)]  # [size, 4, size, 3]
    out = _cubic(vtaps[:, 0], vtaps[:, 1], vtaps[:, 2], vtaps[:, 3], dy[:, None, None])  # [size, size, 3]

    v = out.astype(np.float64)  # exact; round half away from zero like std::round
    v = np.sign(v) * np.floor(np.abs(v) + 0.5)
    return np.clip(v, 0, 255).astype(np.uint8)


def resize_pil(img: np.ndarray, size: int) -> np.ndarray:
    """Squash a uint8 HWC RGB image to `size` x `size` with PIL's (antialiased) bicubic."""
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected a uint8 HxWx3 array, got {img.dtype} {img.shape}")
    out = Image.fromarray(img, mode="RGB").resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(out, dtype=np.uint8)


_RESIZERS = {"official": resize_official, "pil": resize_pil}


# --- normalisation ----------------------------------------------------------------------------

def _as_array(image: ImageSource, max_pixels: int) -> np.ndarray:
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected a uint8 HxWx3 array, got {image.dtype} {image.shape}")
        return image
    return np.asarray(load_image(image, max_pixels=max_pixels), dtype=np.uint8)  # [H, W, 3]


def preprocess(image: ImageSource, size: int, mean: Sequence[float], std: Sequence[float],
               resize: str = "official", max_pixels: int = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """One image to a float32 tensor [3, size, size]: squash, then `(x/255 - mean)/std` per channel."""
    if resize not in _RESIZERS:
        raise ValueError(f"unknown resize {resize!r}; choose from {sorted(_RESIZERS)}")
    pixels = _RESIZERS[resize](_as_array(image, max_pixels), size)  # [size, size, 3] uint8
    m = np.asarray(mean, dtype=np.float32)  # [3]
    s = np.asarray(std, dtype=np.float32)  # [3]
    x = (pixels.astype(np.float32) / np.float32(255.0) - m) / s  # [size, size, 3], float32 ops
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))  # [3, size, size]


class ImageProcessor:
    """Turns a batch of images into the vision tower's input, following a `ProcessingConfig`."""

    def __init__(self, image_size: int, config: ProcessingConfig | None = None,
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        self.image_size = image_size
        self.config = config if config is not None else ProcessingConfig()
        self.max_pixels = max_pixels

    def __call__(self, images: Sequence[ImageSource], max_pixels: int | None = None) -> torch.Tensor:
        """Images to a float32 tensor [B, 3, image_size, image_size]; `max_pixels` overrides the
        processor's own limit for this call (a server passes its configured one)."""
        if len(images) == 0:
            raise ValueError("no images given")
        c, limit = self.config, self.max_pixels if max_pixels is None else max_pixels
        return torch.stack([
            preprocess(im, self.image_size, c.image_mean, c.image_std, c.resize, limit)
            for im in images
        ])  # [B, 3, H, W]
