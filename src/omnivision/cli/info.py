"""`omnivision info SRC`: describe a model source without reading tensor data.

Validates the whole file structure exactly as loading does (GGUF header, metadata, tensor table,
offsets and sizes; safetensors header) and prints the config, parameter counts, dtypes and sizes.
"""

from __future__ import annotations

import argparse
from collections import Counter
from math import prod
from pathlib import Path

from omnivision.weights.gguf_file import GGUFFile
from omnivision.weights.native import CONFIG, WEIGHTS, is_native, read_config
from omnivision.weights.safetensors_check import check_safetensors


def add_parser(sub, name: str) -> None:
    p = sub.add_parser(name, help="validate and describe a checkpoint or GGUF file")
    p.add_argument("source", help="native checkpoint dir, GGUF dir, .gguf or .safetensors file")
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


def _describe_gguf(path: Path) -> None:
    f = GGUFFile.open(path)
    print(f.describe())
    shapes = {n: t.shape for n, t in f.tensors.items()}
    part = {"siglip": lambda n: "projector" if n.startswith("mm.") else "vision",
            "qwen2": lambda n: "language"}.get(f.metadata.get("general.architecture"), lambda n: "tensors")
    print("parameters:")
    _print_counts(_params_by_part(shapes, part))


def _describe_safetensors(path: Path) -> None:
    header = check_safetensors(path)
    dtypes = Counter(e["dtype"] for e in header.values())
    total = sum(e["data_offsets"][1] - e["data_offsets"][0] for e in header.values())
    print(f"{path.name}: safetensors, {len(header)} tensors, {total:,} bytes; dtypes: "
          + ", ".join(f"{k} {v}" for k, v in dtypes.most_common()))
    print("parameters:")
    _print_counts(_params_by_part({n: tuple(e["shape"]) for n, e in header.items()},
                                  lambda n: n.split(".", 1)[0]))


def run(args: argparse.Namespace) -> int:
    src = Path(args.source)
    if not src.exists():
        raise FileNotFoundError(f"{src}: no such file or directory")
    if src.is_dir() and is_native(src):
        config = read_config(src)
        check_safetensors(src / WEIGHTS)  # fail before printing anything
        print(f"native checkpoint {src}")
        print(f"config ({CONFIG}):")
        print(config.to_json())
        _describe_safetensors(src / WEIGHTS)
    elif src.is_dir():
        files = sorted(src.glob("*.gguf"))
        if not files:
            raise ValueError(f"{src}: no native checkpoint and no .gguf files")
        for f in files:
            _describe_gguf(f)
    elif src.suffix == ".safetensors":
        _describe_safetensors(src)
    else:
        _describe_gguf(src)
    return 0
