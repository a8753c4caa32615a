"""Validation of a .safetensors header before the file is loaded.

Owns the checks that make a safetensors file safe to memory-map: header length, JSON shape, known
dtypes, shapes, and data offsets that match each tensor's size, stay inside the file and tile the
data section exactly (no overlaps, gaps or trailing bytes, as the safetensors library requires).
Loading the tensors themselves is left to the `safetensors` package.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

from .errors import CheckpointError

MAX_HEADER_BYTES = 100 * 2**20
METADATA_KEY = "__metadata__"

# Bits per element for every dtype the safetensors format defines.
DTYPE_BITS: dict[str, int] = {
    "BOOL": 8,
    "F4": 4,
    "F6_E2M3": 6,
    "F6_E3M2": 6,
    "U8": 8,
    "I8": 8,
    "F8_E5M2": 8,
    "F8_E4M3": 8,
    "F8_E8M0": 8,
    "I16": 16,
    "U16": 16,
    "F16": 16,
    "BF16": 16,
    "I32": 32,
    "U32": 32,
    "F32": 32,
    "C64": 64,
    "F64": 64,
    "I64": 64,
    "U64": 64,
}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _read_header(path: Path) -> tuple[dict[str, Any], int]:
    """The parsed JSON header and the size of the data section that follows it."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < 8:
                raise CheckpointError(path, f"file is {size} bytes; a safetensors file needs at least 8")
            (header_len,) = struct.unpack("<Q", f.read(8))
            if header_len > MAX_HEADER_BYTES:
                raise CheckpointError(path, f"header length {header_len} is over the limit of {MAX_HEADER_BYTES} bytes")
            if 8 + header_len > size:
                raise CheckpointError(path, f"header length {header_len} runs past the end of the file ({size} bytes)")
            raw = f.read(header_len)
    except OSError as e:
        raise CheckpointError(path, f"cannot read: {e.strerror or e}") from None
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicate_keys)
    except UnicodeDecodeError as e:
        raise CheckpointError(path, f"header is not valid UTF-8 ({e.reason} at byte {e.start})") from None
    except (ValueError, RecursionError) as e:
        raise CheckpointError(path, f"header is not valid JSON: {e}") from None
    if not isinstance(header, dict):
        raise CheckpointError(path, f"header is a JSON {type(header).__name__}, not an object")
    return header, size - 8 - header_len


def _check_metadata(path: Path, metadata: Any) -> None:
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CheckpointError(path, f"{METADATA_KEY} must be an object mapping strings to strings")


def _check_entry(path: Path, name: str, entry: Any, data_size: int) -> tuple[int, int]:
    """Checks one tensor entry; returns its (begin, end) within the data section."""
    if not isinstance(entry, dict):
        raise CheckpointError(path, f"tensor {name!r}: entry is not an object")
    for field in ("dtype", "shape", "data_offsets"):
        if field not in entry:
            raise CheckpointError(path, f"tensor {name!r}: missing {field!r}")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str) or dtype not in DTYPE_BITS:
        raise CheckpointError(path, f"tensor {name!r}: unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        raise CheckpointError(path, f"tensor {name!r}: shape {shape!r} is not a list of non-negative integers")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) for o in offsets)):
        raise CheckpointError(path, f"tensor {name!r}: data_offsets {offsets!r} is not [begin, end]")
    begin, end = offsets
    if not 0 <= begin <= end:
        raise CheckpointError(path, f"tensor {name!r}: data_offsets [{begin}, {end}] are not 0 <= begin <= end")
    numel = 1
    for d in shape:
        numel *= d
    bits = numel * DTYPE_BITS[dtype]
    if bits % 8:
        raise CheckpointError(path, f"tensor {name!r}: {numel} elements of {dtype} do not fill whole bytes")
    if end - begin != bits // 8:
        raise CheckpointError(
            path, f"tensor {name!r}: data_offsets [{begin}, {end}] hold {end - begin} bytes, "
            f"but shape {shape} of {dtype} needs {bits // 8}"
        )
    if end > data_size:
        raise CheckpointError(
            path, f"tensor {name!r} data runs past the end of the file (end {end} > data section of {data_size} bytes)"
        )
    return begin, end


def _check_tiling(path: Path, spans: list[tuple[int, int, str]], data_size: int) -> None:
    """The tensors cover the data section exactly once, in some order."""
    position, previous = 0, None
    for begin, end, name in sorted(spans):
        if begin < position:
            raise CheckpointError(path, f"tensors {previous!r} and {name!r} overlap (byte {begin} < {position})")
        if begin > position:
            raise CheckpointError(path, f"gap of {begin - position} unused bytes before tensor {name!r} at {position}")
        position, previous = end, name
    if position != data_size:
        raise CheckpointError(path, f"{data_size - position} trailing bytes after the last tensor")


def check_safetensors(path: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """Validate the file's header and return it without `__metadata__`. Raises CheckpointError."""
    path = Path(path)
    header, data_size = _read_header(path)
    entries: dict[str, dict[str, Any]] = {}
    spans: list[tuple[int, int, str]] = []
    for name, entry in header.items():
        if name == METADATA_KEY:
            _check_metadata(path, entry)
            continue
        begin, end = _check_entry(path, name, entry, data_size)
        spans.append((begin, end, name))
        entries[name] = entry
    _check_tiling(path, spans, data_size)
    return entries
