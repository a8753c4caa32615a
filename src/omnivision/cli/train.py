"""`omnivision train`: the three stages, pair making, and the nano recipe.

- `omnivision train align|sft|dpo [--config FILE.yaml] [--resume] [key=value ...]`: one stage;
  settings come from the YAML file, then from `key=value` overrides (`train.lr=3e-4`,
  `model=runs/align/model`). Under `torchrun` every process runs the same command.
- `omnivision train make-pairs --model SRC --data FILE --kind qa|captions --images DIR
  --out pairs.jsonl [--teacher oracle|endpoint ...]`: minimal-edit preference pairs.
- `omnivision train recipe nano --out DIR [--scale S] [--seed N] [key=value ...]`: the whole nano
  pipeline; `key=value` sets any other `NanoConfig` field (`sft_trainable=[language]`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from omnivision.train.config import load_config

STAGES = {
    "align": ("omnivision.train.recipe_align", "AlignConfig", "run_align"),
    "sft": ("omnivision.train.recipe_sft", "SFTConfig", "run_sft"),
    "dpo": ("omnivision.train.recipe_dpo", "DPOConfig", "run_dpo"),
}


def add_parser(sub, name: str) -> None:
    p = sub.add_parser(name, help="train: align, sft, dpo, make-pairs, recipe nano")
    actions = p.add_subparsers(dest="train_command", required=True, metavar="ACTION")
    for stage in STAGES:
        s = actions.add_parser(stage, help=f"run the {stage} stage")
        s.add_argument("--config", help="YAML file with the stage's settings")
        s.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
        s.add_argument("overrides", nargs="*", metavar="key=value", help="settings on top of the YAML")
        s.set_defaults(handler=run_stage, stage=stage)

    m = actions.add_parser("make-pairs", help="minimal-edit preference pairs from a teacher")
    m.add_argument("--model", required=True, help="the stage-2 model")
    m.add_argument("--data", required=True, help="prompts with references: QA JSONL or captions JSONL")
    m.add_argument("--kind", choices=["qa", "captions"], default="qa")
    m.add_argument("--images", default=".", help="folder the image paths are relative to")
    m.add_argument("--out", required=True, help="preference pairs JSONL to write")
    m.add_argument("--teacher", choices=["oracle", "endpoint"], default="oracle")
    m.add_argument("--teacher-url", help="OpenAI-compatible base URL (endpoint teacher)")
    m.add_argument("--teacher-model", help="model name at the endpoint")
    m.add_argument("--teacher-key-env", default="OPENAI_API_KEY", help="environment variable with the key")
    m.add_argument("--timeout", type=float, default=60.0)
    m.add_argument("--retries", type=int, default=3)
    m.add_argument("--concurrency", type=int, default=4)
    m.add_argument("--max-edit", type=float, default=0.5,
                   help="drop pairs whose normalised edit distance is above this (default 0.5)")
    m.add_argument("--max-new-tokens", type=int, default=128)
    m.add_argument("--batch", type=int, default=16, help="prompts answered together (default 16)")
    m.set_defaults(handler=run_make_pairs)

    r = actions.add_parser("recipe", help="complete recipes")
    recipes = r.add_subparsers(dest="recipe", required=True, metavar="RECIPE")
    n = recipes.add_parser("nano", help="train the nano model from nothing on a CPU")
    n.add_argument("--out", required=True, help="output folder (data, runs, model/, report.json)")
    n.add_argument("--scale", type=float, help="multiply every step count (default 1)")
    n.add_argument("--seed", type=int, help="the training data's seed (default 1)")
    n.add_argument("overrides", nargs="*", metavar="key=value",
                   help="any other NanoConfig field, e.g. sft_steps=2700 sft_trainable=[language]")
    n.set_defaults(handler=run_nano)


def run_stage(args: argparse.Namespace) -> int:
    import importlib

    module_name, config_name, runner = STAGES[args.stage]
    module = importlib.import_module(module_name)
    cfg = load_config(getattr(module, config_name), args.config, args.overrides)
    result = getattr(module, runner)(cfg, resume=args.resume)
    print(f"{args.stage}: {result.steps} steps, final loss {result.final_loss:.4f}; "
          f"model in {Path(cfg.train.out_dir) / 'model'}")
    return 0


def run_make_pairs(args: argparse.Namespace) -> int:
    from omnivision.data.formats import read_captions, read_qa, write_jsonl
    from omnivision.loader import load
    from omnivision.train.make_pairs import PairSource, make_pairs
    from omnivision.train.recipe_align import CAPTION_PROMPT
    from omnivision.train.teachers import EndpointTeacher, OracleTeacher

    if args.kind == "qa":
        sources = [PairSource(q.image, q.question, q.answer) for q in read_qa(args.data)]
    else:
        sources = [PairSource(c.image, CAPTION_PROMPT, c.caption) for c in read_captions(args.data)]
    if args.teacher == "endpoint":
        if not args.teacher_url or not args.teacher_model:
            raise ValueError("the endpoint teacher needs --teacher-url and --teacher-model")
        teacher = EndpointTeacher(args.teacher_url, args.teacher_model, args.teacher_key_env, args.timeout,
                                  args.retries, args.concurrency)
    else:
        teacher = OracleTeacher()
    vlm = load(args.model, dtype="float32")
    images = Path(args.images)

    def answer(chunk: list[PairSource]) -> list[str]:
        return vlm.answer_batch([images / s.image if s.image else None for s in chunk],
                                [s.prompt for s in chunk], max_new_tokens=args.max_new_tokens)

    result = make_pairs(sources, answer, teacher, args.max_edit, batch=args.batch)
    write_jsonl(args.out, result.pairs)
    print(json.dumps({"pairs": len(result.pairs), "dropped": dict(result.dropped)}))
    return 0


def nano_config(args: argparse.Namespace):
    """The recipe's `NanoConfig`: the overrides, then the named flags (which win)."""
    import dataclasses

    from omnivision.train.nano_config import NanoConfig

    flags = {"out": args.out, "scale": args.scale, "seed": args.seed}
    return dataclasses.replace(load_config(NanoConfig, None, args.overrides),
                               **{k: v for k, v in flags.items() if v is not None})


def run_nano(args: argparse.Namespace) -> int:
    from omnivision.train.nano_report import markdown_table
    from omnivision.train.recipe_nano import run_nano as nano

    report = nano(nano_config(args))
    print(markdown_table(report), end="")
    print(json.dumps({"total_s": report["total_s"], "final": report["stages"]["3-dpo"]["qa"]}),
          file=sys.stdout)
    return 0
