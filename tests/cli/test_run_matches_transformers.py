"""End to end: a random-weight model written in the official GGUF layout, run through
`omnivision run --json`, gives the same greedy tokens as a reference assembled from transformers'
SiglipVisionModel and Qwen2ForCausalLM holding the same weights."""

from __future__ import annotations

import json

import pytest
import torch

from omnivision.cli.main import main
from omnivision.config import OmniVisionConfig, ProjectorConfig
from omnivision.model import OmniVisionModel
from omnivision.processing.byte_tokenizer import byte_level_tokenizer
from omnivision.processing.image import preprocess
from omnivision.processing.prompt import Message, build_inputs
from omnivision.weights import convert
from omnivision.weights.release_write import write_release

from tests.conftest import REPO

transformers = pytest.importorskip("transformers")
from tests.model.test_parity import hf_qwen2, hf_siglip  # noqa: E402

IMAGE = REPO / "assets" / "shapes.png"
PROMPT = "What shapes are in the image?"


def _random(module, std):
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, std)


def _reference_tokens(siglip, qwen, mm0, mm2, cfg, ids, n_new):
    pixels = preprocess(IMAGE, cfg.vision.image_size, cfg.processing.image_mean,
                        cfg.processing.image_std)[None]
    with torch.no_grad():
        feats = siglip(pixel_values=pixels).last_hidden_state  # [1, 36, 32]
        merged = feats.reshape(1, -1, 9 * feats.shape[-1])  # 9 consecutive tokens
        image = torch.nn.functional.linear(
            torch.nn.functional.gelu(torch.nn.functional.linear(merged, *mm0), approximate="tanh"), *mm2)
        out = []
        for _ in range(n_new):
            x = torch.tensor([ids + out])
            embeds = qwen.get_input_embeddings()(x)
            embeds[x == cfg.image_token_id] = image.reshape(-1, image.shape[-1])
            token = int(qwen(inputs_embeds=embeds).logits[0, -1].argmax())
            if token in cfg.stop_token_ids:
                break
            out.append(token)
    return out


def test_run_json_on_written_gguf_pair_matches_transformers(tmp_path, tiny_config, capsys):
    cfg = OmniVisionConfig(vision=tiny_config.vision, projector=ProjectorConfig(hidden_size=48),
                           text=tiny_config.text, image_token_id=tiny_config.image_token_id,
                           stop_token_ids=tiny_config.stop_token_ids)
    siglip, qwen = hf_siglip(cfg.vision), hf_qwen2(cfg.text)
    _random(siglip, 0.2)
    _random(qwen, 0.2)
    ours = OmniVisionModel(cfg).eval()
    _random(ours.projector, 0.2)
    state = convert.siglip_from_hf(siglip.state_dict())
    state.update(convert.qwen2_from_hf(qwen.state_dict(), tied=True))
    state.update({f"projector.{k}": v for k, v in ours.projector.state_dict().items()})
    ours.load_state_dict(state, strict=True)
    tokenizer = byte_level_tokenizer()
    write_release(ours, tokenizer, tmp_path, "F32")

    n_new = 12
    assert main(["run", "--model", str(tmp_path), "--image", str(IMAGE), "--dtype", "float32",
                 "--max-new-tokens", str(n_new), "--json", PROMPT]) == 0
    got = json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    ids = build_inputs(tokenizer, [Message("user", PROMPT, has_image=True)], "omnivision",
                       cfg.processing.system_prompt, cfg.num_image_tokens)
    mm0 = (ours.projector[0].weight, ours.projector[0].bias)
    mm2 = (ours.projector[2].weight, ours.projector[2].bias)
    expected = _reference_tokens(siglip, qwen, mm0, mm2, cfg, ids, n_new)
    assert len(expected) >= 4, "the reference stopped too early for a meaningful comparison"
    assert got["token_ids"] == expected
    assert got["prompt_tokens"] == len(ids)
