"""The nano recipe's settings: the model's shape (`nano_config`) and every setting of a run
(`NanoConfig`, which `omnivision train recipe nano` takes as `key=value`), each with what was
measured choosing it. The pipeline that runs them is `recipe_nano.py`."""

from __future__ import annotations

from dataclasses import dataclass

from omnivision.config import OmniVisionConfig, ProcessingConfig, ProjectorConfig, TextConfig, VisionConfig
from omnivision.data.shape_scenes import BACKGROUND

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
    66.7 % against 56.1 % colour on lone objects after 900 steps, seed 2; `docs/nano-recipe-history.md`);
    on a tower without it they did not (14.0 against 21.1, chance 17)."""
    sft_steps: int = 8100
    """Stage 2's steps, in batches of conversations of similar length (`TrainConfig.group_by_length`):
    random batches were half padding, so grouped ones run twice as many steps in the same time, and
    stage 2 is limited by its steps (1,350 steps: 46.8 %, 2,700: 64.5 %; the AMD EPYC; every
    kind still rising at 5,400, `scripts/nano_spread.py`). 8,100 since the compiled decoder and the
    feature cache made a step cheaper: 89.0-92.4 % over three batch orders (`docs/nano-recipe-history.md`).
    A run of 7,200 steps without the system prompt (1.23x the steps a second) answered 70.7 %, colour
    48.3: a draw that did not learn colour, not yet told apart from an effect of either change."""
    sft_trainable: tuple[str, ...] = ("projector", "language")
    """The parts stage 2 trains (the tower stays as stages 0-1 made it). On conversations of up to
    12 questions, training the projector too took the grid cell out of the image tokens (a linear
    probe of the cell fell from 72 to 34 %) and questions about one object of several got another
    object's answer, and frozen, the yes/no probes mostly checked the shape alone; either way single
    draws of stages 0-1 ended 72-81 % (AMD EPYC, 2026-12-05 to 07). With one question a conversation
    (`sft_max_turns`) the projector learning as well ended stage 2 at 98.2 and 97.6 % on two draws
    that the decoder alone left at 88.9 and 78.0 (colour 100 against 77 and 59; AMD EPYC,
    2026-12-07, 8,100 steps, `scripts/nano_requestion.py`; README, The nano model)."""
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
    sft_max_turns: int = 2
    """The most questions one of stage 2's conversations asks (`generate_shapes_dataset`; 12 until
    2026-12-07). Fewer let more draws of stages 0-1 learn which image token holds the asked object:
    at 1 (96 conversations a step, as many answers as the recipe's 32 of about three questions),
    stage 2 ended 7.8 and 5.8 points ahead on two draws with the decoder alone learning (88.9 %
    against 81.1, 78.0 against 72.2), and at 98.2 and 97.6 with the projector learning too
    (`sft_trainable`; AMD EPYC, 8,100 steps, `scripts/nano_requestion.py`). Why is not measured (a
    guess: in a long conversation many answers follow from the text before them). But a model
    that never saw a second question cannot answer one: the recipe at 1, from nothing, answered
    96.1 % held-out and 21.5 % of the same questions asked second in a conversation
    (`eval.shapes_accuracy.second_turn_accuracy`, the 60 scenes of `tests/test_bundled_model.py`).
    At 2 (72 a step) the bundled model answers 98.0 % held-out and 90.4 % asked second (the model
    before, at 12: 93.3 and 92.5)."""
    sft_batch_size: int = 72
    """Stage 2's conversations a step (0: `batch_size`, which every other stage uses). Conversations
    of one or two questions (`sft_max_turns`, 1.36 on average) need more a step than the old ones
    (about three) for as many answers: 72 of them hold about 98 answers. Stage 2 took 0.26 s a step,
    0.27 at one question (96 a step), 0.19 on 32 of the old conversations (its time over its steps;
    AMD EPYC, 2 threads)."""
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
    dpo_scenes: int = 2400
    """Stage 3 asks about this many fresh scenes (drawn with `dpo_seed`; times `scale` when below 1,
    at least 40), which stages 1-2 never saw; 0 asks about the training scenes instead. On its own
    training scenes the stage-2 model is almost never wrong: of 1,000 of their captions it got 3
    wrong (chart values), and stage 3 left the absent objects named in captions where they were.
    Fresh scenes hold the errors it makes on new images, 128 caption corrections of 2,400 (a
    swapped colour or shape, an object that is not there), the pairs a teacher would make for a
    model in use (AMD EPYC, 2026-12-08; `dpo_sources`)."""
    dpo_seed: int = 4711
    """The seed of stage 3's fresh scenes: apart from `seed`, `eval_seed` and the seeds the bundled
    model's figures were measured on (9461; 5151 and 5152 for absent objects)."""
    dpo_sources: int = 2400
    """Stage 3 draws this many prompts of each kind in `dpo_kinds` (times `scale` when below 1, at
    least 40) for the stage-2 model to answer; the oracle's corrections of its wrong answers are the
    pairs. From the bundled model's stage 2, on fresh scenes with 15 steps: 1,000 of each kind gave
    90 pairs, 2,400 gave 193, and only the 193 lowered the absent objects named in the captions of
    unseen scenes by a fifth (`dpo_steps`)."""
    dpo_kinds: tuple[str, ...] = ("caption", "probe", "question")
    """Which prompts: caption requests ("caption"), yes/no probes ("probe"), the scenes' single
    questions of every kind ("question"). Captions were left out while stage 3 asked about the
    training scenes, whose captions it had learned: their pairs were chart values, and on a weaker
    stage-2 model (QA 77.4 %), 30 steps on caption and probe pairs gave QA 77.6 %, POPE F1
    92.9-94.6, on probe and question pairs 77.9 %, 93.9-95.7 (AMD EPYC, 2026-12-05). On fresh
    scenes (`dpo_scenes`) the caption pairs are the ones that correct absent objects."""
    dpo_steps: int = 15
    """Stage 3's steps (batch 16). The fewer errors stage 2 leaves, the fewer pairs, and the same
    steps are more passes over them: from the 91.7 % stage-2 model of the recipe's 2026-12-06 run (79
    pairs on training scenes, most of them places), 30 steps (six passes) took QA to 89.9 %, colour
    98.8 -> 90.8, and captions from naming no absent object to 6.3 %; 10 steps gave 91.9 % and 0.4 %,
    5 steps (one pass) 92.3 % and 0.2 % (AMX Xeon). From the bundled model's stage 2 (QA 97.7 %,
    absent objects 0.40 % of 3,001 named in the captions of 1,200 unseen scenes, seed 5151, and
    0.33 % of 6,037, seed 5152), on fresh scenes: 90 pairs, 5 steps: 97.6 %, 0.33 % (seed 5151);
    90 pairs, 10 steps: 97.9 %, 0.33 %; 193 pairs, 15 steps (1.2 passes): 97.9 %, 0.30 % and
    0.22 % (9 and 13 objects against 12 and 20: 31 % fewer over both sets), POPE F1 >= 0.999. Asking
    about training scenes as before, stage 3 (5 steps) left the rates as they were: 0.33 % (seed
    5152), and with caption requests added 0.40 % (seed 5151) (AMD EPYC, 2026-12-08)."""
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
