"""The composition: vision tower -> projector -> image embeddings spliced into the decoder's input.

Prompt building expands each image placeholder into `num_image_tokens` copies of `image_token_id`
(processing/prompt.py); here every copy is replaced, in order, by one projected image embedding, with
a count check. This is equivalent to the official runtime, which splices the 81 embeddings in place of
one `<|image_pad|>` token (docs/official-release.md 3.2). No sampling and no files here.

Reference: transformers `models/llava/modeling_llava.py`.
"""

from __future__ import annotations

import functools
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from omnivision.config import OmniVisionConfig
from omnivision.kernels.compiled_dot import COMPILE_ENV, compile_allowed
from omnivision.model.kv_cache import KVCache
from omnivision.model.projector import Projector
from omnivision.model.qwen2 import Qwen2ForCausalLM, RMSNorm, rotary_positions
from omnivision.model.siglip import SiglipEmbeddings, SiglipPoolingHead, SiglipVisionTower

COMPILED_METHODS = ("prepare", "run_layers")
"""The decoder methods `OmniVisionModel.set_compiled` replaces by compiled ones."""


class OmniVisionModel(nn.Module):
    def __init__(self, config: OmniVisionConfig) -> None:
        super().__init__()
        self.config = config
        self.vision = SiglipVisionTower(config.vision)
        self.projector = Projector(config.projector.compression, config.projector_in_features,
                                   config.projector.hidden_size, config.text.hidden_size)
        self.language = Qwen2ForCausalLM(config.text)

    @property
    def dtype(self) -> torch.dtype:
        return self.language.model.norm.weight.dtype  # the embedding may be stored quantized

    @property
    def device(self) -> torch.device:
        return self.language.model.norm.weight.device

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixel_values [N, C, H, W] -> image embeddings [N, num_image_tokens, D_text]."""
        features = self.vision(pixel_values.to(self.vision.embeddings.patch_embedding.weight.dtype))
        return self.projector(features.to(self.dtype))

    def embed(self, input_ids: torch.Tensor, image_embeds: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids [B, T] (+ image_embeds [N, K, D]) -> input embeddings [B, T, D].

        The image placeholder ids, read in row-major order, take the N*K image vectors in order.
        """
        embeds = self.language.embed(input_ids)  # [B, T, D]
        slots = input_ids == self.config.image_token_id  # [B, T]
        n_slots = int(slots.sum())
        n_vectors = 0 if image_embeds is None else image_embeds.shape[0] * image_embeds.shape[1]
        if n_slots != n_vectors:
            raise ValueError(f"the prompt has {n_slots} image placeholder tokens but {n_vectors} image "
                             f"embeddings were given ({self.config.num_image_tokens} per image)")
        if n_slots:
            embeds = embeds.masked_scatter(slots[..., None],
                                           image_embeds.reshape(-1, embeds.shape[-1]).to(embeds.dtype))
        return embeds

    def forward(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None = None,
                image_embeds: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                key_valid: torch.Tensor | None = None, cache: KVCache | None = None,
                vision_features: torch.Tensor | None = None, logits_at: torch.Tensor | None = None
                ) -> torch.Tensor:
        """Full-sequence logits [B, T, vocab] (training and tests; generation uses the parts), or
        with `logits_at` [B, T] bool the logits of those positions only, [M, vocab] in row-major
        order (training scores a few positions of each sequence: the head and its float32 copy then
        cost M rows instead of B*T, with Qwen2.5's 151,936-word vocabulary most of a step's memory).

        The image enters as pixels [N, C, H, W], as cached vision-tower features [N, P, D_v]
        (stage-1 training skips the frozen tower), or as projected embeddings [N, K, D].
        """
        if pixel_values is not None:
            image_embeds = self.encode_images(pixel_values)
        elif vision_features is not None:
            image_embeds = self.projector(vision_features.to(self.dtype))
        embeds = self.embed(input_ids, image_embeds)
        if position_ids is None:
            position_ids = rotary_positions(input_ids.shape[0], input_ids.shape[1], key_valid,
                                             cache.length if cache is not None else 0, input_ids.device)
        hidden = self.language(embeds, position_ids, key_valid, cache)  # [B, T, D]
        if logits_at is not None:
            hidden = hidden[logits_at]  # [M, D]
        return self.language.logits(hidden)

    def decode_weight_shapes(self) -> list[tuple[int, int]]:
        """The distinct [N, K] shapes of the bf16 weights that multiply a few rows at a time (the
        language model, its tied head, the projector): the products whose kernel is chosen per
        machine (`model.linear.few_row_kernel`)."""
        linears = [m.weight for part in (self.language, self.projector) for m in part.modules()
                   if isinstance(m, nn.Linear)]
        embed = self.language.model.embed_tokens
        tied = [embed.weight] if self.language.lm_head is None and isinstance(embed, nn.Embedding) else []
        return sorted({tuple(w.shape) for w in linears + tied if w.dtype == torch.bfloat16})

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        """Recompute vision and decoder layer activations during backward (used by training)."""
        self.vision.encoder.gradient_checkpointing = enabled
        self.language.gradient_checkpointing = enabled

    def set_compiled(self, enabled: bool) -> None:
        """Run the decoder through `torch.compile` (dynamic shapes, so batches of any length share a
        graph), or eagerly again (training turns it on for its steps, `TrainConfig.compile`). Only
        the decoder: on the 2-core CPUs its many small elementwise operations (norms, rotary, SiLU,
        softmax) cost more than its products, and fused they ran a nano stage-2 step 1.11-1.45x
        faster (1.52x with the feature cache; `scripts/nano_step_speed.py`, the AMX Xeon);
        compiling the tower as well or the whole model gained nothing more (measured on the AMX
        Xeon; the whole model also recompiles for every count of image slots). The decoder stays
        eager, with a warning, where `OMNIVISION_COMPILE=off` or where torch.compile fails or sums
        wrongly on a probe of the decoder's kinds of operations (no C++ compiler; torch 2.13's
        dynamic-shape reductions under `ATEN_CPU_CAPABILITY=avx2`, `kernels/compiled_dot.py`)."""
        lang = self.language
        if enabled:
            if self.is_compiled:
                return
            problem = _compile_problem(self.device)
            if problem:
                warnings.warn(f"training with the eager decoder: {problem}", stacklevel=2)
                return
            # two graphs: the mask and angles are made once by the first, not inside each layer's kernels
            for name in COMPILED_METHODS:
                setattr(lang, name, torch.compile(getattr(lang, name), dynamic=True))
        else:
            for name in COMPILED_METHODS:
                lang.__dict__.pop(name, None)  # the class's eager methods again

    @property
    def is_compiled(self) -> bool:
        """Whether the decoder runs through `torch.compile` (`set_compiled`)."""
        return all(name in self.language.__dict__ for name in COMPILED_METHODS)

    def new_cache(self, batch: int, max_len: int) -> KVCache:
        return self.language.new_cache(batch, max_len)


