"""What a generation slot tells the event loop about a job, in order: `Piece`s of text per choice,
one `Finished` per choice that ran to its end, then `Done` (or `Failed` when generation broke)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Piece:
    index: int
    """Which choice (0..n-1) the text belongs to."""
    text: str
    logprobs: list[dict] = field(default_factory=list)
    """OpenAI `logprobs.content` entries of the tokens behind `text` (empty unless asked for)."""


@dataclass(frozen=True)
class Finished:
    index: int
    reason: str
    """OpenAI's `finish_reason`: "stop" or "length"."""


@dataclass(frozen=True)
class Done:
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class Failed:
    message: str


Event = Piece | Finished | Done | Failed
