"""Reading a VLMEvalKit benchmark TSV (POPE.tsv, MMMU_DEV_VAL.tsv, ...).

The files are tab-separated with a header row, quoted the way pandas writes them. Every file has
an `index` and an `image` column. The image column holds a base64-encoded image, a Python list
literal of several base64 images (MMMU), or, to save space, the `index` of another row whose image
it reuses: VLMEvalKit treats any value of 64 characters or fewer as such a reference. Rows with an
empty image are dropped, as VLMEvalKit drops them by default.

Rows are streamed. A first pass notes which indexes are referenced, so that the second pass keeps
just those images; a reference to a row further down is found by a look-up scan.
"""

from __future__ import annotations

import ast
import csv
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from omnivision.eval.tasks.base import Row, TaskDataError

REFERENCE_MAX_CHARS = 64  # VLMEvalKit: a shorter image value is another row's index
BASE_COLUMNS = ("index", "image")


def iter_rows(path: Path, required: Sequence[str] = ()) -> Iterator[Row]:
    """Rows with an image, in file order; `values["image"]` is the list of the row's base64
    images with references resolved. Raises `TaskDataError` for a missing column, a malformed
    row or a reference to no image."""
    targets = {values["image"] for _, _, values in _records(path, required)
               if 0 < len(values["image"]) <= REFERENCE_MAX_CHARS}
    kept: dict[str, str] = {}
    for line, ordinal, values in _records(path, required):
        image, where = values["image"], f"{path}:{line}"
        if values["index"] in targets and len(image) > REFERENCE_MAX_CHARS:
            kept[values["index"]] = image
        if not image:
            continue
        if len(image) <= REFERENCE_MAX_CHARS:
            if image not in kept:
                kept[image] = _look_up(path, image, where)
            image = kept[image]
        values["image"] = _image_list(image, where)
        yield Row(where, values, "tsv", ordinal)


def _records(path: Path, required: Sequence[str]) -> Iterator[tuple[int, int, dict[str, str]]]:
    """(first line, 0-based row number, values) for each data row."""
    # base64 images are far longer than the csv module's default 128 KiB field limit (the cap is
    # what a C long holds everywhere)
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f, delimiter="\t")
            header = next(reader, None)
            _check_header(path, header, required)
            line = reader.line_num
            for ordinal, fields in enumerate(reader):
                if len(fields) != len(header):
                    raise TaskDataError(f"{path}:{line + 1}", f"expected {len(header)} tab-separated "
                                                              f"fields, found {len(fields)}")
                yield line + 1, ordinal, dict(zip(header, fields))
                line = reader.line_num
    except OSError as e:
        raise TaskDataError(str(path), f"could not read file: {e.strerror or e}") from e
    except (UnicodeDecodeError, csv.Error) as e:
        raise TaskDataError(str(path), f"not a readable TSV file ({e})") from e


def _check_header(path: Path, header: list[str] | None, required: Sequence[str]) -> None:
    if header is None:
        raise TaskDataError(str(path), "empty file, expected a header row")
    missing = [c for c in (*BASE_COLUMNS, *required) if c not in header]
    if missing:
        raise TaskDataError(str(path), f"missing column {', '.join(map(repr, dict.fromkeys(missing)))} "
                                       f"(has {', '.join(header)})")


def _look_up(path: Path, index: str, where: str) -> str:
    for _, _, values in _records(path, ()):
        if values["index"] == index and len(values["image"]) > REFERENCE_MAX_CHARS:
            return values["image"]
    raise TaskDataError(where, f"image refers to index {index!r}, but no row with that index "
                               f"has an image")


def _image_list(image: str, where: str) -> list[str]:
    if not (image.startswith("[") and image.endswith("]")):
        return [image]
    try:
        images = ast.literal_eval(image)
    except (ValueError, SyntaxError) as e:
        raise TaskDataError(where, "column 'image': not a list of base64 images") from e
    if not isinstance(images, list) or not all(isinstance(x, str) for x in images):
        raise TaskDataError(where, "column 'image': not a list of base64 images")
    return images
