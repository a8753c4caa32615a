"""Score nano models on scenes of a seed that no run has looked at: the recipe's final table.

    python scripts/nano_fresh_seed.py --seed 4243 --n 300 "stage 2=runs/nano/runs/sft/model" \
        "stage 3=runs/nano/model"

The recipe tunes on its held-out seed (`NanoConfig.eval_seed`, 1001), so its `report.json` is
optimistic by however much the choices fit that seed. This script generates `--n` scenes of a fresh
`--seed` at the models' image size and scores each model exactly as the recipe does
(`recipe_nano.evaluate`: QA accuracy per kind, POPE-style probes per negative-sampling strategy,
absent objects named in captions), printing the same Markdown table as `report.md`, one row per
model. `--json FILE` also writes the scores.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from omnivision.data.shapes_dataset import generate_shapes_dataset
from omnivision.loader import load
from omnivision.train.nano_report import markdown_table
from omnivision.train.recipe_nano import evaluate


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="+", help="NAME=MODEL_DIR (the row's name and the model)")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--n", type=int, default=300)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    named = [m.split("=", 1) if "=" in m else (m, m) for m in args.models]
    stages = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        vlms = {name: load(model, dtype="float32") for name, model in named}
        size = next(iter(vlms.values())).config.vision.image_size
        generate_shapes_dataset(data, args.n, args.seed, image_size=size)
        for name, vlm in vlms.items():
            stages[name] = evaluate(vlm, data)
    print(f"{args.n} scenes of seed {args.seed}:\n")
    print(markdown_table({"stages": stages}))
    if args.json:
        report = {"seed": args.seed, "n": args.n, "stages": stages}
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
