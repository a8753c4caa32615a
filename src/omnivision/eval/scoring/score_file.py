"""Applying a task's scorer to records: `score_records` scores records that each come with a label
saying where they are from (a file and line, a task and sample id), so that a bad one stops the
run with a `ScoringError` naming its place and the field; `score_file` reads the records of a file
(JSONL, or a JSON array) with their line numbers, scores them, optionally writes them back with
`score` and `parsed` added (every input field kept; written atomically), and returns the aggregate
metrics.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omnivision.json_files import DataError, iter_json_records, write_json_lines
from omnivision.eval.scoring import score_options, scorer_for
from omnivision.eval.scoring.mmmu import RANDOM
from omnivision.eval.scoring.protocol import LMMS_EVAL, FieldError, check_convention


class ScoringError(ValueError):
    """A record the scorer cannot score; the message is one line, `{where}: {problem}`."""

    def __init__(self, where: str, problem: str) -> None:
        self.where, self.problem = where, " ".join(problem.splitlines())
        super().__init__(f"{where}: {self.problem}")

    def __reduce__(self):
        return ScoringError, (self.where, self.problem)


@dataclass(frozen=True)
class FileScore:
    records: list[dict]
    metrics: dict


def score_records(task: str, located: Iterable[tuple[str, Any]], convention: str = LMMS_EVAL,
                  mmmu_fallback: str = RANDOM) -> list[dict]:
    """Each `(where, record)`'s record, copied with `score` and `parsed` set."""
    scorer = scorer_for(task)
    check_convention(convention)
    options = score_options(task, mmmu_fallback)
    out = []
    for where, record in located:
        if not isinstance(record, dict):
            raise ScoringError(where, f"expected a JSON object, got {type(record).__name__}")
        try:
            scored = scorer.score(record, convention, **options)
        except FieldError as e:
            raise ScoringError(where, str(e)) from None
        out.append({**record, "score": scored.score, "parsed": scored.parsed})
    return out


def score_file(task: str, path: str | os.PathLike, convention: str = LMMS_EVAL,
               out: str | os.PathLike | None = None, mmmu_fallback: str = RANDOM) -> FileScore:
    if out is not None and Path(out).is_dir():
        raise ValueError(f"{out} is a folder; the scored records go to a file "
                         f"(e.g. {Path(out) / 'scored.jsonl'})")
    located = ((f"{path}:{line}", record) for line, record in iter_json_records(path))
    records = score_records(task, located, convention, mmmu_fallback)
    if not records:
        raise DataError(path, 1, "no records to score")
    metrics = scorer_for(task).aggregate(records, convention)
    if out is not None:
        write_json_lines(out, records)
    return FileScore(records, metrics)
