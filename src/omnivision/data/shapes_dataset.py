"""`generate_shapes_dataset`: one call writes a whole procedural dataset directory.

Layout of `out_dir` (image paths in every file are relative to `out_dir`):

| file | content |
| --- | --- |
| `images/NNNNNN.png` | the rendered scenes, `image_size` x `image_size` RGB |
| `scenes.jsonl` | ground truth per image (see `scenes`) |
| `captions.jsonl` | one `CaptionPair` per image (alignment stage) |
| `sft.json` | LLaVA JSON list: per image its questions in conversations, the caption alone (`_sft`) |
| `qa.jsonl` | `QAItem`s for evaluation: per shapes scene one question of each of color, shape, count, position; per chart one tallest, one shortest, one value question |
| `pope.jsonl` | `QAItem`s of qtype pope: per shapes scene and strategy, as many yes as no |
| `meta.json` | arguments, counts, vocabulary; written last |

Same arguments, same bytes. Scenes, SFT questions, evaluation questions and probes draw from
separate random streams, so changing one part of the recipe does not reshuffle the others.
Evaluate on a dataset made with another seed: one seed's `qa.jsonl` asks about its own training
images. Files of an earlier run in `out_dir` are overwritten; other files are left alone.
"""

from __future__ import annotations

import os
import random
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omnivision.data.charts import BAR_LABELS, ChartScene, sample_chart_scene
from omnivision.data.formats import conversation_to_llava, write_json, write_jsonl
from omnivision.data.pope import object_frequencies, pope_probes, training_probe
from omnivision.data.questions import CAPTION_PROMPT, Question, caption, questions_for
from omnivision.data.records import POPE_STRATEGIES, CaptionPair, Conversation, QAItem
from omnivision.data.scenes import SceneRecord, render_scene, scene_to_dict
from omnivision.data.shape_scenes import (COLORS, POSITIONS, SHAPES, SIZES, ShapeScene,
                                    all_object_names, sample_shape_scene)

FILES = ("scenes.jsonl", "captions.jsonl", "sft.json", "qa.jsonl", "pope.jsonl", "meta.json")
TRAINING_PROBES = 4
MAX_TURNS = 12
SFT_QUESTIONS = ("one", "every")
"""What `sft.json` asks of a scene: one question of each kind, or every question it has."""


def _check_args(n: int, image_size: int, chart_fraction: float, sft_questions: str, max_turns: int) -> None:
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if image_size < 32:
        raise ValueError(f"image size must be at least 32 pixels, got {image_size}")
    if not 0.0 <= chart_fraction <= 1.0:
        raise ValueError(f"chart fraction must be between 0 and 1, got {chart_fraction}")
    if sft_questions not in SFT_QUESTIONS:
        raise ValueError(f"sft questions must be one of {', '.join(SFT_QUESTIONS)}, got {sft_questions!r}")
    if max_turns < 1:
        raise ValueError(f"max turns must be at least 1, got {max_turns}")


def sample_scenes(n: int, seed: int, chart_fraction: float = 0.2) -> list[SceneRecord]:
    """The dataset's scenes: exactly `round(n * chart_fraction)` charts at random places."""
    rng = random.Random(seed)
    charts = set(rng.sample(range(n), round(n * chart_fraction)))
    width = max(6, len(str(n - 1)))
    out = []
    for i in range(n):
        ident = f"{i:0{width}d}"
        scene = sample_chart_scene(rng) if i in charts else sample_shape_scene(rng)
        out.append(SceneRecord(ident, f"images/{ident}.png", scene))
    return out


def _sft(record: SceneRecord, rng: random.Random, frequencies: Counter[str], every: bool = False,
         max_turns: int = MAX_TURNS) -> list[Conversation]:
    """One question of each kind, or with `every` every question of the scene (the colour, shape
    and place of each object, each count), plus `TRAINING_PROBES` yes/no probes on shapes scenes;
    shuffled and cut into conversations of random length (1 to `max_turns` turns), then the
    caption on its own.

    Dense: a small model gets many answers for each image it encodes. Random lengths: every kind
    of question is also asked first, as at evaluation. The caption is a conversation of its own: an
    earlier caption would give the later answers away. Every question: one image then asks the
    colour of each of its objects, so the answer depends on the place asked about and not on the
    image alone.
    """
    groups = questions_for(record.scene).values()
    questions = [q for pool in groups for q in pool] if every else [rng.choice(pool) for pool in groups]
    if isinstance(record.scene, ShapeScene):
        questions += [training_probe(record.scene, rng, frequencies) for _ in range(TRAINING_PROBES)]
    rng.shuffle(questions)
    chunks = []
    while questions:
        n = rng.randint(1, max_turns)
        chunks.append(questions[:n])
        questions = questions[n:]
    chunks.append([Question(CAPTION_PROMPT, caption(record.scene), "caption", {})])
    return [Conversation(f"{record.id}-{n}", record.image,
                         [turn for q in chunk for turn in (("user", q.text), ("assistant", q.answer))])
            for n, chunk in enumerate(chunks)]


