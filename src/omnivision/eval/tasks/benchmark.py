"""`BenchmarkTask`: the part of a task that every benchmark shares, and the checked accessors the
benchmark modules use to read row values.

A benchmark subclass supplies two steps: `doc_from_tsv`, which maps a VLMEvalKit TSV row onto the
field names of lmms-eval's dataset (or drops it), and `sample`, which builds the `Sample` from such
a document. Rows from parquet shards or the hub already use lmms-eval's names.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image

from omnivision.eval.tasks import images
from omnivision.eval.tasks.base import DataDir, Generation, Row, Sample, TaskDataError, check_limit
from omnivision.eval.tasks.source import DataSource


@dataclass(frozen=True)
class BenchmarkTask:
    """A task reading `source`; `hf_columns` / `tsv_columns` are the columns each layout must have."""

    name: str
    generation: Generation
    source: DataSource
    hf_columns: tuple[str, ...]
    tsv_columns: tuple[str, ...]

    @property
    def data_files(self) -> str:
        return self.source.describe()

    def samples(self, data_dir: DataDir, limit: int | None = None) -> Iterator[Sample]:
        """The task's samples in file order, at most `limit`; the data is located at once, so a
        missing folder or file raises here rather than on the first `next`."""
        check_limit(limit)
        rows = self.source.rows(data_dir, self.hf_columns, self.tsv_columns)
        return self._samples(rows, limit)

    def _samples(self, rows: Iterator[Row], limit: int | None) -> Iterator[Sample]:
        if limit == 0:
            return
        count = 0
        for row in rows:
            doc = row.values if row.layout == "hf" else self.doc_from_tsv(row)
            if doc is None:
                continue
            yield self.sample(doc, row)
            count += 1
            if count == limit:
                return

    def doc_from_tsv(self, row: Row) -> dict[str, Any] | None:
        """lmms-eval's fields for a TSV row (images as base64 strings), or None to skip it."""
        raise NotImplementedError

    def sample(self, doc: dict[str, Any], row: Row) -> Sample:
        raise NotImplementedError


def text(doc: dict[str, Any], column: str, row: Row) -> str:
    """A column that must hold a string."""
    if column not in doc:
        raise TaskDataError(row.where, f"missing column '{column}'")
    value = doc[column]
    if not isinstance(value, str):
        raise TaskDataError(row.where, f"column '{column}': expected text, found "
                                       f"{'nothing' if value is None else type(value).__name__}")
    return value


def image(value: Any, row: Row, column: str) -> Image.Image:
    """An RGB image from a row value: base64 text (TSV) or whatever `images.decode` takes."""
    if isinstance(value, str):
        return images.from_base64(value, row.where, column)
    return images.decode(value, row.where, column)


def lazy_images(row: Row, cells: Sequence[tuple[Any, str]]) -> images.LazyImages:
    """The images of (value, column) cells, each decoded by `image` when first looked at."""
    return images.LazyImages([lambda value=value, column=column: image(value, row, column)
                              for value, column in cells])


def option_columns(values: dict[str, str]) -> list[str]:
    """The letters of a VLMEvalKit row's non-empty option columns (A, B, ...), in order."""
    return [letter for letter in map(chr, range(ord("A"), ord("Z") + 1)) if values.get(letter, "") != ""]
