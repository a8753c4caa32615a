"""The nano recipe's tower pretraining (its step 4) alone, and what it gives each object's token.

    python scripts/nano_tower.py DATA HELD_OUT [--seed 11] [--steps 300] [--no-cell-texts] [--scenes 300]

DATA is the recipe's training folder (`runs/nano/data`), HELD_OUT its held-out one. The tokenizer is
trained on DATA as the recipe trains it, a fresh tower is initialised from `--seed` and pretrained
by `recipe_nano.pretrain_tower` with the recipe's settings; then, as `nano_features.py` does for a
whole model, it prints how much of each held-out object's cell token (the tower's 3x3 patches of its
grid cell) is its colour, its shape and its cell: the between-class share of the variance and a
linear probe's accuracy. A decoder learns slowly what has a small share, so this checks a change to
the tower's pretraining in two minutes before a long run (`docs/nano-recipe-history.md`, the model of 2026-12-07).
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import torch

from nano_features import cell_tokens, print_shares, shapes_scenes
from omnivision.model.projector import spatial3x3
from omnivision.train.image_loader import ImageLoader
from omnivision.train.nano_config import NanoConfig
from omnivision.train.recipe_nano import nano_tokenizer, pretrain_tower


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("data", type=Path)
    p.add_argument("held_out", type=Path)
    p.add_argument("--seed", type=int, default=11, help="the tower's initialisation")
    p.add_argument("--steps", type=int, default=NanoConfig.siglip_steps)
    p.add_argument("--no-cell-texts", action="store_true", help="the pooled objective alone")
    p.add_argument("--scenes", type=int, default=300, help="held-out shapes scenes to measure")
    args = p.parse_args()
    cfg = dataclasses.replace(NanoConfig(), siglip_steps=args.steps, siglip_cell_texts=not args.no_cell_texts)
    config, tokenizer = nano_tokenizer(args.data, cfg.vocab_size)
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as run:
        tower = pretrain_tower(cfg, config, tokenizer, args.data, Path(run)).eval()
    print(f"pretrained in {time.perf_counter() - start:.0f} s")
    parts = {"tower (cell, 3x3 patches)": lambda px: spatial3x3(tower(px))}  # [B, 9, 9*D_v]
    print_shares(*cell_tokens(parts, ImageLoader(config, args.held_out, cache=False),
                              shapes_scenes(args.held_out, args.scenes)))


if __name__ == "__main__":
    main()
