"""MMMU question ids, `<split>_<Subject>_<number>` such as "validation_Art_Theory_12": the one
place that reads the subject out of an id (lmms-eval's `extract_subset_name`: what lies between
the split prefix and the trailing number) and that builds an id from its parts."""

from __future__ import annotations

import re


def subject(question_id: str) -> str | None:
    """The subject in an id ("Art_Theory" for "validation_Art_Theory_12"), else None."""
    split = question_id.split("_")[0]
    match = re.fullmatch(rf"{re.escape(split)}_(.+?)_\d+", question_id)
    return match.group(1) if match else None


def build_id(split: str, subject_name: str, number: str) -> str:
    """An id from its parts; spaces in the subject become underscores ("Art Theory" ->
    "Art_Theory"), as in the official ids."""
    return f"{split}_{'_'.join(subject_name.split())}_{number}"
