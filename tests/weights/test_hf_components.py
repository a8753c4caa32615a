"""from_hf_components: a new model from a tiny transformers SigLIP directory and a tiny Qwen2
directory, checked against transformers' own outputs; sharded checkpoints; pickle-only folders
refused; a full SiglipModel state dict converted with its text side dropped."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from omnivision.processing.byte_tokenizer import byte_level_tokenizer  # noqa: E402
from omnivision.weights.convert import siglip_from_hf  # noqa: E402
from omnivision.weights.errors import CheckpointError  # noqa: E402
from omnivision.weights.hf_components import from_hf_components  # noqa: E402

VISION = dict(image_size=84, patch_size=14, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
              intermediate_size=64)
TEXT = dict(vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, tie_word_embeddings=True)


def _perturb(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Move every parameter off its initial value (non-zero biases, non-unit norms), reproducibly."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return model.eval()


def _siglip_vision(**overrides):
    config = transformers.SiglipVisionConfig(**{**VISION, **overrides})
    return _perturb(transformers.SiglipVisionModel(config), seed=1)


def _qwen():
    return _perturb(transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**TEXT)), seed=2)


@pytest.fixture(scope="module")
def hf_models():
    torch.manual_seed(0)
    return _siglip_vision(), _qwen()


@pytest.fixture(scope="module")
def dirs(hf_models, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    vision, qwen = hf_models
    root = tmp_path_factory.mktemp("hf")
    vision.save_pretrained(root / "siglip")
    qwen.save_pretrained(root / "qwen")
    byte_level_tokenizer().backend.save(str(root / "qwen" / "tokenizer.json"))
    return root / "siglip", root / "qwen"


@pytest.fixture(scope="module")
def loaded(dirs):
    return from_hf_components(*dirs, projector_hidden=48, seed=0)


def _pixels() -> torch.Tensor:
    return torch.rand(2, 3, 84, 84, generator=torch.Generator().manual_seed(5)) * 2 - 1


IDS = torch.tensor([[257, 72, 101, 108, 108, 111, 258, 10, 300, 319], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]])


def test_config_comes_from_the_components(loaded) -> None:
    model, tokenizer = loaded
    cfg = model.config
    assert (cfg.vision.image_size, cfg.vision.patch_size, cfg.vision.hidden_size) == (84, 14, 32)
    assert (cfg.vision.num_layers, cfg.vision.num_heads, cfg.vision.intermediate_size) == (2, 4, 64)
    assert cfg.vision.has_head
    assert (cfg.text.vocab_size, cfg.text.hidden_size, cfg.text.num_kv_heads) == (320, 64, 2)
    assert cfg.text.rope_theta == 10_000.0  # transformers 5 keeps it under rope_parameters
    assert cfg.text.tie_word_embeddings and model.language.lm_head is None
    assert cfg.image_token_id == tokenizer.image_pad_id == 262
    assert cfg.stop_token_ids == (258, 256)
    assert cfg.projector.compression == "concat9" and cfg.projector.hidden_size == 48
    assert not model.training


def test_vision_tower_matches_transformers(hf_models, loaded) -> None:
    vision, _ = hf_models
    model, _ = loaded
    pixels = _pixels()
    with torch.no_grad():
        expected = vision(pixel_values=pixels).last_hidden_state
        got = model.vision(pixels)
    assert got.shape == expected.shape == (2, 36, 32)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    # the (unused) pooling head is carried over too
    hf_state = vision.state_dict()  # transformers 5: no "vision_model." prefix
    assert torch.equal(model.vision.head.probe, hf_state["head.probe"])
    assert torch.equal(model.vision.head.attention.in_proj_weight, hf_state["head.attention.in_proj_weight"])


def test_language_model_matches_transformers(hf_models, loaded) -> None:
    _, qwen = hf_models
    model, _ = loaded
    with torch.no_grad():
        expected = qwen(IDS).logits
        got = model(IDS)
    assert got.shape == expected.shape == (2, 10, 320)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_projector_is_freshly_initialised_and_seeded(dirs, loaded) -> None:
    model, _ = loaded
    w0, b0 = model.projector[0].weight, model.projector[0].bias
    assert w0.shape == (48, 9 * 32) and model.projector[2].weight.shape == (64, 48)
    assert w0.abs().sum() > 0 and model.projector[2].weight.abs().sum() > 0
    assert 0.015 < w0.std().item() < 0.025  # N(0, 0.02), as init_weights does
    assert torch.count_nonzero(b0) == 0
    again, _ = from_hf_components(*dirs, projector_hidden=48, seed=0)
    other, _ = from_hf_components(*dirs, projector_hidden=48, seed=1)
    for name, tensor in model.projector.state_dict().items():
        assert torch.equal(again.projector.state_dict()[name], tensor), name
    assert not torch.equal(other.projector[0].weight, w0)
    # the seed only touches the projector
    assert torch.equal(other.vision.encoder.layers[0].mlp.fc1.weight, model.vision.encoder.layers[0].mlp.fc1.weight)


def test_images_flow_through_the_new_projector(loaded) -> None:
    model, _ = loaded
    with torch.no_grad():
        embeds = model.encode_images(_pixels())
    assert embeds.shape == (2, 4, 64) and torch.isfinite(embeds).all()


def test_sharded_qwen_checkpoint_loads(hf_models, dirs, loaded, tmp_path: Path) -> None:
    _, qwen = hf_models
    sharded = tmp_path / "qwen-sharded"
    qwen.save_pretrained(sharded, max_shard_size="50KB")
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    assert not (sharded / "model.safetensors").exists()
    shutil.copy(dirs[1] / "tokenizer.json", sharded)
    model, _ = from_hf_components(dirs[0], sharded, projector_hidden=48, seed=0)
    reference = loaded[0].state_dict()
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, reference[name]), name


def test_shard_outside_the_folder_is_refused(dirs, tmp_path: Path) -> None:
    qwen = tmp_path / "qwen"
    shutil.copytree(dirs[1], qwen)
    (qwen / "model.safetensors").unlink()
    (qwen / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"model.norm.weight": "../elsewhere.safetensors"}}))
    with pytest.raises(CheckpointError, match="points outside the directory"):
        from_hf_components(dirs[0], qwen, projector_hidden=48)


@pytest.mark.parametrize("side", ["vision", "language"])
def test_pickle_only_folder_is_refused_without_unpickling(hf_models, dirs, tmp_path: Path, monkeypatch,
                                                          side: str) -> None:
    source = dirs[0] if side == "vision" else dirs[1]
    folder = tmp_path / side
    folder.mkdir()
    for name in ("config.json", "tokenizer.json"):
        if (source / name).exists():
            shutil.copy(source / name, folder)
    module = hf_models[0] if side == "vision" else hf_models[1]
    torch.save(module.state_dict(), folder / "pytorch_model.bin")

    def no_unpickling(*args, **kwargs):
        raise AssertionError("a pickle file was loaded")

    monkeypatch.setattr(torch, "load", no_unpickling)
    args = (folder, dirs[1]) if side == "vision" else (dirs[0], folder)
    with pytest.raises(CheckpointError) as excinfo:
        from_hf_components(*args, projector_hidden=48)
    message = str(excinfo.value)
    assert "pickle" in message and str(folder) in message and "\n" not in message


def test_folder_without_weights(dirs, tmp_path: Path) -> None:
    folder = tmp_path / "empty"
    folder.mkdir()
    shutil.copy(dirs[0] / "config.json", folder)
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        from_hf_components(folder, dirs[1], projector_hidden=48)


def test_missing_tokenizer(dirs, tmp_path: Path) -> None:
    qwen = tmp_path / "qwen"
    shutil.copytree(dirs[1], qwen)
    (qwen / "tokenizer.json").unlink()
    with pytest.raises(CheckpointError, match="no tokenizer.json"):
        from_hf_components(dirs[0], qwen)


def test_vision_model_without_head(dirs, tmp_path: Path) -> None:
    vision = _siglip_vision(vision_use_head=False)
    assert not any(k.startswith("head.") or ".head." in k for k in vision.state_dict())
    vision.save_pretrained(tmp_path / "siglip")
    model, _ = from_hf_components(tmp_path / "siglip", dirs[1], projector_hidden=48)
    assert model.config.vision.has_head is False and model.vision.head is None
    pixels = _pixels()
    with torch.no_grad():
        torch.testing.assert_close(model.vision(pixels), vision(pixel_values=pixels).last_hidden_state,
                                   atol=1e-5, rtol=1e-5)


def _full_siglip():
    config = transformers.SiglipConfig(
        vision_config=VISION,
        text_config=dict(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, max_position_embeddings=16, bos_token_id=1, eos_token_id=2,
                         pad_token_id=0))
    torch.manual_seed(0)
    return _perturb(transformers.SiglipModel(config), seed=3)


def test_full_siglip_state_dict_drops_the_text_side() -> None:
    full = _full_siglip()
    sd = full.state_dict()
    assert any(k.startswith("text_model.") for k in sd) and "logit_scale" in sd and "logit_bias" in sd
    out = siglip_from_hf(sd)
    vision_keys = [k for k in sd if k.startswith("vision_model.")]
    assert sorted(out) == sorted("vision." + k[len("vision_model."):] for k in vision_keys)
    for k in vision_keys:
        assert out["vision." + k[len("vision_model."):]] is sd[k]


def test_unknown_tensor_in_a_siglip_checkpoint_is_an_error() -> None:
    with pytest.raises(KeyError, match="unexpected tensor 'vision_model.adapter.weight'"):
        siglip_from_hf({"vision_model.adapter.weight": torch.zeros(1)})


def test_full_siglip_directory_loads_as_the_vision_tower(dirs, tmp_path: Path) -> None:
    full = _full_siglip()
    full.save_pretrained(tmp_path / "siglip-full")
    model, _ = from_hf_components(tmp_path / "siglip-full", dirs[1], projector_hidden=48)
    assert model.config.vision.hidden_size == 32 and model.config.vision.num_layers == 2
    pixels = _pixels()
    with torch.no_grad():
        expected = full.vision_model(pixel_values=pixels).last_hidden_state
        torch.testing.assert_close(model.vision(pixels), expected, atol=1e-5, rtol=1e-5)
