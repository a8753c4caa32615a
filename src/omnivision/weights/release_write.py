"""Writing the official GGUF pair, so a model trained here runs in llama.cpp-based runtimes.

The mmproj follows the official converter (docs/official-release.md 2.1): `siglip.*` keys, `v.*`/`mm.*`
tensors, 2-D `.weight` and 4-D tensors in f16 and the rest in f32 (all f32 for `F32`). The language
model is a standard llama.cpp `qwen2` file (2.2): norms and biases in f32, matrices in the chosen
type. `Q8_0` and `Q4_0` apply to the language model; the mmproj then stays f16, as in the release. A model
whose compression or template is not the official one records it in `omnivision.*` keys.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from omnivision.config import ProcessingConfig
from omnivision.model import OmniVisionModel
from omnivision.processing.tokenizer import Tokenizer
from omnivision.weights.convert import native_to_llm, native_to_mmproj, split_native
from omnivision.weights.gguf_write import write_gguf

FILE_TYPES = {"F32": 0, "F16": 1, "Q8_0": 7, "Q4_0": 2}  # llama.cpp's general.file_type values


def _mmproj_type(name: str, tensor: torch.Tensor, dtype: str) -> str:
    if dtype == "F32":
        return "F32"
    half = tensor.dim() == 4 or (tensor.dim() == 2 and name.endswith(".weight"))
    return "F16" if half else "F32"


def _llm_type(tensor: torch.Tensor, dtype: str) -> str:
    if tensor.dim() == 1 or dtype == "F32":
        return "F32"
    return dtype


def mmproj_metadata(model: OmniVisionModel, file_type: str) -> dict:
    cfg, v = model.config, "siglip.vision."
    meta = {
        "general.file_type": FILE_TYPES["F32" if file_type == "F32" else "F16"],
        "general.name": "omni-vlm",
        "general.description": "image encoder for omni-vlm",
        "siglip.has_omni_vlm_projector": True,
        v + "image_size": cfg.vision.image_size,
        v + "patch_size": cfg.vision.patch_size,
        v + "embedding_length": cfg.vision.hidden_size,
        v + "attention.head_count": cfg.vision.num_heads,
        v + "feed_forward_length": cfg.vision.intermediate_size,
        v + "block_count": cfg.vision.num_layers,
        v + "projection_dim": cfg.projector.hidden_size,
        v + "image_mean": list(cfg.processing.image_mean),
        v + "image_std": list(cfg.processing.image_std),
    }
    if cfg.vision.layer_norm_eps != 1e-6:
        meta[v + "attention.layer_norm_epsilon"] = float(cfg.vision.layer_norm_eps)
    if cfg.projector.compression != "concat9":
        meta["omnivision.projector.compression"] = cfg.projector.compression
    if cfg.processing.template != "omnivision":
        meta["omnivision.template"] = cfg.processing.template
    if cfg.processing.system_prompt != ProcessingConfig().system_prompt:
        meta["omnivision.system_prompt"] = cfg.processing.system_prompt
    return meta


def llm_metadata(model: OmniVisionModel, tokenizer: Tokenizer, file_type: str) -> dict:
    t, q = model.config.text, "qwen2."
    meta = {
        "general.file_type": FILE_TYPES[file_type],
        "general.name": model.config.name,
        q + "block_count": t.num_layers,
        q + "context_length": t.max_position_embeddings,
        q + "embedding_length": t.hidden_size,
        q + "feed_forward_length": t.intermediate_size,
        q + "attention.head_count": t.num_heads,
        q + "attention.head_count_kv": t.num_kv_heads,
        q + "rope.freq_base": float(t.rope_theta),
        q + "attention.layer_norm_rms_epsilon": float(t.rms_norm_eps),
    }
    meta.update(tokenizer.to_gguf_metadata(pad_to=t.vocab_size))
    return meta


def _file_type(dtype: str) -> str:
    dtype = dtype.upper()
    if dtype not in FILE_TYPES:
        raise ValueError(f"GGUF output type must be one of {sorted(FILE_TYPES)}, got {dtype!r}")
    return dtype


def _float_state(model: OmniVisionModel) -> tuple[dict, dict]:
    state = {k: v.detach().float() for k, v in model.state_dict().items()}
    return split_native(state)


def write_llm(model: OmniVisionModel, tokenizer: Tokenizer, path: str | os.PathLike,
              dtype: str = "F16", llm_part: dict | None = None) -> Path:
    """Write the language-model GGUF alone (a llama.cpp `qwen2` file) to `path`; `llm_part`: the
    language tensors already split off in fp32 (else they are taken from the model)."""
    dtype = _file_type(dtype)
    llm = native_to_llm(_float_state(model)[1] if llm_part is None else llm_part)
    path = Path(path)
    write_gguf(path, "qwen2", llm_metadata(model, tokenizer, dtype),
               {name: (t, _llm_type(t, dtype)) for name, t in llm.items()})
    return path


def write_release(model: OmniVisionModel, tokenizer: Tokenizer, out_dir: str | os.PathLike,
                  dtype: str = "F16", stem: str = "omnivision") -> tuple[Path, Path]:
    """Write `<stem>-llm-<dtype>.gguf` and `<stem>-mmproj-<f16|f32>.gguf` into `out_dir`."""
    dtype = _file_type(dtype)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vision_part, llm_part = _float_state(model)
    mm = native_to_mmproj(vision_part)
    del vision_part
    if "v.head.probe" in mm:
        mm["v.head.probe"] = mm["v.head.probe"].reshape(-1)  # stored squeezed, as the release does
    mm_dtype = "F32" if dtype == "F32" else "F16"
    mmproj_path = out / f"{stem}-mmproj-{mm_dtype.lower()}.gguf"
    write_gguf(mmproj_path, "siglip", mmproj_metadata(model, dtype),
               {name: (t, _mmproj_type(name, t, mm_dtype)) for name, t in mm.items()})
    llm_path = write_llm(model, tokenizer, out / f"{stem}-llm-{dtype}.gguf", dtype, llm_part)
    return llm_path, mmproj_path
