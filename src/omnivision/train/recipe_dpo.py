"""Stage 3, DPO on minimal-edit preference pairs, against the frozen stage-2 model as reference.

    omnivision train dpo --config dpo.yaml [key=value ...]

The reference is the starting model itself, frozen: its log-probabilities of every chosen and
rejected answer are computed once before training (the same weights would give the same numbers at
every step), so training holds one model in memory. Each step runs the policy over the chosen and
the rejected sequences as one batch and applies the sigmoid DPO loss (`train/losses.py`), with,
when `nll_weight` is set, the chosen answers' language-model loss added.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from omnivision.data.formats import read_preferences
from omnivision.data.images import check_images
from omnivision.loader import load
from omnivision.train.collate import Batch, collate_examples
from omnivision.train.config import TrainConfig
from omnivision.process_group import is_main
from omnivision.train.distributed import full_state_dict
from omnivision.train.encode import EncodedExample, encode_preference
from omnivision.train.image_loader import ImageLoader
from omnivision.train.loop import TrainResult, train
from omnivision.train.losses import dpo_loss, label_counts, next_token_targets, scored_sequence_logps
from omnivision.train.lora import LoraSettings, prepare_parts
from omnivision.weights.native import save_native


@dataclass
class DPOConfig:
    model: str
    """The stage-2 model: the starting policy and the frozen reference."""
    data: str
    """Preference pairs JSONL (`image`, `prompt`, `chosen`, `rejected`)."""
    images: str = "."
    train: TrainConfig = field(default_factory=TrainConfig)
    beta: float = 0.1
    """Strength of the pull towards the reference (higher: stay closer)."""
    nll_weight: float = 0.0
    """Weight of the chosen answers' mean per-token negative log-likelihood, added to the DPO loss
    (the "RPO" objective of Pang et al. 2024, arXiv:2404.19733). DPO alone only widens the gap
    between chosen and rejected, and often does it by lowering both; this term holds the chosen
    answers up. 0 (the default) is plain DPO."""
    trainable: list[str] = field(default_factory=lambda: ["projector", "language"])
    lora: LoraSettings = field(default_factory=LoraSettings)
    """LoRA adapters instead of full training (merged on save); off by default."""
    skip_bad_images: bool = False
    cache_images: bool = False


@dataclass
class DPOItem:
    chosen: EncodedExample
    rejected: EncodedExample
    image: str | None
    ref_chosen: float = 0.0
    ref_rejected: float = 0.0


def collate(loader: ImageLoader, pad_id: int):
    def fn(items: list[DPOItem]) -> tuple[Batch, torch.Tensor]:
        pixels = [loader(i.image) for i in items if i.image is not None]
        both = collate_examples([i.chosen for i in items] + [i.rejected for i in items], pad_id,
                                (pixels + pixels) or None)
        ref = torch.tensor([[i.ref_chosen for i in items], [i.ref_rejected for i in items]])  # [2, B]
        return both, ref
    return fn


def _sequence_logps(model, both: Batch) -> torch.Tensor:
    """log pi(answer | prompt) of each sequence of `both` [2B]; the head runs at the scored positions only."""
    at, targets = next_token_targets(both.labels)  # [2B, T], [M]
    logits = model(both.input_ids, pixel_values=both.pixel_values, key_valid=both.key_valid, logits_at=at)  # [M, V]
    return scored_sequence_logps(logits, targets, at)  # [2B]


class DPOTask:
    """The sigmoid DPO loss of a batch of pairs, plus `nll_weight` times the chosen answers' mean
    per-token NLL."""

    def __init__(self, beta: float, nll_weight: float = 0.0) -> None:
        self.beta, self.nll_weight = beta, nll_weight

    def loss(self, model, batch: tuple[Batch, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        both, ref = batch
        logps = _sequence_logps(model, both)  # [2B]
        chosen, rejected = logps.chunk(2)
        out = dpo_loss(chosen, rejected, ref[0].to(logps), ref[1].to(logps), self.beta)
        tokens = label_counts(both.labels).chunk(2)[0].clamp(min=1)  # [B]
        chosen_nll = -(chosen / tokens).mean()  # []
        loss = out.loss + self.nll_weight * chosen_nll if self.nll_weight else out.loss
        return loss, {"reward_accuracy": float(out.reward_accuracy), "margin": float(out.margin),
                      "chosen_nll": float(chosen_nll.detach())}


@torch.no_grad()
def reference_logps(model, items: list[DPOItem], fn, batch: int = 8) -> None:
    """Fill each item's reference log-probabilities with the (frozen) starting model."""
    model.eval()
    for start in range(0, len(items), batch):
        chunk = items[start:start + batch]
        both, _ = fn(chunk)
        chosen, rejected = _sequence_logps(model, both).chunk(2)
        for item, c, r in zip(chunk, chosen.tolist(), rejected.tolist()):
            item.ref_chosen, item.ref_rejected = c, r


def run_dpo(cfg: DPOConfig, resume: bool = False) -> TrainResult:
    if cfg.beta <= 0:
        raise ValueError(f"beta must be positive, got {cfg.beta}")
    if cfg.nll_weight < 0:
        raise ValueError(f"nll_weight must be >= 0, got {cfg.nll_weight}")
    vlm = load(cfg.model, dtype="float32")
    pairs, report = check_images(read_preferences(cfg.data), cfg.images, cfg.skip_bad_images)
    if report.skipped:
        print(f"skipped {sum(report.skipped.values())} pairs with bad images: {dict(report.skipped)}")
    pc, c = vlm.config.processing, vlm.config
    items = []
    for p in pairs:
        chosen, rejected = encode_preference(vlm.tokenizer, p.prompt, p.chosen, p.rejected, p.image is not None,
                                             pc.template, pc.system_prompt, c.num_image_tokens)
        items.append(DPOItem(chosen, rejected, p.image))
    fn = collate(ImageLoader(c, cfg.images, cfg.cache_images), vlm.tokenizer.endoftext_id)
    reference_logps(vlm.model, items, fn)
    out = Path(cfg.train.out_dir)
    trainable, to_save = prepare_parts(vlm.model, cfg.trainable, cfg.lora, cfg.train.seed)
    task = DPOTask(cfg.beta, cfg.nll_weight)
    result = train(vlm.model, task, items, fn, cfg.train, trainable=trainable, resume=resume,
                   lengths=[max(len(i.chosen), len(i.rejected)) for i in items],
                   on_checkpoint=lambda model, d, state: save_native(model, vlm.tokenizer, d / "model",
                                                                     state=to_save(state)))
    state = full_state_dict(vlm.model)
    if is_main():
        save_native(vlm.model, vlm.tokenizer, out / "model", state=to_save(state))
    return result
