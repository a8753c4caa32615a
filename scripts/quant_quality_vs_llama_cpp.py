"""This project's weight quantization against llama.cpp's, on the same real language model.

    python scripts/quant_quality_vs_llama_cpp.py GGUF [--work DIR] [--threads 2]

GGUF is a `qwen2` language-model file (the real one of docs/official-release.md section 9 is a
Q4_K_M file). Its dequantised weights (fp32) are the reference. They are written as an F16 GGUF,
from which llama.cpp's own quantizer (`llama_model_quantize`, llama-cpp-python) makes Q8_0 and
Q4_0; both are read back dequantised. Ours quantizes the reference: int8 (one scale per output
row), int8 in groups of 32 (Q8_0's layout), int4 with groups of 32 (Q4_0's group size) and 128, each
with and without the output head.
Every variant goes through `omnivision quantize --check --language-only`'s measurement (12 text
prompts, teacher-forced on the reference's greedy answers): top-1 agreement and mean KL. The
tensor types llama.cpp chose are printed too (it keeps some tensors finer than the named type).
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import torch

from omnivision.bench.llama_cpp_peer import quantize as llama_quantize
from omnivision.eval.quantization_quality import check_language_model
from omnivision.model.qwen2 import LanguageOnly
from omnivision.quantize import quantize_model
from omnivision.weights.convert import native_to_llm, split_native
from omnivision.weights.gguf_file import GGUFFile
from omnivision.weights.gguf_write import write_gguf
from omnivision.weights.release_read import load_language_model

COPIED_PREFIXES = ("tokenizer.", "qwen2.", "general.name")


def write_f16(source: Path, reference, out: Path) -> None:
    """The reference decoder as an F16 GGUF with the source's metadata (norms and biases stay F32)."""
    meta = {k: v for k, v in GGUFFile.open(source).metadata.items() if k.startswith(COPIED_PREFIXES)}
    meta["general.file_type"] = 1  # MOSTLY_F16
    state = {k: v.detach().float() for k, v in LanguageOnly(reference).state_dict().items()}
    tensors = native_to_llm(split_native(state)[1])
    write_gguf(out, "qwen2", meta, {name: (t, "F16" if t.ndim == 2 else "F32") for name, t in tensors.items()})


def tensor_types(path: Path) -> dict[str, int]:
    return dict(Counter(t.ggml_type.name for t in GGUFFile.open(path).tensors.values()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("gguf", type=Path)
    parser.add_argument("--work", type=Path, default=Path("runs/quant-vs-llama-cpp"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    reference, tokenizer = load_language_model(args.gguf)
    f16 = args.work / "reference-F16.gguf"
    if not f16.exists():
        write_f16(args.gguf, reference, f16)
    rows = {}

    def report(name: str, model, note: str = "") -> None:
        result = check_language_model(reference, model, tokenizer, name)
        rows[name] = {"top1_agreement": round(result.top1_agreement, 4), "mean_kl": round(result.mean_kl, 5),
                      "positions": result.positions, "note": note}
        print(f"{name:<28} {100 * result.top1_agreement:6.2f} %  KL {result.mean_kl:.4f}  {note}", flush=True)

    for ftype in ("Q8_0", "Q4_0"):
        out = args.work / f"llama-{ftype}.gguf"
        if not out.exists():
            llama_quantize(f16, out, ftype, args.threads)
        model, _ = load_language_model(out)
        report(f"llama.cpp {ftype}", model, f"tensor types {tensor_types(out)}")
        del model
    for scheme in ("int8", "int8-g32", "int4-g32", "int4-g128"):
        for head in (False, True):
            model, _ = load_language_model(args.gguf)
            summary = quantize_model(LanguageOnly(model), scheme, ("language",), head=head)
            report(f"ours {summary.scheme}{' + head' if head else ''}", model,
                   f"{summary.bytes_after / 2**20:.0f} MiB of quantized layers")
            del model
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
