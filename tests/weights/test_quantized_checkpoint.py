"""Quantized native checkpoints: save/load round trip, recorded metadata, bad metadata and tensors."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from omnivision.processing.byte_tokenizer import byte_level_tokenizer
from omnivision.quantize import Int4Linear, Int8Linear, quantize_model
from omnivision.quantize.embedding import QuantizedEmbedding
from omnivision.weights.errors import CheckpointError
from omnivision.weights.native import load_native, save_native


def _ids(model):
    torch.manual_seed(1)
    return torch.randint(0, 256, (2, 12))


@pytest.mark.parametrize("scheme, layer", [("int8", Int8Linear), ("int4-g32", Int4Linear)])
def test_round_trip_gives_identical_logits(tiny_model, tmp_path, scheme, layer):
    summary = quantize_model(tiny_model, scheme, ("language", "projector"))
    out = save_native(tiny_model, byte_level_tokenizer(), tmp_path / "q")
    loaded, _ = load_native(out, torch.float32)
    # int4: the projector's 48-input layer no group size divides is stored int8 (`int8_fallback`)
    assert sum(isinstance(m, layer) for m in loaded.modules()) == summary.layers - len(summary.int8_fallback) > 0
    # the vision part was not chosen, so it keeps plain Linear layers
    assert not any(isinstance(m, (Int8Linear, Int4Linear)) for m in loaded.vision.modules())
    ids = _ids(tiny_model)
    with torch.no_grad():
        assert torch.equal(loaded(ids), tiny_model(ids))
    # integer codes were stored as integers, not widened to floats
    stored = load_file(out / "model.safetensors")
    assert {t.dtype for k, t in stored.items() if k.endswith("qweight")} == \
        ({torch.int8} if scheme == "int8" else {torch.uint8, torch.int8})  # int8: the int4 fallback layer


def test_config_records_scheme_parts_and_skipped(tiny_model, tmp_path):
    summary = quantize_model(tiny_model, "int8", ("language",))
    saved = save_native(tiny_model, byte_level_tokenizer(), tmp_path / "q")
    meta = json.loads((saved / "config.json").read_text())
    assert meta["quantization"] == {"scheme": "int8", "parts": ["language"], "skipped": summary.skipped,
                                    "head": False, "int4_layout": "blocked64"}


def test_an_int4_checkpoint_in_the_older_code_layout_is_refused(tiny_model, tmp_path):
    quantize_model(tiny_model, "int4-g32", ("language",))
    saved = save_native(tiny_model, byte_level_tokenizer(), tmp_path / "q")
    config = json.loads((saved / "config.json").read_text())
    del config["quantization"]["int4_layout"]  # as written before the blocked layout
    (saved / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="older layout"):
        load_native(saved)


@pytest.mark.parametrize("scheme", ["int8", "int4-g32"])
def test_a_quantized_tied_head_round_trips(tiny_model, tmp_path, scheme):
    quantize_model(tiny_model, scheme, ("language",), head=True)
    saved = save_native(tiny_model, byte_level_tokenizer(), tmp_path / "q")
    assert json.loads((saved / "config.json").read_text())["quantization"]["head"] is True
    loaded, _ = load_native(saved)
    assert isinstance(loaded.language.model.embed_tokens, QuantizedEmbedding)
    ids = torch.tensor([[5, 17, 200, 3]])
    with torch.no_grad():
        assert torch.equal(loaded(ids), tiny_model(ids))
        # loaded for bf16 compute, lookups come out in bf16 like the rest of the model
        in_bf16, _ = load_native(saved, torch.bfloat16)
        assert in_bf16.language.embed(ids).dtype == torch.bfloat16
        assert in_bf16(ids).dtype == torch.bfloat16
        # loaded for bf16 compute, lookups come out in bf16 like the rest of the model


def test_plain_checkpoint_has_no_quantization_entry(tiny_model, tmp_path):
    saved = save_native(tiny_model, byte_level_tokenizer(), tmp_path / "p")
    meta = json.loads((saved / "config.json").read_text())
    assert "quantization" not in meta


def _edit_config(path, change):
    file = path / "config.json"
    meta = json.loads(file.read_text())
    change(meta["quantization"])
    file.write_text(json.dumps(meta))


@pytest.fixture
def saved_int8(tiny_model, tmp_path):
    quantize_model(tiny_model, "int8", ("language",))
    return save_native(tiny_model, byte_level_tokenizer(), tmp_path / "q")


def test_unknown_scheme_is_a_clear_error(saved_int8):
    _edit_config(saved_int8, lambda q: q.update(scheme="int3"))
    with pytest.raises(CheckpointError, match="quantization.*int3"):
        load_native(saved_int8)


def test_malformed_entry_is_a_clear_error(saved_int8):
    _edit_config(saved_int8, lambda q: q.update(parts="language"))
    with pytest.raises(CheckpointError, match="'parts' list"):
        load_native(saved_int8)


def test_scheme_that_does_not_match_the_tensors_is_an_error(saved_int8):
    # int4 layers want uint8 qweight [N, K/2] and scales/zeros; the file holds int8 [N, K]
    _edit_config(saved_int8, lambda q: q.update(scheme="int4-g32"))
    with pytest.raises(CheckpointError, match="do not match|shape|dtype"):
        load_native(saved_int8)


def test_float_tensor_in_place_of_codes_is_an_error(saved_int8):
    file = saved_int8 / "model.safetensors"
    state = load_file(file)
    name = next(k for k in state if k.endswith("qweight"))
    state[name] = state[name].float()
    save_file(state, str(file))
    with pytest.raises(CheckpointError, match=f"{name}.*float32.*int8"):
        load_native(saved_int8)


def test_quantizing_again_with_another_scheme_is_refused(tiny_model):
    quantize_model(tiny_model, "int8", ("language",))
    with pytest.raises(ValueError, match="already quantized with int8"):
        quantize_model(tiny_model, "int4", ("vision",))
