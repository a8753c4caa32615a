"""`load(source)`: resolve a model source to an `OmniVision`.

A source is, in this order of checks:

- a native checkpoint directory (`config.json` + `model.safetensors` + `tokenizer.json`);
- a directory holding the official GGUF pair (files told apart by `general.architecture`);
- a language-model `.gguf` file, with the mmproj given as `mmproj=` or found beside it;
- a hub repo id such as `NexaAIDev/OmniVLM-968M`, resolved with `huggingface_hub` (cached, or
  downloaded when online; offline, the error says which files to fetch and where to put them).

`dtype="auto"` computes in bf16 where the CPU has native bf16 support and in fp32 elsewhere.

`check(source)` resolves a source the same way and runs every check `load` runs (files, pair,
config, quantization entry, tensor names, shapes and dtypes, tokenizer) without reading tensor
data; `omnivision info` is built on it. It resolves a hub id from the local cache only.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from omnivision.model import OmniVisionModel
from omnivision.processing.tokenizer import Tokenizer
from omnivision.vlm import OmniVision
from omnivision.weights.errors import CheckpointError
from omnivision.weights.gguf_file import GGUFFile
from omnivision.weights.native import TOKENIZER, is_native, load_native
from omnivision.weights.release_read import ReleaseFiles, find_release, load_release

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
          "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}

BUNDLED = Path(__file__).resolve().parent / "assets" / "nano"
"""The bundled nano model (trained by `omnivision train recipe nano`), used when no model is named."""

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
RELEASE_FILES = "the language-model GGUF (e.g. Nano-Vlm-Processor-494M-F16.gguf) and the mmproj GGUF " \
                "(mmproj-omni-vlm-f16.gguf)"


def cpu_has_fast_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_dtype(dtype: str | torch.dtype | None, device: str | torch.device = "cpu") -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        if torch.device(device).type == "cpu":
            return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32
        return torch.bfloat16
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of float32, bfloat16, float16 or auto")
    return DTYPES[dtype]


def _mmproj_beside(llm: Path) -> Path:
    candidates = []
    for p in sorted(llm.parent.glob("*.gguf")):
        if p != llm and GGUFFile.open(p).metadata.get("general.architecture") == "siglip":
            candidates.append(p)
    if len(candidates) != 1:
        raise CheckpointError(llm, f"give the mmproj file with --mmproj ({len(candidates)} candidates "
                                   f"found beside the model)")
    return candidates[0]


def _release_from_file(llm_path: Path, mmproj: str | os.PathLike | None) -> ReleaseFiles:
    llm = GGUFFile.open(llm_path)
    if llm.metadata.get("general.architecture") != "qwen2":
        raise CheckpointError(llm_path, f"general.architecture is {llm.metadata.get('general.architecture')!r}, "
                                        f"expected 'qwen2' for the language model")
    mm = GGUFFile.open(Path(mmproj) if mmproj else _mmproj_beside(llm_path))
    if mm.metadata.get("general.architecture") != "siglip":
        raise CheckpointError(mm.path, "the mmproj must have general.architecture 'siglip'")
    return ReleaseFiles(llm=llm, mmproj=mm, note=f"language model: {llm_path.name}")


def download_release(repo_id: str, download: bool = True) -> Path:
    """The local folder of a hub repo's GGUF files: from the cache, else downloaded (unless not
    `download`: then a repo that is not cached is an error)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, allow_patterns=["*.gguf", "*.json"], local_files_only=True))
    except LocalEntryNotFoundError:
        pass
    if not download:
        raise CheckpointError(repo_id, "not in the local Hugging Face cache (nothing is downloaded here); "
                                       "`omnivision run --model` downloads it, or pass a local folder")
    try:
        return Path(snapshot_download(repo_id, allow_patterns=["*.gguf", "*.json"]))
    except Exception as e:  # network errors come in many types
        raise CheckpointError(repo_id, f"cannot download from the hub ({type(e).__name__}). Offline, "
                                       f"download {RELEASE_FILES} from https://huggingface.co/{repo_id} "
                                       f"into one folder and pass that folder as the model") from None


