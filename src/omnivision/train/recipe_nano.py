"""`omnivision train recipe nano --out DIR`: from nothing to a working small model, on a CPU.

1. Generate training scenes and a held-out set with another seed (`data/shapes_dataset.py`).
2. Train a byte-level BPE tokenizer on the generated text, with the chat template's special tokens.
3. Pretrain the language model on the text alone (`recipe_text.py`).
4. Pretrain the vision tower with the SigLIP sigmoid loss on captions and short descriptions
   (`recipe_siglip.py`).
5. Stage 1, align: only the projector learns, on captions (`recipe_align.py`; or on stage 2's
   conversations, `align_data`).
6. Stage 2, SFT on the question-answer conversations (`recipe_sft.py`); only the decoder learns
   (`sft_trainable`), the tower and the projector stay as stages 0-1 made them; batches hold
   conversations of similar length. Trained along, the tower lost what it had of colour (its share
   of an object's feature variance fell from 21 % to 1 %, `scripts/nano_features.py`), and the
   projector, even at a tenth of the decoder's rate, loses which grid cell a token is (see
   `sft_trainable`).
7. Stage 3: the stage-2 model answers yes/no probes and single questions of training scenes, the
   ground-truth oracle makes minimal corrections, DPO on the kept pairs trains the decoder
   (`make_pairs.py`, `recipe_dpo.py`).

After stages 1-3 the model is scored on the held-out set (`eval/shapes_accuracy.py`); `report.json` holds every
number and `model/` the final native checkpoint. The step counts below took 25.3 minutes on the
project's 2-core AMX Xeon (2026-12-07, 31.9 before the decoder was compiled as two graphs; issue 16
allows 30 there, 60 on the AMD EPYC, where they are not timed); `scale` multiplies them (a small
`scale` is the CI smoke test). At a given thread count a run is deterministic: run from nothing, the
command wrote the bundled model (2 threads, 2026-12-07) and remade it byte for byte after that
change, as it had remade the model before it.
"""

from __future__ import annotations

import dataclasses
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from omnivision.config import OmniVisionConfig, ProcessingConfig, ProjectorConfig, TextConfig, VisionConfig
from omnivision.data.formats import read_captions, read_conversations, read_qa, write_jsonl
from omnivision.data.shapes_dataset import MAX_TURNS, generate_shapes_dataset
from omnivision.data.questions import caption, descriptions, where
from omnivision.data.records import PreferencePair
from omnivision.data.scenes import read_scenes
from omnivision.data.shape_scenes import BACKGROUND, POSITIONS, ShapeScene
from omnivision.embedding_cache import ImageEmbeddingCache
from omnivision.eval.shapes_accuracy import absent_object_rate, pope_metrics, qa_accuracy
from omnivision.loader import load
from omnivision.model import OmniVisionModel, init_weights
from omnivision.model.siglip import SiglipVisionTower
from omnivision.processing.prompt import Message, render
from omnivision.processing.tokenizer import Tokenizer
from omnivision.processing.tokenizer_training import train_byte_level_bpe
from omnivision.train.config import TrainConfig
from omnivision.train.image_loader import ImageLoader
from omnivision.train.make_pairs import PairSource, make_pairs
from omnivision.train.nano_report import markdown_table
from omnivision.train.recipe_align import CAPTION_PROMPT, AlignConfig, run_align
from omnivision.train.recipe_dpo import DPOConfig, run_dpo
from omnivision.train.recipe_sft import SFTConfig, run_sft
from omnivision.train.recipe_siglip import SiglipPretrainModel, pretrain_siglip
from omnivision.train.recipe_text import pretrain_text
from omnivision.train.teachers import OracleTeacher
from omnivision.vlm import OmniVision
from omnivision.weights.native import save_native


def nano_config(vocab_size: int) -> OmniVisionConfig:
    """90-pixel images in 10-pixel patches: a 9x9 patch grid whose 3x3 blocks are exactly the scene's
    grid cells, so the 3x3 spatial merge gives one image token per cell (9 tokens).

    Pixels are normalised around the scenes' background colour: with the usual mean of 0.5 the
    background dominates every patch embedding, the image-to-image variation is a few percent of
    the features, and training collapses the tower to a constant before it learns shapes (measured:
    shape answers stayed at chance on one-object scenes; centred, they were learned in 200 steps).

    The decoder shares 2 key/value heads among its 6 query heads, as Qwen2.5 shares 2 among 14. One
    per query head, on the same data, tower and projector, answered no better after stage 2 (76.3
    and 72.8 % against 81.1 and 72.2 on two decoder seeds; `scripts/nano_redraw.py --text
    num_kv_heads=6`, AMD EPYC, 2026-12-07)."""
    return OmniVisionConfig(
        vision=VisionConfig(image_size=90, patch_size=10, hidden_size=128, intermediate_size=512,
                            num_layers=4, num_heads=4, has_head=True),
        projector=ProjectorConfig(compression="spatial3x3", hidden_size=256),
        text=TextConfig(vocab_size=vocab_size, hidden_size=192, intermediate_size=512, num_layers=4,
                        num_heads=6, num_kv_heads=2, rope_theta=10000.0, max_position_embeddings=512),
        processing=ProcessingConfig(image_mean=tuple(c / 255 for c in BACKGROUND), image_std=(0.25,) * 3),
        image_token_id=6, stop_token_ids=(2, 0), name="omnivision-nano")


