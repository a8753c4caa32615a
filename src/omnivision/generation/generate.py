"""Prefill then decode with the KV cache: the two steps, and the loop built from them.

`prefill` runs a (left-padded) batch of prompt embeddings through the decoder into a fresh KV
cache and returns the logits of the next token with the `Decoding` state; `decode_step` feeds one
token per row and returns the next logits. They take the bare decoder (`Qwen2ForCausalLM`), so
callers that need their own loop (continuous batching, compiled decoding, the quantization check
of a decoder alone) build on them rather than on a copy. Rotary positions come from
`model.qwen2.rotary_positions`, the one place that knows how left padding shifts them.

`generate_steps` is the one sampling loop: it splices image embeddings into the prompt, prefills,
and yields the next token of every unfinished row at each step. `generate` (one sequence,
streaming) and `generate_batch` are thin wrappers over it, so streaming, the CLI and batching share
the same code. No tokenizer here: stop strings are the caller's business (it closes the generator).
On CUDA the decode steps run with fixed shapes as a replayed CUDA graph (`static_decode`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Protocol, Sequence

import torch

from omnivision.generation.sampling import SamplingConfig, sample
from omnivision.generation.static_decode import static_decoder
from omnivision.model import KVCache, OmniVisionModel, one_row_step
from omnivision.model.qwen2 import Qwen2ForCausalLM, rotary_positions


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


@dataclass
class Decoding:
    """What one decode step hands the next: the cache, where each row goes next, and (for a padded
    batch) which cached positions are real."""

    cache: KVCache
    next_positions: torch.Tensor  # [B, 1]
    key_valid: torch.Tensor | None  # [B, S] bool, S = cached positions; None when no row is padded


def prefill(lm: Qwen2ForCausalLM, embeds: torch.Tensor, key_valid: torch.Tensor | None,
            max_len: int, cache: KVCache | None = None) -> tuple[torch.Tensor, Decoding]:
    """Run prompts through the decoder into a new cache of `max_len` positions (or into `cache`,
    emptied first: a reused one of at least `max_len` positions).

    embeds [B, T, D] left-padded input embeddings; key_valid [B, T] bool marks the real ones (None:
    no padding). Returns the logits [B, V] of the token after each prompt, and the decoding state.
    """
    b, t = embeds.shape[:2]
    if cache is None:
        cache = lm.new_cache(b, max_len)
    cache.length = 0
    positions = rotary_positions(b, t, key_valid, 0, embeds.device)  # [B, T]
    hidden = lm(embeds, positions, key_valid, cache)  # [B, T, D]
    return lm.logits(hidden[:, -1]), Decoding(cache, positions[:, -1:] + 1, key_valid)


def decode_step(lm: Qwen2ForCausalLM, tokens: torch.Tensor, state: Decoding) -> torch.Tensor:
    """Append one token per row (tokens [B]) and return the logits [B, V] of the next one."""
    if state.key_valid is not None:
        real = torch.ones(tokens.shape[0], 1, dtype=torch.bool, device=tokens.device)
        state.key_valid = torch.cat((state.key_valid, real), dim=1)  # [B, S + 1]
    embeds = lm.embed(tokens[:, None])  # [B, 1, D]
    hidden = None
    if one_row_step.applies(lm, embeds, state.key_valid, state.cache):
        hidden = one_row_step.forward(lm, embeds, state.next_positions, state.cache, state)
    if hidden is None:
        hidden = lm(embeds, state.next_positions, state.key_valid, state.cache)  # [B, 1, D]
    state.next_positions = state.next_positions + 1
    return lm.logits(hidden[:, -1])


def check_fits(model: OmniVisionModel, batch: Sequence[Sequence[int]], cfg: GenerationConfig) -> int:
    """The longest prompt's length, after checking that every row has one and that it fits."""
    if not batch or any(len(ids) == 0 for ids in batch):
        raise ValueError("every prompt needs at least one token")
    longest = max(len(ids) for ids in batch)
    limit = model.config.text.max_position_embeddings
    if longest + cfg.max_new_tokens > limit:
        raise ContextOverflowError(f"prompt of {longest} tokens plus {cfg.max_new_tokens} new tokens "
                                   f"exceeds the context of {limit}")
    return longest


