"""`omnivision quantize`: writing a quantized checkpoint that `run` loads, `--check`, bad input."""

from __future__ import annotations

import json

import pytest

from omnivision.cli.main import main
from omnivision.loader import BUNDLED, load
from omnivision.quantize import Int8Linear, quantize_model
from tests.conftest import REPO

IMAGE = REPO / "assets" / "scene.png"
PROMPT = "Describe the image."

pytestmark = pytest.mark.skipif(not (BUNDLED / "model.safetensors").is_file(), reason="no bundled nano model")


def test_quantized_checkpoint_answers_like_the_in_memory_quantized_model(tmp_path, capsys):
    out = tmp_path / "nano-int8"
    assert main(["quantize", str(BUNDLED), str(out), "--scheme", "int8"]) == 0
    printed = capsys.readouterr().out
    assert json.loads((out / "config.json").read_text())["quantization"]["scheme"] == "int8"
    layers = sum(isinstance(m, Int8Linear) for m in load(out, dtype="float32").model.modules())
    assert f": {layers} layers" in printed and layers > 0

    assert main(["run", "--model", str(out), "--image", str(IMAGE), "--dtype", "float32",
                 "--max-new-tokens", "16", "--json", PROMPT]) == 0
    answered = json.loads(capsys.readouterr().out)
    assert answered["text"].strip()
    # the same greedy answer as quantizing the bundled model in memory: the checkpoint is exact
    expected = load(BUNDLED, dtype="float32")
    quantize_model(expected.model, "int8")
    assert answered["token_ids"] == expected.answer(IMAGE, PROMPT, max_new_tokens=16).token_ids


def test_check_prints_agreement_and_kl_and_writes_json(tmp_path, capsys):
    report = tmp_path / "check.json"
    assert main(["quantize", "--check", "--scheme", "int8", "--scenes", "1", "--max-new-tokens", "8",
                 "--json", str(report)]) == 0
    printed = capsys.readouterr().out
    assert "top-1 agree" in printed and "mean KL" in printed
    check = json.loads(report.read_text())["check"]
    assert check["scheme"] == "int8" and check["positions"] > 0
    # a probability and a KL divergence; int8 of the nano model keeps most tokens (measured 99.7 %)
    assert 0.9 <= check["top1_agreement"] <= 1.0
    assert 0.0 <= check["mean_kl"] < 0.01
    # 1 scene: a caption and one question per group, plus the shipped scene.png
    assert check["probes"] >= 3


@pytest.mark.parametrize("argv, message", [
    (["quantize", "--check", "--scheme", "int3"], "int3"),
    (["quantize", "--check", "--parts", "decoder"], "decoder"),
    (["quantize", str(BUNDLED)], "OUT"),
])
def test_bad_arguments_exit_2_with_an_error(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and message in err


def _language_gguf(tmp_path):
    import torch

    from omnivision.config import preset
    from omnivision.model import OmniVisionModel, init_weights
    from omnivision.processing.byte_tokenizer import byte_level_tokenizer
    from omnivision.weights.release_write import write_llm

    torch.manual_seed(0)
    model = OmniVisionModel(preset("tiny")).eval()
    init_weights(model, std=0.3)
    return write_llm(model, byte_level_tokenizer(), tmp_path / "llm.gguf", "F16")


def test_language_only_check_on_a_language_model_gguf(tmp_path, capsys):
    report = tmp_path / "check.json"
    assert main(["quantize", str(_language_gguf(tmp_path)), "--check", "--language-only", "--scheme", "int8",
                 "--head", "--max-new-tokens", "6", "--json", str(report)]) == 0
    assert "output head quantized" in capsys.readouterr().out
    data = json.loads(report.read_text())
    assert data["parts"] == ["language"] and data["scheme"] == "int8"
    check = data["check"]
    assert check["probes"] == 12 and check["positions"] > 12
    assert 0.8 <= check["top1_agreement"] <= 1.0 and 0 < check["mean_kl"] < 0.1


def test_language_only_writes_nothing(tmp_path, capsys):
    assert main(["quantize", str(_language_gguf(tmp_path)), str(tmp_path / "out"), "--check",
                 "--language-only"]) == 2
    assert "--language-only only checks" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_settings_that_would_be_ignored_are_refused(tmp_path, capsys):
    assert main(["quantize", "--check", "--head", "--parts", "vision"]) == 2
    assert "--head quantizes the language model" in capsys.readouterr().err
    assert main(["quantize", str(_language_gguf(tmp_path)), "--check", "--language-only", "--parts",
                 "language"]) == 2
    assert "drop --parts" in capsys.readouterr().err
