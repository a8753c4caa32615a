"""`omnivision chat`: an interactive multi-turn conversation about an image.

Lines starting with `/image PATH` switch to a new image for the next question; `/reset` forgets the
conversation; `/quit` (or end of input) leaves.
"""

from __future__ import annotations

import argparse
import sys

from omnivision.cli.model_args import (add_generation_options, add_model_options, generation_kwargs,
                                       load_model)
from omnivision.processing.image import load_image
from omnivision.vlm import Turn


def add_parser(sub, name: str) -> None:
    p = sub.add_parser(name, help="interactive multi-turn chat")
    add_model_options(p)
    add_generation_options(p)
    p.add_argument("--image", help="the first image")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    vlm = load_model(args)
    kwargs = generation_kwargs(args)
    history: list[Turn] = []
    image = load_image(args.image) if args.image else None
    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            print("> ", end="", flush=True)
        line = sys.stdin.readline()
        if not line or line.strip() == "/quit":
            return 0
        line = line.strip()
        if not line:
            continue
        if line == "/reset":
            history, image = [], None
            continue
        if line.startswith("/image "):
            try:
                image = load_image(line[len("/image "):].strip())
            except ValueError as e:
                print(f"error: {e}", file=sys.stderr)
            continue
        pieces = []
        for piece in vlm.stream(image, line, history=history, **kwargs):
            pieces.append(piece)
            print(piece, end="", flush=True)
        print()
        history.append(Turn(line, "".join(pieces), image))
        image = None
