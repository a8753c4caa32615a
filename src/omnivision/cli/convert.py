"""`omnivision convert SRC OUT --to native|gguf|vllm`: between native checkpoints and the GGUF pair,
and out to the folder vLLM reads through the plugin (`weights/vllm_export.py`).

`--from-hf VISION_DIR LANGUAGE_DIR` takes Hugging Face component checkpoints (SigLIP + Qwen2.5) as
the source instead and initialises a fresh projector.
"""

from __future__ import annotations

import argparse


from omnivision.loader import DTYPES, load
from omnivision.weights.hf_components import from_hf_components
from omnivision.weights.native import save_native
from omnivision.weights.release_write import FILE_TYPES, write_release
from omnivision.weights.vllm_export import save_vllm


def add_parser(sub, name: str) -> None:
    p = sub.add_parser(name, help="convert between native checkpoints and the official GGUF pair, or "
                                       "out to a folder for vLLM")
    p.add_argument("source", nargs="?", help="any model source `omnivision run --model` accepts")
    p.add_argument("out", help="output directory")
    p.add_argument("--to", required=True, choices=["native", "gguf", "vllm"])
    p.add_argument("--dtype", help="gguf: F32, F16 (default), Q8_0 or Q4_0; native and vllm: "
                                   "float32 (default), bfloat16 or float16")
    p.add_argument("--from-hf", nargs=2, metavar=("VISION_DIR", "LANGUAGE_DIR"),
                   help="build from HF SigLIP and Qwen2.5 checkpoint directories instead of SOURCE")
    p.add_argument("--compression", default="concat9", choices=["concat9", "spatial3x3", "none"],
                   help="with --from-hf: the projector's token compression")
    p.add_argument("--mmproj", help="the mmproj .gguf, when SOURCE is a language-model .gguf file")
    p.add_argument("--gguf-type", help="which language-model GGUF to read when several are present")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if args.from_hf:
        model, tokenizer = from_hf_components(*args.from_hf, compression=args.compression)
    elif args.source:
        vlm = load(args.source, dtype="float32", gguf_type=args.gguf_type, mmproj=args.mmproj)
        model, tokenizer = vlm.model, vlm.tokenizer
    else:
        raise ValueError("give SOURCE or --from-hf VISION_DIR LANGUAGE_DIR")
    if args.to == "gguf":
        dtype = (args.dtype or "F16").upper()
        if dtype not in FILE_TYPES:
            raise ValueError(f"--dtype for gguf must be one of {sorted(FILE_TYPES)}")
        llm, mmproj = write_release(model, tokenizer, args.out, dtype)
        print(f"wrote {llm} and {mmproj}")
    else:
        dtype = args.dtype or "float32"
        if dtype not in DTYPES:
            raise ValueError(f"--dtype for {args.to} must be one of float32, bfloat16, float16")
        save = save_vllm if args.to == "vllm" else save_native
        out = save(model.to(DTYPES[dtype]), tokenizer, args.out)
        print(f"wrote {out}")
    return 0
