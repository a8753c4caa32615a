"""The records every benchmark task shares: generation settings (with the one rule for when a task
samples and the one way an answer is cut at its stop strings), one prepared sample, one raw row
read from a data file, the `Task` protocol, the check of a sample limit, and the error raised for
bad or missing data.

A task turns the rows of a benchmark's standard files into `Sample`s: the images, the prompt text
lmms-eval's default `doc_to_text` builds, the generation settings of lmms-eval's default task YAML,
and the benchmark's own fields that the scorers read.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Union

from PIL import Image

DataDir = Union[str, Path]
"""A local folder holding the benchmark files, or `hf://ORG` / `hf://ORG/NAME` for the hub."""

DEFAULT_UNTIL = ("\n\n",)
"""lmms-eval's stop string for a `generate_until` task whose YAML names none (its few-shot
delimiter)."""


class TaskDataError(ValueError):
    """Missing or bad benchmark data; the message is one line, `{where}: {problem}`, where `where`
    names the folder, the file, or the file and row."""

    def __init__(self, where: str, problem: str) -> None:
        self.where = where
        self.problem = " ".join(problem.splitlines())
        super().__init__(f"{where}: {self.problem}")

    def __reduce__(self):  # picklable, e.g. across worker processes
        return TaskDataError, (self.where, self.problem)


@dataclass(frozen=True)
class Generation:
    """Generation settings of a task, as lmms-eval passes them to the model (`gen_kwargs`).

    `top_p` is None where the task YAML does not set it. Settings a YAML leaves out take the values
    lmms-eval's model wrappers default to: greedy decoding (temperature 0, no sampling, one beam).
    """

    max_new_tokens: int
    temperature: float = 0.0
    do_sample: bool = False
    top_p: float | None = None
    num_beams: int = 1
    until: tuple[str, ...] = DEFAULT_UNTIL

    @property
    def samples(self) -> bool:
        """Whether answers are sampled rather than greedy: only when `do_sample` is set and the
        temperature is above 0. lmms-eval's wrappers pass `do_sample` through, so MM-Vet's YAML
        (temperature 0.2, do_sample false) decodes greedily."""
        return self.do_sample and self.temperature > 0

    def as_kwargs(self) -> dict[str, Any]:
        """The settings as an lmms-eval style `gen_kwargs` dict (`until` as a list)."""
        out: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "temperature": self.temperature,
                               "do_sample": self.do_sample, "num_beams": self.num_beams,
                               "until": list(self.until)}
        if self.top_p is not None:
            out["top_p"] = self.top_p
        return out


def cut_at_stop(text: str, until: Sequence[str]) -> str:
    """`text` up to the earliest of the stop strings (an empty one stops nothing), stripped, as
    lmms-eval's model wrappers return an answer."""
    ends = [at for s in until if s and (at := text.find(s)) >= 0]
    return (text[:min(ends)] if ends else text).strip()


def check_limit(limit: object) -> None:
    """A sample limit is None (all samples) or a whole number >= 0; anything else raises."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ValueError(f"limit must be a whole number >= 0 or None, got {limit!r}")


@dataclass(frozen=True)
class Sample:
    """One benchmark question ready for the model.

    `images` are RGB PIL images in the order lmms-eval's `doc_to_visual` returns them (tasks pass
    `images.LazyImages`, so an image is decoded only when a model looks at it); `prompt` is
    the exact text of lmms-eval's default `doc_to_text` (image placeholders such as MMMU's
    `<image 1>` stay in the text); `fields` holds the benchmark's own fields for the scorers.
    """

    task: str
    id: str
    images: Sequence[Image.Image]
    prompt: str
    generation: Generation
    fields: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Row:
    """One raw row of a data file.

    `where` names the file and row for error messages; `layout` is "hf" for the Hugging Face
    `datasets` column layout (local parquet shards or the hub) and "tsv" for a VLMEvalKit TSV;
    `ordinal` is the 0-based position of the row in its split (lmms-eval's `doc_id`).
    """

    where: str
    values: dict[str, Any]
    layout: str
    ordinal: int


class Task(Protocol):
    """A benchmark task: where its data lives and how its samples are built."""

    name: str
    generation: Generation

    @property
    def data_files(self) -> str:
        """Where in DATA_DIR the task looks for its files, in words."""
        ...

    def samples(self, data_dir: DataDir, limit: int | None = None) -> Iterator[Sample]:
        """The task's samples in file order, at most `limit` of them; raises `TaskDataError`."""
        ...
