"""The vLLM folder: its config for transformers, its weights, and a chat template that renders exactly
the prompts `processing.prompt.render` renders (checked with jinja2 and with transformers' tokenizer).
The folder running on vLLM itself is tested in tests/vllm_plugin (in vLLM's own environment)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from jinja2.sandbox import ImmutableSandboxedEnvironment
from safetensors.torch import load_file

from omnivision.cli.main import main
from omnivision.loader import BUNDLED, load
from omnivision.processing.byte_tokenizer import byte_level_tokenizer
from omnivision.processing.prompt import ASSISTANT_HEADER, VISION_BLOCK, Message, render
from omnivision.quantize import quantize_model
from omnivision.weights.native import is_native
from omnivision.weights.vllm_export import chat_template, save_vllm

from tests.conftest import REPO

HEADER = "\n" + ASSISTANT_HEADER + "\n"


def _template_render(config, messages, add_generation_prompt=True):
    """As transformers renders chat templates (a sandbox, trimmed blocks)."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(chat_template(config)).render(messages=messages,
                                                         add_generation_prompt=add_generation_prompt)


def _parts(text, image=False):
    return ([{"type": "image"}] if image else []) + [{"type": "text", "text": text}]


CONVERSATIONS = [
    # (OpenAI-style messages, the same conversation as processing.prompt messages, system prompt or None)
    ([{"role": "user", "content": _parts("What shape is red?", image=True)}],
     [Message("user", "What shape is red?", has_image=True)], None),
    ([{"role": "user", "content": "How are you?"}], [Message("user", "How are you?")], None),
    ([{"role": "system", "content": "Be brief."},
      {"role": "user", "content": [{"type": "text", "text": "Count"}, {"type": "image"},
                                   {"type": "text", "text": "the shapes."}]}],
     [Message("user", "Count\nthe shapes.", has_image=True)], "Be brief."),
    ([{"role": "user", "content": _parts("Describe it.", image=True)},
      {"role": "assistant", "content": "A red circle."},
      {"role": "user", "content": "And its size?"}],
     [Message("user", "Describe it.", has_image=True), Message("assistant", "A red circle."),
      Message("user", "And its size?")], None),
    ([{"role": "system", "content": "One."}, {"role": "developer", "content": [{"type": "text", "text": "Two."}]},
      {"role": "user", "content": "Hi"}], [Message("user", "Hi")], "One.\nTwo."),
]


@pytest.mark.parametrize("template", ["omnivision", "omnivision-v1", "omnivision-ocr", "chatml"])
@pytest.mark.parametrize("case", range(len(CONVERSATIONS)))
def test_chat_template_renders_what_the_library_renders(tiny_config, template, case):
    openai_messages, messages, system = CONVERSATIONS[case]
    config = dataclasses.replace(tiny_config, processing=dataclasses.replace(tiny_config.processing,
                                                                             template=template))
    expected = render(messages, template, system if system is not None else config.processing.system_prompt)
    if template == "chatml":
        expected = expected.removesuffix(HEADER)  # chatml's own header; the generation prompt adds it
    assert _template_render(config, openai_messages, add_generation_prompt=False) == expected
    assert _template_render(config, openai_messages) == expected + HEADER


def test_image_block_and_text_kept_in_the_official_order(tiny_config):
    text = _template_render(tiny_config, [{"role": "user", "content": [{"type": "text", "text": "Q?"},
                                                                       {"type": "image_url"}]}])
    assert text.endswith("<|im_start|>user\n\n" + VISION_BLOCK + "Q?<|im_end|>" + HEADER)


def test_folder_holds_what_vllm_reads(tiny_model, tmp_path):
    tokenizer = byte_level_tokenizer()
    out = save_vllm(tiny_model, tokenizer, tmp_path / "vllm")
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "omnivision"
    assert config["architectures"] == ["OmniVisionForConditionalGeneration"]
    assert config["text_config"]["num_hidden_layers"] == tiny_model.config.text.num_layers
    assert config["vision_config"]["image_size"] == tiny_model.config.vision.image_size
    assert config["num_image_tokens"] == tiny_model.config.num_image_tokens
    assert config["omnivision"] == json.loads(json.dumps(tiny_model.config.to_dict()))
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == \
        list(tiny_model.config.stop_token_ids)
    weights = load_file(out / "model.safetensors")
    assert weights.keys() == tiny_model.state_dict().keys()
    for name, tensor in tiny_model.state_dict().items():
        assert torch.equal(weights[name], tensor), name


def test_a_quantized_model_is_refused(tiny_model, tmp_path):
    quantize_model(tiny_model, "int8")
    with pytest.raises(ValueError, match="quantized"):
        save_vllm(tiny_model, byte_level_tokenizer(), tmp_path / "vllm")
    assert not (tmp_path / "vllm").exists()


@pytest.mark.skipif(not is_native(BUNDLED), reason="no bundled nano model")
def test_transformers_tokenizer_builds_the_library_prompt_ids(tmp_path, capsys):
    """`convert --to vllm` on the bundled model; transformers' tokenizer (vLLM's) with the folder's
    chat template gives the ids `OmniVision.prompt_ids` gives, then the header the model writes."""
    transformers = pytest.importorskip("transformers")
    assert main(["convert", str(BUNDLED), str(tmp_path / "vllm"), "--to", "vllm"]) == 0
    assert "wrote" in capsys.readouterr().out
    vlm = load(BUNDLED, dtype="float32")
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "vllm")
    ids = tok.apply_chat_template([{"role": "user", "content": _parts("What color is the circle?", image=True)}],
                                  add_generation_prompt=True, tokenize=True)
    ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
    ours, _ = vlm.prompt_ids("What color is the circle?", REPO / "assets" / "scene.png")
    pad = vlm.config.image_token_id
    collapsed = [i for n, i in enumerate(ours) if i != pad or n == 0 or ours[n - 1] != pad]
    assert list(ids) == collapsed + vlm.tokenizer.encode(HEADER)
