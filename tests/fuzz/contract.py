"""The contract every fuzz case is judged by, and the names of its outcomes.

A command ends in an answer (exit status 0) or in a refusal: exactly one stderr line `error: ...`, of
at most `MAX_ERROR_CHARS` characters, and exit status 2. A request ends in an answer (2xx) or in a
4xx with OpenAI's error envelope `{"error": {"message": str, "type": str, ...}}`, its message no
longer than `MAX_ERROR_CHARS` either. Anything else is a failure, named by its kind.
"""

from __future__ import annotations

import json

ANSWERED, REFUSED = "answered", "refused"
FAILURES = {
    "traceback": "an exception escaped the entry point",
    "memory": "an allocation went past the memory limit",
    "hang": "no result within the time limit (the worker was killed)",
    "died": "the worker process died",
    "modified": "an input file was changed",
    "contract": "the exit status or stderr broke the one-line error contract",
    "server-error": "a 5xx answer",
    "envelope": "a 4xx answer without OpenAI's error envelope",
}

MAX_ERROR_CHARS = 1000
"""A refusal a person can read: a message quoting a whole damaged file is a failure too."""

_OUT_OF_MEMORY = ("MemoryError", "can't allocate memory", "Cannot allocate memory")


def _out_of_memory(text: str) -> bool:
    return any(s in text for s in _OUT_OF_MEMORY)


def judge_command(result: dict) -> tuple[str, str]:
    """The outcome of one `omnivision` call (the worker's result) and a line saying why."""
    if result["exception"]:
        kind = "memory" if _out_of_memory(result["exception_type"] + result["exception"]) else "traceback"
        return kind, result["exception"].strip().splitlines()[-1]
    rc, err = result["rc"], result["stderr"]
    if "Traceback" in err:
        return "traceback", err[-300:]
    if rc == 0:
        return ANSWERED, ""
    lines = err.splitlines()
    if rc == 2 and len(lines) == 1 and lines[0].startswith("error: "):
        if len(lines[0]) > MAX_ERROR_CHARS:
            return "contract", f"an error line of {len(lines[0])} characters: {lines[0][:300]}"
        return ("memory" if _out_of_memory(lines[0]) else REFUSED), lines[0]
    return "contract", f"exit status {rc}, stderr {err[-300:]!r}"


def judge_request(result: dict) -> tuple[str, str]:
    """The outcome of one `POST /v1/chat/completions` (the worker's result)."""
    if result["exception"]:
        return "traceback", result["exception"].strip().splitlines()[-1]
    status, text = result["status"], result["response"]
    if status >= 500:
        return "server-error", f"{status}: {text[:300]}"
    if 200 <= status < 300:
        return ANSWERED, ""
    if 400 <= status < 500 and _is_envelope(text):
        message = json.loads(text)["error"]["message"]
        if len(message) > MAX_ERROR_CHARS:
            return "contract", f"{status}: an error message of {len(message)} characters: {message[:200]}"
        return REFUSED, f"{status}: {message[:200]}"
    return ("envelope" if 400 <= status < 500 else "contract"), f"{status}: {text[:300]}"


def _is_envelope(text: str) -> bool:
    try:
        error = json.loads(text)["error"]
        return isinstance(error["message"], str) and isinstance(error["type"], str)
    except (ValueError, KeyError, TypeError):
        return False
