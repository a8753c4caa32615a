"""Stage 2, supervised fine-tuning on image question-answering conversations.

    omnivision train sft --config sft.yaml [key=value ...]

Setup -> train -> save, top to bottom. Loss on the assistant tokens only, the closing `<|im_end|>`
included (`train/encode.py`), with the model's own chat template. Which parts learn is configurable
(`trainable`: projector, language, vision); the vision tower stays frozen unless named. Trainable
parts learn fully, or through LoRA adapters (`lora`, `train/lora.py`). With the tower frozen, its
features can be computed once per image and cached on disk (`feature_cache`), as stage 1 always
does. The final model, adapters merged, is written as a native checkpoint to
`<train.out_dir>/model`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from omnivision.data.formats import read_conversations
from omnivision.data.images import check_images
from omnivision.loader import load
from omnivision.train.collate import Batch, collate_examples
from omnivision.train.config import TrainConfig
from omnivision.process_group import is_main
from omnivision.train.distributed import full_state_dict
from omnivision.train.encode import EncodedExample, encode_conversation, truncate
from omnivision.train.feature_cache import FeatureCache
from omnivision.train.image_loader import ImageLoader
from omnivision.train.lm_task import LMTask
from omnivision.train.loop import TrainResult, train
from omnivision.train.lora import LoraSettings, prepare_parts
from omnivision.weights.native import save_native


@dataclass
class SFTConfig:
    model: str
    """Starting model: any source `omnivision.load` accepts."""
    data: str
    """Conversations, LLaVA JSON or JSONL."""
    images: str = "."
    """Folder the conversations' image paths are relative to."""
    train: TrainConfig = field(default_factory=TrainConfig)
    trainable: list[str] = field(default_factory=lambda: ["projector", "language"])
    """Components that learn: any of projector, language, vision."""
    lora: LoraSettings = field(default_factory=LoraSettings)
    """LoRA adapters (through peft) instead of full training for some trainable parts; the saved
    model has them merged in. Off by default (`lora.rank: 0`)."""
    max_len: int = 512
    """Longer conversations are cut from the right (never inside the image block)."""
    skip_bad_images: bool = False
    """Drop and count records whose image is missing or undecodable instead of stopping."""
    cache_images: bool = False
    """Keep preprocessed images in memory (small data sets)."""
    feature_cache: str = ""
    """Folder for the vision tower's features, computed once per image and kept on disk by image
    content (`train/feature_cache.py`): the steps then run the projector and the decoder only, and a
    later run on the same images and tower reuses them. Only with the tower frozen (`vision` not in
    `trainable`). The features are computed under the training's autocast, as the tower computes
    them inside a step, so on the CPU a cached run trains on the same numbers as an uncached one,
    faster. Empty: the tower runs in every step."""


@dataclass
class SFTItem:
    example: EncodedExample
    image: str | None


def encode_items(vlm, conversations, max_len: int) -> list[SFTItem]:
    cfg = vlm.config
    items = []
    for c in conversations:
        ex = encode_conversation(vlm.tokenizer, c.turns, c.image is not None, cfg.processing.template,
                                 cfg.processing.system_prompt, cfg.num_image_tokens)
        items.append(SFTItem(truncate(ex, max_len) if len(ex) > max_len else ex, c.image))
    return items


def image_collate(loader: ImageLoader, pad_id: int):
    def collate(items: list[SFTItem]) -> Batch:
        pixels = [loader(i.image) for i in items if i.image is not None]
        return collate_examples([i.example for i in items], pad_id, pixels or None)
    return collate


def feature_collate(features: dict[str, torch.Tensor], pad_id: int):
    """Batches whose images are the frozen tower's cached features [P, D_v], by image name."""
    def collate(items: list[SFTItem]) -> Batch:
        return collate_examples([i.example for i in items], pad_id,
                                vision_features=[features[i.image] for i in items if i.image is not None])
    return collate


def _collate(cfg: SFTConfig, vlm, conversations) -> Callable[[list[SFTItem]], Batch]:
    pad_id = vlm.tokenizer.endoftext_id
    if not cfg.feature_cache:
        return image_collate(ImageLoader(vlm.config, cfg.images, cfg.cache_images), pad_id)
    if "vision" in cfg.trainable:
        raise ValueError("feature_cache needs a frozen vision tower, but 'vision' is in trainable")
    cache = FeatureCache(cfg.feature_cache, vlm.model, ImageLoader(vlm.config, cfg.images, cache=False),
                         step=cfg.train)
    features = cache.features([c.image for c in conversations if c.image is not None])
    print(f"vision features: {cache.computed} computed, {cache.reused} reused from {cfg.feature_cache}")
    return feature_collate(features, pad_id)


def run_sft(cfg: SFTConfig, resume: bool = False) -> TrainResult:
    vlm = load(cfg.model, dtype="float32")
    conversations, report = check_images(read_conversations(cfg.data), cfg.images, cfg.skip_bad_images)
    if report.skipped:
        print(f"skipped {sum(report.skipped.values())} records with bad images: {dict(report.skipped)}")
    items = encode_items(vlm, conversations, cfg.max_len)
    collate = _collate(cfg, vlm, conversations)
    out = Path(cfg.train.out_dir)
    trainable, to_save = prepare_parts(vlm.model, cfg.trainable, cfg.lora, cfg.train.seed)
    result = train(vlm.model, LMTask(), items, collate, cfg.train,
                   trainable=trainable, resume=resume, lengths=[len(i.example) for i in items],
                   on_checkpoint=lambda model, d, state: save_native(model, vlm.tokenizer, d / "model",
                                                                     state=to_save(state)))
    state = full_state_dict(vlm.model)
    if is_main():
        save_native(vlm.model, vlm.tokenizer, out / "model", state=to_save(state))
    return result
