"""`omnivision train recipe nano --out DIR`: from nothing to a working small model, on a CPU.

1. Generate training scenes, a held-out set and stage 3's fresh scenes, each with its own seed
   (`data/shapes_dataset.py`).
2. Train a byte-level BPE tokenizer on the generated text, with the chat template's special tokens.
3. Pretrain the language model on the text alone (`recipe_text.py`).
4. Pretrain the vision tower with the SigLIP sigmoid loss on captions and short descriptions
   (`recipe_siglip.py`).
5. Stage 1, align: only the projector learns, on captions (`recipe_align.py`; or on stage 2's
   conversations, `align_data`).
6. Stage 2, SFT on the question-answer conversations, one or two questions each (`recipe_sft.py`); the
   projector and the decoder learn (`sft_trainable`), the tower stays as step 4 made it; batches
   hold conversations of similar length. Trained along, the tower lost what it had of colour (its
   share of an object's feature variance fell from 21 % to 1 %, `scripts/nano_features.py`).
7. Stage 3: the stage-2 model describes and answers yes/no probes and single questions about
   scenes it has not seen, the ground-truth oracle makes minimal corrections, DPO on the kept pairs
   trains the decoder (`make_pairs.py`, `recipe_dpo.py`).

After stages 1-3 the model is scored on the held-out set (`eval/shapes_accuracy.py`); `report.json`
holds every number and `model/` the final native checkpoint. The settings are `nano_config.py`'s;
with them the command writes the bundled model in 40.2 minutes from nothing on the project's 2-core
AMD EPYC (no AMX; stages 0-2 timed on 2026-12-07, stage 3 on 2026-12-08; issue 16 allows 60 there
and 30 on the AMX Xeon, where these settings are not yet timed); `scale` multiplies the step counts
(a small `scale` is the CI smoke test). At a given thread count on a given CPU a run is deterministic (two runs from nothing wrote the same
`model.safetensors` byte for byte); on another CPU the bf16 kernels round differently and a run is
another draw.
"""

from __future__ import annotations

import dataclasses
import json
import random
import time
from pathlib import Path
from typing import Callable

import torch

from omnivision.config import OmniVisionConfig
from omnivision.data.formats import read_captions, read_conversations, read_qa, write_jsonl
from omnivision.data.shapes_dataset import generate_shapes_dataset
from omnivision.data.questions import caption, descriptions, where
from omnivision.data.records import PreferencePair
from omnivision.data.scenes import read_scenes
from omnivision.data.shape_scenes import POSITIONS, ShapeScene
from omnivision.embedding_cache import ImageEmbeddingCache
from omnivision.eval.shapes_accuracy import (absent_object_rate, pope_metrics, qa_accuracy,
                                             second_turn_accuracy)
from omnivision.loader import load
from omnivision.model import OmniVisionModel, init_weights
from omnivision.model.siglip import SiglipVisionTower
from omnivision.processing.prompt import Message, render
from omnivision.processing.tokenizer import Tokenizer
from omnivision.processing.tokenizer_training import train_byte_level_bpe
from omnivision.train.config import TrainConfig
from omnivision.train.image_loader import ImageLoader
from omnivision.train.make_pairs import PairSource, make_pairs
from omnivision.train.nano_config import NanoConfig, nano_config
from omnivision.train.nano_report import markdown_table
from omnivision.train.recipe_align import CAPTION_PROMPT, AlignConfig, run_align
from omnivision.train.recipe_dpo import DPOConfig, run_dpo
from omnivision.train.recipe_sft import SFTConfig, run_sft
from omnivision.train.recipe_siglip import SiglipPretrainModel, pretrain_siglip
from omnivision.train.recipe_text import pretrain_text
from omnivision.train.teachers import OracleTeacher
from omnivision.vlm import OmniVision, Turn
from omnivision.weights.native import save_native


def _steps(n: int, scale: float) -> int:
    return max(2, int(round(n * scale)))


