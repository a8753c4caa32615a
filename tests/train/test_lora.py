"""LoRA through peft: only the adapters (and fully trained parts) learn, and the saved model, adapters
merged, computes exactly what the adapted model computed, loaded without peft."""

from __future__ import annotations

import pytest
import torch

from omnivision.loader import load
from omnivision.model import OmniVisionModel
from omnivision.train.config import TrainConfig
from omnivision.train.lora import LoraSettings, add_lora, merged_state_dict, prepare_parts
from omnivision.train.recipe_sft import SFTConfig, run_sft

pytest.importorskip("peft")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, make_workspace):
    return make_workspace(tmp_path_factory.mktemp("lora"), 12, 4)


def _inputs(model):
    """Two prompts, each with one image block, and their pixels."""
    cfg = model.config
    text = torch.randint(0, cfg.image_token_id, (2, 6))  # ids below the image token: plain text
    image = torch.full((2, cfg.num_image_tokens), cfg.image_token_id)
    n = cfg.vision.image_size
    return torch.cat([text[:, :3], image, text[:, 3:]], dim=1), torch.rand(2, 3, n, n) * 2 - 1


def test_merged_state_equals_the_adapted_model(tiny_model):
    settings = LoraSettings(rank=4, alpha=8.0, parts=["language", "vision"])
    plain = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    add_lora(tiny_model, settings)
    with torch.no_grad():  # adapters start as a no-op (B = 0); give them a real update
        for name, p in tiny_model.named_parameters():
            if ".lora_B." in name:
                p.normal_(0.0, 0.05)
    ids, pixels = _inputs(tiny_model)
    with torch.no_grad():
        adapted = tiny_model(ids, pixel_values=pixels)
    merged = merged_state_dict(tiny_model.state_dict(), settings)
    assert merged.keys() == plain.keys()
    changed = {k for k in plain if not torch.equal(plain[k], merged[k])}
    assert changed and all(k.endswith(("proj.weight", "fc1.weight", "fc2.weight")) for k in changed)
    assert not any(k.startswith("vision.head.") for k in changed)  # the unused pooling head: no adapters
    assert any(k.startswith("vision.") for k in changed) and any(k.startswith("language.") for k in changed)
    fresh = type(tiny_model)(tiny_model.config).eval()
    fresh.load_state_dict(merged)
    with torch.no_grad():
        torch.testing.assert_close(fresh(ids, pixel_values=pixels), adapted, rtol=1e-5, atol=1e-5)


def test_selector_trains_adapters_and_full_parts_only(tiny_model):
    select, _ = prepare_parts(tiny_model, ["projector", "language"], LoraSettings(rank=2))
    names = [n for n, _ in select(tiny_model)]
    language = [n for n in names if n.startswith("language.")]
    assert language and all(".lora_" in n for n in language)
    assert any(n.startswith("projector.") for n in names)
    assert not any(n.startswith("vision.") for n in names)
    with pytest.raises(ValueError, match="not among the trainable parts"):
        prepare_parts(tiny_model, ["projector"], LoraSettings(rank=2, parts=["language"]))
    with pytest.raises(ValueError, match="lora.rank"):
        LoraSettings(rank=-1)
    with pytest.raises(ValueError, match="lora.parts"):
        LoraSettings(rank=2, parts=["projector"])  # nn.Sequential layers: no named linear layers


def test_adapter_initialisation_is_seeded(tiny_config):
    def lora_a(seed):
        model = OmniVisionModel(tiny_config)
        add_lora(model, LoraSettings(rank=2), seed=seed)
        return {n: p.clone() for n, p in model.named_parameters() if ".lora_A." in n}

    first, again, other = lora_a(1), lora_a(1), lora_a(2)
    assert first and all(torch.equal(first[n], again[n]) for n in first)
    assert any(not torch.equal(first[n], other[n]) for n in first)


def test_sft_with_lora_saves_a_merged_plain_checkpoint(workspace):
    data = workspace / "data"
    train = TrainConfig(out_dir=str(workspace / "sft"), steps=4, batch_size=4, lr=1e-2, progress=False,
                        precision="fp32", distributed="none", log_every=1)
    run_sft(SFTConfig(model=str(workspace / "start"), data=str(data / "sft.json"), images=str(data),
                      train=train, trainable=["projector", "language"],
                      lora=LoraSettings(rank=4, targets=["q_proj", "v_proj"])))
    before = load(workspace / "start", dtype="float32").model.state_dict()
    after = load(workspace / "sft" / "model", dtype="float32").model.state_dict()
    assert after.keys() == before.keys()  # no adapter or base_layer names: loads without peft
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    language = {k for k in moved if k.startswith("language.")}
    assert language and all(k.endswith(("q_proj.weight", "v_proj.weight")) for k in language)
    assert any(k.startswith("projector.") for k in moved)
    assert not any(k.startswith("vision.") for k in moved)
