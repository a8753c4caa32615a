"""Image intake: data URLs decoded strictly, local paths only under the root, bombs and odd formats
refused from the header, every refusal a 400 naming the field."""

from __future__ import annotations

import base64
import io
import struct
import time
import zlib
from pathlib import Path

import pytest
from PIL import Image

from omnivision.serve import image_intake
from omnivision.serve.chat_request import ImageRef
from omnivision.serve.errors import APIError
from omnivision.serve.settings import Limits, ServerSettings

PARAM = "messages[0].content[0].image_url.url"


def _encoded(fmt: str = "PNG", size=(20, 12), color=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format=fmt)
    return buf.getvalue()


def _data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def bomb_png(width: int, height: int) -> bytes:
    """A valid PNG header claiming width x height 1-bit pixels, with a few KB of zlib data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" + b"\x00" * ((width + 7) // 8)
    body = zlib.compress(row * 64, 9)  # far fewer rows than claimed: only the header matters
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", body) + chunk(b"IEND", b""))


def _take(url: str, settings: ServerSettings = ServerSettings()):
    ref = ImageRef(url, PARAM)
    return image_intake.decode(image_intake.image_bytes(ref, settings), ref, settings)


def _refused(url: str, settings: ServerSettings = ServerSettings()) -> APIError:
    with pytest.raises(APIError) as info:
        _take(url, settings)
    assert info.value.status == 400 and info.value.param == PARAM
    return info.value


@pytest.mark.parametrize("fmt,mime", [("PNG", "image/png"), ("JPEG", "image/jpeg"), ("WEBP", "image/webp")])
def test_data_urls_of_each_format(fmt, mime) -> None:
    img = _take(_data_url(_encoded(fmt), mime))
    assert img.size == (20, 12) and img.mode == "RGB"


@pytest.mark.parametrize("url,code", [
    ("data:image/png;base64,iVBOR*w0KGgo=", "invalid_image_url"),  # illegal character
    ("data:image/png;base64,iVBORw0KGgo", "invalid_image_url"),  # bad padding
    ("data:image/png;base64", "invalid_image_url"),  # no comma
    ("data:text/plain;base64,aGVsbG8=", "unsupported_image_format"),
    ("data:image/png,rawbytes", "invalid_image_url"),  # not base64
    ("data:image/png;base64," + base64.b64encode(b"hello, this is text").decode(), "invalid_image"),
    ("data:image/png;base64," + base64.b64encode(b"PK\x03\x04" + b"\x00" * 40).decode(), "invalid_image"),
    ("ftp://example.com/cat.png", "invalid_image_url"),
    ("gopher://example.com/cat.png", "invalid_image_url"),
])
def test_bad_data_and_schemes(url, code) -> None:
    assert _refused(url).code == code


def test_oversized_base64_is_refused_before_decoding(monkeypatch) -> None:
    settings = ServerSettings(limits=Limits(image_bytes=1000))

    def never(*args, **kwargs):
        raise AssertionError("decoded an oversized image")

    monkeypatch.setattr(image_intake.base64, "b64decode", never)
    error = _refused("data:image/png;base64," + "A" * 1400, settings)
    assert error.code == "image_too_large"


@pytest.mark.parametrize("size", [(20000, 20000), (12000, 12000), (9000, 9000)])
def test_decompression_bombs_are_refused_from_the_header(size, monkeypatch) -> None:
    data = bomb_png(*size)
    assert len(data) < 50_000

    def no_pixels(self, *args, **kwargs):
        raise AssertionError("pixel data was decoded")

    monkeypatch.setattr(Image.Image, "load", no_pixels)
    started = time.perf_counter()
    error = _refused(_data_url(data))
    assert error.code == "image_too_large" and f"{size[0]}x{size[1]}" in error.message
    assert time.perf_counter() - started < 1.0


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_images(fmt) -> None:
    data = _encoded(fmt, size=(64, 64))
    assert _refused(_data_url(data[:len(data) // 2])).code == "invalid_image"


@pytest.mark.parametrize("fmt", ["TIFF", "GIF", "BMP", "ICO"])
def test_formats_outside_the_allowlist(fmt) -> None:
    assert _refused(_data_url(_encoded(fmt, size=(16, 16)))).code == "unsupported_image_format"


def test_local_paths_are_off_by_default_and_confined_to_the_root(tmp_path: Path) -> None:
    root = tmp_path / "images"
    root.mkdir()
    (root / "ok.png").write_bytes(_encoded())
    (tmp_path / "secret.png").write_bytes(_encoded())
    (root / "link.png").symlink_to(tmp_path / "secret.png")
    assert _refused(str(root / "ok.png")).code == "local_media_disabled"
    settings = ServerSettings(image_root=root)
    assert _take("ok.png", settings).size == (20, 12)
    assert _take(f"file://{root / 'ok.png'}", settings).size == (20, 12)
    for escape in ("../secret.png", str(tmp_path / "secret.png"), f"file://{tmp_path}/secret.png",
                   "link.png", "sub/../../secret.png"):
        assert _refused(escape, settings).code == "invalid_image_url", escape
    assert _refused("missing.png", settings).code == "invalid_image_url"
    assert _refused(".", settings).code == "invalid_image_url"


def test_local_files_over_the_cap(tmp_path: Path) -> None:
    (tmp_path / "big.png").write_bytes(_encoded(size=(300, 300), color=(1, 2, 3)) + b"\x00" * 5000)
    settings = ServerSettings(image_root=tmp_path, limits=Limits(image_bytes=4000))
    assert _refused("big.png", settings).code == "image_too_large"
