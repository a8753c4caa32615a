"""The Qwen2 decoder: RMSNorm, rotary positions (rotate-half), grouped-query attention with q/k/v
biases, SwiGLU MLP, tied or separate output head.

Takes input embeddings rather than token ids, so the composition can splice image embeddings in.
Submodule names follow Hugging Face's `Qwen2ForCausalLM` (`model.layers.N.self_attn.q_proj`, ...).
The decoder never samples and keeps no state of its own: a `KVCache` is passed in.

Reference: transformers `models/qwen2/modeling_qwen2.py`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from omnivision.config import TextConfig
from omnivision.model.kv_cache import KVCache, PositionedWrite
from omnivision.model.linear import Linear, linear


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x [..., D] scaled to unit root-mean-square (computed in fp32), times weight [D]."""
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


class RotaryEmbedding(nn.Module):
    """Rotation angles for positions; holds no tensors, so models built on `meta` need no fix-up."""

    def __init__(self, head_dim: int, theta: float) -> None:
        super().__init__()
        self.head_dim, self.theta = head_dim, theta

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        # positions: [B, T] -> cos, sin: [B, 1, T, hd]
        steps = torch.arange(0, self.head_dim, 2, dtype=torch.float32, device=positions.device)
        inv_freq = 1.0 / self.theta ** (steps / self.head_dim)  # [hd/2]
        freqs = positions[..., None].float() * inv_freq  # [B, T, hd/2]
        angles = torch.cat((freqs, freqs), dim=-1)[:, None]
        return angles.cos().to(dtype), angles.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return x * cos + rotate_half(x) * sin


class Qwen2Attention(nn.Module):
    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.q_proj = Linear(cfg.hidden_size, cfg.num_heads * cfg.head_dim, bias=True)
        self.k_proj = Linear(cfg.hidden_size, cfg.num_kv_heads * cfg.head_dim, bias=True)
        self.v_proj = Linear(cfg.hidden_size, cfg.num_kv_heads * cfg.head_dim, bias=True)
        self.o_proj = Linear(cfg.num_heads * cfg.head_dim, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                mask: torch.Tensor | None, cache: KVCache | PositionedWrite | None, layer: int) -> torch.Tensor:
        b, t, _ = x.shape  # [B, T, D]
        q = self.q_proj(x).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)  # [B, H, T, hd]
        k = self.k_proj(x).view(b, t, self.num_kv_heads, self.head_dim).transpose(1, 2)  # [B, Hkv, T, hd]
        v = self.v_proj(x).view(b, t, self.num_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        if cache is not None:
            k, v = cache.update(layer, k, v)  # [B, Hkv, S, hd], S = cached + T
        if t == 1:
            out = one_query_attention(q, k, v, mask)
        elif mask is not None and q.device.type == "cpu" and torch.compiler.is_compiling():
            out = masked_attention_products(q, k, v, mask)
        else:
            is_causal = mask is None and k.shape[2] == t
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal,
                                                 enable_gqa=self.num_heads != self.num_kv_heads)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, -1))  # [B, T, D]


