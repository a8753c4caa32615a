"""The benchmark's prepared files: made once, reused, never half-written, and of the right kind."""

from __future__ import annotations

import torch

from omnivision.bench import prepare
from omnivision.quantize.int4_linear import Int4Linear
from omnivision.weights.native import load_native


def test_a_checkpoint_is_made_once_and_reused(tmp_path) -> None:
    first = prepare.native_checkpoint(tmp_path, "tiny", "int4")
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    again = prepare.native_checkpoint(tmp_path, "tiny", "int4")
    assert again == first and (again / "model.safetensors").stat().st_mtime_ns == stamp
    model, _ = load_native(first)
    layers = [m for m in model.modules() if isinstance(m, Int4Linear)]
    assert layers and all(m.group_size in (32, 64, 128) for m in layers)
    assert set(model.quantization.parts) == {"language", "projector", "vision"} and model.quantization.head


def test_int4_lm_quantizes_the_language_model_alone(tmp_path) -> None:
    model, _ = load_native(prepare.native_checkpoint(tmp_path, "tiny", "int4-lm"))
    assert model.quantization.parts == ("language",) and model.quantization.head
    assert any(isinstance(m, Int4Linear) for m in model.language.modules())
    assert not any(isinstance(m, Int4Linear) for m in (*model.vision.modules(), *model.projector.modules()))
    assert model.vision.encoder.layers[0].mlp.fc1.weight.dtype == torch.bfloat16


def test_a_half_written_entry_is_replaced(tmp_path) -> None:
    partial = tmp_path / f"v{prepare.CACHE_VERSION}-tiny-seed0-bf16.partial"
    partial.mkdir()
    (partial / "junk").write_text("interrupted")
    made = prepare.native_checkpoint(tmp_path, "tiny", "bf16")
    assert made.name == f"v{prepare.CACHE_VERSION}-tiny-seed0-bf16" and not partial.exists()
    assert not (made / "junk").exists()


def test_the_prompt_has_the_image_slots_and_the_question(tmp_path) -> None:
    tokenizer, config = prepare.tokenizer_and_config("tiny")
    ids = prepare.prompt_ids(config, tokenizer)
    assert ids.count(config.image_token_id) == config.num_image_tokens
    assert "What objects can you see" in tokenizer.decode(ids)


FAKE_LLAMA_CPP = """
import ctypes
class Params(ctypes.Structure):
    _fields_ = [("ftype", ctypes.c_int), ("nthread", ctypes.c_int)]
def llama_model_quantize_default_params():
    return Params()
def llama_model_quantize(source, target, params):
    with open(target, "wb") as out, open(source, "rb") as f16:
        out.write(b"from the folder's build, ftype %d, " % params._obj.ftype + f16.read(4))
    return 0
"""


def test_llama_cpp_quantizes_with_the_build_in_its_folder(tmp_path, monkeypatch) -> None:
    import sys

    folder = tmp_path / "build"
    (folder / "llama_cpp").mkdir(parents=True)
    (folder / "llama_cpp" / "__init__.py").write_text(FAKE_LLAMA_CPP)
    monkeypatch.setattr(sys, "path", list(sys.path))
    saved = sys.modules.pop("llama_cpp", None)
    try:
        q8 = prepare.llama_cpp_gguf(tmp_path, "tiny", "Q8_0", 1, llama_cpp_dir=folder)
    finally:
        sys.modules.pop("llama_cpp", None)
        if saved is not None:
            sys.modules["llama_cpp"] = saved
    assert q8.read_bytes() == b"from the folder's build, ftype 7, GGUF"
