"""How much stage 2 of the nano recipe depends on the order of its batches, and when it learns what.

    python scripts/nano_spread.py RUN --seeds 2 3 [--every 900] [--out DIR] [--one-object] [key=value ...]

RUN is a folder written by `omnivision train recipe nano` (its `data/`, `eval-data/` and stage-1
model `runs/align/model`). For each seed the script runs the recipe's stage 2 from that stage-1
model, changing only the seed of the batch order (`TrainConfig.seed`; the recipe uses its own
`seed`), keeps a checkpoint every `--every` steps, and scores each checkpoint on the held-out
questions, one per conversation as the recipe's evaluation asks and scores them (so the last
checkpoint's figures are the ones the recipe's report would give): accuracy per question kind,
and colour on scenes of one object alone (where no lookup among tokens is needed, only reading the
colour). After the last checkpoint it prints which colours the final model says for which, so the
errors show as near misses (red, orange, yellow) or as noise. `key=value` pairs override
`NanoConfig` fields for stage 2 (`sft_lr=2.5e-4`, `sft_steps=2700`, ...), the way the recipe's
command line does.

`--one-object` trains on the conversations of the training scenes that hold one object only: a
quick check of what stages 0-1 made (900 steps, `sft_steps=900`, about 7 minutes on one thread),
since reading the colour of a lone object needs no lookup among tokens, only image tokens from
which the decoder can learn colour. From stage-1 models of the recipe (held-out colour on
one-object scenes after 900 such steps, seed of the run's own batch order; AMX Xeon, 2026-12-07):
the bundled model's 73.7 %; seeds 2 and 3, whose full stage 2 stays at 28 and 25 % colour at
2,700 steps, 21.1 and 19.3 % (chance: 17); seed 2 with the region objective
(`siglip_cell_texts=true`) 56.1 %, and with stage 1 on the conversations as well
(`align_data=conversations`) 66.7 %.

A seed whose folder already holds a final model is scored again, not retrained (`--score-only`:
whatever checkpoints an unfinished run left), so runs can be split over processes (`--seeds 2` in
one, `--seeds 3` in another, each with `--threads 1`) and the table printed afterwards from all of
them. Results go to OUT/seed-N/curve.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections import Counter
from pathlib import Path

import torch

from omnivision.data.answer_rule import is_correct, normalise
from omnivision.data.formats import read_qa
from omnivision.loader import load
from omnivision.train.checkpoint import complete_checkpoints
from omnivision.train.config import load_config
from omnivision.train.nano_config import NanoConfig
from omnivision.train.recipe_nano import stage2_config
from omnivision.train.recipe_sft import run_sft

COLUMNS = ("overall", "color", "shape", "count", "position", "chart", "color, one object")


def score(model: Path, data: Path, scenes: dict[str, dict]) -> dict:
    """Held-out accuracy per kind (the recipe's rule and batches, so a final checkpoint scores as the
    recipe's report does), colour of lone objects, and the colour confusions of `model`."""
    vlm = load(model, dtype="float32")
    items = read_qa(data / "qa.jsonl")
    answers: list[str] = []
    for start in range(0, len(items), 32):
        chunk = items[start:start + 32]
        answers += vlm.answer_batch([data / q.image for q in chunk], [q.question for q in chunk],
                                    max_new_tokens=32)
    right, total, confusions = Counter(), Counter(), Counter()
    for q, a in zip(items, answers):
        ok = is_correct(a, q.answer, q.qtype)
        kinds = [q.qtype, "overall"]
        if q.qtype == "color":
            confusions[q.answer, normalise(a)] += 1
            if len(scenes[q.image].get("objects", ())) == 1:
                kinds.append("color, one object")
        for kind in kinds:
            right[kind] += ok
            total[kind] += 1
    return {"accuracy": {kind: 100 * right[kind] / total[kind] for kind in total},
            "colour_confusions": [[t, s, n] for (t, s), n in sorted(confusions.items())]}


def one_object_conversations(data: Path, out: Path) -> Path:
    """The conversations of `data`'s sft.json about shapes scenes of one object, written to `out`."""
    scenes = {s["image"]: s for s in map(json.loads, (data / "scenes.jsonl").read_text().splitlines())}
    kept = [c for c in json.loads((data / "sft.json").read_text())
            if scenes[c["image"]]["kind"] == "shapes" and len(scenes[c["image"]]["objects"]) == 1]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(kept))
    return out


def train_seed(cfg: NanoConfig, run: Path, out: Path, seed: int, every: int, one_object: bool = False) -> None:
    """Stage 2 from RUN's stage-1 model with batch-order seed `seed`, a checkpoint every `every` steps
    (on the one-object scenes' conversations only with `one_object`)."""
    sft = stage2_config(cfg, run / "data", run / "runs" / "align" / "model", out)
    sft.train = dataclasses.replace(sft.train, seed=seed, save_every=every, keep_last=1_000)
    if one_object:
        sft.data = str(one_object_conversations(run / "data", out / "one-object-sft.json"))
    run_sft(sft)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path)
    p.add_argument("--seeds", type=int, nargs="+", required=True)
    p.add_argument("--every", type=int, default=900, help="steps between scored checkpoints")
    p.add_argument("--out", type=Path, default=None, help="default: RUN/spread")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--score-only", action="store_true", help="score the checkpoints there are, train nothing")
    p.add_argument("--one-object", action="store_true", help="train on the one-object scenes' conversations only")
    p.add_argument("overrides", nargs="*", help="NanoConfig key=value for stage 2")
    args = p.parse_intermixed_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(NanoConfig, None, args.overrides)
    out = args.out or args.run / "spread"
    data = args.run / "eval-data"
    scenes = {s["image"]: s for s in map(json.loads, (data / "scenes.jsonl").read_text().splitlines())}
    for seed in args.seeds:
        folder = out / f"seed-{seed}"
        if not args.score_only and not (folder / "sft" / "model").is_dir():
            train_seed(cfg, args.run, folder, seed, args.every, args.one_object)
        curve = {}
        for checkpoint in complete_checkpoints(folder / "sft" / "checkpoints"):
            curve[int(checkpoint.name.split("_")[1])] = score(checkpoint / "model", data, scenes)
        (folder / "curve.json").write_text(json.dumps({"overrides": args.overrides, "curve": curve}, indent=1))
        print(f"seed {seed}" + (f" ({' '.join(args.overrides)})" if args.overrides else ""))
        print(f"{'step':>6}" + "".join(f"{k:>18}" for k in COLUMNS))
        for step, result in curve.items():
            acc = result["accuracy"]
            print(f"{step:>6}" + "".join(f"{acc.get(k, 0):18.1f}" for k in COLUMNS))
        final = curve[max(curve)]["colour_confusions"]
        print("final colour answers (true -> said: count): "
              + ", ".join(f"{t}->{s}: {n}" for t, s, n in final if t != s))


if __name__ == "__main__":
    main()
