"""Writing GGUF files: tensors as F32, F16, Q8_0 or Q4_0 plus typed metadata, atomically.

Owns the choice of GGUF value type for each Python metadata value, the conversion of tensors to
their stored type, and the atomic replace of the output path. The container itself is written by
`gguf.GGUFWriter`; model-specific naming and keys are decided by the callers.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gguf import GGMLQuantizationType, GGUFValueType, GGUFWriter
from gguf import quants

TensorType = str  # "F32" | "F16" | "Q8_0" | "Q4_0"
BLOCK_TYPES = {"Q8_0": GGMLQuantizationType.Q8_0, "Q4_0": GGMLQuantizationType.Q4_0}

_ARCH_KEY = "general.architecture"
_ALIGNMENT_KEY = "general.alignment"
_MAX_DIMS = 4

_NUMPY_VALUE_TYPES: dict[np.dtype[Any], GGUFValueType] = {
    np.dtype(np.uint8): GGUFValueType.UINT8,
    np.dtype(np.int8): GGUFValueType.INT8,
    np.dtype(np.uint16): GGUFValueType.UINT16,
    np.dtype(np.int16): GGUFValueType.INT16,
    np.dtype(np.uint32): GGUFValueType.UINT32,
    np.dtype(np.int32): GGUFValueType.INT32,
    np.dtype(np.float32): GGUFValueType.FLOAT32,
    np.dtype(np.bool_): GGUFValueType.BOOL,
    np.dtype(np.uint64): GGUFValueType.UINT64,
    np.dtype(np.int64): GGUFValueType.INT64,
    np.dtype(np.float64): GGUFValueType.FLOAT64,
}


def _int_type(value: int) -> GGUFValueType:
    """UINT32 where it fits (llama.cpp reads counts and ids with get_u32), else a 64-bit type."""
    if 0 <= value < 2**32:
        return GGUFValueType.UINT32
    if -(2**63) <= value < 2**63:
        return GGUFValueType.INT64
    if 0 <= value < 2**64:
        return GGUFValueType.UINT64
    raise ValueError(f"integer {value} does not fit in 64 bits")


def _scalar_type(value: Any) -> GGUFValueType | None:
    if isinstance(value, np.generic) and value.dtype in _NUMPY_VALUE_TYPES:
        return _NUMPY_VALUE_TYPES[value.dtype]  # numpy scalars keep their exact width
    if isinstance(value, bool):
        return GGUFValueType.BOOL
    if isinstance(value, int):
        return _int_type(value)
    if isinstance(value, float):
        return GGUFValueType.FLOAT32
    if isinstance(value, str):
        return GGUFValueType.STRING
    return None


def _list_element_type(key: str, values: Sequence[Any]) -> GGUFValueType:
    """str -> STRING, bool -> BOOL, int -> INT32 (INT64 if needed), float (or mixed) -> FLOAT32."""
    if all(isinstance(v, str) for v in values):
        return GGUFValueType.STRING
    if all(isinstance(v, (bool, np.bool_)) for v in values):
        return GGUFValueType.BOOL
    if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
        if all(-(2**31) <= int(v) < 2**31 for v in values):
            return GGUFValueType.INT32
        if all(-(2**63) <= int(v) < 2**63 for v in values):
            return GGUFValueType.INT64
        raise ValueError(f"metadata {key!r}: integer list has values outside the int64 range")
    if all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) for v in values):
        return GGUFValueType.FLOAT32
    raise ValueError(f"metadata {key!r}: a list must hold only strings, only bools or only numbers")


def _add_metadata(writer: GGUFWriter, key: str, value: Any) -> None:
    if not isinstance(key, str) or not key:
        raise ValueError(f"metadata keys must be non-empty strings, got {key!r}")
    scalar_type = _scalar_type(value)
    if scalar_type is not None:
        if scalar_type == GGUFValueType.STRING:
            writer.add_key_value(key, str(value), scalar_type)  # add_string() would drop ""
        else:
            writer.add_key_value(key, value.item() if isinstance(value, np.generic) else value, scalar_type)
        return
    if isinstance(value, np.ndarray):
        if value.ndim != 1 or value.dtype not in _NUMPY_VALUE_TYPES:
            raise ValueError(
                f"metadata {key!r}: arrays must be 1-D of a GGUF scalar dtype, got {value.dtype}{list(value.shape)}"
            )
        sub_type, items = _NUMPY_VALUE_TYPES[value.dtype], value.tolist()
    elif isinstance(value, (list, tuple)):
        sub_type, items = _list_element_type(key, value), list(value)
        if sub_type == GGUFValueType.FLOAT32:
            items = [float(v) for v in items]
        elif sub_type in (GGUFValueType.INT32, GGUFValueType.INT64):
            items = [int(v) for v in items]
        elif sub_type == GGUFValueType.BOOL:
            items = [bool(v) for v in items]
    else:
        raise ValueError(f"metadata {key!r}: unsupported value type {type(value).__name__}")
    if not items:
        raise ValueError(f"metadata {key!r}: empty arrays cannot be written")
    writer.add_key_value(key, items, GGUFValueType.ARRAY, sub_type=sub_type)


def _as_float32_numpy(name: str, tensor: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(tensor, torch.Tensor):
        array = tensor.detach().to(device="cpu", dtype=torch.float32).numpy()
    elif isinstance(tensor, np.ndarray):
        array = tensor.astype(np.float32, copy=False)
    else:
        raise ValueError(f"tensor {name!r}: expected a torch.Tensor or numpy.ndarray, got {type(tensor).__name__}")
    if not 1 <= array.ndim <= _MAX_DIMS or 0 in array.shape:
        raise ValueError(f"tensor {name!r}: shape {list(array.shape)} must have 1 to {_MAX_DIMS} non-zero dimensions")
    return np.ascontiguousarray(array)


def _add_tensor(writer: GGUFWriter, name: str, tensor: torch.Tensor | np.ndarray, target: TensorType) -> None:
    array = _as_float32_numpy(name, tensor)
    if target == "F32":
        writer.add_tensor(name, array)
    elif target == "F16":
        writer.add_tensor(name, array.astype(np.float16))
    elif target in BLOCK_TYPES:
        if array.ndim != 2 or array.shape[-1] % 32:
            raise ValueError(f"tensor {name!r}: {target} needs a 2-D tensor whose last dim is a multiple of "
                             f"32, got {list(array.shape)}")
        kind = BLOCK_TYPES[target]
        writer.add_tensor(name, quants.quantize(array, kind), raw_dtype=kind)
    else:
        raise ValueError(f"tensor {name!r}: unsupported target type {target!r} (use F32, F16, Q8_0 or Q4_0)")


def _check_alignment(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0 or value & (value - 1):
        raise ValueError(f"{_ALIGNMENT_KEY} must be a positive power of two, got {value!r}")
    return int(value)


def write_gguf(
    path: str | os.PathLike[str],
    arch: str,
    metadata: Mapping[str, Any],
    tensors: Mapping[str, tuple[torch.Tensor | np.ndarray, TensorType]],
) -> None:
    """Write a GGUF v3 file at `path` (replaced atomically). Raises ValueError for bad input.

    Tensors are stored in the given order, each as "F32", "F16", "Q8_0" or "Q4_0". `general.architecture`
    comes from `arch`; `metadata` may repeat it only with the same value.
    """
    path = Path(path)
    if not isinstance(arch, str) or not arch:
        raise ValueError(f"arch must be a non-empty string, got {arch!r}")
    writer = GGUFWriter(None, arch)
    for key, value in metadata.items():
        if key == _ARCH_KEY:
            if value != arch:
                raise ValueError(f"metadata {_ARCH_KEY}={value!r} contradicts arch={arch!r}")
            continue
        if key == _ALIGNMENT_KEY:
            writer.add_custom_alignment(_check_alignment(value))
            continue
        _add_metadata(writer, key, value)
    for name, (tensor, target) in tensors.items():
        _add_tensor(writer, name, tensor, target)

    # A sibling temp file (same filesystem, so os.replace is atomic), created with the normal umask.
    tmp_name = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        writer.write_header_to_file(tmp_name)
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        assert writer.fout is not None
        for out in writer.fout:
            out.flush()
            os.fsync(out.fileno())
        writer.close()
        os.replace(tmp_name, path)
    except BaseException:
        writer.close()
        tmp_name.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    """Make the rename durable where the platform allows opening a directory."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
