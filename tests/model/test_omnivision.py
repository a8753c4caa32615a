"""The composition: parameter count of the release shapes, image splicing, preset checks."""

from __future__ import annotations

import pytest
import torch

from omnivision.config import OmniVisionConfig, ProjectorConfig, VisionConfig, preset
from omnivision.model import OmniVisionModel, init_weights


def test_release_preset_has_exactly_the_official_parameter_count():
    with torch.device("meta"):
        model = OmniVisionModel(preset("omnivision-968m"))
    counts = {part: sum(p.numel() for p in getattr(model, part).parameters())
              for part in ("vision", "projector", "language")}
    assert counts == {"vision": 428_225_600, "projector": 46_142_336, "language": 494_032_768}
    assert sum(counts.values()) == 968_400_704
    assert model.config.num_image_tokens == 81


def test_image_embeddings_replace_placeholders_in_order(tiny_model, tiny_config):
    k = tiny_config.num_image_tokens
    ids = torch.tensor([[5, 6] + [tiny_config.image_token_id] * k + [7]])
    image = torch.randn(1, k, tiny_config.text.hidden_size)
    embeds = tiny_model.embed(ids, image)
    assert torch.equal(embeds[0, 2:2 + k], image[0])
    assert torch.equal(embeds[0, :2], tiny_model.language.embed(ids[:, :2])[0])


def test_image_splice_changes_the_logits(tiny_model, tiny_config):
    k = tiny_config.num_image_tokens
    ids = torch.tensor([[5] + [tiny_config.image_token_id] * k + [7, 8]])
    a = tiny_model(ids, pixel_values=torch.randn(1, 3, 84, 84))
    b = tiny_model(ids, pixel_values=torch.randn(1, 3, 84, 84))
    assert not torch.allclose(a[0, -1], b[0, -1])
    assert torch.allclose(a[0, 0], b[0, 0])  # positions before the image cannot see it


def test_logits_at_gives_the_chosen_positions_rows(tiny_model, tiny_config):
    k = tiny_config.num_image_tokens
    image = [tiny_config.image_token_id] * k
    ids = torch.tensor([[5] + image + [7, 8], [9] + image + [4, 3]])
    pixels = torch.randn(2, 3, 84, 84)
    at = torch.zeros(ids.shape, dtype=torch.bool)
    at[0, -2], at[1, 0], at[1, -1] = True, True, True
    full = tiny_model(ids, pixel_values=pixels)  # [B, T, V]
    rows = tiny_model(ids, pixel_values=pixels, logits_at=at)  # [3, V], row-major
    assert rows.shape == (3, full.shape[-1])
    torch.testing.assert_close(rows, torch.stack([full[0, -2], full[1, 0], full[1, -1]]))


@pytest.mark.parametrize("image_size,patch_size,compression,tokens", [
    (84, 14, "concat9", 4), (42, 14, "concat9", 1), (126, 14, "spatial3x3", 9), (84, 14, "none", 36),
    (60, 4, "concat9", 25),  # 15x15 = 225 patches: divisible by 9 with an odd grid side
])
def test_any_grid_divisible_by_nine_works(image_size, patch_size, compression, tokens):
    cfg = preset("tiny")
    cfg = OmniVisionConfig(
        vision=VisionConfig(**{**cfg.vision.__dict__, "image_size": image_size, "patch_size": patch_size}),
        projector=ProjectorConfig(compression=compression, hidden_size=16), text=cfg.text,
        image_token_id=cfg.image_token_id, stop_token_ids=cfg.stop_token_ids)
    model = OmniVisionModel(cfg)
    assert cfg.num_image_tokens == tokens
    assert model.encode_images(torch.randn(1, 3, image_size, image_size)).shape == (1, tokens, 64)


def test_config_rejects_grid_not_divisible_by_nine():
    with pytest.raises(ValueError, match="projector.compression"):
        OmniVisionConfig(vision=VisionConfig(image_size=56, patch_size=14, hidden_size=32,
                                             intermediate_size=64, num_layers=1, num_heads=4))


def test_config_json_round_trip_and_unknown_fields(tiny_config):
    again = OmniVisionConfig.from_json(tiny_config.to_json())
    assert again == tiny_config
    with pytest.raises(ValueError, match="unknown config fields"):
        OmniVisionConfig.from_dict({**tiny_config.to_dict(), "bogus": 1})


def test_gradient_checkpointing_gives_the_same_gradients(tiny_model, tiny_config):
    k = tiny_config.num_image_tokens
    ids = torch.tensor([[5] + [tiny_config.image_token_id] * k + [7, 8, 9]])
    pixels = torch.randn(1, 3, 84, 84)
    tiny_model.train()
    grads = []
    for enabled in (False, True):
        tiny_model.zero_grad()
        tiny_model.set_gradient_checkpointing(enabled)
        tiny_model(ids, pixel_values=pixels).square().mean().backward()
        grads.append([p.grad.clone() for p in tiny_model.parameters() if p.grad is not None])
    assert len(grads[0]) == len(grads[1]) > 0
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


def test_init_gives_the_siglip_position_table_its_own_scale(tiny_config):
    """The position table is N(0, 1/sqrt(width)) whatever `std` the rest gets, as Hugging Face
    initialises SigLIP: at the general 0.02 a small tower's image tokens lost which cell they came
    from (issue 16)."""
    torch.manual_seed(0)
    model = OmniVisionModel(tiny_config)
    init_weights(model, std=0.02)
    table = model.vision.embeddings.position_embedding.weight  # [patches, width]
    expected = table.shape[1] ** -0.5
    assert abs(table.std().item() - expected) < 0.1 * expected
    assert abs(table.mean().item()) < 0.1 * expected
    conv = model.vision.embeddings.patch_embedding.weight
    words = model.language.model.embed_tokens.weight
    for other in (conv, words):
        assert abs(other.std().item() - 0.02) < 0.002


def test_set_compiled_stays_eager_with_a_warning_where_torch_compile_cannot_build(tiny_model, monkeypatch):
    from omnivision.model import omnivision

    monkeypatch.setattr(omnivision, "_compile_problem", lambda device: "CppCompileError: no g++")
    with pytest.warns(UserWarning, match="eager decoder: CppCompileError: no g\\+\\+"):
        tiny_model.set_compiled(True)
    assert not tiny_model.is_compiled


def test_compile_problem_names_the_switch_that_forbids_compiling(monkeypatch):
    from omnivision.model.omnivision import _compile_problem

    monkeypatch.setenv("OMNIVISION_COMPILE", "off")
    assert _compile_problem.__wrapped__(torch.device("cpu")) == "OMNIVISION_COMPILE is off"
