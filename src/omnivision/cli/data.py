"""`omnivision data`: make and check datasets.

- `omnivision data shapes --out DIR --n N --seed S [--image-size 96] [--chart-fraction 0.2]` writes
  a procedural dataset (see `omnivision.data.shapes_dataset`).
- `omnivision data check FILE --kind KIND [--images DIR] [--skip-bad]` reads a dataset file,
  validating every record, and with `--images` checks that every image exists and decodes.
"""

from __future__ import annotations

import argparse

from omnivision.data.formats import read_captions, read_conversations, read_preferences, read_qa
from omnivision.data.shapes_dataset import MAX_TURNS, SFT_QUESTIONS, generate_shapes_dataset
from omnivision.data.images import check_images

READERS = {"conversations": read_conversations, "captions": read_captions,
           "preferences": read_preferences, "qa": read_qa}


def add_parser(sub, name: str) -> None:
    p = sub.add_parser(name, help="make and check datasets")
    actions = p.add_subparsers(dest="data_command", required=True, metavar="ACTION")

    s = actions.add_parser("shapes", help="write a procedural dataset of shapes and bar charts")
    s.add_argument("--out", required=True, metavar="DIR", help="output directory")
    s.add_argument("--n", required=True, type=int, help="number of scenes (images)")
    s.add_argument("--seed", required=True, type=int)
    s.add_argument("--image-size", type=int, default=96, help="image side in pixels (default 96)")
    s.add_argument("--chart-fraction", type=float, default=0.2,
                   help="share of the scenes that are bar charts (default 0.2)")
    s.add_argument("--sft-questions", choices=SFT_QUESTIONS, default="one",
                   help="what sft.json asks of each scene: one question of each kind (default), "
                        "or every question")
    s.add_argument("--max-turns", type=int, default=MAX_TURNS,
                   help=f"the most questions one sft.json conversation asks (default {MAX_TURNS})")
    s.set_defaults(handler=run)

    c = actions.add_parser("check", help="validate a dataset file and, optionally, its images")
    c.add_argument("file", help="a JSON array or JSONL file")
    c.add_argument("--kind", required=True, choices=sorted(READERS))
    c.add_argument("--images", metavar="DIR", help="image folder the records' paths are under")
    c.add_argument("--skip-bad", action="store_true",
                   help="count records with bad images instead of stopping at the first")
    c.set_defaults(handler=run)


def _shapes(args: argparse.Namespace) -> int:
    meta = generate_shapes_dataset(args.out, args.n, args.seed, args.image_size,
                                   args.chart_fraction, args.sft_questions, args.max_turns)
    c = meta["counts"]
    probes = sum(v["yes"] + v["no"] for v in c["pope"].values())
    print(f"wrote {c['scenes']} scenes ({c['shape_scenes']} shapes, {c['chart_scenes']} charts) "
          f"to {args.out}: {c['sft_conversations']} conversations, {sum(c['qa'].values())} "
          f"questions, {probes} probes (seed {args.seed})")
    return 0


def _check(args: argparse.Namespace) -> int:
    records = READERS[args.kind](args.file)
    line = f"{args.file}: {len(records)} records ({args.kind}), all valid"
    if args.images:
        _, report = check_images(records, args.images, skip_bad=args.skip_bad)
        line += f"; images: {report.summary()}"
    print(line)
    return 0


def run(args: argparse.Namespace) -> int:
    return _shapes(args) if args.data_command == "shapes" else _check(args)
