"""Quantized native checkpoints: what config.json records about the quantization, and the rebuild.

`save_native` writes `{"quantization": {"scheme", "parts", "skipped", "head", "int4_layout"}}` beside the model config when
the model carries a `quantization` summary (set by `quantize_model`); the int8/uint8 buffers travel in
`model.safetensors` like any tensor. Loading builds the plain model, then `apply_recorded` runs
`quantize_model` with the recorded scheme and parts on it (on the `meta` device that costs nothing),
which gives exactly the saved layer structure, so the state dict then loads strictly.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from torch import nn

from omnivision.quantize.apply import quantize_model
from omnivision.quantize.scheme import SchemeError
from omnivision.weights.errors import CheckpointError

KEY = "quantization"
INT4_LAYOUT = "blocked64"
"""The int4 code layout written (`quantize.int4_packing`); earlier int4 files were all row-major."""


def quantization_metadata(model: nn.Module) -> dict:
    """`{"quantization": {...}}` for a quantized model's config.json, `{}` for a plain one."""
    summary = getattr(model, "quantization", None)
    if summary is None:
        return {}
    return {KEY: {"scheme": summary.scheme, "parts": list(summary.parts), "skipped": list(summary.skipped),
                  "head": summary.head, "int4_layout": INT4_LAYOUT}}


def recorded_quantization(config_file: str | os.PathLike) -> dict | None:
    """The `quantization` entry of a checkpoint's config.json (None when the model is not quantized)."""
    config_file = Path(config_file)
    try:
        meta = json.loads(config_file.read_text())
    except (OSError, ValueError, RecursionError) as e:  # RecursionError: nesting deeper than json parses
        raise CheckpointError(config_file, f"cannot read the config: {e}") from None
    entry = meta.get(KEY) if isinstance(meta, dict) else None
    if entry is None:
        return None
    if not isinstance(entry, dict) or not isinstance(entry.get("scheme"), str) \
            or not isinstance(entry.get("parts"), list) or not isinstance(entry.get("skipped", []), list) \
            or not isinstance(entry.get("head", False), bool):
        raise CheckpointError(config_file, f"{KEY!r} must be an object with a 'scheme' string, a 'parts' "
                                           f"list, a 'skipped' list and a 'head' boolean")
    return entry


def apply_recorded(model: nn.Module, config_file: str | os.PathLike) -> None:
    """Give a freshly built model the quantized layers its checkpoint's config.json records."""
    entry = recorded_quantization(config_file)
    if entry is None:
        return
    if entry["scheme"].startswith("int4") and entry.get("int4_layout") != INT4_LAYOUT:
        # the same tensor shapes in another code order: loading would scramble the weights silently
        raise CheckpointError(config_file, f"{KEY}: int4 codes in an older layout "
                                           f"({entry.get('int4_layout', 'row-major')}); quantize the source again")
    try:
        summary = quantize_model(model, entry["scheme"], tuple(entry["parts"]), head=entry.get("head", False))
    except SchemeError as e:
        raise CheckpointError(config_file, f"{KEY}: {e}") from None
    recorded = entry.get("skipped", [])
    if sorted(summary.skipped) != sorted(recorded):
        # the layer selection rules changed since the save, or the file was edited
        raise CheckpointError(config_file, f"{KEY}: recorded skipped layers {sorted(recorded)[:3]} do not "
                                           f"match the model's {sorted(summary.skipped)[:3]}")
