"""How fast the nano recipe's stage 2 steps, with and without the compiled decoder and the feature cache.

    python scripts/nano_step_speed.py RUN [--steps 160] [--threads 2] [--precision fp32] [--recipe-only]

RUN is a folder written by `omnivision train recipe nano` (its `data/` and stage-1 model
`runs/align/model`). The script runs the recipe's stage 2 (`recipe_nano.stage2_config`) from that
model for `--steps` steps in each of four settings, one after the other in this process, on the
same batches: eager with the tower in every step (the recipe before 2026-12-06), the feature cache,
the compiled decoder (`TrainConfig.compile`), and both. Each rate is the median of the
conversations per second the loop logs every 10 steps, leaving out the first 40 steps (compiling,
the cache's first reads); the table gives each as a ratio to the first. Time it alone: the rates
are the machine's, and the script prints which CPU it ran on. `--precision` sets the recipe's
`precision` (auto: bf16 autocast where the CPU has native bf16) for every setting, so two runs
compare compute dtypes on the CPU at hand; `--recipe-only` times only the recipe's own setting
(compiled decoder, feature cache).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import tempfile
from pathlib import Path

import torch

from omnivision.train.nano_config import NanoConfig
from omnivision.train.recipe_nano import stage2_config
from omnivision.train.recipe_sft import run_sft

SETTINGS = {"eager, tower in every step": {"sft_compile": False, "sft_feature_cache": False},
            "feature cache": {"sft_compile": False, "sft_feature_cache": True},
            "compiled decoder": {"sft_compile": True, "sft_feature_cache": False},
            "compiled decoder, feature cache": {"sft_compile": True, "sft_feature_cache": True}}
RECIPE = "compiled decoder, feature cache"
"""The recipe's own setting (its defaults)."""


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def rate(run: Path, out: Path, steps: int, skip: int, **nano) -> float:
    """The median conversations per second of `steps` stage-2 steps with NanoConfig fields `nano`."""
    sft = stage2_config(NanoConfig(**nano), run / "data", run / "runs" / "align" / "model", out)
    sft.train = dataclasses.replace(sft.train, steps=steps, log_every=10, save_every=0)
    run_sft(sft)
    logged = [json.loads(line) for line in (out / "sft" / "metrics.jsonl").read_text().splitlines()]
    return statistics.median(r["samples_per_s"] for r in logged if r["step"] > skip)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path)
    p.add_argument("--steps", type=int, default=160)
    p.add_argument("--skip", type=int, default=40, help="first steps left out of the rate")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    p.add_argument("--recipe-only", action="store_true", help="time only the compiled decoder on the feature cache")
    args = p.parse_args()
    settings = {RECIPE: SETTINGS[RECIPE]} if args.recipe_only else SETTINGS
    if args.threads:
        torch.set_num_threads(args.threads)
    rates = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, nano) in enumerate(settings.items()):
            rates[name] = rate(args.run, Path(tmp) / str(i), args.steps, args.skip, precision=args.precision, **nano)
    print(f"\n{cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}; "
          f"stage 2 of {args.run}, steps {args.skip + 1}-{args.steps}, precision {args.precision}")
    print("| stage 2 | conversations / s | against the first |\n| --- | --- | --- |")
    base = next(iter(rates.values()))
    for name, r in rates.items():
        print(f"| {name} | {r:.1f} | {r / base:.2f}x |")


if __name__ == "__main__":
    main()