def seen_tokens(ids: torch.Tensor, valid: torch.Tensor, vocab: int) -> torch.Tensor:
    """[B, V] bool: which tokens each row's prompt holds (for the repetition penalty)."""
    seen = torch.zeros(ids.shape[0], vocab, dtype=torch.bool, device=ids.device)
    for row in range(ids.shape[0]):
        seen[row, ids[row][valid[row]]] = True
    return seen


def choose(logits: torch.Tensor, cfg: GenerationConfig, seen: torch.Tensor | None, generator,
            hooks: StepHooks | None) -> torch.Tensor:
    """The next token [B] of every row, from logits [B, V], through the hooks when given."""
    if hooks is None:
        return sample(logits, cfg.sampling, seen, generator)
    tokens = sample(hooks.constrain(logits.float()), cfg.sampling, seen, generator)
    hooks.observe(logits.float(), tokens)
    return tokens


@torch.inference_mode()
def generate_steps(model: OmniVisionModel, batch: Sequence[Sequence[int]],
                   image_embeds: torch.Tensor | None, cfg: GenerationConfig,
                   hooks: StepHooks | None = None) -> Iterator[dict[int, int]]:
    """Yield {row: next token id} for each unfinished row, step by step.

    batch: the prompt ids of each row, image placeholders already expanded.
    image_embeds: [N, K, D] for all placeholders of the batch in row-major order, or None.
    """
    longest = check_fits(model, batch, cfg)
    if cfg.max_new_tokens == 0:
        return
    device = model.device
    ids, valid = _left_pad(batch, pad_id=0)
    ids, valid = ids.to(device), valid.to(device)  # [B, T]
    b = ids.shape[0]
    generator = None if cfg.seed is None else torch.Generator(device=device).manual_seed(cfg.seed)
    seen = None  # [B, V] bool, kept only for a repetition penalty
    if cfg.sampling.repetition_penalty != 1.0:
        seen = seen_tokens(ids, valid, model.config.text.vocab_size)
    stops = torch.tensor(cfg.stop_token_ids or [-1], device=device)
    lm, max_len = model.language, longest + cfg.max_new_tokens
    with static_decoder(lm, b, max_len) as fixed:  # None off CUDA
        logits, state = prefill(lm, model.embed(ids, image_embeds), None if bool(valid.all()) else valid,
                                max_len, None if fixed is None else fixed.cache)
        if fixed is not None:
            fixed.start(state.cache.length, state.next_positions, state.key_valid)
        finished = torch.zeros(b, dtype=torch.bool, device=device)
        for step in range(cfg.max_new_tokens):
            tokens = choose(logits, cfg, seen, generator, hooks)  # [B]
            finished |= torch.isin(tokens, stops)
            out = {row: int(tokens[row]) for row in range(b) if not finished[row]}
            if not out:
                return
            yield out
            if step + 1 == cfg.max_new_tokens:
                return
            if seen is not None:
                seen[torch.arange(b), tokens] = True
            logits = decode_step(lm, tokens, state) if fixed is None else fixed.step(tokens)


def generate(model: OmniVisionModel, prompt_ids: Sequence[int], image_embeds: torch.Tensor | None,
             cfg: GenerationConfig, hooks: StepHooks | None = None) -> Iterator[int]:
    """Stream the generated token ids of one prompt."""
    for step in generate_steps(model, [prompt_ids], image_embeds, cfg, hooks):
        yield step[0]


def generate_batch(model: OmniVisionModel, batch: Sequence[Sequence[int]],
                   image_embeds: torch.Tensor | None, cfg: GenerationConfig) -> list[list[int]]:
    """Generated ids for each prompt of a batch (same tokens as one at a time, under greedy, up to
    rounding: one sequence alone may decode through the compiled step, `model.one_row_step`)."""
    out: list[list[int]] = [[] for _ in batch]
    for step in generate_steps(model, batch, image_embeds, cfg):
        for row, token in step.items():
            out[row].append(token)
    return out
