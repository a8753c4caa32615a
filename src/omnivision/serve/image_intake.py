"""From an `image_url` string to a decoded RGB image, with every limit checked as early as it can be.

Three sources:

- `data:image/png|jpeg|webp;base64,...`: the encoded length is checked against the per-image cap
  before decoding, and the base64 is decoded strictly (bad characters or padding are refused, not
  skipped);
- a local file (`file:///...` or a bare path): only under the operator's `image_root`, after
  resolving symlinks and `..`, and only when its size is within the cap;
- `https://...`: only when the operator allowed hosts (`remote_media`); refused by default.

Decoding is `processing.image.load_image`: PNG, JPEG and WEBP only, the pixel count read from the
header and refused before any pixel is decoded. Every refusal is a 400 naming the request field.
"""

from __future__ import annotations

import base64
import binascii
import re
from urllib.parse import unquote, urlsplit

from PIL import Image

from omnivision.processing.image import ImageError, load_image
from omnivision.serve.chat_request import ImageRef
from omnivision.serve.errors import APIError, bad_request, shown
from omnivision.serve.settings import ServerSettings

_DATA_URL = re.compile(r"data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[\w.+-]+)*)(?P<b64>;base64)?,",
                       re.ASCII)
_MIMES = {"image/png", "image/jpeg", "image/jpg", "image/webp"}


def _from_data_url(url: str, ref: ImageRef, cap: int) -> bytes:
    head = _DATA_URL.match(url)
    if head is None:
        raise bad_request("a data URL must look like data:image/png;base64,...", ref.param, "invalid_image_url")
    mime = (head["mime"] or "").lower()
    if mime not in _MIMES:
        raise bad_request(f"data URL type {shown(mime or 'none')} is not an image this server takes "
                          "(image/png, image/jpeg, image/webp)", ref.param, "unsupported_image_format")
    if not head["b64"]:
        raise bad_request("image data URLs must be base64-encoded (;base64,)", ref.param, "invalid_image_url")
    payload = url[head.end():]
    if len(payload) > (cap + 2) // 3 * 4:  # the decoded size, known before decoding
        raise bad_request(f"the image is over the limit of {cap} bytes", ref.param, "image_too_large")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise bad_request("the image's base64 is malformed", ref.param, "invalid_image_url") from None


def _from_file(url: str, ref: ImageRef, settings: ServerSettings) -> bytes:
    root = settings.image_root
    if root is None:
        raise bad_request("local image paths are not enabled on this server (see --image-root)",
                          ref.param, "local_media_disabled")
    try:
        raw = unquote(urlsplit(url).path) if url.startswith("file://") else url
        root = root.resolve()
        path = (root / raw).resolve()  # an absolute `raw` replaces the root, and is then checked
    except (ValueError, OSError):  # a NUL byte, a malformed file:// URL
        raise bad_request("the image path is not a valid path", ref.param, "invalid_image_url") from None
    if not path.is_relative_to(root):
        raise bad_request("the image path is outside the server's image root", ref.param, "invalid_image_url")
    try:
        size = path.stat().st_size
        if not path.is_file():
            raise bad_request("the image path is not a file", ref.param, "invalid_image_url")
        if size > settings.limits.image_bytes:
            raise bad_request(f"the image is over the limit of {settings.limits.image_bytes} bytes",
                              ref.param, "image_too_large")
        return path.read_bytes()
    except OSError:
        raise bad_request("no readable image at that path", ref.param, "invalid_image_url") from None


def image_bytes(ref: ImageRef, settings: ServerSettings) -> bytes:
    """The encoded image an `image_url` points to (blocking: call it off the event loop)."""
    url = ref.url
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme == "data":
        return _from_data_url(url, ref, settings.limits.image_bytes)
    if scheme in ("http", "https"):
        from omnivision.serve.remote_media import fetch

        return fetch(url, ref, settings.remote, settings.limits.image_bytes)
    if scheme in ("file", "") or (len(scheme) == 1 and url[1:3] in (":\\", ":/")):
        return _from_file(url, ref, settings)
    raise bad_request(f"unsupported image URL scheme {shown(scheme)}", ref.param, "invalid_image_url")


def decode(data: bytes, ref: ImageRef, settings: ServerSettings) -> Image.Image:
    """An RGB image, or a 400 naming the field and the problem (blocking)."""
    try:
        return load_image(data, max_pixels=settings.limits.max_pixels)
    except ImageError as e:
        raise APIError(400, str(e), param=ref.param, code=e.code) from None
