"""Minimal-edit preference pairs: the model answers, a teacher corrects, filters keep small edits.

For each prompt the current model answers (greedy); the teacher returns its smallest correction. A
pair is kept when the correction differs from the answer and the normalised edit distance between
them (Levenshtein over characters, divided by the longer length) is at most `max_edit`; the
corrected answer is `chosen` and the model's own answer `rejected`. Every dropped item is counted
by reason: `unchanged`, `too_far`, `teacher_failed`, `empty_answer`, and `special_tokens` for
answers holding chat-template token text (`<|...|>`), which cannot be encoded as training text.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Sequence

from omnivision.data.records import PreferencePair
from omnivision.train.teachers import Teacher, TeacherItem


_SPECIAL = re.compile(r"<\|[^|<>]*\|>")


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insertions, deletions, substitutions), O(len(a)*len(b))."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def normalised_edit_distance(a: str, b: str) -> float:
    longest = max(len(a), len(b))
    return 0.0 if longest == 0 else edit_distance(a, b) / longest


@dataclass
class PairSource:
    image: str | None
    """Image path as it will be written in the pairs file (relative to the image folder)."""
    prompt: str
    reference: str | None = None


@dataclass
class PairsResult:
    pairs: list[PreferencePair]
    dropped: Counter = field(default_factory=Counter)


def make_pairs(sources: Sequence[PairSource], answer: Callable[[Sequence[PairSource]], list[str]],
               teacher: Teacher, max_edit: float = 0.5,
               image_url: Callable[[PairSource], str | None] | None = None, batch: int = 32) -> PairsResult:
    """Answer `batch` sources at a time with `answer` (one answer per source, in order), correct
    them with `teacher`, keep the minimal edits."""
    if not 0 < max_edit <= 1:
        raise ValueError(f"max_edit must be in (0, 1], got {max_edit}")
    if batch < 1:
        raise ValueError(f"batch must be at least 1, got {batch}")
    result = PairsResult([])
    for start in range(0, len(sources), batch):
        chunk = sources[start:start + batch]
        answers = answer(chunk)
        if len(answers) != len(chunk):
            raise ValueError(f"answer() returned {len(answers)} answers for {len(chunk)} sources")
        items = [TeacherItem(s.prompt, a, image_url(s) if image_url else None, s.reference)
                 for s, a in zip(chunk, answers)]
        for source, given, fixed in zip(chunk, answers, teacher.correct(items)):
            if fixed is None:
                result.dropped["teacher_failed"] += 1
            elif not given.strip():
                result.dropped["empty_answer"] += 1
            elif _SPECIAL.search(given) or _SPECIAL.search(fixed):
                result.dropped["special_tokens"] += 1
            elif fixed.strip() == given.strip():
                result.dropped["unchanged"] += 1
            elif normalised_edit_distance(given.strip(), fixed.strip()) > max_edit:
                result.dropped["too_far"] += 1
            else:
                result.pairs.append(PreferencePair(image=source.image, prompt=source.prompt,
                                                   chosen=fixed.strip(), rejected=given.strip()))
    return result