@dataclass
class Source:
    """What a model source resolved to: a native checkpoint directory or a GGUF pair."""

    native: Path | None = None
    release: ReleaseFiles | None = None
    prefix: str = ""
    """Put before the pair's note (the hub id a folder came from)."""

    @property
    def note(self) -> str:
        if self.native is not None:
            return f"native checkpoint {self.native}"
        return self.prefix + self.release.note


def resolve(source: str | os.PathLike, *, gguf_type: str | None = None,
            mmproj: str | os.PathLike | None = None, download: bool = True) -> Source:
    """Which files `source` names (see the module docstring); raises `CheckpointError` for a
    source that is not a model. GGUF headers are opened and validated; no tensor data is read."""
    path = Path(source)
    if path.is_dir() and is_native(path):
        return Source(native=path)
    if path.is_dir() and any(path.glob("*.gguf")):
        return Source(release=find_release(path, gguf_type))
    if path.is_file():
        if path.suffix != ".gguf":
            raise CheckpointError(path, "not a model: give a checkpoint directory, a GGUF directory "
                                        "or a language-model .gguf file")
        return Source(release=_release_from_file(path, mmproj))
    if path.exists():
        raise CheckpointError(path, "a directory with neither a native checkpoint (config.json, "
                                    "model.safetensors) nor GGUF files")
    if _REPO_ID.match(str(source)):
        folder = download_release(str(source), download)
        return Source(release=find_release(folder, gguf_type), prefix=f"{source}: ")
    raise CheckpointError(source, "no such file or directory")


def _build(found: Source, dtype: torch.dtype, keep_quantized: bool, tensor_data: bool
           ) -> tuple[OmniVisionModel, Tokenizer]:
    if found.native is not None:
        model, tokenizer = load_native(found.native, dtype, tensor_data=tensor_data)
    else:
        model, tokenizer = load_release(found.release, dtype, keep_quantized, tensor_data=tensor_data)
    _check_vocabulary(found, model, tokenizer)
    return model, tokenizer


def _check_vocabulary(found: Source, model: OmniVisionModel, tokenizer: Tokenizer) -> None:
    """Every id the tokenizer can produce has a row in the embedding; otherwise the first prompt
    holding that token fails inside torch."""
    top, rows = tokenizer.max_id, model.config.text.vocab_size
    if top >= rows:
        where = found.native / TOKENIZER if found.native is not None else found.release.llm.path
        raise CheckpointError(where, f"the tokenizer has token id {top}, past the model's vocabulary of "
                                     f"{rows} (ids 0 to {rows - 1})")


def load(source: str | os.PathLike, device: str | torch.device = "cpu",
         dtype: str | torch.dtype | None = "auto", *, gguf_type: str | None = None,
         mmproj: str | os.PathLike | None = None, keep_quantized: bool = False) -> OmniVision:
    """Load a model from any supported source (see the module docstring).

    `keep_quantized`: a GGUF language model in Q8_0 / Q4_0 loads into int8 / int4 layers instead of
    being dequantized (`weights.gguf_quantized`); other sources ignore it.
    """
    dtype = resolve_dtype(dtype, device)
    found = resolve(source, gguf_type=gguf_type, mmproj=mmproj)
    model, tokenizer = _build(found, dtype, keep_quantized, tensor_data=True)
    return OmniVision(model.to(device), tokenizer, note=found.note)


@dataclass
class Checked:
    """A source that passed every check of `load`: its files, and the model on the `meta` device."""

    source: Source
    model: OmniVisionModel
    tokenizer: Tokenizer


def check(source: str | os.PathLike, *, gguf_type: str | None = None,
          mmproj: str | os.PathLike | None = None) -> Checked:
    """Run every check `load` runs on `source`, without reading tensor data (see the module
    docstring); raises the `CheckpointError` that loading would raise. A hub id is looked up in
    the local cache only."""
    found = resolve(source, gguf_type=gguf_type, mmproj=mmproj, download=False)
    model, tokenizer = _build(found, torch.float32, keep_quantized=False, tensor_data=False)
    return Checked(found, model, tokenizer)
