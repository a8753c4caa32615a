"""The transformers config class of the vLLM folder (`model_type` "omnivision").

It holds a Qwen2 `text_config` and a SigLIP `vision_config` as transformers' own config classes, which
is what vLLM's Qwen2 and SigLIP layers read, and the whole native config under `omnivision`, from
which the plugin rebuilds an `OmniVisionConfig` (projector, image preprocessing, prompt template).
`weights/vllm_export.py` writes the matching `config.json`.
"""

from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig, Qwen2Config, SiglipVisionConfig

from omnivision.config import OmniVisionConfig
from omnivision.weights.vllm_export import MODEL_TYPE


class OmniVisionHFConfig(PretrainedConfig):
    model_type = MODEL_TYPE
    sub_configs = {"text_config": Qwen2Config, "vision_config": SiglipVisionConfig}

    def __init__(self, text_config: dict | Qwen2Config | None = None,
                 vision_config: dict | SiglipVisionConfig | None = None, image_token_id: int = 151655,
                 num_image_tokens: int = 81, omnivision: dict[str, Any] | None = None, **kwargs: Any) -> None:
        self.text_config = Qwen2Config(**text_config) if isinstance(text_config, dict) else (text_config or Qwen2Config())
        self.vision_config = (SiglipVisionConfig(**vision_config) if isinstance(vision_config, dict)
                              else (vision_config or SiglipVisionConfig()))
        self.image_token_id = image_token_id
        self.num_image_tokens = num_image_tokens
        self.omnivision = omnivision or OmniVisionConfig().to_dict()
        super().__init__(**kwargs)

    @property
    def native(self) -> OmniVisionConfig:
        """The checkpoint's own config."""
        return OmniVisionConfig.from_dict(self.omnivision)