def _train_cfg(cfg: NanoConfig, out: Path, steps: int, lr: float, batch: int, warmup: int = 20) -> TrainConfig:
    """A stage's loop settings: `steps` scaled by `cfg.scale`, the run's seed and precision."""
    n = _steps(steps, cfg.scale)
    return TrainConfig(out_dir=str(out), steps=n, batch_size=batch, lr=lr, warmup_steps=min(warmup, n // 4),
                       weight_decay=0.01, log_every=max(1, n // 20), seed=cfg.seed, progress=False,
                       precision=cfg.precision, distributed="none")


def nano_tokenizer(data: Path, vocab_size: int) -> tuple[OmniVisionConfig, Tokenizer]:
    """Step 2: the byte-level BPE tokenizer trained on the training scenes' text, and the nano
    config with its vocabulary and special tokens."""
    config = nano_config(vocab_size)
    tokenizer = train_byte_level_bpe(_texts(data, config.processing.system_prompt), vocab_size)
    return dataclasses.replace(config, text=dataclasses.replace(config.text, vocab_size=tokenizer.vocab_size),
                               image_token_id=tokenizer.image_pad_id,
                               stop_token_ids=(tokenizer.im_end_id, tokenizer.endoftext_id)), tokenizer


def _texts(data: Path, system_prompt: str) -> list[str]:
    """The tokenizer's corpus: every training conversation, chat-formatted (without its image), and
    every caption."""
    texts = []
    for conv in read_conversations(data / "sft.json"):
        messages = [Message(role, text) for role, text in conv.turns]
        texts.append(render(messages, "omnivision", system_prompt))
    texts += [c.caption for c in read_captions(data / "captions.jsonl")]
    return texts


def _siglip_pairs(data: Path, seed: int) -> tuple[list[tuple[str, str]], dict[str, frozenset[str]]]:
    """Per image its caption and 3 short descriptions ("a red circle", "a cross at the top"), and
    every text true of each image, so that a description shared by two images of a batch is a
    positive for both."""
    rng = random.Random(seed)
    pairs, true_texts = [], {}
    for record in read_scenes(data / "scenes.jsonl"):
        short, full = descriptions(record.scene), caption(record.scene)
        true_texts[record.image] = frozenset([*short, full])
        pairs += [(record.image, full)] + [(record.image, t) for t in rng.sample(short, min(3, len(short)))]
    return pairs, true_texts


EMPTY_CELL = "an empty cell"


def _cell_texts(data: Path) -> dict[str, list[tuple[int, str]]]:
    """Per shapes image, each of its 9 grid cells (one merged image token each, `nano_config`) with
    the text of what it holds and where: "a large red circle at the top left", "an empty cell in
    the center".

    The place is named so that each cell's features say which cell they are: without it the
    tower's between-cell share of an object's features fell to about 1 %; with it colour, shape and
    cell took 17-20 %, 14-15 % and 22-24 % on two initialisations that without the region objective
    left colour at 3.5 and 7.9 % (16,000 scenes, 300 steps; `scripts/nano_features.py`'s measures,
    AMD EPYC, 2026-12-05)."""
    out = {}
    for record in read_scenes(data / "scenes.jsonl"):
        if isinstance(record.scene, ShapeScene):
            held = {POSITIONS.index(o.position): f"a {o.size} {o.color} {o.shape}" for o in record.scene.objects}
            out[record.image] = [(cell, f"{held.get(cell, EMPTY_CELL)} {where(place)}")
                                 for cell, place in enumerate(POSITIONS)]
    return out


def pretrain_tower(cfg: NanoConfig, config: OmniVisionConfig, tokenizer: Tokenizer, data: Path,
                   out: Path) -> SiglipVisionTower:
    """Step 4: a fresh tower (from torch's current random state) pretrained with the SigLIP loss on
    the training scenes' captions and short descriptions, and with `siglip_cell_texts` on every
    grid cell's text."""
    text_side = dataclasses.replace(config.text, hidden_size=128, intermediate_size=256, num_layers=2,
                                    num_heads=4, num_kv_heads=2)
    siglip = SiglipPretrainModel(config.vision, text_side,
                                 merge=config.projector.compression if cfg.siglip_cell_texts else None)
    init_weights(siglip)
    pairs, true_texts = _siglip_pairs(data, cfg.seed)
    pretrain_siglip(siglip, tokenizer, pairs, ImageLoader(config, data, cache=True),
                    _train_cfg(cfg, out, cfg.siglip_steps, 2e-3, 64),
                    true_texts, _cell_texts(data) if cfg.siglip_cell_texts else None)
    return siglip.vision


def evaluate(vlm: OmniVision, data: Path) -> dict:
    """Held-out scores: QA accuracy by type, asked first and asked second in a conversation (after
    another question of the image with its right answer), POPE per strategy, absent objects in
    captions.

    Each held-out image is asked about ~15 times, spread over the whole evaluation, so for the call the
    model's embedding cache (16 images) is swapped for one as large as the held-out set: every image
    goes through the tower about once, with the same scores (16.0 against 11.2 s on the nano stage-2 model)."""
    def answer(images, questions):
        return vlm.answer_batch([data / i for i in images], questions, max_new_tokens=32)

    def answer_second(images, firsts, questions):
        return vlm.answer_batch([None] * len(images), questions, max_new_tokens=32,
                                histories=[[Turn(q, a, data / i)] for i, (q, a) in zip(images, firsts)])

    n_scenes = len((data / "scenes.jsonl").read_text().splitlines())
    own_cache, vlm.image_cache = vlm.image_cache, ImageEmbeddingCache(n_scenes)
    try:
        absent = absent_objects(answer, data)
        questions = read_qa(data / "qa.jsonl")
        return {"qa": qa_accuracy(answer, questions),
                "qa_second_turn": second_turn_accuracy(answer_second, questions),
                "pope": pope_metrics(answer, read_qa(data / "pope.jsonl")),
                "absent_objects": absent}
    finally:
        vlm.image_cache = own_cache


def absent_objects(answer: Callable[[list[str], list[str]], list[str]], data: Path) -> dict[str, float]:
    """The objects named in `answer`'s captions of the scenes with objects in `data` that the scene
    does not hold (`absent_object_rate`); `answer(images, prompts)` takes image names relative to
    `data`."""
    meta = json.loads((data / "meta.json").read_text())["vocabulary"]
    scenes = [json.loads(line) for line in (data / "scenes.jsonl").read_text().splitlines()]
    shape_scenes = [s for s in scenes if s["kind"] == "shapes"]
    captions = answer([s["image"] for s in shape_scenes], [CAPTION_PROMPT] * len(shape_scenes))
    present = [{f"{o['color']} {o['shape']}" for o in s["objects"]} for s in shape_scenes]
    return absent_object_rate(captions, present, meta["colors"], meta["shapes"])


PAIR_KINDS = ("caption", "probe", "question")
"""The kinds of training prompts stage 3 can draw (`NanoConfig.dpo_kinds`)."""


def pair_sources(data: Path, n: int, seed: int, kinds: tuple[str, ...] = ("caption", "probe")
                  ) -> list[tuple[PairSource, float]]:
    """`n` training prompts of each of `kinds` (caption requests, yes/no probes, single questions),
    with ground truth and the edit threshold for each kind (a one-word answer's minimal correction
    rewrites all of it)."""
    unknown = set(kinds) - set(PAIR_KINDS)
    if unknown:
        raise ValueError(f"dpo_kinds: {sorted(unknown)} not among {PAIR_KINDS}")
    rng = random.Random(seed)
    out = []
    if "caption" in kinds:
        captions = read_captions(data / "captions.jsonl")
        out += [(PairSource(c.image, CAPTION_PROMPT, c.caption), 0.5)
                for c in rng.sample(captions, min(n, len(captions)))]
    for kind, name in (("probe", "pope.jsonl"), ("question", "qa.jsonl")):
        if kind in kinds:
            qs = read_qa(data / name)
            out += [(PairSource(q.image, q.question, q.answer), 1.0)
                    for q in rng.sample(qs, min(n, len(qs)))]
    return out


def balance_yes_no(pairs: list[PreferencePair]) -> tuple[list[PreferencePair], int]:
    """As many yes/no pairs whose correction is "yes" as "no" (the first ones of the larger side
    kept), other pairs untouched; and how many were dropped. A model that leans one way gets
    mostly corrections the other way, and DPO on those alone swings it to the other extreme."""
    by_answer: dict[str, list[PreferencePair]] = {"yes": [], "no": []}
    other = []
    for pair in pairs:
        (by_answer[pair.chosen] if pair.chosen in by_answer else other).append(pair)
    n = min(len(v) for v in by_answer.values())
    kept = other + by_answer["yes"][:n] + by_answer["no"][:n]
    return kept, len(pairs) - len(kept)


def dpo_data(cfg: NanoConfig, out: Path, image_size: int) -> Path | None:
    """Stage 3's fresh scenes (`cfg.dpo_scenes` of them, seed `cfg.dpo_seed`, scaled as the training
    scenes are) written to `out`/dpo-data; None when stage 3 asks about the training scenes."""
    if cfg.dpo_scenes <= 0:
        return None
    n = max(40, int(cfg.dpo_scenes * min(1.0, cfg.scale)))
    generate_shapes_dataset(out / "dpo-data", n, cfg.dpo_seed, image_size=image_size)
    return out / "dpo-data"


def stage3(cfg: NanoConfig, data: Path, stage2_dir: Path, out: Path, stage2: OmniVision | None = None
           ) -> tuple[Path, dict]:
    """Stage 3 from the stage-2 model in `stage2_dir`: its answers to prompts of the kinds
    `cfg.dpo_kinds` about the scenes in `data` (the fresh ones of `dpo_data`, or the training
    scenes when `cfg.dpo_scenes` is 0), the oracle's minimal corrections (`pairs.jsonl` in `out`),
    DPO on them (`runs/dpo` in `out`). Returns the final model's folder (the stage-2 one when no pair was
    kept) and the pair counts."""
    stage2 = stage2 or load(stage2_dir, dtype="float32")
    n = max(40, int(cfg.dpo_sources * min(1.0, cfg.scale)))
    sources = pair_sources(data, n, cfg.seed, cfg.dpo_kinds)
    kept, dropped = [], {}
    for threshold in sorted({t for _, t in sources}):
        group = [src for src, t in sources if t == threshold]
        result = make_pairs(group, lambda chunk: stage2.answer_batch(
            [data / src.image for src in chunk], [src.prompt for src in chunk], max_new_tokens=48),
            OracleTeacher(), max_edit=threshold)
        kept += result.pairs
        for reason, count in result.dropped.items():
            dropped[reason] = dropped.get(reason, 0) + count
    kept, unbalanced = balance_yes_no(kept)
    if unbalanced:
        dropped["unbalanced_yes_no"] = unbalanced
    write_jsonl(out / "pairs.jsonl", kept)
    if not kept:
        return stage2_dir, {"kept": 0, "dropped": dropped}
    run_dpo(DPOConfig(model=str(stage2_dir), data=str(out / "pairs.jsonl"), images=str(data), beta=0.1,
                      trainable=list(cfg.dpo_trainable),
                      nll_weight=cfg.dpo_nll_weight, cache_images=True,
                      train=_train_cfg(cfg, out / "runs" / "dpo", cfg.dpo_steps, cfg.dpo_lr,
                                       min(cfg.batch_size, 16), warmup=5)))
    return out / "runs" / "dpo" / "model", {"kept": len(kept), "dropped": dropped}


ALIGN_DATA = ("captions", "conversations")
"""What stage 1 can train on (`NanoConfig.align_data`)."""


def stage1_config(cfg: NanoConfig, data: Path, start: Path, runs: Path) -> AlignConfig | SFTConfig:
    """Stage 1 as the recipe runs it: from the stage-0 model `start`, the projector alone learning on
    `data`'s captions (stage 1's own command) or conversations (stage 2's, with only the projector
    trainable), into `runs / "align"`; its features cached in `runs / "align" / "features"` either way."""
    if cfg.align_data not in ALIGN_DATA:
        raise ValueError(f"align_data: {cfg.align_data!r} is not one of {ALIGN_DATA}")
    align = runs / "align"
    train = _train_cfg(cfg, align, cfg.align_steps, cfg.align_lr, cfg.batch_size)
    if cfg.align_data == "captions":
        return AlignConfig(model=str(start), data=str(data / "captions.jsonl"), images=str(data), train=train,
                           feature_cache=str(align / "features"))
    return SFTConfig(model=str(start), data=str(data / "sft.json"), images=str(data), train=train,
                     trainable=["projector"], cache_images=True, feature_cache=str(align / "features"))


def run_stage1(config: AlignConfig | SFTConfig) -> None:
    """Stage 1 from `stage1_config`'s settings; the model goes to `<train.out_dir>/model` either way."""
    if isinstance(config, AlignConfig):
        run_align(config)
    else:
        run_sft(config)


def stage2_config(cfg: NanoConfig, data: Path, start: Path, runs: Path) -> SFTConfig:
    """Stage 2 as the recipe runs it: from the stage-1 model `start`, on `data`'s conversations, into
    `runs / "sft"` (the feature cache, when on, in `runs / "features"`)."""
    scales = {"language": cfg.sft_language_lr_scale} if cfg.sft_language_lr_scale != 1 else {}
    train = dataclasses.replace(_train_cfg(cfg, runs / "sft", cfg.sft_steps, cfg.sft_lr,
                                           cfg.sft_batch_size or cfg.batch_size, warmup=50),
                                lr_scales=scales, group_by_length=cfg.sft_group_by_length, compile=cfg.sft_compile,
                                weight_decay=cfg.sft_weight_decay)
    return SFTConfig(model=str(start), data=str(data / "sft.json"), images=str(data), train=train,
                     trainable=list(cfg.sft_trainable), cache_images=True,
                     feature_cache=str(runs / "features") if cfg.sft_feature_cache else "")


def run_nano(cfg: NanoConfig) -> dict:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    stage1 = stage1_config(cfg, out / "data", out / "stage0", out / "runs")  # a wrong choice fails here, not later
    out.mkdir(parents=True, exist_ok=True)
    s = cfg.scale
    timings: dict[str, float] = {}
    config_json = json.loads(json.dumps(dataclasses.asdict(cfg)))  # as report.json holds it (tuples: lists)
    report: dict = {"config": config_json, "stages": {}, "timings_s": timings}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = round(now - clock, 1)
        clock = now
        print(f"[nano] {name} done in {timings[name]} s", flush=True)

    n_train = max(50, int(cfg.train_scenes * min(1.0, s)))
    n_eval = max(30, int(cfg.eval_scenes * min(1.0, s)))
    data, held_out = out / "data", out / "eval-data"
    size = nano_config(cfg.vocab_size).vision.image_size
    generate_shapes_dataset(data, n_train, cfg.seed, image_size=size, sft_questions=cfg.sft_questions,
                            max_turns=cfg.sft_max_turns)
    generate_shapes_dataset(held_out, n_eval, cfg.eval_seed, image_size=size)
    prompts = dpo_data(cfg, out, size) or data
    lap("data")

    config, tokenizer = nano_tokenizer(data, cfg.vocab_size)
    torch.manual_seed(cfg.seed)
    model = OmniVisionModel(config)
    init_weights(model)
    lap("tokenizer")

    pretrain_text(model, tokenizer, _texts(data, config.processing.system_prompt),
                  _train_cfg(cfg, out / "runs" / "text", cfg.text_steps, 3e-3, cfg.batch_size))
    lap("text pretraining")

    model.vision.load_state_dict(pretrain_tower(cfg, config, tokenizer, data, out / "runs" / "siglip").state_dict())
    save_native(model, tokenizer, out / "stage0")
    lap("vision pretraining")

    run_stage1(stage1)
    report["stages"]["1-align"] = evaluate(load(out / "runs" / "align" / "model", dtype="float32"), held_out)
    lap("stage 1")

    run_sft(stage2_config(cfg, data, out / "runs" / "align" / "model", out / "runs"))
    stage2 = load(out / "runs" / "sft" / "model", dtype="float32")
    report["stages"]["2-sft"] = evaluate(stage2, held_out)
    lap("stage 2")

    final, report["pairs"] = stage3(cfg, prompts, out / "runs" / "sft" / "model", out, stage2)
    report["stages"]["3-dpo"] = evaluate(load(final, dtype="float32"), held_out)
    lap("stage 3")

    final_vlm = load(final, dtype="float32")
    save_native(final_vlm.model, final_vlm.tokenizer, out / "model", extra={"recipe": "nano"})
    report["total_s"] = round(sum(timings.values()), 1)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(markdown_table(report))
    return report
