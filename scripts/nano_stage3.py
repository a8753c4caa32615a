"""Run the nano recipe's stage 3 again from a run's stage-2 model, with other settings, and measure
what it changes: the held-out table, and the absent objects named in the captions of many unseen
scenes.

    python scripts/nano_stage3.py RUN OUT [--stage2 MODEL] [--absent 5151:1500 5152:3000] \
        [--threads N] [key=value ...]

RUN is a folder written by `omnivision train recipe nano` (its `data/`, `eval-data/` and stage-2
model `runs/sft/model`; `--stage2` names another stage-2 model trained on RUN's data, such as a
`scripts/nano_spread.py` draw's). `key=value` pairs override `NanoConfig` fields for stage 3
(`dpo_steps=10`, `dpo_sources=1000`, `dpo_scenes=0` for the training scenes, ...), the way the
recipe's command line does. The script runs the recipe's own `dpo_data` and `stage3` into OUT
(`dpo-data/`, `pairs.jsonl`, `runs/dpo/model`), so with no overrides it writes the model that the
recipe writes from nothing (stages 0-2 are deterministic on a given CPU and thread count: give `--threads` the run's).

The held-out set holds 240 scenes with objects, about 550 objects named in captions: at the rates a
good stage 2 leaves (a few per thousand) that is one or two absent objects. `--absent SEED:N`
generates N scenes of SEED (at the model's image size, in OUT/absent-SEED) and counts, for the
stage-2 and the stage-3 model, the objects named in greedy captions of their scenes with objects
that the scene does not hold (`eval.shapes_accuracy.absent_object_rate`). Prints one line per model
and set; OUT/report.json has every figure.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from omnivision.data.shapes_dataset import generate_shapes_dataset
from omnivision.loader import load
from omnivision.train.config import load_config
from omnivision.train.nano_config import NanoConfig
from omnivision.train.nano_report import markdown_table
from omnivision.train.recipe_nano import absent_objects, dpo_data, evaluate, stage3
from omnivision.vlm import OmniVision


def captioner(vlm: OmniVision, data: Path):
    """`vlm`'s greedy answers about images of `data`, 64 at a time, long enough for any caption."""
    def answer(images: list[str], prompts: list[str]) -> list[str]:
        out: list[str] = []
        for i in range(0, len(images), 64):
            out += vlm.answer_batch([data / im for im in images[i:i + 64]], prompts[i:i + 64], max_new_tokens=48)
        return out
    return answer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--stage2", type=Path, default=None, help="default: RUN/runs/sft/model")
    p.add_argument("--absent", nargs="*", default=[], metavar="SEED:N",
                   help="unseen scenes to count absent objects on")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("overrides", nargs="*", help="NanoConfig key=value for stage 3")
    args = p.parse_intermixed_args()  # the overrides may follow the options
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(NanoConfig, None, args.overrides)
    sets = [tuple(int(v) for v in spec.split(":")) for spec in args.absent]
    stage2_dir = args.stage2 or args.run / "runs" / "sft" / "model"
    stage2 = load(stage2_dir, dtype="float32")
    size = stage2.config.vision.image_size
    args.out.mkdir(parents=True, exist_ok=True)
    for seed, n in sets:
        if not (args.out / f"absent-{seed}" / "meta.json").is_file():
            generate_shapes_dataset(args.out / f"absent-{seed}", n, seed, image_size=size)

    prompts = dpo_data(cfg, args.out, size) or args.run / "data"
    final, pairs = stage3(cfg, prompts, stage2_dir, args.out, stage2)
    report: dict = {"overrides": args.overrides, "stage2": str(stage2_dir), "pairs": pairs, "stages": {},
                    "absent_objects": {}}
    for name, vlm in (("2-sft", stage2), ("3-dpo", load(final, dtype="float32"))):
        report["stages"][name] = evaluate(vlm, args.run / "eval-data")
        report["absent_objects"][name] = {seed: absent_objects(captioner(vlm, args.out / f"absent-{seed}"),
                                                               args.out / f"absent-{seed}")
                                          for seed, _ in sets}
    (args.out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    print(f"stage 3 pairs: {pairs}")
    print(markdown_table(report), end="")
    for name, by_seed in report["absent_objects"].items():
        for seed, r in by_seed.items():
            print(f"{name}, seed {seed}: {100 * r['object_rate']:.2f} % of {r['objects_named']:.0f} objects "
                  f"named are absent ({round(r['object_rate'] * r['objects_named'])})")


if __name__ == "__main__":
    main()