def one_query_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                        mask: torch.Tensor | None) -> torch.Tensor:
    """Attention of one new position (a decode step): q [B, H, 1, hd], k/v [B, Hkv, S, hd] ->
    [B, H, 1, hd]. The H / Hkv query heads that share a key/value head are its query rows, so
    SDPA runs without its grouped-query path: the same sums, and on the CPU much faster (torch
    2.13, 2 threads, 14 heads over 2, S = 150: 25 against 145 us in bf16, 25 against 27 in fp32).
    A mask [B, 1, 1, S] broadcasts over those rows as it did over the heads."""
    b, heads, _, hd = q.shape
    kv_heads = k.shape[1]
    rows = q.reshape(b, kv_heads, heads // kv_heads, hd)  # head h is row h % group of kv head h // group
    out = F.scaled_dot_product_attention(rows, k, v, attn_mask=mask)  # [B, Hkv, group, hd]
    return out.reshape(b, heads, 1, hd)


def additive_mask(mask: torch.Tensor) -> torch.Tensor:
    """The attention mask [B, 1, T, S] bool (True = attend) as float32 terms added to the scores:
    0 where attended, -inf elsewhere (so the sums are those of `masked_fill`)."""
    return torch.zeros(mask.shape, dtype=torch.float32, device=mask.device).masked_fill(~mask, float("-inf"))


def masked_attention_products(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor
                              ) -> torch.Tensor:
    """Masked grouped-query attention written as two matrix products and a float32 softmax, for
    the CPU under torch.compile (the compiled decoder of training steps): q [B, H, T, hd], k/v
    [B, Hkv, S, hd], mask [B, 1, T, S], bool (True = attend) or `additive_mask`'s float32 terms
    (every row attends somewhere) -> [B, H, T, hd]. torch.compile writes SDPA's math path with a
    mask as kernels that took 1.8-2.9x the time of this form (forward and backward, 32 sequences of
    60-190 positions, 6 heads over 2, head size 32; torch 2.13, 2 threads on the AMX Xeon;
    `scripts/decoder_attention_speed.py`) and longer than eager SDPA. The H / Hkv query heads of a
    key/value head are stacked as rows of one product, so keys and values are not repeated per head.
    The additive form, made once before the layers (`Qwen2ForCausalLM.prepare`), is what the
    compiled decoder passes: a bool mask made in the same graph is recomputed inside every layer's
    softmax kernel. Within bf16 rounding of SDPA (`tests/model/test_qwen2.py`)."""
    b, heads, t, hd = q.shape
    kv_heads, s = k.shape[1], k.shape[2]
    group = heads // kv_heads
    bias = mask if mask.is_floating_point() else additive_mask(mask)  # [B, 1, T, S]
    rows = q.reshape(b, kv_heads, group * t, hd)  # head h's rows are block h % group of kv head h // group
    scores = torch.matmul(rows, k.transpose(-1, -2)).view(b, kv_heads, group, t, s)  # [B, Hkv, g, T, S]
    scores = scores.float().mul(hd ** -0.5) + bias[:, :, None]
    probs = torch.softmax(scores, dim=-1).to(v.dtype).view(b, kv_heads, group * t, s)
    return torch.matmul(probs, v).view(b, heads, t, hd)


class Qwen2MLP(nn.Module):
    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.gate_proj = Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Qwen2DecoderLayer(nn.Module):
    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Qwen2Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = Qwen2MLP(cfg)

    def forward(self, x, rope, mask, cache, layer):
        x = x + self.self_attn(self.input_layernorm(x), rope, mask, cache, layer)
        return x + self.mlp(self.post_attention_layernorm(x))


class Qwen2Model(nn.Module):
    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Qwen2DecoderLayer(cfg) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.rotary = RotaryEmbedding(cfg.head_dim, cfg.rope_theta)


def attention_mask(key_valid: torch.Tensor, query_len: int) -> torch.Tensor:
    """Causal mask with key padding: key_valid [B, S] bool -> [B, 1, T, S] bool (True = attend).

    The T queries are the last T of the S positions. A query always sees itself, so padded query
    rows never have an empty softmax.
    """
    s = key_valid.shape[1]
    q_pos = torch.arange(s - query_len, s, device=key_valid.device)[:, None]  # [T, 1]
    k_pos = torch.arange(s, device=key_valid.device)[None, :]  # [1, S]
    causal = k_pos <= q_pos  # [T, S]
    mask = causal[None] & key_valid[:, None, :]  # [B, T, S]
    mask = mask | (k_pos == q_pos)[None]
    return mask[:, None]


def rotary_positions(batch: int, length: int, key_valid: torch.Tensor | None, past: int,
                     device: torch.device) -> torch.Tensor:
    """Rotary position ids [B, T] of the last T positions, after `past` cached ones.

    With left padding (key_valid [B, S] bool, S = past + T), padding does not count: a row's first
    real token is position 0, and padded slots get 0 too (they are masked out).
    """
    if key_valid is None:
        return torch.arange(past, past + length, device=device).expand(batch, -1)
    positions = key_valid.long().cumsum(-1) - 1  # [B, S]
    return positions.clamp(min=0)[:, -length:]


class Qwen2ForCausalLM(nn.Module):
    """Embeddings in, hidden states out; `logits()` applies the (tied) output head."""

    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.config = cfg
        self.model = Qwen2Model(cfg)
        self.lm_head = None if cfg.tie_word_embeddings else Linear(cfg.hidden_size, cfg.vocab_size,
                                                                       bias=False)
        self.gradient_checkpointing = False
        """Recompute each layer's activations in the backward pass (training memory for time)."""

    def new_cache(self, batch: int, max_len: int) -> KVCache:
        """An empty KV cache for `batch` rows of up to `max_len` positions, in the compute dtype."""
        cfg, norm = self.config, self.model.norm.weight
        return KVCache(cfg.num_layers, batch, cfg.num_kv_heads, max_len, cfg.head_dim, norm.dtype, norm.device)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        # in the compute dtype (the norms'), also when the table is stored quantized
        return self.model.embed_tokens(input_ids).to(self.model.norm.weight.dtype)

    def forward(self, inputs_embeds: torch.Tensor, position_ids: torch.Tensor,
                key_valid: torch.Tensor | None = None, cache: KVCache | PositionedWrite | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """inputs_embeds [B, T, D], position_ids [B, T], key_valid [B, S] (None: no padding).

        With a cache, S = cached positions + T and the new keys are written into it. `mask`
        [B, 1, T, S] bool, when given, is the attention mask as it is (decoding with fixed shapes
        over a whole `PositionedWrite` buffer) and `key_valid` is not read.
        Returns the final-norm hidden states [B, T, D].
        """
        b, t = inputs_embeds.shape[:2]
        past = cache.length if isinstance(cache, KVCache) else 0
        if mask is None and key_valid is None and t > 1 and past > 0:
            # a multi-token chunk after cached positions needs an explicit causal mask
            key_valid = torch.ones(b, past + t, dtype=torch.bool, device=inputs_embeds.device)
        rope, mask = self.prepare(inputs_embeds, position_ids, key_valid, mask)
        h = self.run_layers(inputs_embeds, rope, mask, cache)
        if cache is not None:
            cache.advance(t)
        return h

    def prepare(self, inputs_embeds: torch.Tensor, position_ids: torch.Tensor, key_valid: torch.Tensor | None,
                mask: torch.Tensor | None) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor | None]:
        """The layers' shared inputs: rotary cos/sin [B, 1, T, hd] and the attention mask [B, 1, T, S]
        (from `key_valid` unless given). Compiled on its own (`OmniVisionModel.set_compiled`), it
        gives the mask as `additive_mask` terms on the CPU: made here, once, and read by every layer's
        softmax (`masked_attention_products`). A compiled nano stage-2 step ran 1.16x faster than with
        the mask and angles made inside the layers' graph, which recomputed them in each kernel, and
        its gradients are bit-equal (AMX Xeon, torch 2.13, 2 threads)."""
        rope = self.model.rotary(position_ids, inputs_embeds.dtype)
        if mask is None and key_valid is not None:
            mask = attention_mask(key_valid, inputs_embeds.shape[1])
        products_form = inputs_embeds.shape[1] > 1 and torch.compiler.is_compiling()  # the layers take it (CPU)
        if mask is not None and products_form and mask.device.type == "cpu":
            mask = additive_mask(mask)  # what `masked_attention_products` reads fastest
        return rope, mask

    def run_layers(self, inputs_embeds: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                   mask: torch.Tensor | None, cache: KVCache | PositionedWrite | None) -> torch.Tensor:
        """The decoder layers and the final norm: [B, T, D] -> [B, T, D]."""
        h = inputs_embeds
        recompute = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for i, layer in enumerate(self.model.layers):
            if recompute and cache is None:
                h = checkpoint(layer, h, rope, mask, None, i, use_reentrant=False)
            else:
                h = layer(h, rope, mask, cache, i)
        return self.model.norm(h)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.lm_head is not None:
            return self.lm_head(hidden)
        embed = self.model.embed_tokens
        if isinstance(embed, nn.Embedding):
            return linear(hidden, embed.weight)
        return embed.project(hidden)  # a quantized tied table (quantize.embedding.QuantizedEmbedding)


class LanguageOnly(nn.Module):
    """A decoder alone under the name `language`, so that state-dict names (`language.model...`) and
    part-wise quantization (`quantize_model(..., parts=("language",))`) work as for the full model."""

    def __init__(self, language: Qwen2ForCausalLM) -> None:
        super().__init__()
        self.language = language
