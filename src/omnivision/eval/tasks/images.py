"""Decoding the image values found in benchmark rows into RGB PIL images.

The values come in three shapes: the `{"bytes": ..., "path": ...}` struct that Hugging Face
`datasets` writes into parquet files, a PIL image (rows read through `datasets` itself), and a
base64 string (VLMEvalKit TSVs). All are converted to RGB the way lmms-eval's `doc_to_visual` does
(`Image.convert("RGB")`). Any failure raises `TaskDataError` naming the row and column.

A sample holds its images as `LazyImages`: each is decoded the first time it is looked at, so
listing a task's samples (for their ids, or to skip the ones another process answers) decodes
nothing, and a model that uses one image of several decodes only that one.
"""

from __future__ import annotations

import base64
import binascii
import io
from collections.abc import Callable, Sequence
from typing import Any, overload

from PIL import Image

from omnivision.eval.tasks.base import TaskDataError


def decode(value: Any, where: str, column: str) -> Image.Image:
    """An RGB image from a PIL image, encoded bytes or a `datasets` image struct."""
    if isinstance(value, Image.Image):
        return value.convert("RGB")
    if isinstance(value, dict):
        value = _struct_bytes(value, where, column)
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise TaskDataError(where, f"column '{column}': expected an image, found {type(value).__name__}")
    return _open(bytes(value), where, column)


def from_base64(text: str, where: str, column: str) -> Image.Image:
    """An RGB image from a base64 string, as VLMEvalKit TSVs store them."""
    try:
        data = base64.b64decode(text)
    except (binascii.Error, ValueError) as e:
        raise TaskDataError(where, f"column '{column}': image is not valid base64 ({e})") from e
    return _open(data, where, column)


def _struct_bytes(value: dict, where: str, column: str) -> bytes:
    data = value.get("bytes")
    if data is None:
        # `datasets` leaves bytes out only for images kept as files beside the data
        raise TaskDataError(where, f"column '{column}': image has no embedded bytes "
                                   f"(path {value.get('path')!r})")
    return data


def _open(data: bytes, where: str, column: str) -> Image.Image:
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return img.convert("RGB")
    except Exception as e:  # PIL raises UnidentifiedImageError, OSError, SyntaxError, ...
        raise TaskDataError(where, f"column '{column}': could not decode image ({e})") from e


class LazyImages(Sequence[Image.Image]):
    """A sample's images, each made by its loader on first access and kept from then on."""

    def __init__(self, loaders: Sequence[Callable[[], Image.Image]]) -> None:
        self._loaders = list(loaders)
        self._loaded: dict[int, Image.Image] = {}

    def __len__(self) -> int:
        return len(self._loaders)

    @overload
    def __getitem__(self, index: int) -> Image.Image: ...

    @overload
    def __getitem__(self, index: slice) -> list[Image.Image]: ...

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        position = index + len(self) if index < 0 else index
        if not 0 <= position < len(self):
            raise IndexError(f"image {index} of {len(self)}")
        if position not in self._loaded:
            self._loaded[position] = self._loaders[position]()
        return self._loaded[position]

    def __repr__(self) -> str:
        return f"LazyImages({len(self)} images, {len(self._loaded)} decoded)"