@dataclass
class NanoConfig:
    out: str = "runs/nano"
    train_scenes: int = 8000
    eval_scenes: int = 300
    seed: int = 1
    eval_seed: int = 1001
    vocab_size: int = 768
    text_steps: int = 150
    siglip_steps: int = 300
    siglip_cell_texts: bool = False
    """Add the region objective to the tower's pretraining (`recipe_siglip.py`): each grid cell's
    tokens against the text of what the cell holds and where (`_cell_texts`). It keeps colour,
    shape and cell each a fifth of an object token's variance whatever the draw, but the one full
    run made with it answered worse (72.0 % held-out against 82.0; `docs/nano-recipe-history.md`): stage 1
    then took colour's share down instead of up. With `align_data="conversations"` as well, four
    seeds answered colour at 40.4-51.2 % after 2,700 stage-2 steps, where the recipe as shipped drew
    25.0-28.3 on two seeds and 61-64 on the bundled model's (AMX Xeon, 2026-12-07): a narrower spread,
    not yet a better best. Off, the recipe makes the bundled model."""
    align_steps: int = 150
    align_data: str = "captions"
    """What stage 1 trains the projector on, the decoder frozen: the training scenes' "captions" (one
    caption request each, the usual alignment data) or all of stage 2's "conversations" (the caption
    requests and the questions). On towers pretrained with the region objective the conversations
    gave the decoder image tokens it read colour from sooner (`scripts/nano_spread.py --one-object`:
    66.7 % against 56.1 % colour on lone objects after 900 steps, seed 2; README, The nano model);
    on a tower without it they did not (14.0 against 21.1, chance 17)."""
    sft_steps: int = 8100
    """Stage 2's steps, in batches of conversations of similar length (`TrainConfig.group_by_length`):
    random batches were half padding, so grouped ones run twice as many steps in the same time, and
    stage 2 is limited by its steps (1,350 steps: 46.8 %, 2,700: 64.5 %; the AMD EPYC; every
    kind still rising at 5,400, `scripts/nano_spread.py`). 8,100 since the compiled decoder and the
    feature cache made a step cheaper: 89.0-92.4 % over three batch orders (README, The nano model).
    A run of 7,200 steps without the system prompt (1.23x the steps a second) answered 70.7 %, colour
    48.3: a draw that did not learn colour, not yet told apart from an effect of either change."""
    sft_trainable: tuple[str, ...] = ("language",)
    """The parts stage 2 trains. Training the projector here takes the grid cell out of the image
    tokens, and questions about one object of several get another object's answer. From one stage-1
    model (held-out seed, AMD EPYC, 2026-12-05): projector and decoder at 5e-4, stage 2 77.4 %
    (colour 70.4, position 52.1, cell probe 72.1 -> 33.6 %); projector at 5e-5, decoder at 5e-4,
    73.2 % (colour 52.1, position 50.0; the cell's share of the token's variance 11.6 -> 4.7 %);
    projector frozen, 81.0 % (colour 81.7, position 65.0), but chart 78.9 against 89.4 and POPE F1
    0.87-0.90 against 0.94-0.96: frozen, the yes/no probes mostly check the shape alone
    (`scripts/nano_answers.py`). Single runs spread by several points (README, The nano model).
    Training both led by 10 points of colour after 2,700 steps on three draws of stages 0-1 but
    ended level on one at 8,100 (80.7 % against 81.1) and 8.2 points ahead on another (80.4 against
    72.2; AMD EPYC, 2026-12-07). With one question a conversation (`sft_max_turns=1`,
    `sft_batch_size=96`) as well: 98.2 and 97.6 on the same two draws."""
    sft_feature_cache: bool = True
    """Stage 2 reads the frozen tower's features from a cache computed once per image under the
    step's autocast and attention kernels (`SFTConfig.feature_cache`), instead of running the tower
    in every step: the same training bit for bit on the CPU, faster where the tower is costly (the
    AMD EPYC: 1.41x the steps per second, measured with an earlier float32 cache; the AMX Xeon:
    1.35x, and 1.52x with `sft_compile`, `scripts/nano_step_speed.py`, 2026-12-06). It takes about
    260 MB of disk for the recipe's 8,000 scenes (`runs/features`). Before 2026-12-06 the cache
    held float32 features that differed from a step's by about 0.1 %, so its runs were other draws
    of stage 2."""
    sft_compile: bool = True
    """Stage 2 runs its decoder compiled (`TrainConfig.compile`; eager, with a warning, where
    torch.compile cannot build correct code). On the AMX Xeon 1.11x the conversations a second
    alone, 1.52x with the feature cache (`scripts/nano_step_speed.py`, 2026-12-06)."""
    sft_questions: str = "one"
    """What stage 2's conversations ask of each training scene (`generate_shapes_dataset`): "one"
    question of each kind, or "every" question (each object's colour, shape and place). From the
    bundled run's stage-1 model on the feature cache, stage 2 answered 69.6 % held-out with one
    question (colour 47.5), 70.0 with every question (42.9), and 75.0 with every question one a
    conversation (`sft_max_turns=1`, 8,100 steps; colour 43.8; AMD EPYC, 2026-12-06;
    `docs/nano-recipe-history.md`): shape, count and place gained, colour did not."""
    sft_max_turns: int = MAX_TURNS
    """The most questions one of stage 2's conversations asks (`generate_shapes_dataset`). At 1,
    with 96 conversations a step (`sft_batch_size`, as many answers a step), stage 2 ended 7.8 and
    5.8 points ahead of the recipe's on two draws of stages 0-1 (88.9 % against 81.1, 78.0 against
    72.2; colour and position 9-14 points ahead on both; AMD EPYC, 2026-12-07, 8,100 steps,
    `scripts/nano_requestion.py`), at 0.29 s a step against 0.18. With the projector learning as
    well (`sft_trainable`), both draws ended at 98.2 and 97.6 %, colour 100 on both (one thread
    each). Not yet the default (README, The nano model)."""
    sft_batch_size: int = 0
    """Stage 2's conversations a step (0: `batch_size`, which every other stage uses). With one
    question a conversation (`sft_max_turns=1`) a step needs three times the conversations to see
    as many answers as the recipe's conversations of about three questions."""
    sft_group_by_length: int = 16
    """Stage 2's `TrainConfig.group_by_length` (0: random batches)."""
    sft_weight_decay: float = 0.01
    """Stage 2's AdamW weight decay (on the weight matrices; `TrainConfig.weight_decay`). The other
    stages keep 0.01. At 0.1, stage 2 ended at 79.7 % against 81.1 on one draw of stages 0-1 and
    76.7 against 72.2 on another (AMD EPYC, 2026-12-07, 8,100 steps): within the draws' spread."""
    sft_language_lr_scale: float = 1.0
    """Stage 2's decoder learns at this multiple of `sft_lr` (the projector's rate). A separate rate
    mattered while the projector learned at 2e-3: the decoder at a quarter of it lifted colour from
    chance (`docs/nano-recipe-history.md`). With the tower's position table initialised at its own
    scale and stage 1 at 3e-4, both parts at 5e-4 did best (stage 2 71.4 % against 53.9 % with the
    projector at 2e-3 and the decoder at 5e-4; the AMD EPYC, 2026-12-05). With the projector frozen
    (`sft_trainable`) only the decoder's rate, `sft_lr` times this, matters: doubled, it ended
    stage 2 at 67.4 % against 81.1 (AMD EPYC, 2026-12-07, 8,100 steps)."""
    dpo_sources: int = 1000
    """Stage 3 draws this many training prompts of each kind in `dpo_kinds` (times `scale` when
    below 1, at least 40) for the stage-2 model to answer; the oracle's corrections of its wrong
    answers are the pairs."""
    dpo_kinds: tuple[str, ...] = ("probe", "question")
    """Which prompts: caption requests ("caption"), yes/no probes ("probe"), the training scenes'
    single questions of every kind ("question"). Captions are left out: with stage 2 on grouped
    batches the captions name no absent object (0.0 % held-out), and their pairs were chart
    values; on one stage-2 model (QA 77.4 %, POPE F1 94.3-95.8), 30 steps on caption and probe
    pairs gave QA 77.6 %, F1 92.9-94.6, on probe and question pairs 77.9 %, F1 93.9-95.7 (AMD
    EPYC, 2026-12-05)."""
    dpo_steps: int = 5
    """Stage 3's steps (batch 16). The fewer errors stage 2 leaves, the fewer pairs, and the same
    steps are more passes over them: from the 91.7 % stage-2 model of the recipe's 2026-12-06 run (79
    pairs, most of them places), 30 steps (six passes) took QA to 89.9 %, colour 98.8 -> 90.8, and
    captions from naming no absent object to 6.3 %; 10 steps gave 91.9 % and 0.4 %, 5 steps (one
    pass) 92.3 % and 0.2 %, a rate of 1e-5 at 30 steps 91.7 % and 0.5 % (AMX Xeon). On a weaker
    stage-2 model (QA 77.9 %), 100 steps had cost answers too: 75.5 % against 77.9 at 30."""
    dpo_trainable: tuple[str, ...] = ("language",)
    """The parts stage 3 trains. After a stage 2 with the projector frozen, training it here cost
    6.7 points of answers and raised absent objects from 3.2 to 34 %; the decoder alone added a
    point and lowered them to 2.1 %."""
    dpo_lr: float = 2e-5
    """Stage 3's rate."""
    dpo_nll_weight: float = 1.0
    """Stage 3's `DPOConfig.nll_weight`: the weight of the chosen answers' own loss next to DPO's.
    Plain DPO on the recipe's pairs lowered the chosen answers' likelihood along with the rejected
    ones (their per-token loss rose from 0.081 to 0.151 in 100 steps); at 1.0 it held (0.075)."""
    align_lr: float = 3e-4
    """Stage 1's rate (only the projector learns). At 3e-3 the projector's output lost the
    image tokens' grid cell (linear probe 88.5 % at initialisation, 23 % after stage 1); at 3e-4 it
    kept more of it, at the same caption loss (`scripts/nano_features.py`). Lower is not better:
    at 1e-4 the probe read 84.4 % against 72.1 % at 3e-4, but the stage 2 that followed, projector
    frozen, answered 72.1 % against 81.0 (one thread against two; AMD EPYC, 2026-12-05)."""
    sft_lr: float = 5e-4
    """Stage 2's rate: the projector's; the decoder's is this times `sft_language_lr_scale`."""
    precision: str = "auto"
    """The training loop's `TrainConfig.precision` for every stage: auto (bf16 autocast where the
    CPU has native bf16), fp32 or bf16."""
    batch_size: int = 32
    scale: float = 1.0
    """Multiplies every step count (and divides the scene counts when below 1)."""
    threads: int = 0
    """torch threads (0: leave torch's default)."""


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
    """Held-out scores: QA accuracy by type, POPE per strategy, absent objects in captions.

    Each held-out image is asked about ~15 times, spread over the whole evaluation, so for the call the
    model's embedding cache (16 images) is swapped for one as large as the held-out set: every image
    goes through the tower about once, with the same scores (16.0 against 11.2 s on the nano stage-2 model)."""
    def answer(images, questions):
        return vlm.answer_batch([data / i for i in images], questions, max_new_tokens=32)

    meta = json.loads((data / "meta.json").read_text())["vocabulary"]
    scenes = [json.loads(line) for line in (data / "scenes.jsonl").read_text().splitlines()]
    shape_scenes = [s for s in scenes if s["kind"] == "shapes"]
    own_cache, vlm.image_cache = vlm.image_cache, ImageEmbeddingCache(len(scenes))
    try:
        captions = answer([s["image"] for s in shape_scenes], [CAPTION_PROMPT] * len(shape_scenes))
        present = [{f"{o['color']} {o['shape']}" for o in s["objects"]} for s in shape_scenes]
        return {"qa": qa_accuracy(answer, read_qa(data / "qa.jsonl")),
                "pope": pope_metrics(answer, read_qa(data / "pope.jsonl")),
                "absent_objects": absent_object_rate(captions, present, meta["colors"], meta["shapes"])}
    finally:
        vlm.image_cache = own_cache


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


def stage3(cfg: NanoConfig, data: Path, stage2_dir: Path, out: Path, stage2: OmniVision | None = None
           ) -> tuple[Path, dict]:
    """Stage 3 from the stage-2 model in `stage2_dir`: its answers to training prompts of the kinds
    `cfg.dpo_kinds`, the oracle's minimal corrections (`pairs.jsonl` in `out`), DPO on
    them (`runs/dpo` in `out`). Returns the final model's folder (the stage-2 one when no pair was
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

    final, report["pairs"] = stage3(cfg, data, out / "runs" / "sft" / "model", out, stage2)
    report["stages"]["3-dpo"] = evaluate(load(final, dtype="float32"), held_out)
    lap("stage 3")

    final_vlm = load(final, dtype="float32")
    save_native(final_vlm.model, final_vlm.tokenizer, out / "model", extra={"recipe": "nano"})
    report["total_s"] = round(sum(timings.values()), 1)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(markdown_table(report))
    return report
