"""A validating reader for GGUF files (versions 2 and 3, little-endian).

Owns parsing and checking the GGUF container: header, metadata key/values, tensor infos and the
placement of tensor data, plus turning one tensor's bytes into a torch tensor. It knows nothing
about any model; mapping tensor names onto modules is done elsewhere.

The file is memory-mapped and every count, length and offset the header claims is checked against
the file size *before* anything is allocated or looped over, so a hostile or damaged file fails fast
with a one-line `CheckpointError` instead of exhausting memory. No tensor data is read by `open`.
"""

from __future__ import annotations

import mmap
import os
import struct
import warnings
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType
from gguf import quants

from .errors import CheckpointError

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_STRING_BYTES = 64 * 2**20  # any one metadata string
MAX_NAME_BYTES = 2**16 - 1  # metadata keys and tensor names
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_ELEMENTS = 2**40  # per tensor

_HEADER_BYTES = 4 + 4 + 8 + 8  # magic, version, tensor count, kv count
_MIN_KV_BYTES = 8 + 4 + 1  # key length, value type, smallest value (u8 / bool / i8)
_MIN_TENSOR_INFO_BYTES = 8 + 4 + 8 + 4 + 8  # name length, n_dims, one dim, ggml type, offset

# Fixed-size metadata value types: little-endian struct format (size follows from it).
_SCALAR_FORMATS: dict[GGUFValueType, str] = {
    GGUFValueType.UINT8: "<B",
    GGUFValueType.INT8: "<b",
    GGUFValueType.UINT16: "<H",
    GGUFValueType.INT16: "<h",
    GGUFValueType.UINT32: "<I",
    GGUFValueType.INT32: "<i",
    GGUFValueType.FLOAT32: "<f",
    GGUFValueType.BOOL: "<B",
    GGUFValueType.UINT64: "<Q",
    GGUFValueType.INT64: "<q",
    GGUFValueType.FLOAT64: "<d",
}