def _norm_softmax(x: torch.Tensor) -> torch.Tensor:
    """x [N, K] -> [N, K]: the decoder's kinds of reductions (an RMS norm, a softmax, SiLU)."""
    return F.silu(torch.softmax(x, -1) * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6))


@functools.cache
def _compile_problem(device: torch.device) -> str:
    """Why the decoder should not be compiled on `device`, or "": not allowed, or torch.compile fails
    or disagrees with eager on `_norm_softmax` at two shapes of one dynamic graph (tried once)."""
    if not compile_allowed():
        return f"{COMPILE_ENV} is off"
    compiled = torch.compile(_norm_softmax, dynamic=True)
    g = torch.Generator().manual_seed(0)
    try:
        for shape in ((3, 37), (5, 61)):
            x = torch.randn(shape, generator=g).to(device)
            if not torch.allclose(compiled(x), _norm_softmax(x), rtol=1e-4, atol=1e-5):
                return f"torch.compile sums wrongly here (a {shape[0]}x{shape[1]} probe)"
    except Exception as err:  # noqa: BLE001: inductor raises many kinds (no compiler, no headers, ...)
        return f"torch.compile failed ({type(err).__name__}: {str(err)[:200]})"
    return ""


@torch.no_grad()
def init_weights(model: nn.Module, std: float = 0.02) -> None:
    """Fresh random weights: N(0, std) for linear, conv and embedding weights (and the pooling
    probe), zero biases, unit norms; the SigLIP position table N(0, 1/sqrt(width)), as Hugging Face
    initialises it.

    The position table's own scale matters. At N(0, 0.02) a 128-wide tower's positions were a
    twentieth of its patch content (norm 0.3 against 6.6), and in the nano recipe the image tokens
    reaching the decoder no longer told which grid cell they came from: a linear probe read the
    cell of an occupied token at chance (15 %), so "What color is the object at the top left?" was
    answered with another object's colour on every scene of two or more objects
    (`docs/nano-recipe-history.md`, "Where each image token is"). At 1/sqrt(width) the tower's
    output keeps the cell (probe 84 -> 99 %)."""
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d, nn.Embedding)):
            module.weight.normal_(0.0, std)
            if getattr(module, "bias", None) is not None:
                module.bias.zero_()
        elif isinstance(module, nn.LayerNorm):
            module.weight.fill_(1.0)
            module.bias.zero_()
        elif isinstance(module, nn.MultiheadAttention):
            module.in_proj_weight.normal_(0.0, std)
            module.in_proj_bias.zero_()
        elif isinstance(module, RMSNorm):
            module.weight.fill_(1.0)
        elif isinstance(module, SiglipPoolingHead):
            module.probe.normal_(0.0, std)
    for module in model.modules():  # after the loop above, which sets every embedding to N(0, std)
        if isinstance(module, SiglipEmbeddings):
            table = module.position_embedding.weight  # [patches, width]
            table.normal_(0.0, table.shape[1] ** -0.5)
