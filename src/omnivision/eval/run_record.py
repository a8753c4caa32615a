"""`<out>/<task>/run.json`: what answered a task's predictions (the model's description) and with
which generation settings. It is written before the first prediction, and every later run into the
same folder checks it: a rerun resumes from the predictions already there, so answers of another
model or of other settings would be mixed in silently. A mismatch raises `RunMismatchError`.

Parts of a description that may change without changing the answers are not compared: the name
the server reports (`served_model`, known only after a reply), the device (each torchrun process
has its own), and the seed of a task that does not sample.
"""

from __future__ import annotations

import json
from pathlib import Path

from omnivision.json_files import write_json
from omnivision.eval.tasks import Generation

RUN_NAME = "run.json"
_VOLATILE = ("served_model", "device")


class RunMismatchError(ValueError):
    """A task folder holds predictions of another model or of other generation settings."""


def run_identity(model_description: dict, generation: Generation) -> dict:
    """What must stay the same for predictions to be resumed, as it is stored in run.json."""
    model = {k: v for k, v in model_description.items() if k not in _VOLATILE}
    if not generation.samples:
        model.pop("seed", None)
    # through JSON, so that it compares equal to what is read back (tuples become lists)
    return json.loads(json.dumps({"model": model, "generation": generation.as_kwargs()}))


def check_or_record(folder: Path, identity: dict) -> None:
    """Write `folder/run.json` when it is missing; otherwise refuse an identity that differs."""
    path = folder / RUN_NAME
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        write_json(path, identity)
        return
    how = f"use another --out, or delete {folder} to start this task afresh"
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RunMismatchError(f"{path}: cannot read the record of the earlier run ({e}); {how}") from None
    changed = _differences(stored, identity)
    if changed:
        raise RunMismatchError(f"{folder} holds predictions of another model or other settings "
                               f"({'; '.join(changed)}); {how}")


def _differences(old: object, new: object, where: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        return [d for key in sorted(old.keys() | new.keys(), key=str)
                for d in _differences(old.get(key), new.get(key), f"{where}.{key}" if where else key)]
    return [] if old == new else [f"{where or 'run'}: {old!r} then, {new!r} now"]
