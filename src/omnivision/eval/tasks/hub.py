"""Reading one split of a dataset straight from the Hugging Face hub with `datasets`.

A data directory written `hf://ORG` (for instance `hf://lmms-lab` or `hf://lmms-lab-encoder`, where
lmms-eval's datasets moved in 2026) makes every task load `ORG/<its dataset>`; `hf://ORG/NAME`
names the dataset itself. `datasets` is optional and imported only here; it decodes images to PIL.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from omnivision.eval.tasks.base import Row, TaskDataError

PREFIX = "hf://"


def is_hub(data_dir: object) -> bool:
    return isinstance(data_dir, str) and data_dir.startswith(PREFIX)


def repo_id(data_dir: str, dataset: str) -> str:
    """`ORG/NAME` for a task whose dataset is called `dataset` (e.g. "POPE")."""
    name = data_dir[len(PREFIX):].strip("/")
    if not name:
        raise TaskDataError(data_dir, f"expected {PREFIX}ORG or {PREFIX}ORG/NAME")
    return name if "/" in name else f"{name}/{dataset}"


def iter_rows(repo: str, config: str | None, split: str, required: Sequence[str]) -> Iterator[Row]:
    """Rows of `repo` (config, split) in order; raises `TaskDataError` without `datasets`."""
    where = f"{PREFIX}{repo} ({config or 'default'}, {split})"
    try:
        import datasets
    except ImportError as e:
        raise TaskDataError(where, "reading a hub dataset needs the `datasets` package "
                                   "(pip install datasets); or download the files and pass "
                                   "their folder") from e
    table = datasets.load_dataset(repo, config, split=split)
    missing = [c for c in required if c not in table.column_names]
    if missing:
        raise TaskDataError(where, f"missing column {', '.join(map(repr, missing))}")
    for n, values in enumerate(table):
        yield Row(f"{where}: row {n}", dict(values), "hf", n)
