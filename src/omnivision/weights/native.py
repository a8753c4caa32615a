"""The native checkpoint: a directory with `config.json`, `model.safetensors` and `tokenizer.json`.

Saving writes into a temporary sibling directory and renames it into place, so an interrupted save
never leaves a half-written checkpoint under the target name. Loading validates the safetensors
header first (`safetensors_check`), builds the model on the `meta` device and assigns tensors that
are views of a copy-on-write memory map of the file: nothing is read until used, and the weights
cost no resident memory beyond the pages touched. (safetensors' own loader copies each tensor into
process memory, which is why the mapping is done here.) Checkpoints are written with every sizeable
tensor 64-byte aligned (`safetensors_write`); a tensor that is not (an older checkpoint, a file
from another writer) is read into aligned memory instead, since torch's kernels run about a fifth
slower on weights that start off a cache-line boundary.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch

from omnivision.config import OmniVisionConfig
from omnivision.model import OmniVisionModel
from omnivision.processing.tokenizer import Tokenizer
from omnivision.weights.quantized_checkpoint import apply_recorded, quantization_metadata
from omnivision.weights.errors import CheckpointError
from omnivision.weights.safetensors_check import check_safetensors
from omnivision.weights.safetensors_write import ALIGNMENT, save_aligned

FORMAT = "omnivision-native"
FORMAT_VERSION = 1
CONFIG, WEIGHTS, TOKENIZER = "config.json", "model.safetensors", "tokenizer.json"

_NUMPY = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16,
          "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
          "BOOL": np.bool_}
_TORCH = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
          "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
          "BOOL": torch.bool}


def is_native(path: str | os.PathLike) -> bool:
    p = Path(path)
    return p.is_dir() and (p / CONFIG).is_file() and (p / WEIGHTS).is_file()


def save_native(model: OmniVisionModel, tokenizer: Tokenizer, out: str | os.PathLike,
                extra: dict | None = None, state: Mapping[str, torch.Tensor] | None = None) -> Path:
    """Write the checkpoint directory `out` (replacing an existing one only once complete).

    `state` replaces `model.state_dict()` (a LoRA run passes its merged weights)."""
    def write(tmp: Path) -> None:
        meta = {**(extra or {}), **quantization_metadata(model), "format": FORMAT,
                "format_version": FORMAT_VERSION, "config": model.config.to_dict()}
        (tmp / CONFIG).write_text(json.dumps(meta, indent=2) + "\n")
        write_weights_and_tokenizer(tmp, state or model.state_dict(), tokenizer)

    return write_directory(out, write)


def write_weights_and_tokenizer(folder: Path, state: Mapping[str, torch.Tensor], tokenizer: Tokenizer) -> None:
    """`model.safetensors` (aligned) and `tokenizer.json` into `folder`: the files the native checkpoint
    and the vLLM folder share."""
    save_aligned({k: v.detach().contiguous() for k, v in state.items()}, folder / WEIGHTS, metadata={"format": "pt"})
    tokenizer.backend.save(str(folder / TOKENIZER))


def write_directory(out: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Run `write(tmp)` on a temporary sibling of `out`, then rename it into place: an interrupted
    write never leaves a half-written directory under the target name, and an existing one is
    replaced only once the new one is complete."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; a checkpoint is an ordinary folder
        for f in tmp.iterdir():
            os.chmod(f, 0o666 & ~umask)
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
            try:
                tmp.rename(out)
            except OSError:
                old.rename(out)  # put the previous checkpoint back
                raise
            shutil.rmtree(old)
        else:
            tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def read_config(path: str | os.PathLike) -> OmniVisionConfig:
    file = Path(path) / CONFIG
    try:
        meta = json.loads(file.read_text())
    except (OSError, ValueError, RecursionError) as e:  # RecursionError: nesting deeper than json parses
        raise CheckpointError(file, f"cannot read the config: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(file, f"not an omnivision checkpoint config (no format {FORMAT!r})")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(file, f"unsupported format_version {meta.get('format_version')!r}")
    try:
        return OmniVisionConfig.from_dict(meta["config"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(file, f"invalid config: {e}") from None


def _check_dtypes(path: Path, header: dict) -> None:
    for name, entry in header.items():
        if entry["dtype"] not in _TORCH:
            raise CheckpointError(path, f"tensor {name!r} has dtype {entry['dtype']}, which omnivision "
                                        f"does not load (supported: {', '.join(_TORCH)})")


def header_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The file's tensors as `meta` tensors (names, shapes, dtypes; no data read), after the same
    header validation as `mmap_safetensors`."""
    path = Path(path)
    header = check_safetensors(path)
    _check_dtypes(path, header)
    return {name: torch.empty(entry["shape"], dtype=_TORCH[entry["dtype"]], device="meta")
            for name, entry in header.items()}


