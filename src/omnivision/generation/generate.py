"""Prefill then decode with the KV cache, as generators of token ids.

`generate_steps` is the one loop: it runs a left-padded batch and yields the next token of every
unfinished row at each step. `generate` (one sequence, streaming) and `generate_batch` are thin
wrappers over it, so streaming, the CLI and batching share the same code. No tokenizer here: stop
strings are the caller's business (it closes the generator).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Protocol, Sequence

import torch

from omnivision.generation.sampling import SamplingConfig, sample
from omnivision.model import OmniVisionModel


@dataclass
class GenerationConfig:
    max_new_tokens: int = 256
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    seed: int | None = None
    stop_token_ids: tuple[int, ...] = ()
    """Generation ends at these ids; they are not yielded."""

    def __post_init__(self) -> None:
        if self.max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {self.max_new_tokens}")


class StepHooks(Protocol):
    """Per-step access to the logits, for callers that constrain or inspect generation (the server's
    JSON mode and logprobs). Both see `[B, V]` float logits of the unfinished and finished rows."""

    def constrain(self, logits: torch.Tensor) -> torch.Tensor:
        """The logits to sample from (e.g. with disallowed tokens set to -inf)."""
        ...

    def observe(self, logits: torch.Tensor, tokens: torch.Tensor) -> None:
        """Called after sampling with the model's own logits and the chosen tokens [B]."""
        ...


class ContextOverflowError(ValueError):
    """The prompt plus the tokens to generate do not fit the model's context."""


def _left_pad(batch: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(ids) for ids in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    valid = torch.zeros(len(batch), width, dtype=torch.bool)
    for row, seq in enumerate(batch):
        if seq:
            ids[row, width - len(seq):] = torch.tensor(seq, dtype=torch.long)
            valid[row, width - len(seq):] = True
    return ids, valid


@torch.inference_mode()
def generate_steps(model: OmniVisionModel, batch: Sequence[Sequence[int]],
                   image_embeds: torch.Tensor | None, cfg: GenerationConfig,
                   hooks: StepHooks | None = None) -> Iterator[dict[int, int]]:
    """Yield {row: next token id} for each unfinished row, step by step.

    batch: the prompt ids of each row, image placeholders already expanded.
    image_embeds: [N, K, D] for all placeholders of the batch in row-major order, or None.
    """
    if not batch or any(len(ids) == 0 for ids in batch):
        raise ValueError("every prompt needs at least one token")
    longest = max(len(ids) for ids in batch)
    limit = model.config.text.max_position_embeddings
    if longest + cfg.max_new_tokens > limit:
        raise ContextOverflowError(f"prompt of {longest} tokens plus {cfg.max_new_tokens} new tokens "
                                   f"exceeds the context of {limit}")
    if cfg.max_new_tokens == 0:
        return
    device = model.device
    ids, valid = _left_pad(batch, pad_id=0)
    ids, valid = ids.to(device), valid.to(device)
    padded = not bool(valid.all())
    b = ids.shape[0]
    cache = model.new_cache(b, longest + cfg.max_new_tokens)
    generator = None
    if cfg.seed is not None:
        generator = torch.Generator(device=device).manual_seed(cfg.seed)
    seen = torch.zeros(b, model.config.text.vocab_size, dtype=torch.bool, device=device)
    if cfg.sampling.repetition_penalty != 1.0:
        for row in range(b):
            seen[row, ids[row][valid[row]]] = True
    stops = torch.tensor(cfg.stop_token_ids or [-1], device=device)

    positions = (valid.long().cumsum(-1) - 1).clamp(min=0)  # [B, T]
    embeds = model.embed(ids, image_embeds)
    hidden = model.language(embeds, positions, valid if padded else None, cache)  # [B, T, D]
    next_pos = positions[:, -1:] + 1  # [B, 1]
    finished = torch.zeros(b, dtype=torch.bool, device=device)
    for step in range(cfg.max_new_tokens):
        logits = model.language.logits(hidden[:, -1])  # [B, V]
        if hooks is None:
            tokens = sample(logits, cfg.sampling, seen, generator)  # [B]
        else:
            tokens = sample(hooks.constrain(logits.float()), cfg.sampling, seen, generator)
            hooks.observe(logits.float(), tokens)
        finished |= torch.isin(tokens, stops)
        out = {row: int(tokens[row]) for row in range(b) if not finished[row]}
        if not out:
            return
        yield out
        if step + 1 == cfg.max_new_tokens:
            return
        seen[torch.arange(b), tokens] = True
        if padded:
            valid = torch.cat((valid, torch.ones(b, 1, dtype=torch.bool, device=device)), dim=1)
        hidden = model.language(model.language.embed(tokens[:, None]), next_pos,
                                valid if padded else None, cache)
        next_pos = next_pos + 1


def generate(model: OmniVisionModel, prompt_ids: Sequence[int], image_embeds: torch.Tensor | None,
             cfg: GenerationConfig, hooks: StepHooks | None = None) -> Iterator[int]:
    """Stream the generated token ids of one prompt."""
    for step in generate_steps(model, [prompt_ids], image_embeds, cfg, hooks):
        yield step[0]


def generate_batch(model: OmniVisionModel, batch: Sequence[Sequence[int]],
                   image_embeds: torch.Tensor | None, cfg: GenerationConfig) -> list[list[int]]:
    """Generated ids for each prompt of a batch (same tokens as one at a time, under greedy)."""
    out: list[list[int]] = [[] for _ in batch]
    for step in generate_steps(model, batch, image_embeds, cfg):
        for row, token in step.items():
            out[row].append(token)
    return out
