"""OmniVision on vLLM: the `vllm.general_plugins` entry point (`omnivision[vllm]`).

vLLM calls `register()` in every process it starts (the API server, the engine core, each worker)
before it reads a model's config. It registers, lazily (nothing of the model is imported until vLLM
builds one):

- the config class of the vLLM folder's `model_type` "omnivision" with transformers' `AutoConfig`
  (`hf_config.py`), so vLLM can read `config.json`;
- the architecture "OmniVisionForConditionalGeneration" with vLLM's `ModelRegistry`, as
  `omnivision.vllm_plugin.model:OmniVisionForConditionalGeneration`.

The folder itself is written by `omnivision convert SRC OUT --to vllm` (`weights/vllm_export.py`),
from any source `omnivision run` reads: a native checkpoint, the official GGUF pair, the bundled model.
Calling `register()` again is harmless: vLLM may load plugins several times in one process.
"""

from __future__ import annotations

from omnivision.weights.vllm_export import ARCHITECTURE, MODEL_TYPE


def register() -> None:
    from transformers import AutoConfig
    from vllm import ModelRegistry

    from omnivision.vllm_plugin.hf_config import OmniVisionHFConfig

    AutoConfig.register(MODEL_TYPE, OmniVisionHFConfig, exist_ok=True)
    if ARCHITECTURE not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(ARCHITECTURE, "omnivision.vllm_plugin.model:OmniVisionForConditionalGeneration")
