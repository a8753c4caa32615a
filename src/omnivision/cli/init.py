"""`omnivision init --preset NAME --random-weights OUT`: write a random-weight native checkpoint."""

from __future__ import annotations

import argparse

from omnivision.config import PRESETS
from omnivision.loader import DTYPES
from omnivision.weights.random_init import write_random_checkpoint


def add_parser(sub, name: str) -> None:
    p = sub.add_parser(name, help="write a random-weight checkpoint (tests, benchmarks)")
    p.add_argument("--preset", required=True, choices=sorted(PRESETS))
    p.add_argument("--random-weights", required=True, metavar="OUT", help="output directory")
    p.add_argument("--tokenizer", help="tokenizer.json to use (default: a local Qwen2.5 tokenizer, "
                                       "else a byte-level one)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="storage dtype of the weights (default float32)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    out, origin = write_random_checkpoint(args.preset, args.random_weights, args.tokenizer, args.seed,
                                          DTYPES[args.dtype])
    print(f"wrote {out} (preset {args.preset}, random weights, {origin})")
    return 0
