"""The error type for unusable checkpoint files (GGUF, safetensors).

Owns `CheckpointError` only. Its message is one line that names the file and the problem, so the
CLI can print ``error: <message>`` and exit with status 2 without a traceback.
"""

from __future__ import annotations

import os


class CheckpointError(ValueError):
    """A checkpoint file is malformed, truncated, or uses something this project cannot read."""

    def __init__(self, path: str | os.PathLike[str], problem: str) -> None:
        self.path = os.fspath(path)
        self.problem = " ".join(problem.splitlines())  # keep the message on one line
        super().__init__(f"{self.path}: {self.problem}")
