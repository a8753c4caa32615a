"""The record types every dataset file is read into, independent of any file layout.

A record may remember where it was read from (`source`, a `(file, line)` pair) so that a problem
found later, such as a missing image, can still be reported as `file:line: problem`. `source` takes
no part in equality and is never written back to a file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Role = Literal["user", "assistant"]
Source = tuple[str, int]

QTYPES = ("color", "shape", "count", "position", "chart", "pope")
"""Question types of `QAItem`: one per skill, so that accuracy can be reported per skill."""

POPE_STRATEGIES = ("random", "popular", "adversarial")
"""How a POPE negative was sampled (see `omnivision.data.pope`)."""


@dataclass
class Conversation:
    """A multi-turn chat about at most one image.

    `turns` are `(role, text)` pairs, user first, roles alternating, ending with the assistant. When
    `image` is set it is attached to the first user turn; the text holds no `<image>` marker.
    `image` is a path relative to the dataset's image folder.
    """

    id: str
    image: str | None
    turns: list[tuple[Role, str]]
    source: Source | None = field(default=None, compare=False, repr=False, kw_only=True)


@dataclass
class CaptionPair:
    """An image and its caption: the alignment stage's data."""

    image: str
    caption: str
    source: Source | None = field(default=None, compare=False, repr=False, kw_only=True)


@dataclass
class PreferencePair:
    """A prompt (about an optional image) with a preferred and a dispreferred answer, for DPO."""

    image: str | None
    prompt: str
    chosen: str
    rejected: str
    source: Source | None = field(default=None, compare=False, repr=False, kw_only=True)


@dataclass
class QAItem:
    """One evaluation question with its short canonical answer.

    `qtype` is one of `QTYPES`. `extra` holds details: for "pope", `strategy` (one of
    `POPE_STRATEGIES`) and `object` (such as "red circle"); for "chart", `kind` ("tallest",
    "shortest" or "value"); for "count", `target` (a shape, or "object" for all objects).
    """

    id: str
    image: str | None
    question: str
    answer: str
    qtype: str
    extra: dict[str, Any] = field(default_factory=dict)
    source: Source | None = field(default=None, compare=False, repr=False, kw_only=True)
