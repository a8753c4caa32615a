"""Redraw one part of a nano recipe run's stage 0, keep the rest, and run stage 1 again.

    python scripts/nano_redraw.py RUN OUT {decoder,tower} --seed S [--text KEY=VALUE ...] [--threads T]

RUN is a folder written by `omnivision train recipe nano` (its `data/`, `eval-data/` and `stage0/`).
From RUN's tokenizer and stage-0 model, the script draws the named part anew with seed S, as the
recipe makes it: the decoder freshly initialised and pretrained on the text (optionally with other
`TextConfig` sizes: `--text num_kv_heads=6`), or the tower pretrained with the sigmoid loss. The
other parts, and the projector's initialisation, stay RUN's. It writes OUT/stage0, runs the recipe's
stage 1 (its default seed's batch order) into OUT/runs/align, and links OUT/data and OUT/eval-data to RUN's, so OUT is a run folder
for `scripts/nano_spread.py OUT --seeds 1 --every 2700` (stage 2 as the recipe runs it, scored).

It tells which part of a draw of stages 0-1 decides what stage 2 learns, and tries a decoder shape
on the same data, tower and projector, so that the decoder is the only change.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import torch

from omnivision.loader import load
from omnivision.model.omnivision import OmniVisionModel, init_weights
from omnivision.train.config import load_config
from omnivision.train.nano_config import NanoConfig
from omnivision.train.recipe_nano import _texts, _train_cfg, pretrain_tower, run_stage1, stage1_config
from omnivision.train.recipe_text import pretrain_text
from omnivision.weights.native import save_native

PARTS = ("decoder", "tower")


def text_sizes(pairs: list[str]) -> dict[str, int]:
    """`--text` pairs as `TextConfig` fields: {"num_kv_heads": 6}."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not value.isdigit():
            raise SystemExit(f"--text {pair!r}: expected KEY=INTEGER, such as num_kv_heads=6")
        out[key] = int(value)
    return out


def redraw(run: Path, out: Path, part: str, seed: int, sizes: dict[str, int]) -> None:
    """OUT/stage0 with `part` drawn with `seed` (the decoder with `sizes`), the rest RUN's; then stage 1."""
    if sizes and part != "decoder":
        raise SystemExit("--text changes the decoder: it needs the part 'decoder'")
    base = load(run / "stage0", dtype="float32")
    config = base.model.config
    try:
        config = dataclasses.replace(config, text=dataclasses.replace(config.text, **sizes))
    except (TypeError, ValueError) as e:
        raise SystemExit(f"--text: {e}") from None
    recipe = load_config(NanoConfig, None, [])  # stage 1 as the recipe runs it, in its batch order
    cfg = dataclasses.replace(recipe, seed=seed)
    data = run / "data"
    torch.manual_seed(seed)
    model = OmniVisionModel(config)
    init_weights(model)
    if part == "decoder":
        pretrain_text(model, base.tokenizer, _texts(data, config.processing.system_prompt),
                      _train_cfg(cfg, out / "runs" / "text", cfg.text_steps, 3e-3, cfg.batch_size))
        model.vision.load_state_dict(base.model.vision.state_dict())
    else:
        model.language.load_state_dict(base.model.language.state_dict())
        model.vision.load_state_dict(pretrain_tower(cfg, config, base.tokenizer, data,
                                                    out / "runs" / "siglip").state_dict())
    model.projector.load_state_dict(base.model.projector.state_dict())
    save_native(model, base.tokenizer, out / "stage0")
    for name in ("data", "eval-data"):
        if not (out / name).exists():
            (out / name).symlink_to((run / name).resolve(), target_is_directory=True)
    run_stage1(stage1_config(recipe, data, out / "stage0", out / "runs"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("part", choices=PARTS)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--text", nargs="*", default=[], help="TextConfig KEY=VALUE for the redrawn decoder")
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    redraw(args.run, args.out, args.part, args.seed, text_sizes(args.text))
    print(f"{args.out}: stage 0 with the {args.part} of seed {args.seed} and stage 1 done")


if __name__ == "__main__":
    main()
