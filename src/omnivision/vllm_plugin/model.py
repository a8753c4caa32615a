"""OmniVision as a vLLM model: vLLM's SigLIP tower and Qwen2 decoder, this project's projector.

The vision tower is vLLM's `SiglipVisionModel` (last layer and post-layernorm, no pooling head) and the
language model is vLLM's `Qwen2ForCausalLM`, so both get vLLM's kernels, tensor parallelism and
paged KV cache. Between them sits this project's `Projector` (the token compression the checkpoint
names, then Linear -> GELU(tanh) -> Linear); it is small and replicated on every rank. Each image
becomes `num_image_tokens` embeddings, which vLLM writes over the `<|image_pad|>` copies that
`processing.py` put into the prompt.

Weights come from the vLLM folder's `model.safetensors` under the native names: `vision.` maps to
the tower (its unused pooling head is skipped), `language.` to the decoder, `projector.` stays.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from vllm.config import VllmConfig
from vllm.model_executor.models.interfaces import MultiModalEmbeddings, SupportsMultiModal
from vllm.model_executor.models.siglip import SiglipVisionModel
from vllm.model_executor.models.utils import AutoWeightsLoader, WeightsMapper, init_vllm_registered_model, maybe_prefix
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.sequence import IntermediateTensors

from omnivision.model.projector import Projector
from omnivision.processing.prompt import VISION_BLOCK
from omnivision.vllm_plugin.processing import OmniVisionDummyInputs, OmniVisionProcessingInfo, OmniVisionProcessor


@MULTIMODAL_REGISTRY.register_processor(OmniVisionProcessor, info=OmniVisionProcessingInfo,
                                        dummy_inputs=OmniVisionDummyInputs)
class OmniVisionForConditionalGeneration(nn.Module, SupportsMultiModal):
    hf_to_vllm_mapper = WeightsMapper(orig_to_new_prefix={
        "vision.head.": None,  # SigLIP's pooling head: the image features are the patch tokens
        "vision.": "vision_tower.vision_model.",
        "language.": "language_model.",
    })

    @classmethod
    def get_placeholder_str(cls, modality: str, i: int) -> str | None:
        if modality.startswith("image"):
            return VISION_BLOCK
        raise ValueError("OmniVision takes images only")

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__()
        config = vllm_config.model_config.hf_config
        native = config.native
        self.config = config
        self.native = native
        self.configure_mm_token_handling(vocab_size=native.text.vocab_size, mm_token_ids=[native.image_token_id])
        with self._mark_tower_model(vllm_config, "image"):
            self.vision_tower = SiglipVisionModel(config.vision_config, vllm_config.quant_config,
                                                  require_post_norm=True, use_head=False,
                                                  prefix=maybe_prefix(prefix, "vision_tower"))
            self.projector = Projector(native.projector.compression, native.projector_in_features,
                                       native.projector.hidden_size, native.text.hidden_size)
        with self._mark_language_model(vllm_config):
            self.language_model = init_vllm_registered_model(
                vllm_config=vllm_config, hf_config=config.text_config,
                prefix=maybe_prefix(prefix, "language_model"), architectures=["Qwen2ForCausalLM"])
        self.make_empty_intermediate_tensors = self.language_model.make_empty_intermediate_tensors

    def embed_multimodal(self, **kwargs: object) -> MultiModalEmbeddings:
        pixel_values = kwargs.get("pixel_values")
        if pixel_values is None:
            return []
        if isinstance(pixel_values, (list, tuple)):
            pixel_values = torch.stack(list(pixel_values))
        side = self.native.vision.image_size
        if pixel_values.ndim != 4 or tuple(pixel_values.shape[1:]) != (3, side, side):
            raise ValueError(f"expected pixel_values [N, 3, {side}, {side}], got {tuple(pixel_values.shape)}")
        features = self.vision_tower(pixel_values.to(self.projector[0].weight.dtype))  # [N, P, D_v]
        embeds = self.projector(features)  # [N, K, D_text]
        return list(embeds.unbind(0))

    def forward(self, input_ids: torch.Tensor | None, positions: torch.Tensor,
                intermediate_tensors: IntermediateTensors | None = None,
                inputs_embeds: torch.Tensor | None = None, **kwargs: object) -> torch.Tensor | IntermediateTensors:
        if intermediate_tensors is not None:
            inputs_embeds = None
        return self.language_model.model(input_ids, positions, intermediate_tensors, inputs_embeds=inputs_embeds)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        return self.language_model.compute_logits(hidden_states)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        return AutoWeightsLoader(self).load_weights(weights, mapper=self.hf_to_vllm_mapper)
