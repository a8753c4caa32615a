"""The error type for unusable checkpoint files (GGUF, safetensors).

Owns `CheckpointError` only. Its message is one short line that names the file and the problem, so
the CLI can print ``error: <message>`` and exit with status 2 without a traceback.
"""

from __future__ import annotations

import os

MAX_PROBLEM_CHARS = 400


def _shortened(text: str, limit: int = MAX_PROBLEM_CHARS) -> str:
    """`text` with its middle cut out when longer than `limit`: a name read from a damaged file can
    run to 64 KiB, and the start (which entry) and the end (what is wrong) are what a reader needs."""
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]} [... {len(text) - 2 * half} characters ...] {text[-half:]}"


class CheckpointError(ValueError):
    """A checkpoint file is malformed, truncated, or uses something this project cannot read."""

    def __init__(self, path: str | os.PathLike[str], problem: str) -> None:
        self.path = os.fspath(path)
        self.problem = _shortened(" ".join(problem.splitlines()))  # one line, of a readable length
        super().__init__(f"{self.path}: {self.problem}")