# ggml types whose bytes are a plain little-endian numpy array.
_PLAIN_TENSOR_DTYPES: dict[GGMLQuantizationType, np.dtype[Any]] = {
    GGMLQuantizationType.F32: np.dtype("<f4"),
    GGMLQuantizationType.F16: np.dtype("<f2"),
    GGMLQuantizationType.F64: np.dtype("<f8"),
    GGMLQuantizationType.I8: np.dtype("<i1"),
    GGMLQuantizationType.I16: np.dtype("<i2"),
    GGMLQuantizationType.I32: np.dtype("<i4"),
    GGMLQuantizationType.I64: np.dtype("<i8"),
}


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives in the file. `shape` is in torch order (ggml's ne reversed)."""

    name: str
    ggml_type: GGMLQuantizationType
    shape: tuple[int, ...]
    offset: int  # absolute byte offset in the file
    nbytes: int

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


class _Cursor:
    """Bounds-checked sequential reads from the mapped file."""

    def __init__(self, path: Path, buf: mmap.mmap, size: int) -> None:
        self.path = path
        self.buf = buf
        self.size = size
        self.pos = 0

    def fail(self, problem: str) -> CheckpointError:
        return CheckpointError(self.path, problem)

    @property
    def remaining(self) -> int:
        return self.size - self.pos

    def take(self, n: int, what: str) -> int:
        """Advance past `n` bytes and return where they start."""
        if n > self.remaining:
            raise self.fail(
                f"file is truncated: {what} at offset {self.pos} needs {n} bytes "
                f"but only {self.remaining} remain (file size {self.size})"
            )
        start = self.pos
        self.pos += n
        return start

    def scalar(self, fmt: str, what: str) -> Any:
        start = self.take(struct.calcsize(fmt), what)
        return struct.unpack_from(fmt, self.buf, start)[0]

    def u32(self, what: str) -> int:
        return int(self.scalar("<I", what))

    def u64(self, what: str) -> int:
        return int(self.scalar("<Q", what))

    def string(self, what: str, cap: int) -> str:
        length = self.u64(f"length of {what}")
        if length > cap:
            raise self.fail(f"{what} claims {length} bytes, over the limit of {cap}")
        start = self.take(length, what)
        # surrogateescape keeps arbitrary bytes (e.g. odd vocabulary entries) round-trippable
        return self.buf[start : start + length].decode("utf-8", "surrogateescape")


def _value_type(cur: _Cursor, raw: int, key: str) -> GGUFValueType:
    try:
        return GGUFValueType(raw)
    except ValueError:
        raise cur.fail(f"metadata key {key!r} has unknown value type {raw}") from None


def _read_array(cur: _Cursor, key: str) -> list[Any]:
    elem_type = _value_type(cur, cur.u32(f"element type of array {key!r}"), key)
    if elem_type == GGUFValueType.ARRAY:
        raise cur.fail(f"metadata key {key!r} is an array of arrays, which is not supported")
    count = cur.u64(f"element count of array {key!r}")
    min_elem_bytes = 8 if elem_type == GGUFValueType.STRING else struct.calcsize(_SCALAR_FORMATS[elem_type])
    if count > cur.remaining // min_elem_bytes:
        raise cur.fail(
            f"array {key!r} claims {count} {elem_type.name} elements, more than the "
            f"{cur.remaining} bytes left in the file can hold"
        )
    if elem_type == GGUFValueType.STRING:
        return [cur.string(f"element {i} of array {key!r}", MAX_STRING_BYTES) for i in range(count)]
    dtype = np.dtype(_SCALAR_FORMATS[elem_type])
    start = cur.take(count * dtype.itemsize, f"array {key!r}")
    values = np.frombuffer(cur.buf, dtype=dtype, count=count, offset=start)
    if elem_type == GGUFValueType.BOOL:
        return (values != 0).tolist()
    return values.tolist()


def _read_value(cur: _Cursor, vtype: GGUFValueType, key: str) -> Any:
    if vtype == GGUFValueType.STRING:
        return cur.string(f"value of {key!r}", MAX_STRING_BYTES)
    if vtype == GGUFValueType.ARRAY:
        return _read_array(cur, key)
    value = cur.scalar(_SCALAR_FORMATS[vtype], f"value of {key!r}")
    if vtype == GGUFValueType.BOOL:
        return value != 0
    return value


def _read_metadata(cur: _Cursor, kv_count: int) -> dict[str, Any]:
    metadata: dict[str, Any] = {}
    for i in range(kv_count):
        key = cur.string(f"key of metadata entry {i}", MAX_NAME_BYTES)
        if not key:
            raise cur.fail(f"metadata entry {i} has an empty key")
        if key in metadata:
            raise cur.fail(f"duplicate metadata key {key!r}")
        vtype = _value_type(cur, cur.u32(f"value type of {key!r}"), key)
        metadata[key] = _read_value(cur, vtype, key)
    return metadata


def _alignment(cur: _Cursor, metadata: dict[str, Any]) -> int:
    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if isinstance(alignment, bool) or not isinstance(alignment, int):
        raise cur.fail(f"general.alignment must be an integer, got {alignment!r}")
    if alignment <= 0 or alignment & (alignment - 1):
        raise cur.fail(f"general.alignment {alignment} is not a power of two")
    return alignment


def _ggml_type(cur: _Cursor, raw: int, name: str) -> GGMLQuantizationType:
    try:
        ggml_type = GGMLQuantizationType(raw)
    except ValueError:
        raise cur.fail(f"tensor {name!r} has unknown ggml type {raw}") from None
    if ggml_type not in GGML_QUANT_SIZES:
        raise cur.fail(f"tensor {name!r} has ggml type {ggml_type.name} with no known block size")
    return ggml_type


def _read_tensor_info(cur: _Cursor, index: int, alignment: int) -> TensorInfo:
    """One tensor info; its offset is still relative to the data section."""
    name = cur.string(f"name of tensor {index}", MAX_NAME_BYTES)
    n_dims = cur.u32(f"n_dims of tensor {name!r}")
    if not 1 <= n_dims <= MAX_DIMS:
        raise cur.fail(f"tensor {name!r} has {n_dims} dimensions; expected 1 to {MAX_DIMS}")
    ne = [cur.u64(f"dimension {d} of tensor {name!r}") for d in range(n_dims)]
    n_elements = 1
    for d in ne:
        if d < 1:
            raise cur.fail(f"tensor {name!r} has a zero dimension (ne={ne})")
        n_elements *= d
    if n_elements >= MAX_ELEMENTS:
        raise cur.fail(f"tensor {name!r} has {n_elements} elements (ne={ne}), over the limit of 2**40")
    ggml_type = _ggml_type(cur, cur.u32(f"ggml type of tensor {name!r}"), name)
    block_size, type_size = GGML_QUANT_SIZES[ggml_type]
    if ne[0] % block_size:
        raise cur.fail(
            f"tensor {name!r} of type {ggml_type.name} has first dimension {ne[0]}, "
            f"not a multiple of the block size {block_size}"
        )
    offset = cur.u64(f"data offset of tensor {name!r}")
    if offset % alignment:
        raise cur.fail(f"tensor {name!r} data offset {offset} is not a multiple of the alignment {alignment}")
    nbytes = n_elements // block_size * type_size
    return TensorInfo(name, ggml_type, tuple(reversed(ne)), offset, nbytes)


def _check_placement(cur: _Cursor, tensors: dict[str, TensorInfo]) -> None:
    """Every tensor's bytes lie inside the file and no two tensors share a byte."""
    previous: TensorInfo | None = None
    for info in sorted(tensors.values(), key=lambda t: t.offset):
        if info.offset + info.nbytes > cur.size:
            raise cur.fail(
                f"tensor {info.name!r} data runs past the end of the file "
                f"(offset {info.offset} + {info.nbytes} > {cur.size})"
            )
        if previous is not None and info.offset < previous.offset + previous.nbytes:
            raise cur.fail(
                f"tensors {previous.name!r} and {info.name!r} overlap "
                f"({previous.offset} + {previous.nbytes} > {info.offset})"
            )
        previous = info


def _parse(path: Path, buf: mmap.mmap, size: int) -> GGUFFile:
    cur = _Cursor(path, buf, size)
    cur.take(4, "magic")  # checked by the caller
    version = cur.u32("version")
    if version not in SUPPORTED_VERSIONS:
        swapped = int.from_bytes(version.to_bytes(4, "little"), "big")
        hint = " (a big-endian file?)" if swapped in SUPPORTED_VERSIONS else ""
        raise cur.fail(f"unsupported GGUF version {version}{hint}; supported: 2, 3")
    tensor_count = cur.u64("tensor count")
    kv_count = cur.u64("metadata key/value count")
    if kv_count > cur.remaining // _MIN_KV_BYTES:
        raise cur.fail(f"metadata key/value count {kv_count} cannot fit in a file of {size} bytes")
    if tensor_count > (cur.remaining - kv_count * _MIN_KV_BYTES) // _MIN_TENSOR_INFO_BYTES:
        raise cur.fail(f"tensor count {tensor_count} cannot fit in a file of {size} bytes")

    metadata = _read_metadata(cur, kv_count)
    alignment = _alignment(cur, metadata)

    relative: dict[str, TensorInfo] = {}
    for i in range(tensor_count):
        info = _read_tensor_info(cur, i, alignment)
        if info.name in relative:
            raise cur.fail(f"duplicate tensor name {info.name!r}")
        relative[info.name] = info

    data_offset = -(-cur.pos // alignment) * alignment
    tensors = {name: replace(info, offset=data_offset + info.offset) for name, info in relative.items()}
    _check_placement(cur, tensors)
    return GGUFFile(path, version, metadata, tensors, alignment, data_offset, buf)


def _torch_from_readonly(array: np.ndarray) -> torch.Tensor:
    """A tensor aliasing a read-only array; callers must copy before handing it out."""
    if not array.flags.aligned:
        array = array.copy()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(array)


class GGUFFile:
    """An opened, fully validated GGUF file. Create with `GGUFFile.open(path)`."""

    def __init__(
        self,
        path: Path,
        version: int,
        metadata: dict[str, Any],
        tensors: dict[str, TensorInfo],
        alignment: int,
        data_offset: int,
        buf: mmap.mmap | None,
    ) -> None:
        self.path = path
        self.version = version
        self.metadata = metadata
        self.tensors = tensors
        self.alignment = alignment
        self.data_offset = data_offset  # absolute start of the tensor data section
        self._buf = buf

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> GGUFFile:
        """Map and validate `path`. Raises CheckpointError for anything malformed."""
        path = Path(path)
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                magic = f.read(4)
                if len(magic) < 4 and GGUF_MAGIC.startswith(magic):
                    raise CheckpointError(path, f"file is truncated: {size} bytes, a GGUF header needs {_HEADER_BYTES}")
                if magic != GGUF_MAGIC:
                    raise CheckpointError(path, f"not a GGUF file (magic {magic!r}, expected {GGUF_MAGIC!r})")
                if size < _HEADER_BYTES:
                    raise CheckpointError(path, f"file is truncated: {size} bytes, a GGUF header needs {_HEADER_BYTES}")
                buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except OSError as e:
            raise CheckpointError(path, f"cannot read: {e.strerror or e}") from None
        try:
            return _parse(path, buf, size)
        except CheckpointError:
            buf.close()
            raise

    @property
    def architecture(self) -> str:
        arch = self.metadata.get("general.architecture")
        if not isinstance(arch, str):
            raise CheckpointError(self.path, "metadata has no string 'general.architecture'")
        return arch

    def info(self, name: str) -> TensorInfo:
        try:
            return self.tensors[name]
        except KeyError:
            raise KeyError(f"{self.path}: no tensor named {name!r}") from None

    def raw(self, name: str) -> np.ndarray:
        """The tensor's bytes as a read-only uint8 view of the mapping (no copy)."""
        info = self.info(name)
        assert self._buf is not None
        return np.frombuffer(self._buf, dtype=np.uint8, count=info.nbytes, offset=info.offset)

    def tensor(self, name: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The tensor as a new torch tensor of `dtype` in torch shape; quantised types are dequantised."""
        info = self.info(name)
        raw = self.raw(name)
        if info.ggml_type in _PLAIN_TENSOR_DTYPES:
            view = raw.view(_PLAIN_TENSOR_DTYPES[info.ggml_type]).reshape(info.shape)
            return _torch_from_readonly(view).to(dtype, copy=True)
        if info.ggml_type == GGMLQuantizationType.BF16:
            view = raw.view("<i2").reshape(info.shape)
            return _torch_from_readonly(view).view(torch.bfloat16).to(dtype, copy=True)
        block_size, type_size = GGML_QUANT_SIZES[info.ggml_type]
        byte_shape = (*info.shape[:-1], info.shape[-1] // block_size * type_size)
        try:
            values = quants.dequantize(raw.reshape(byte_shape), info.ggml_type)
        except NotImplementedError:
            raise CheckpointError(
                self.path, f"tensor {name!r}: no dequantiser for ggml type {info.ggml_type.name}"
            ) from None
        return torch.from_numpy(np.ascontiguousarray(values)).reshape(info.shape).to(dtype)

    def describe(self) -> str:
        """A short human-readable summary: version, architecture, counts, type histogram, bytes."""
        arch = self.metadata.get("general.architecture", "?")
        total = sum(t.nbytes for t in self.tensors.values())
        types = Counter(t.ggml_type.name for t in self.tensors.values())
        histogram = ", ".join(f"{name} {count}" for name, count in types.most_common()) or "none"
        return "\n".join(
            [
                f"{self.path.name}: GGUF v{self.version}, architecture {arch!r}",
                f"{len(self.metadata)} metadata keys, {len(self.tensors)} tensors, "
                f"{total:,} bytes of tensor data ({total / 2**20:.1f} MiB)",
                f"tensor types: {histogram}",
            ]
        )

    def __repr__(self) -> str:
        return f"GGUFFile({str(self.path)!r}, tensors={len(self.tensors)})"
