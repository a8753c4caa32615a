"""MMMU: lmms-eval's tasks `mmmu_val` (split validation) and `mmmu_test` (split test, answers
hidden), plus `mmmu_dev` (split dev, which lmms-eval ships no task for; it gets the val settings),
and the submission file the MMMU evaluation server takes for the test split.

Prompt (`construct_prompt`, default kwargs): a multiple-choice question is followed by a newline,
one "A. <option>" line per option (joined by newlines), a blank line and "Answer with the option's
letter from the given choices directly."; any other question by a blank line and "Answer the
question using a single word or phrase.". The `<image k>` placeholders stay in the text.
Images (`mmmu_doc_to_visual`): the distinct `image_k` named by the placeholders anywhere in the
prompt (options included), sorted by name. Generation: 128 new tokens (512 for test), greedy.

From VLMEvalKit's TSVs (MMMU_DEV_VAL.tsv with a `split` column, MMMU_TEST.tsv) the options are the
non-empty option columns A, B, ..., written back as the list literal lmms-eval's `options` column
holds; a row without options is an open question; its k-th image is `image_k`. The id is the TSV's
`id` column, which holds the official ids ("validation_Geography_15"; so in the file VLMEvalKit
serves today, MD5 585e8ad75e73f75dcad265dfd0417d64); a file without usable ids gets
`<split>_<category>_<index>` from its `split` (the task's split when absent), `category` and
`index` columns, and one without a `category` either is refused, since MMMU is scored per subject.
"""

from __future__ import annotations

import ast
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

from omnivision.json_files import write_json
from omnivision.eval import mmmu_ids
from omnivision.eval.tasks.base import Generation, Row, Sample, TaskDataError
from omnivision.eval.tasks.benchmark import BenchmarkTask, lazy_images, option_columns, text
from omnivision.eval.tasks.source import DataSource

MULTIPLE_CHOICE_PROMPT = "Answer with the option's letter from the given choices directly."
OPEN_PROMPT = "Answer the question using a single word or phrase."
_PLACEHOLDER = re.compile(r"<image (\d+)>")


def build_prompt(question: str, question_type: str, options: list[str]) -> str:
    if question_type == "multiple-choice":
        lines = "\n".join(f"{chr(ord('A') + i)}. {option}" for i, option in enumerate(options))
        return f"{question}\n{lines}\n\n{MULTIPLE_CHOICE_PROMPT}"
    return f"{question}\n\n{OPEN_PROMPT}"


def image_columns(prompt: str) -> list[str]:
    """The `image_k` columns the prompt's placeholders name, distinct and sorted by name."""
    return sorted({f"image_{k}" for k in _PLACEHOLDER.findall(prompt)})


def parse_options(options: str, row: Row) -> list[str]:
    """The option list stored as a Python list literal, as lmms-eval reads it."""
    try:
        parsed = ast.literal_eval(options)
    except (ValueError, SyntaxError) as e:
        raise TaskDataError(row.where, "column 'options': not a Python list literal") from e
    if not isinstance(parsed, list) or not all(isinstance(x, str) for x in parsed):
        raise TaskDataError(row.where, "column 'options': expected a list of strings")
    return parsed


def tsv_id(row: Row, split: str) -> str:
    """The question id of a VLMEvalKit MMMU row (see the module docstring)."""
    values = row.values
    given = values.get("id") or ""
    if mmmu_ids.subject(given) is not None:
        return given
    category = values.get("category") or ""
    if not category.strip():
        found = f"'id' {given!r}" if given else "no 'id' column value"
        raise TaskDataError(row.where, f"{found}, and no 'category' to build an id like "
                                       f"'validation_Art_Theory_12' from (MMMU is scored per subject)")
    return mmmu_ids.build_id(values.get("split") or split, category, values["index"])


@dataclass(frozen=True)
class MMMUTask(BenchmarkTask):
    tsv_split: str | None = None  # the `split` value kept from MMMU_DEV_VAL.tsv; None keeps all

    def doc_from_tsv(self, row: Row) -> dict[str, Any] | None:
        values = row.values
        if self.tsv_split is not None and values["split"] != self.tsv_split:
            return None
        options = [values[letter] for letter in option_columns(values)]
        question_type = values.get("question_type") or ("multiple-choice" if options else "open")
        doc = {"id": tsv_id(row, self.source.split), "question": values["question"],
               "options": repr(options), "question_type": question_type,
               "answer": values.get("answer") or None}
        doc.update({f"image_{k}": b64 for k, b64 in enumerate(values["image"], start=1)})
        return doc

    def sample(self, doc: dict[str, Any], row: Row) -> Sample:
        sample_id, question = text(doc, "id", row), text(doc, "question", row)
        question_type, options = text(doc, "question_type", row), text(doc, "options", row)
        parsed = parse_options(options, row) if question_type == "multiple-choice" else []
        prompt = build_prompt(question, question_type, parsed)
        columns = image_columns(prompt)
        for column in columns:
            if doc.get(column) is None:
                raise TaskDataError(row.where, f"the prompt names <{column.replace('_', ' ')}> "
                                               f"but column '{column}' holds no image")
        return Sample(self.name, sample_id, lazy_images(row, [(doc[c], c) for c in columns]), prompt,
                      self.generation,
                      {"id": sample_id, "question_type": question_type, "options": options,
                       "answer": doc.get("answer"), "subject": mmmu_ids.subject(sample_id)})


def _task(name: str, split: str, max_new_tokens: int, tsv_file: str, tsv_split: str | None) -> MMMUTask:
    has_answers = split != "test"
    return MMMUTask(name, Generation(max_new_tokens=max_new_tokens),
                    DataSource("MMMU", None, split, tsv_file),
                    ("id", "question", "options", "question_type") + (("answer",) if has_answers else ()),
                    ("question",) + (("answer", "split") if has_answers else ()), tsv_split)


TASKS = [_task("mmmu_val", "validation", 128, "MMMU_DEV_VAL.tsv", "validation"),
         _task("mmmu_dev", "dev", 128, "MMMU_DEV_VAL.tsv", "dev"),
         _task("mmmu_test", "test", 512, "MMMU_TEST.tsv", None)]


class SubmissionError(ValueError):
    """Answers that do not make a valid MMMU submission file."""


Answer = Union[str, Sequence[Union[str, float]]]
"""A multiple-choice letter, or an open answer: its text or the list of candidates the official
open-answer parse reads out of it."""


def _is_answer(value: object) -> bool:
    if isinstance(value, str):
        return True
    return isinstance(value, (list, tuple)) and all(
        isinstance(v, str) or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in value)


def write_submission(answers: Mapping[str, Answer], path: str | os.PathLike,
                     expected_ids: Iterable[str] | None = None) -> Path:
    """Write the MMMU evaluation server's submission file: one JSON object mapping each question
    id to its answer (see `Answer`).

    With `expected_ids` (e.g. the ids of all `mmmu_test` samples) missing and unknown ids are
    refused. Returns the path written.
    """
    bad = [qid for qid, answer in answers.items() if not isinstance(qid, str) or not _is_answer(answer)]
    if bad:
        raise SubmissionError(f"answers must map question ids to text or a list of candidates; "
                              f"not so for {bad[:3]}")
    if expected_ids is not None:
        expected = set(expected_ids)
        missing, unknown = sorted(expected - answers.keys()), sorted(answers.keys() - expected)
        if missing or unknown:
            raise SubmissionError(f"{len(missing)} question(s) without an answer {missing[:3]}, "
                                  f"{len(unknown)} unknown id(s) {unknown[:3]}")
    write_json(path, dict(answers))
    return Path(path)
