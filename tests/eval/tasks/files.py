"""Builders for small benchmark files in the real layouts, for the task tests: parquet shards with
the image struct `datasets` writes, and VLMEvalKit TSVs with base64 images, quoted the way pandas
writes them."""

from __future__ import annotations

import base64
import csv
import io
from pathlib import Path

import pytest
from PIL import Image

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
"""The column type `datasets` writes for an `Image` feature."""

COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "white": (255, 255, 255)}


def png(colour: str, mode: str = "RGB") -> bytes:
    img = Image.new("RGB", (5, 3), COLOURS[colour]).convert(mode)
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


def image_cell(colour: str | None) -> dict | None:
    return None if colour is None else {"bytes": png(colour), "path": f"{colour}.png"}


def b64(colour: str) -> str:
    return base64.b64encode(png(colour)).decode()


def colour_of(img: Image.Image) -> str:
    assert img.mode == "RGB"
    return next(name for name, rgb in COLOURS.items() if img.getpixel((0, 0)) == rgb)


def write_parquet(path: Path, columns: dict[str, list], types: dict[str, pa.DataType]) -> Path:
    """One shard; every column's type is given, as `datasets` fixes them by its features."""
    path.parent.mkdir(parents=True, exist_ok=True)
    schema = pa.schema([(name, types[name]) for name in columns])
    pq.write_table(pa.table(columns, schema=schema), path)
    return path


def write_tsv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    """Tab-separated with minimal quoting and "\\n" line ends, as pandas `to_csv(sep="\\t")`."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter="\t", quoting=csv.QUOTE_MINIMAL, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    return path
