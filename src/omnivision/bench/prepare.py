"""The files the benchmark workers load, made once per preset, precision and seed and then reused.

Our model runs from native checkpoints (memory-mapped, as a user would load it): `fp32`, `bf16`,
`int8` (group-wise, `int8-g32`) / `int4` with every part quantized (language model, projector, vision tower, and the tied
embedding that is also the output head), and `int4-lm`: the language model and head in int4, the
vision tower and projector in bf16. That is the split a deployment wants for speed: the tower runs
once per image and is compute-bound (bf16 on AMX), the decoder runs once per token and is
bandwidth-bound (int4 reads a quarter of the bytes). llama.cpp runs the same random language model written as an F16
GGUF and quantized by llama.cpp to Q8_0 / Q4_0. Each file or folder is written under a temporary name
and renamed when complete, so an interrupted run never leaves a half-written entry in the cache.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from omnivision.config import OmniVisionConfig
from omnivision.processing.prompt import Message, build_inputs
from omnivision.processing.tokenizer import Tokenizer
from omnivision.bench.workload import QUESTION
from omnivision.weights.random_init import fit_to_tokenizer, pick_tokenizer, random_model

PRECISIONS = ("fp32", "bf16", "int8", "int4", "int4-lm")
SCHEMES = {"int8": ("int8-g32", ("language", "projector", "vision")),
           "int4": ("int4", ("language", "projector", "vision")), "int4-lm": ("int4", ("language",))}
"""Quantized precisions: scheme and parts. int8 is the group-wise scheme (llama.cpp's Q8_0 layout, the
vision tower per output channel), int4 this project's default group size, 128."""
ENTRY_NAMES = {"int8": "int8-g32"}
"""Cache entries renamed when what a precision holds changed (int8 was per output channel)."""
COMPUTE_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "int8": "auto", "int4": "auto", "int4-lm": "auto"}
"""Quantized checkpoints compute as `--dtype auto` does: bf16 where the CPU computes it natively,
else fp32 (a bf16 product without the instructions runs ~100x slower than fp32)."""
CACHE_VERSION = 5
"""Bumped when what a cached entry holds changes."""


def tokenizer_and_config(preset_name: str) -> tuple[Tokenizer, OmniVisionConfig]:
    from omnivision.config import preset

    tokenizer, _ = pick_tokenizer()
    return tokenizer, fit_to_tokenizer(preset(preset_name), tokenizer)


def prompt_ids(config: OmniVisionConfig, tokenizer: Tokenizer) -> list[int]:
    """The workload's prompt (one image, the question), image placeholders expanded."""
    proc = config.processing
    return build_inputs(tokenizer, [Message("user", QUESTION, has_image=True)], proc.template,
                        proc.system_prompt, config.num_image_tokens)


def _entry(workdir: Path, preset_name: str, what: str, seed: int) -> Path:
    return Path(workdir) / f"v{CACHE_VERSION}-{preset_name}-seed{seed}-{what}"


def _publish(tmp: Path, final: Path) -> Path:
    if final.exists():
        shutil.rmtree(final) if final.is_dir() else final.unlink()
    tmp.rename(final)
    return final


def native_checkpoint(workdir: Path, preset_name: str, precision: str, seed: int = 0) -> Path:
    """A native checkpoint of the random model at `precision` (made on first use)."""
    from omnivision.quantize.apply import quantize_model
    from omnivision.weights.native import save_native

    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; use {', '.join(PRECISIONS)}")
    final = _entry(workdir, preset_name, ENTRY_NAMES.get(precision, precision), seed)
    if final.is_dir():
        return final
    tokenizer, _ = tokenizer_and_config(preset_name)
    model = random_model(preset_name, tokenizer, seed)
    if precision != "fp32":
        model = model.to(torch.bfloat16)
    if precision in SCHEMES:
        scheme, parts = SCHEMES[precision]
        quantize_model(model, scheme, parts, head=True)
    tmp = final.with_name(final.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    save_native(model, tokenizer, tmp, extra={"random_weights": True})
    return _publish(tmp, final)


def llama_cpp_gguf(workdir: Path, preset_name: str, ggml_type: str, threads: int, seed: int = 0,
                   llama_cpp_dir: Path | None = None) -> Path:
    """The random language model as a GGUF of `ggml_type` (F16, or Q8_0 / Q4_0 made by llama.cpp, the
    build in `llama_cpp_dir` when given)."""
    from omnivision.bench.llama_cpp_peer import quantize
    from omnivision.weights.release_write import write_llm

    final = _entry(workdir, preset_name, f"llm-{ggml_type}.gguf", seed)
    if final.is_file():
        return final
    tmp = final.with_name(final.name + ".partial")
    if ggml_type == "F16":
        tokenizer, _ = tokenizer_and_config(preset_name)
        write_llm(random_model(preset_name, tokenizer, seed), tokenizer, tmp, "F16")
    else:
        quantize(llama_cpp_gguf(workdir, preset_name, "F16", threads, seed), tmp, ggml_type, threads, llama_cpp_dir)
    return _publish(tmp, final)
