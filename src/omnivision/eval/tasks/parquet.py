"""Reading one split of a Hugging Face dataset from its parquet shards in a local folder.

Two layouts are recognised, both as a download of the dataset repository leaves them
(`huggingface-cli download lmms-lab/POPE --repo-type dataset --local-dir DATA/POPE`):

- `push_to_hub` files: `<repo>/data/<split>-00000-of-00003.parquet` for the default config and
  `<repo>/<config>/<split>-*.parquet` for a named one;
- the hub's parquet-converter branch (`refs/convert/parquet`): `<repo>/<config>/<split>/*.parquet`,
  with config `default` for the default config.

Shards are read in name order, in small record batches, so that a `limit` stops early and a large
split never sits in memory at once. Images stay as the `{"bytes", "path"}` structs `datasets`
writes. pyarrow comes from the `eval` extra and is imported only here, when a file is read.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

from omnivision.eval.tasks.base import Row, TaskDataError

_BATCH_ROWS = 16  # rows per record batch: MMMU rows carry up to 7 images


def shard_patterns(config: str | None, split: str) -> list[str]:
    """Glob patterns, relative to the dataset folder, where a split's shards may lie."""
    return [f"{config or 'data'}/{split}-*.parquet", f"{config or 'default'}/{split}/*.parquet"]


def find_shards(folder: Path, config: str | None, split: str) -> list[Path]:
    """The shard files of a split in `folder` (first layout that has any), or [] when none."""
    for pattern in shard_patterns(config, split):
        shards = sorted(folder.glob(pattern))
        if shards:
            return shards
    return []


def iter_rows(shards: Sequence[Path], required: Sequence[str]) -> Iterator[Row]:
    """Rows of the shards in order, each a dict of all columns; raises `TaskDataError` when a
    shard cannot be read or lacks a required column."""
    if not shards:
        return
    pq = _pyarrow_parquet(shards[0])
    ordinal = 0
    for path in shards:
        try:
            file = pq.ParquetFile(path)
        except Exception as e:  # ArrowInvalid, OSError, ...
            raise TaskDataError(str(path), f"not a readable parquet file ({e})") from e
        _check_columns(path, file.schema_arrow.names, required)
        n = 0
        for batch in file.iter_batches(batch_size=_BATCH_ROWS):
            for values in batch.to_pylist():
                yield Row(f"{path}: row {n}", values, "hf", ordinal)
                n += 1
                ordinal += 1


def _check_columns(path: Path, names: Sequence[str], required: Sequence[str]) -> None:
    missing = [c for c in required if c not in names]
    if missing:
        raise TaskDataError(str(path), f"missing column {', '.join(map(repr, missing))} "
                                       f"(has {', '.join(names)})")


def _pyarrow_parquet(first: Path):
    try:
        import pyarrow.parquet as pq
    except ImportError as e:
        raise TaskDataError(str(first), "reading parquet files needs pyarrow: "
                                        "pip install 'omnivision[eval]'") from e
    return pq
