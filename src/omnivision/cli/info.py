"""`omnivision info SRC`: describe a model source and run loading's checks, without reading tensor data.

For a model source (what `omnivision.load` and `--model` take: a native checkpoint directory, a
GGUF folder, a language-model `.gguf` with its mmproj beside it or given with `--mmproj`, a hub id
already in the local cache) it prints each file (GGUF header and type histogram, or the
safetensors dtypes), the parameter counts and the model config, then runs every check loading runs
(`omnivision.loader.check`): the file containers, the choice of the GGUF pair, the config and its
quantization entry, every tensor name, shape and dtype against the config, and the tokenizer. A
source that would not load fails here with the same error (exit status 2). What is not checked:
the tensor values themselves, and whether a quantized GGUF type can be dequantised (both need the
data).

A single `.safetensors` file or a lone mmproj `.gguf` is not a model by itself: it is described and
its container checked, and the output says so.
"""

from __future__ import annotations

import argparse
from collections import Counter
from math import prod
from pathlib import Path

from omnivision.loader import check
from omnivision.weights.gguf_file import GGUFFile
from omnivision.weights.native import CONFIG, WEIGHTS, is_native, read_config
from omnivision.weights.quantized_checkpoint import recorded_quantization
from omnivision.weights.safetensors_check import check_safetensors


def add_parser(sub, name: str) -> None:
    p = sub.add_parser(name, help="validate (as loading does, without tensor data) and describe a model")
    p.add_argument("source", help="native checkpoint dir, GGUF dir, language-model .gguf (with its "
                                  "mmproj), hub id in the local cache; or a lone .safetensors / mmproj .gguf")
    p.add_argument("--mmproj", help="the mmproj GGUF of a language-model .gguf (default: the one beside it)")
    p.add_argument("--gguf-type", help="the language-model GGUF of a folder holding several (e.g. Q8_0)")
    p.set_defaults(handler=run)


def _params_by_part(shapes: dict[str, tuple[int, ...]], part_of) -> dict[str, int]:
    counts: Counter = Counter()
    for name, shape in shapes.items():
        counts[part_of(name)] += prod(shape)
    return dict(counts)


def _print_counts(counts: dict[str, int]) -> None:
    for part, n in sorted(counts.items()):
        print(f"  {part:<10} {n:>14,}")
    print(f"  {'total':<10} {sum(counts.values()):>14,}")


def _describe_gguf(path: Path) -> GGUFFile:
    f = GGUFFile.open(path)
    print(f.describe())
    shapes = {n: t.shape for n, t in f.tensors.items()}
    part = {"siglip": lambda n: "projector" if n.startswith("mm.") else "vision",
            "qwen2": lambda n: "language"}.get(f.metadata.get("general.architecture"), lambda n: "tensors")
    print("parameters:")
    _print_counts(_params_by_part(shapes, part))
    return f


def _describe_safetensors(path: Path) -> None:
    header = check_safetensors(path)
    dtypes = Counter(e["dtype"] for e in header.values())
    total = sum(e["data_offsets"][1] - e["data_offsets"][0] for e in header.values())
    print(f"{path.name}: safetensors, {len(header)} tensors, {total:,} bytes; dtypes: "
          + ", ".join(f"{k} {v}" for k, v in dtypes.most_common()))
    print("parameters:")
    _print_counts(_params_by_part({n: tuple(e["shape"]) for n, e in header.items()},
                                  lambda n: n.split(".", 1)[0]))


def _checked(args: argparse.Namespace, native: bool) -> None:
    """Loading's checks; prints what they established (or raises loading's error)."""
    checked = check(args.source, gguf_type=args.gguf_type, mmproj=args.mmproj)
    if not native:
        files = checked.source.release
        print(f"model: {checked.source.note}; mmproj: {files.mmproj.path.name}")
        print("config (implied by the files):")
        print(checked.model.config.to_json())
    print(f"checked as loading checks, without tensor data: files, config, tensor names, shapes and "
          f"dtypes, tokenizer ({checked.tokenizer.vocab_size:,} tokens)")


def run(args: argparse.Namespace) -> int:
    src = Path(args.source)
    if src.is_dir() and is_native(src):
        config = read_config(src)
        check_safetensors(src / WEIGHTS)  # fail before printing anything
        print(f"native checkpoint {src}")
        print(f"config ({CONFIG}):")
        print(config.to_json())
        quantization = recorded_quantization(src / CONFIG)
        if quantization is not None:
            print(f"quantization: {quantization['scheme']} on {', '.join(quantization['parts'])}"
                  + (", output head included" if quantization.get("head") else ""))
        _describe_safetensors(src / WEIGHTS)
        _checked(args, native=True)
    elif src.is_dir():
        files = sorted(src.glob("*.gguf"))
        if not files:
            raise ValueError(f"{src}: no native checkpoint and no .gguf files")
        for f in files:
            _describe_gguf(f)
        _checked(args, native=False)
    elif src.is_file() and src.suffix == ".safetensors":
        _describe_safetensors(src)
        print("a lone safetensors file is not a model (loading takes its checkpoint directory): "
              "only its header was checked")
    elif src.is_file():
        f = _describe_gguf(src)
        if f.metadata.get("general.architecture") == "siglip" and args.mmproj is None:
            print("an mmproj alone is not a model (loading takes its folder, or the language-model "
                  ".gguf): only this file was checked")
        else:
            _checked(args, native=False)
    else:
        _checked(args, native=False)  # a hub id in the cache, or loading's "no such file" error
    return 0
