"""`omnivision tune [--model SRC]`: choose this machine's kernels up front, for every product shape of
a model, and print what was chosen with the timings behind it.

Without it the same choices are made the first time each shape is met (a few seconds in all for the
968M, once per machine; `omnivision.kernels.choices`); `tune` moves that cost out of the first
answer and shows the result: bf16 products on a few rows for every weight shape (the model is
loaded in bf16), then whatever one image through the vision tower chooses (the precision of its
attention; int8 activations for a quantized tower), one token through the decoder (one-row
products of a quantized decoder) and prompts of each many-row bucket's length (a quantized decoder's
products on many rows, `quantize.many_rows`).
"""

from __future__ import annotations

import argparse

import torch

from omnivision.cli.model_args import add_model_options, load_model
from omnivision.generation.generate import prefill
from omnivision.kernels.choices import CHOICES, cache_path, tuning_enabled
from omnivision.kernels.machine import describe
from omnivision.model.linear import CHOSEN_DTYPES, FEW_ROWS, ROW_BUCKETS, few_row_kernel
from omnivision.quantize.many_rows import MANY_TIMED_ROWS, MID_TIMED_ROWS


def add_parser(sub, name: str) -> None:
    p = sub.add_parser(name, help="choose this machine's fastest kernels for a model's shapes, up front")
    add_model_options(p)
    p.set_defaults(handler=run, dtype="bfloat16")


def _print_new(where: str, before: set[str]) -> None:
    """The choices timed since `before` (the keys of `CHOICES.timings` then), one line each."""
    for key in sorted(set(CHOICES.timings) - before):
        shown = ", ".join(f"{name} {1e6 * t:.0f}" for name, t in CHOICES.timings[key].items())
        print(f"{where} {key.split('/', 1)[1]}: {CHOICES.chosen(key)} ({shown})")


def run(args: argparse.Namespace) -> int:
    if not tuning_enabled():
        raise ValueError("kernel timing is turned off (OMNIVISION_KERNEL_TUNING=off): nothing to tune")
    vlm = load_model(args)
    print(f"machine: {describe()}")
    print(f"{'weight':>14} {'rows':>9}  {'kernel':<13} timings (median, us)")
    lows = [1] + [top + 1 for top, _ in ROW_BUCKETS[:-1]]
    for n, k in vlm.model.decode_weight_shapes():
        weight = torch.empty(n, k, dtype=vlm.dtype if vlm.dtype in CHOSEN_DTYPES else torch.bfloat16).normal_()
        for low, (top, timed) in zip(lows, ROW_BUCKETS):
            before = set(CHOICES.timings)
            choice = few_row_kernel(weight, timed)
            new = [v for key, v in CHOICES.timings.items() if key not in before]
            shown = ", ".join(f"{name} {1e6 * t:.0f}" for v in new for name, t in v.items())
            rows = str(top) if low == top else f"{low}-{top}"
            print(f"{n:>7}x{k:<6} {rows:>9}  {choice:<13} {shown or 'remembered from an earlier run'}")
    size = vlm.config.vision.image_size
    lm = vlm.model.language
    with torch.inference_mode():
        before = set(CHOICES.timings)
        vlm.model.encode_images(torch.zeros(1, 3, size, size))
        _print_new("vision tower", before)
        before = set(CHOICES.timings)
        prefill(lm, lm.embed(torch.zeros(1, 1, dtype=torch.long)), None, 1)
        _print_new("decoder, one token", before)
        for tokens in (MID_TIMED_ROWS, MANY_TIMED_ROWS):
            before = set(CHOICES.timings)
            prefill(lm, lm.embed(torch.zeros(1, tokens, dtype=torch.long)), None, tokens)
            _print_new(f"decoder, {tokens} tokens", before)
    print(f"choices kept in {cache_path()} (few-row products up to {FEW_ROWS} rows; more rows use F.linear)")
    return 0
