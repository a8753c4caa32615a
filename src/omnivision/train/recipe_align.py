"""Stage 1, projector alignment on image-caption pairs.

    omnivision train align --config align.yaml [key=value ...]

Only the projector learns: the vision tower and the language model are frozen (the loop freezes
every parameter outside `projector`). The frozen tower's features are computed once and cached on
disk by image content (`train/feature_cache.py`), so training runs the projector and the decoder
only. Each caption becomes a one-turn conversation ("Describe the image." -> caption) in the model's
own template. The final model is written to `<train.out_dir>/model`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from omnivision.data.formats import read_captions
from omnivision.data.images import check_images
from omnivision.loader import load
from omnivision.train.collate import Batch, collate_examples
from omnivision.train.config import TrainConfig
from omnivision.process_group import is_main
from omnivision.train.distributed import full_state_dict
from omnivision.train.encode import EncodedExample, encode_caption
from omnivision.train.feature_cache import FeatureCache
from omnivision.train.image_loader import ImageLoader
from omnivision.train.lm_task import LMTask
from omnivision.train.loop import TrainResult, train
from omnivision.train.parts import trainable_parts
from omnivision.weights.native import save_native

CAPTION_PROMPT = "Describe the image."


@dataclass
class AlignConfig:
    model: str
    """Starting model: any source `omnivision.load` accepts (e.g. built with convert --from-hf)."""
    data: str
    """Caption pairs JSONL (`image`, `caption`)."""
    images: str = "."
    train: TrainConfig = field(default_factory=TrainConfig)
    prompt: str = CAPTION_PROMPT
    feature_cache: str = ""
    """Folder for cached vision features (default `<train.out_dir>/features`)."""
    skip_bad_images: bool = False


@dataclass
class AlignItem:
    example: EncodedExample
    features: torch.Tensor  # [P, D_v]


def collate(pad_id: int):
    def fn(items: list[AlignItem]) -> Batch:
        return collate_examples([i.example for i in items], pad_id,
                                vision_features=[i.features for i in items])
    return fn


def run_align(cfg: AlignConfig, resume: bool = False) -> TrainResult:
    vlm = load(cfg.model, dtype="float32")
    captions, report = check_images(read_captions(cfg.data), cfg.images, cfg.skip_bad_images)
    if report.skipped:
        print(f"skipped {sum(report.skipped.values())} records with bad images: {dict(report.skipped)}")
    out = Path(cfg.train.out_dir)
    cache = FeatureCache(cfg.feature_cache or out / "features", vlm.model,
                         ImageLoader(vlm.config, cfg.images, cache=False))
    features = cache.features([c.image for c in captions])
    pc = vlm.config.processing
    items = [AlignItem(encode_caption(vlm.tokenizer, c.caption, pc.template, pc.system_prompt,
                                      vlm.config.num_image_tokens, prompt=cfg.prompt), features[c.image])
             for c in captions]
    result = train(vlm.model, LMTask(), items, collate(vlm.tokenizer.endoftext_id), cfg.train,
                   trainable=trainable_parts(["projector"]), resume=resume,
                   lengths=[len(i.example) for i in items],
                   on_checkpoint=lambda model, d, state: save_native(model, vlm.tokenizer, d / "model",
                                                                     state=state))
    state = full_state_dict(vlm.model)
    if is_main():
        save_native(vlm.model, vlm.tokenizer, out / "model", state=state)
    return result
