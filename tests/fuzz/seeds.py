"""The valid inputs the fuzz cases start from, all made by the project itself (or Pillow): the tiny
random model as a native checkpoint and as a GGUF pair, small images in every format `load_image`
is shown, and chat-completion request bodies.

Everything is written once under one folder and never changed; a case mutates a copy.
"""

from __future__ import annotations

import base64
import io
import struct
from contextlib import redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from omnivision.cli.main import main
from omnivision.processing.byte_tokenizer import byte_level_tokenizer
from omnivision.weights.gguf_file import GGUFFile


@dataclass
class Seeds:
    root: Path
    native: Path
    """A native checkpoint: config.json, model.safetensors, tokenizer.json."""
    gguf: dict[str, bytes]
    """The GGUF pair `omnivision convert --to gguf` writes: file name -> bytes."""
    focus: dict[str, int]
    """File name -> length of its structure (header and tensor table), where mutations mostly land."""
    images: dict[str, bytes] = field(default_factory=dict)
    """Name (`<kind>.<extension>`) -> encoded image."""
    bodies: list[dict] = field(default_factory=list)
    """Valid `POST /v1/chat/completions` bodies."""

    def native_file(self, name: str) -> bytes:
        return (self.native / name).read_bytes()


def _picture(mode: str = "RGB", size: tuple[int, int] = (24, 18)) -> Image.Image:
    """A small gradient with some structure, so that every encoder has something to compress."""
    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    rgb = np.stack([x * 255 // w, y * 255 // h, (x ^ y) * 16 % 256], axis=-1).astype(np.uint8)
    img = Image.fromarray(rgb, "RGB")
    if mode == "I;16":
        return Image.fromarray(np.asarray(img.convert("L")).astype(np.uint16) * 257)  # mode I;16
    return img.convert(mode)


def _encode(img: Image.Image, fmt: str, **options) -> bytes:
    out = io.BytesIO()
    img.save(out, format=fmt, **options)
    return out.getvalue()


def make_images() -> dict[str, bytes]:
    return {
        "rgb.png": _encode(_picture(), "PNG"),
        "rgba.png": _encode(_picture("RGBA"), "PNG"),
        "palette.png": _encode(_picture("P"), "PNG"),
        "grey16.png": _encode(_picture("I;16"), "PNG"),
        "baseline.jpg": _encode(_picture(), "JPEG", quality=80),
        "progressive.jpg": _encode(_picture("L"), "JPEG", progressive=True),
        "lossy.webp": _encode(_picture(), "WEBP", quality=70),
        "lossless.webp": _encode(_picture("RGBA"), "WEBP", lossless=True),
        "image.gif": _encode(_picture("P"), "GIF"),
        "image.bmp": _encode(_picture(), "BMP"),
    }


def make_bodies(png: bytes) -> list[dict]:
    url = "data:image/png;base64," + base64.b64encode(png).decode()
    image_message = {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                                 {"type": "text", "text": "What is it?"}]}
    return [
        {"model": "omnivision", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
        {"model": "omnivision", "messages": [image_message], "max_tokens": 2, "temperature": 0},
        {"model": "omnivision", "max_completion_tokens": 2, "stream": True,
         "stream_options": {"include_usage": True},
         "messages": [{"role": "system", "content": "Be brief."}, image_message,
                      {"role": "assistant", "content": "A square."},
                      {"role": "user", "content": [{"type": "text", "text": "What colour?"}]}]},
        {"model": "omnivision", "messages": [{"role": "user", "content": "Say yes"}], "max_tokens": 2,
         "temperature": 0.7, "top_p": 0.9, "seed": 3, "n": 2, "stop": ["\n", "."], "logprobs": True,
         "top_logprobs": 2},
        {"model": "omnivision", "messages": [{"role": "user", "content": "JSON please"}], "max_tokens": 3,
         "response_format": {"type": "json_object"}},
    ]


def _gguf_focus(path: Path) -> int:
    return GGUFFile.open(path).data_offset


def make_seeds(root: Path) -> Seeds:
    """Build every seed input under `root` (about a second: the tiny model, converted once)."""
    root.mkdir(parents=True, exist_ok=True)
    tok = root / "byte-tokenizer.json"
    byte_level_tokenizer().backend.save(str(tok))
    native, gguf_dir = root / "native", root / "gguf"
    for argv in (["init", "--preset", "tiny", "--random-weights", str(native), "--tokenizer", str(tok)],
                 ["convert", str(native), str(gguf_dir), "--to", "gguf", "--dtype", "F32"]):
        with open(root / "build.log", "a") as log, redirect_stdout(log):  # they print what they wrote
            if main(argv) != 0:
                raise RuntimeError(f"could not build the fuzz seeds: omnivision {' '.join(argv)}")
    gguf = {p.name: p.read_bytes() for p in sorted(gguf_dir.glob("*.gguf"))}
    focus = {name: _gguf_focus(gguf_dir / name) for name in gguf}
    weights = (native / "model.safetensors").read_bytes()
    focus["model.safetensors"] = 8 + struct.unpack("<Q", weights[:8])[0]
    images = make_images()
    return Seeds(root, native, gguf, focus, images, make_bodies(images["rgb.png"]))
