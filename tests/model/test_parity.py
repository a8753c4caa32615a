"""Parity with the Hugging Face implementations at tiny random configurations, in fp32.

Weights go HF -> our converters -> our model, so a wrong name, transpose or formula fails here.
"""

from __future__ import annotations

import pytest
import torch

from omnivision.config import TextConfig, VisionConfig
from omnivision.model.qwen2 import Qwen2ForCausalLM
from omnivision.model.siglip import SiglipVisionTower
from omnivision.weights import convert

transformers = pytest.importorskip("transformers")


def hf_siglip(cfg: VisionConfig):
    hf_cfg = transformers.SiglipVisionConfig(
        hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
        num_channels=cfg.num_channels, image_size=cfg.image_size, patch_size=cfg.patch_size,
        layer_norm_eps=cfg.layer_norm_eps, hidden_act="gelu_pytorch_tanh", attn_implementation="eager")
    return transformers.SiglipVisionModel(hf_cfg).eval()


def hf_qwen2(cfg: TextConfig):
    hf_cfg = transformers.Qwen2Config(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads, rope_theta=cfg.rope_theta, rms_norm_eps=cfg.rms_norm_eps,
        max_position_embeddings=cfg.max_position_embeddings,
        tie_word_embeddings=cfg.tie_word_embeddings, attn_implementation="eager")
    return transformers.Qwen2ForCausalLM(hf_cfg).eval()


def _randomise(module: torch.nn.Module) -> None:
    # HF initialises norms to ones and biases to zeros; random values make every tensor count.
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.2)


@pytest.mark.parametrize("image_size,patch_size", [(84, 14), (42, 14), (48, 8)])
def test_siglip_matches_transformers(tiny_config, image_size, patch_size):
    cfg = VisionConfig(**{**tiny_config.vision.__dict__, "image_size": image_size, "patch_size": patch_size})
    ref = hf_siglip(cfg)
    _randomise(ref)
    ours = SiglipVisionTower(cfg).eval()
    ours.load_state_dict(
        {k[len("vision."):]: v for k, v in convert.siglip_from_hf(ref.state_dict()).items()}, strict=True)
    pixels = torch.randn(2, 3, image_size, image_size)
    with torch.no_grad():
        expected = ref(pixel_values=pixels).last_hidden_state
        got = ours(pixels)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("tied", [True, False])
def test_qwen2_matches_transformers(tiny_config, tied):
    cfg = TextConfig(**{**tiny_config.text.__dict__, "tie_word_embeddings": tied})
    ref = hf_qwen2(cfg)
    _randomise(ref)
    ours = Qwen2ForCausalLM(cfg).eval()
    native = convert.qwen2_from_hf(ref.state_dict(), tied=tied)
    ours.load_state_dict({k[len("language."):]: v for k, v in native.items()}, strict=True)
    ids = torch.randint(0, cfg.vocab_size, (2, 11))
    with torch.no_grad():
        expected = ref(input_ids=ids).logits
        positions = torch.arange(11).expand(2, -1)
        got = ours.logits(ours(ours.embed(ids), positions))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
