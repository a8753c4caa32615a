"""Command-line options shared by the commands that load a model, and the default model.

With no `--model`, the commands use the bundled nano model (`omnivision/assets/nano`); a checkout
without it falls back to a random-weight tiny model built in memory and says so on stderr.
"""

from __future__ import annotations

import argparse
import sys

import torch

from omnivision.loader import BUNDLED, load
from omnivision.weights.native import is_native
from omnivision.vlm import OmniVision


def add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="native checkpoint dir, GGUF dir, language-model .gguf, or hub repo id "
                                   "(default: the bundled nano model)")
    p.add_argument("--mmproj", help="the mmproj .gguf, when --model is a language-model .gguf file")
    p.add_argument("--gguf-type", help="which language-model GGUF to use when several are present "
                                       "(e.g. F16, Q8_0; default: the highest precision)")
    p.add_argument("--keep-quantized", action="store_true",
                   help="a Q8_0 / Q4_0 language-model GGUF loads into int8 / int4 layers instead of being "
                        "dequantized (less memory, faster decoding)")
    p.add_argument("--threads", type=int, default=0,
                   help="CPU threads for torch (default: torch's choice, the physical cores)")
    p.add_argument("--low-memory", action="store_true",
                   help="keep one tower's memory-mapped weights resident at a time: the language model's "
                        "pages are given back while an image is encoded, the vision tower's after "
                        "(lower peak memory; pages are read back when needed again)")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="compute dtype (auto: bfloat16 where the CPU supports it natively)")


def add_generation_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-new-tokens", type=int, default=256, help="answer length limit (default 256)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-k", type=int, default=0, help="sample from the k most likely tokens (0 = all)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling threshold")
    p.add_argument("--repetition-penalty", type=float, default=1.0, help="1.0 = off")
    p.add_argument("--seed", type=int, help="seed for sampling")
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--template", choices=["omnivision", "omnivision-v1", "omnivision-ocr", "chatml"],
                   help="chat template (default: the model's own)")


def generation_kwargs(args: argparse.Namespace) -> dict:
    return dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                top_p=args.top_p, repetition_penalty=args.repetition_penalty, seed=args.seed,
                stop=args.stop, template=args.template)


def load_model(args: argparse.Namespace) -> OmniVision:
    vlm = _load(args)
    vlm.low_memory = args.low_memory
    return vlm


def _load(args: argparse.Namespace) -> OmniVision:
    if args.threads < 0:
        raise ValueError(f"--threads must be >= 0, got {args.threads}")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.model is None and is_native(BUNDLED):
        return load(BUNDLED, dtype=args.dtype)
    if args.model is None:
        from omnivision.processing.byte_tokenizer import byte_level_tokenizer
        from omnivision.weights.random_init import random_model

        print("note: no --model given and no bundled model yet: answering with a random-weight tiny "
              "model, so the answer is noise", file=sys.stderr)
        tokenizer = byte_level_tokenizer()
        return OmniVision(random_model("tiny", tokenizer), tokenizer, note="random-weight tiny model")
    model = load(args.model, dtype=args.dtype, gguf_type=args.gguf_type, mmproj=args.mmproj,
                 keep_quantized=args.keep_quantized)
    if args.gguf_type is not None or "highest precision" in model.note:
        print(f"note: {model.note}", file=sys.stderr)
    return model
