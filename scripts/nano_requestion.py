"""Ask a nano recipe run's training scenes other questions: the same scenes, stage 2's conversations
drawn anew, stages 0-1 kept.

    python scripts/nano_requestion.py RUN OUT [--max-turns N] [--questions one|every]

RUN is a folder written by `omnivision train recipe nano` (its `data/`, `eval-data/` and stage-1
model `runs/align/model`). The script regenerates RUN's training data into OUT/data with the
generator settings RUN's `data/meta.json` records, changing only how the conversations ask: at most
`--max-turns` questions a conversation (the recipe's `sft_max_turns`), one question of each kind or
every question (`sft_questions`). It checks that the scenes came out identical to RUN's and links
OUT/eval-data and OUT/runs/align to RUN's, so OUT is a run folder for `scripts/nano_spread.py`,
which then runs stage 2 on the new conversations from RUN's own stage-1 model:

    python scripts/nano_spread.py OUT --seeds 1 --every 2700 sft_max_turns=1 sft_batch_size=96

(The questions themselves are drawn anew as the conversations are cut differently, so about half of
them differ from RUN's: the comparison with RUN's stage 2 is also one of another draw of questions.)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from omnivision.data.shapes_dataset import MAX_TURNS, generate_shapes_dataset

GENERATOR_ARGS = ("n", "seed", "image_size", "chart_fraction")
"""The settings of RUN's data that decide its scenes, kept as they were."""


def requestion(run: Path, out: Path, max_turns: int, questions: str) -> dict:
    """OUT/data: RUN's scenes with conversations of at most `max_turns` questions; returns its meta."""
    meta_path = run / "data" / "meta.json"
    if not meta_path.is_file():
        raise SystemExit(f"{run}: no data/meta.json: not a folder written by `omnivision train recipe nano`")
    old = json.loads(meta_path.read_text())
    meta = generate_shapes_dataset(out / "data", **{k: old[k] for k in GENERATOR_ARGS},
                                   sft_questions=questions, max_turns=max_turns)
    if (out / "data" / "scenes.jsonl").read_bytes() != (run / "data" / "scenes.jsonl").read_bytes():
        raise SystemExit(f"{out / 'data'}: the scenes differ from {run}'s: its data was not made by this generator")
    (out / "runs").mkdir(exist_ok=True)
    for link, target in (("eval-data", run / "eval-data"), ("runs/align", run / "runs" / "align")):
        if not (out / link).exists():
            (out / link).symlink_to(target.resolve(), target_is_directory=True)
    return meta


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--max-turns", type=int, default=MAX_TURNS, help="most questions a conversation asks")
    p.add_argument("--questions", choices=("one", "every"), default="one",
                   help="one question of each kind per scene, or every question")
    args = p.parse_args()
    counts = requestion(args.run, args.out, args.max_turns, args.questions)["counts"]
    print(f"{args.out}: {counts['scenes']} scenes as {args.run}'s, {counts['sft_conversations']} conversations "
          f"asking {counts['sft_turns']} questions")


if __name__ == "__main__":
    main()