def _qa(record: SceneRecord, rng: random.Random) -> list[QAItem]:
    return [QAItem(f"{record.id}-{kind}", record.image, q.text, q.answer, q.qtype, q.extra)
            for kind, pool in questions_for(record.scene).items() for q in [rng.choice(pool)]]


def _pope(record: SceneRecord, rng: random.Random, frequencies: Counter[str]) -> list[QAItem]:
    out, seen = [], Counter()
    for q in pope_probes(record.scene, rng, frequencies):
        strategy = q.extra["strategy"]
        out.append(QAItem(f"{record.id}-pope-{strategy}-{seen[strategy]}", record.image, q.text,
                          q.answer, q.qtype, q.extra))
        seen[strategy] += 1
    return out


def _meta(args: dict[str, Any], records: Sequence[SceneRecord], sft: Sequence[Conversation],
          qa: Sequence[QAItem], pope: Sequence[QAItem]) -> dict[str, Any]:
    charts = sum(isinstance(r.scene, ChartScene) for r in records)
    probes = {s: {"yes": 0, "no": 0} for s in POPE_STRATEGIES}
    for item in pope:
        probes[item.extra["strategy"]][item.answer] += 1
    return {
        "generator": "omnivision data shapes",
        **args,
        "counts": {
            "scenes": len(records), "shape_scenes": len(records) - charts, "chart_scenes": charts,
            "sft_conversations": len(sft),
            "sft_turns": sum(len(c.turns) // 2 for c in sft),
            "qa": dict(sorted(Counter(item.qtype for item in qa).items())),
            "pope": probes,
        },
        "vocabulary": {"shapes": list(SHAPES), "colors": list(COLORS), "sizes": list(SIZES),
                       "positions": list(POSITIONS), "bar_labels": list(BAR_LABELS),
                       "objects": all_object_names()},
        "files": list(FILES),
    }


def generate_shapes_dataset(out_dir: str | os.PathLike, n: int, seed: int, image_size: int = 96,
                            chart_fraction: float = 0.2, sft_questions: str = "one",
                            max_turns: int = MAX_TURNS) -> dict[str, Any]:
    """Write `n` scenes and their data files under `out_dir`; return the `meta.json` content.
    `sft_questions`: "one" question of each kind per scene in `sft.json`, or "every" question;
    `max_turns`: the most questions one conversation of `sft.json` asks."""
    _check_args(n, image_size, chart_fraction, sft_questions, max_turns)
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    records = sample_scenes(n, seed, chart_fraction)
    for r in records:
        render_scene(r.scene, image_size).save(out / r.image, format="PNG")
    frequencies = object_frequencies(r.scene for r in records if isinstance(r.scene, ShapeScene))
    sft_rng, qa_rng, pope_rng = (random.Random(f"{seed}:{part}") for part in ("sft", "qa", "pope"))
    sft = [c for r in records for c in _sft(r, sft_rng, frequencies, sft_questions == "every", max_turns)]
    qa = [item for r in records for item in _qa(r, qa_rng)]
    pope = [item for r in records if isinstance(r.scene, ShapeScene)
            for item in _pope(r, pope_rng, frequencies)]
    write_jsonl(out / "scenes.jsonl", (scene_to_dict(r) for r in records))
    write_jsonl(out / "captions.jsonl", (CaptionPair(r.image, caption(r.scene)) for r in records))
    write_json(out / "sft.json", [conversation_to_llava(c) for c in sft])
    write_jsonl(out / "qa.jsonl", qa)
    write_jsonl(out / "pope.jsonl", pope)
    args = {"n": n, "seed": seed, "image_size": image_size, "chart_fraction": chart_fraction,
            "sft_questions": sft_questions, "max_turns": max_turns}
    meta = _meta(args, records, sft, qa, pope)
    write_json(out / "meta.json", meta)
    return meta