def mmap_safetensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Validated tensors: zero-copy views of a private memory map of the file where they start on
    a 64-byte boundary, read into (aligned) process memory where they do not."""
    path = Path(path)
    header = check_safetensors(path)
    _check_dtypes(path, header)
    if not header:
        return {}
    raw = np.memmap(path, dtype=np.uint8, mode="c")
    out = {}
    with open(path, "rb") as fh:
        data_start = 8 + int.from_bytes(fh.read(8), "little")
        for name, entry in header.items():
            begin, end = entry["data_offsets"]
            if (data_start + begin) % ALIGNMENT == 0:
                chunk = raw[data_start + begin: data_start + end]
            else:  # a read, not a copy out of the map, so the file's pages never count twice
                chunk = torch.empty(end - begin, dtype=torch.uint8).numpy()
                fh.seek(data_start + begin)
                if fh.readinto(memoryview(chunk)) != end - begin:
                    raise CheckpointError(path, f"tensor {name!r}: the file ended early")
            array = chunk.view(_NUMPY[entry["dtype"]]).reshape(entry["shape"])
            tensor = torch.from_numpy(array)
            out[name] = tensor.view(torch.bfloat16) if entry["dtype"] == "BF16" else tensor
    return out


def load_state(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str | os.PathLike,
               dtype: torch.dtype | None) -> None:
    """Assign `state` into a meta-device model, checking names and shapes first."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(source, f"tensor names do not match the config "
                              f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    for name, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise CheckpointError(source, f"tensor {name!r} has shape {tuple(tensor.shape)}, "
                                  f"the config needs {tuple(expected[name].shape)}")
        want = expected[name].dtype
        if want.is_floating_point and not tensor.is_floating_point():
            raise CheckpointError(source, f"tensor {name!r} has non-float dtype {tensor.dtype}")
        if not want.is_floating_point and tensor.dtype != want:  # a quantized layer's integer codes
            raise CheckpointError(source, f"tensor {name!r} has dtype {tensor.dtype}, the model needs {want}")
    if dtype is not None:
        # tensors the model builds in a float type of their own (int8-g32's fp16 scales) keep it
        state = {k: v.to(dtype) if v.is_floating_point() and v.dtype != dtype and expected[k].dtype == torch.float32
                 else v for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=True)


def load_native(path: str | os.PathLike, dtype: torch.dtype | None = None, *, tensor_data: bool = True
                ) -> tuple[OmniVisionModel, Tokenizer]:
    """Load a native checkpoint directory (tensors memory-mapped when `dtype` matches the file).

    `tensor_data=False` runs every check of loading (the config, its quantization entry, tensor
    names, shapes and dtypes against the config, the tokenizer) without reading tensor data; the
    model's tensors are then on the `meta` device (what `omnivision info` does)."""
    path = Path(path)
    config = read_config(path)
    with torch.device("meta"):
        model = OmniVisionModel(config)
        apply_recorded(model, path / CONFIG)  # quantized layers, if the checkpoint has them
    state = mmap_safetensors(path / WEIGHTS) if tensor_data else header_tensors(path / WEIGHTS)
    load_state(model, state, path / WEIGHTS, dtype)
    tok_file = path / TOKENIZER
    if not tok_file.is_file():
        raise CheckpointError(path, f"no {TOKENIZER}")
    try:
        tokenizer = Tokenizer.from_file(tok_file)
    except Exception as e:  # tokenizers raises its own exception types
        raise CheckpointError(tok_file, f"cannot load the tokenizer: {e}") from None
    return model.eval(), tokenizer
