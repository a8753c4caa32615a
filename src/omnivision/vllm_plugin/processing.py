"""What vLLM runs before the model for one prompt: images to pixels, one image block to its tokens.

- `OmniVisionProcessingInfo`: one image per prompt, a fixed number of tokens per image (81 for the
  release, 9 for the bundled nano model: the checkpoint's config says).
- `OmniVisionProcessor`: vLLM tokenizes the prompt (the chat template puts
  `<|vision_start|><|image_pad|><|vision_end|>` where the template wants the image); here each image
  goes through this project's own preprocessing (`processing.image.ImageProcessor`: the official
  corner-aligned bicubic squash and the checkpoint's mean and std), so vLLM and `omnivision run` see
  the same pixels, and the one `<|image_pad|>` becomes `num_image_tokens` copies, which the model
  swaps for the projected image embeddings.
- `OmniVisionDummyInputs`: the prompt and image vLLM profiles memory with.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cached_property

from transformers import BatchFeature
from vllm.multimodal.inputs import MultiModalFieldConfig, MultiModalKwargsItems
from vllm.multimodal.parse import MultiModalDataItems
from vllm.multimodal.processing import (
    BaseDummyInputsBuilder,
    BaseMultiModalProcessor,
    BaseProcessingInfo,
    PromptReplacement,
    PromptUpdate,
)

from omnivision.config import OmniVisionConfig
from omnivision.processing.image import ImageProcessor
from omnivision.processing.prompt import VISION_BLOCK


class OmniVisionProcessingInfo(BaseProcessingInfo):
    @cached_property
    def native(self) -> OmniVisionConfig:
        return self.get_hf_config().native

    def get_supported_mm_limits(self) -> Mapping[str, int | None]:
        return {"image": 1}

    def get_supported_mm_processor_kwargs(self) -> dict[str, set[str]]:
        return {}  # the preprocessing is fixed by the checkpoint; there is no HF processor to ask

    def get_mm_max_tokens_per_item(self, seq_len: int, mm_counts: Mapping[str, int]) -> Mapping[str, int]:
        return {"image": self.native.num_image_tokens}

    @cached_property
    def image_processor(self) -> ImageProcessor:
        return ImageProcessor(self.native.vision.image_size, self.native.processing)


class OmniVisionDummyInputs(BaseDummyInputsBuilder[OmniVisionProcessingInfo]):
    def get_dummy_text(self, mm_counts: Mapping[str, int]) -> str:
        return VISION_BLOCK * mm_counts.get("image", 0)

    def get_dummy_mm_data(self, seq_len: int, mm_counts: Mapping[str, int], mm_options) -> dict:
        side = self.info.native.vision.image_size
        return {"image": self._get_dummy_images(width=side, height=side, num_images=mm_counts.get("image", 0),
                                                overrides=mm_options.get("image") if mm_options else None)}


class OmniVisionProcessor(BaseMultiModalProcessor[OmniVisionProcessingInfo]):
    def _call_hf_processor(self, hf_data: Mapping[str, object], hf_kwargs: Mapping[str, object]) -> BatchFeature:
        images = hf_data.get("images") or []
        if not isinstance(images, (list, tuple)):
            images = [images]
        pixels = self.info.image_processor(list(images))  # [N, 3, S, S] float32
        return BatchFeature({"pixel_values": pixels})

    def _get_mm_fields_config(self, hf_inputs: BatchFeature,
                              hf_processor_mm_kwargs: Mapping[str, object]) -> Mapping[str, MultiModalFieldConfig]:
        return {"pixel_values": MultiModalFieldConfig.batched("image")}

    def _get_prompt_updates(self, mm_items: MultiModalDataItems, hf_processor_mm_kwargs: Mapping[str, object],
                            out_mm_kwargs: MultiModalKwargsItems) -> Sequence[PromptUpdate]:
        pad = self.info.native.image_token_id
        return [PromptReplacement(modality="image", target=[pad],
                                  replacement=[pad] * self.info.native.num_image_tokens)]
