"""A new model from Hugging Face component checkpoints: a SigLIP vision directory plus a Qwen2.5
directory (safetensors, single file or sharded with an index). The projector is freshly initialised,
ready for stage-1 alignment.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from omnivision.config import OmniVisionConfig, ProjectorConfig, TextConfig, VisionConfig
from omnivision.model import OmniVisionModel, init_weights
from omnivision.processing.tokenizer import Tokenizer
from omnivision.weights.convert import qwen2_from_hf, siglip_from_hf
from omnivision.weights.errors import CheckpointError
from omnivision.weights.native import load_state, mmap_safetensors


def _json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(path, f"cannot read: {e}") from None
    if not isinstance(data, dict):
        raise CheckpointError(path, "expected a JSON object")
    return data


def read_safetensors_dir(directory: Path) -> dict[str, torch.Tensor]:
    """All tensors of a HF checkpoint directory, memory-mapped."""
    single = directory / "model.safetensors"
    if single.is_file():
        return mmap_safetensors(single)
    index = directory / "model.safetensors.index.json"
    if not index.is_file():
        if any(directory.glob("*.bin")) or any(directory.glob("*.pt")):
            raise CheckpointError(directory, "only pickle weights (.bin/.pt) found; pickle files are "
                                             "never loaded: convert them to safetensors first")
        raise CheckpointError(directory, "no model.safetensors or model.safetensors.index.json")
    weight_map = _json(index).get("weight_map", {})
    out: dict[str, torch.Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        if "/" in shard or shard.startswith("."):
            raise CheckpointError(index, f"shard name {shard!r} points outside the directory")
        out.update(mmap_safetensors(directory / shard))
    return out


def _vision_config(data: dict) -> VisionConfig:
    v = data.get("vision_config", data)  # a full SiglipModel config nests it
    return VisionConfig(image_size=v.get("image_size", 224), patch_size=v.get("patch_size", 16),
                        num_channels=v.get("num_channels", 3), hidden_size=v["hidden_size"],
                        intermediate_size=v["intermediate_size"], num_layers=v["num_hidden_layers"],
                        num_heads=v["num_attention_heads"], layer_norm_eps=v.get("layer_norm_eps", 1e-6),
                        has_head=v.get("vision_use_head", True))


def _text_config(d: dict, has_lm_head: bool) -> TextConfig:
    return TextConfig(vocab_size=d["vocab_size"], hidden_size=d["hidden_size"],
                      intermediate_size=d["intermediate_size"], num_layers=d["num_hidden_layers"],
                      num_heads=d["num_attention_heads"],
                      num_kv_heads=d.get("num_key_value_heads", d["num_attention_heads"]),
                      rope_theta=float(d.get("rope_theta") or (d.get("rope_parameters") or {}).get("rope_theta", 1e6)),
                      rms_norm_eps=d.get("rms_norm_eps", 1e-6),
                      max_position_embeddings=d.get("max_position_embeddings", 32768),
                      # Qwen2.5-0.5B says so explicitly; without the key, the weights tell
                      tie_word_embeddings=d.get("tie_word_embeddings", not has_lm_head))


def from_hf_components(vision_dir: str | os.PathLike, language_dir: str | os.PathLike,
                       compression: str = "concat9", projector_hidden: int = 4096,
                       seed: int = 0) -> tuple[OmniVisionModel, Tokenizer]:
    vision_dir, language_dir = Path(vision_dir), Path(language_dir)
    tok_file = language_dir / "tokenizer.json"
    if not tok_file.is_file():
        raise CheckpointError(language_dir, "no tokenizer.json")
    tokenizer = Tokenizer.from_file(tok_file)
    language = read_safetensors_dir(language_dir)
    try:
        config = OmniVisionConfig(
            vision=_vision_config(_json(vision_dir / "config.json")),
            projector=ProjectorConfig(compression=compression, hidden_size=projector_hidden),
            text=_text_config(_json(language_dir / "config.json"), "lm_head.weight" in language),
            image_token_id=tokenizer.image_pad_id,
            stop_token_ids=(tokenizer.im_end_id, tokenizer.endoftext_id))
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise CheckpointError(vision_dir.parent, f"cannot build a config from the components: {e}") from None
    state = siglip_from_hf(read_safetensors_dir(vision_dir))
    if not config.vision.has_head:
        state = {k: v for k, v in state.items() if not k.startswith("vision.head.")}
    state.update(qwen2_from_hf(language, config.text.tie_word_embeddings))
    torch.manual_seed(seed)
    projector = OmniVisionModel(config).projector
    init_weights(projector)
    state.update({"projector." + k: v for k, v in projector.state_dict().items()})
    with torch.device("meta"):
        model = OmniVisionModel(config)
    load_state(model, state, vision_dir.parent, None)
    return model.eval(), tokenizer
