"""Where a task's rows come from: lmms-eval's Hugging Face dataset split, read from local parquet
shards or the hub, or else the benchmark's VLMEvalKit TSV.

Inside a local DATA_DIR a task looks, in this order, for
`DATA_DIR/<dataset>/` holding the split's parquet shards (see `parquet.py` for the layouts), and
for `DATA_DIR/<tsv file>`. `<dataset>` is the name of lmms-eval's dataset without its org (`POPE`
for `lmms-lab/POPE`), so a download with `--local-dir DATA_DIR/POPE` lands where it is looked for.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from omnivision.eval.tasks import hub, parquet, tsv
from omnivision.eval.tasks.base import DataDir, Row, TaskDataError

LMMS_ORG = "lmms-lab"  # since lmms-eval PR #1416 (2026-07-30) also mirrored as lmms-lab-encoder


@dataclass(frozen=True)
class DataSource:
    """One split of lmms-eval's dataset `LMMS_ORG/<dataset>` and the matching VLMEvalKit TSV."""

    dataset: str
    config: str | None
    split: str
    tsv_file: str

    def describe(self) -> str:
        """Where the files are looked for, in words (the task's `data_files`)."""
        return f"{self._local('<data>')}; or hf://ORG[/NAME] to load it with `datasets`"

    def _local(self, root: str) -> str:
        shards = " or ".join(f"{root}/{self.dataset}/{p}"
                             for p in parquet.shard_patterns(self.config, self.split))
        return (f"{shards} (HF dataset {LMMS_ORG}/{self.dataset}, config {self.config or 'default'}, "
                f"split {self.split}), else {root}/{self.tsv_file} (VLMEvalKit)")

    def rows(self, data_dir: DataDir, hf_columns: Sequence[str],
             tsv_columns: Sequence[str]) -> Iterator[Row]:
        """The rows of the first source found; raises `TaskDataError` when there is none."""
        if hub.is_hub(data_dir):
            return hub.iter_rows(hub.repo_id(data_dir, self.dataset), self.config, self.split,
                                 hf_columns)
        root = Path(data_dir)
        if not root.is_dir():
            raise TaskDataError(str(root), "no such data folder")
        shards = parquet.find_shards(root / self.dataset, self.config, self.split)
        if shards:
            return parquet.iter_rows(shards, hf_columns)
        table = root / self.tsv_file
        if table.is_file():
            return tsv.iter_rows(table, tsv_columns)
        raise TaskDataError(str(root), f"no data found; looked for {self._local(str(root))}")
