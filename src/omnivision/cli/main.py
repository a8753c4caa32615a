"""The `omnivision` command: a table of subcommands, each a thin function over the library.

Every subcommand module exposes `add_parser(subparsers)` and a `run(args) -> int`. User errors
(bad files, bad images, bad settings) print one line `error: ...` and exit with status 2, without a
traceback.
"""

from __future__ import annotations

import argparse
import sys

from omnivision.cli import (bench, chat, convert, data, info, init, quantize, run, serve, train, tune,
                            verify_release)
from omnivision.cli import eval as eval_command  # the module name shadows the builtin

COMMANDS = {
    "run": run,
    "chat": chat,
    "info": info,
    "convert": convert,
    "init": init,
    "verify-release": verify_release,
    "data": data,
    "train": train,
    "eval": eval_command,
    "quantize": quantize,
    "bench": bench,
    "tune": tune,
    "serve": serve,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="omnivision",
                                     description="Run, convert and inspect OmniVision models.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module in COMMANDS.items():
        module.add_parser(sub, name)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (ValueError, OSError) as e:
        # CheckpointError, ImageError, ContextOverflowError and bad settings are ValueErrors
        message = " ".join(str(e).splitlines()) or type(e).__name__
        print(f"error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
