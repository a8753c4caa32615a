"""`omnivision run`: answer one question about one image; prints only the answer (or JSON)."""

from __future__ import annotations

import argparse
import json
import sys

from omnivision.cli.model_args import (add_generation_options, add_model_options, generation_kwargs,
                                       load_model)


def add_parser(sub, name: str) -> None:
    p = sub.add_parser(name, help="answer a question about an image")
    add_model_options(p)
    add_generation_options(p)
    p.add_argument("--image", help="PNG, JPEG or WEBP file (omit for a text-only question)")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object: text, token_ids, prompt_tokens, stopped_by")
    p.add_argument("--stream", action="store_true", help="print the answer as it is generated")
    p.add_argument("prompt", help="the question")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    vlm = load_model(args)
    kwargs = generation_kwargs(args)
    if args.stream and not args.json:
        for piece in vlm.stream(args.image, args.prompt, **kwargs):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        return 0
    answer = vlm.answer(args.image, args.prompt, **kwargs)
    if args.json:
        print(json.dumps({"text": answer.text, "token_ids": answer.token_ids,
                          "prompt_tokens": answer.prompt_tokens, "stopped_by": answer.stopped_by},
                         ensure_ascii=False))
    else:
        print(answer.text)
    return 0
