"""The MM-Vet grader prompt: the few-shot table the judge completes, read at run time and never
kept in this repository.

`load_grader_prompt` reads it from a file the user names (byte for byte), or else from the
installed lmms-eval (`lmms_eval.tasks.mmvet.utils.MM_VET_PROMPT`), and records where it came from
and its SHA-256 for the run log.
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path

from omnivision.eval.versions import package_version

LMMS_EVAL_PACKAGE = "lmms_eval"
LMMS_EVAL_MODULE = "lmms_eval.tasks.mmvet.utils"
LMMS_EVAL_PROMPT_NAME = "MM_VET_PROMPT"


class MMVetError(ValueError):
    """Bad MM-Vet setup: no usable grader prompt, bad judge settings, grades that do not match."""


@dataclass(frozen=True)
class GraderPrompt:
    text: str
    source: str
    """Where the text came from (file path, or lmms-eval version and module), for the run log."""

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()


def load_grader_prompt(path: str | Path | None = None) -> GraderPrompt:
    """The grader prompt from `path` when given (used byte for byte), else from lmms-eval."""
    if path is not None:
        return _prompt_from_file(Path(path))
    prompt = _prompt_from_lmms_eval()
    if prompt is None:
        raise MMVetError(
            "no MM-Vet grader prompt: pass a prompt file (--judge-prompt FILE, holding e.g. the "
            "`prompt` of yuweihao/MM-Vet mm-vet_evaluator.py), or install lmms-eval "
            f"(pip install lmms-eval), whose {LMMS_EVAL_MODULE}.{LMMS_EVAL_PROMPT_NAME} is used")
    return prompt


def _prompt_from_file(path: Path) -> GraderPrompt:
    try:
        text = path.read_bytes().decode("utf-8")  # bytes, so line endings stay as written
    except OSError as e:
        raise MMVetError(f"{path}: cannot read the grader prompt ({e.strerror or e})") from None
    except UnicodeDecodeError as e:
        raise MMVetError(f"{path}: the grader prompt is not UTF-8 text (byte {e.start})") from None
    if not text.strip():
        raise MMVetError(f"{path}: the grader prompt file is empty")
    return GraderPrompt(text, f"file {path}")


def _prompt_from_lmms_eval() -> GraderPrompt | None:
    """None when lmms-eval is not installed. The constant is read from the module's source when
    it is a plain string literal, because importing the module in recent lmms-eval versions also
    builds its own judge client (which wants that client's API settings); otherwise it is imported."""
    package = sys.modules.get(LMMS_EVAL_PACKAGE)
    spec = package.__spec__ if package is not None else importlib.util.find_spec(LMMS_EVAL_PACKAGE)
    if package is None and spec is None:
        return None
    source = _module_source(spec)
    text = _string_constant(source, LMMS_EVAL_PROMPT_NAME) if source else None
    if text is None:
        text = _imported_constant()
    if not text.strip():
        raise MMVetError(f"{LMMS_EVAL_MODULE}.{LMMS_EVAL_PROMPT_NAME} is empty")
    version = package_version("lmms_eval") or "(version unknown)"
    return GraderPrompt(text, f"lmms_eval {version}: {LMMS_EVAL_MODULE}.{LMMS_EVAL_PROMPT_NAME}")


def _module_source(spec) -> Path | None:
    roots = (spec.submodule_search_locations or []) if spec is not None else []
    for root in roots:
        candidate = Path(root, "tasks", "mmvet", "utils.py")
        if candidate.is_file():
            return candidate
    return None


def _string_constant(source: Path, name: str) -> str | None:
    try:
        tree = ast.parse(source.read_bytes(), filename=str(source))
    except (OSError, SyntaxError, ValueError):
        return None
    for node in tree.body:
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AnnAssign):
            targets = [node.target]
        else:
            continue
        if (any(isinstance(t, ast.Name) and t.id == name for t in targets)
                and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)):
            return node.value.value
    return None


def _imported_constant() -> str:
    try:
        module = importlib.import_module(LMMS_EVAL_MODULE)
    except Exception as e:  # any failure inside a third-party import: report it, with the way out
        raise MMVetError(f"cannot import {LMMS_EVAL_MODULE} ({type(e).__name__}: {e}); "
                         "pass the grader prompt as a file instead") from None
    text = getattr(module, LMMS_EVAL_PROMPT_NAME, None)
    if not isinstance(text, str):
        raise MMVetError(f"{LMMS_EVAL_MODULE} has no string {LMMS_EVAL_PROMPT_NAME}; "
                         "pass the grader prompt as a file instead")
    return text
