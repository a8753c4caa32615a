"""save_native / load_native: exact round trip, memory-mapped loading, dtype conversion, atomic
replacement, and one-line `CheckpointError`s for damaged checkpoints."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from omnivision.processing.byte_tokenizer import byte_level_tokenizer
from omnivision.weights import native
from omnivision.weights.errors import CheckpointError
from omnivision.weights.native import CONFIG, TOKENIZER, WEIGHTS, load_native, save_native


@pytest.fixture
def tokenizer():
    return byte_level_tokenizer()


@pytest.fixture
def saved(tiny_model, tokenizer, tmp_path: Path) -> Path:
    return save_native(tiny_model, tokenizer, tmp_path / "ckpt")


def _inputs(model):
    cfg = model.config
    g = torch.Generator().manual_seed(1)
    ids = [257, 72, 105, 259] + [cfg.image_token_id] * cfg.num_image_tokens + [260, 33, 258, 10]
    pixels = torch.rand(1, 3, cfg.vision.image_size, cfg.vision.image_size, generator=g) * 2 - 1
    return torch.tensor([ids]), pixels


def _logits(model) -> torch.Tensor:
    ids, pixels = _inputs(model)
    with torch.no_grad():
        return model(ids, pixel_values=pixels)


def _file_mappings(path: Path) -> list[tuple[int, int]]:
    """Address ranges of this process's memory mappings of `path` (Linux /proc/self/maps)."""
    maps = Path("/proc/self/maps")
    if not maps.is_file():
        pytest.skip("needs /proc/self/maps to see the memory mappings")
    target = str(path.resolve())
    ranges = []
    for line in maps.read_text().splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) == 6 and parts[5] == target:
            start, end = (int(x, 16) for x in parts[0].split("-"))
            ranges.append((start, end))
    return ranges


def _one_line_error(excinfo: pytest.ExceptionInfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


# --- round trip ---------------------------------------------------------------------------------


def test_round_trip_state_logits_config_and_tokenizer(tiny_model, tokenizer, saved: Path) -> None:
    assert sorted(p.name for p in saved.iterdir()) == sorted([CONFIG, WEIGHTS, TOKENIZER])
    meta = json.loads((saved / CONFIG).read_text())
    assert meta["format"] == "omnivision-native" and meta["format_version"] == 1

    model, tok = load_native(saved)
    assert model.config == tiny_model.config
    assert not model.training
    expected = tiny_model.state_dict()
    got = model.state_dict()
    assert list(got) == list(expected)
    for name, tensor in expected.items():
        assert got[name].dtype == tensor.dtype, name
        assert torch.equal(got[name], tensor), name
    assert torch.equal(_logits(model), _logits(tiny_model))

    text = "héllo <|im_start|>user\n<|image_pad|>"
    assert tok.encode(text) == tokenizer.encode(text)
    assert tok.vocab_size == tokenizer.vocab_size


def test_extra_metadata_is_kept_in_the_config_file(tiny_model, tokenizer, tmp_path: Path) -> None:
    out = save_native(tiny_model, tokenizer, tmp_path / "c", extra={"random_weights": True})
    assert json.loads((out / CONFIG).read_text())["random_weights"] is True
    load_native(out)  # an extra key does not make the checkpoint unreadable


def test_loaded_tensors_are_views_of_a_private_file_mapping(saved: Path) -> None:
    weights = saved / WEIGHTS
    before = hashlib.sha256(weights.read_bytes()).hexdigest()
    model, _ = load_native(saved)
    ranges = _file_mappings(weights)
    assert ranges, "model.safetensors is not memory-mapped"
    mapped = 0
    for name, tensor in model.state_dict().items():
        ptr = tensor.untyped_storage().data_ptr()
        assert ptr % 64 == 0, f"{name} does not start on a cache line"
        if tensor.numel() * tensor.element_size() % 64 == 0:  # the writer aligns all of these
            assert any(start <= ptr < end for start, end in ranges), f"{name} is not inside the file mapping"
            mapped += tensor.numel() * tensor.element_size()
    assert mapped > 0.9 * sum(t.numel() * t.element_size() for t in model.state_dict().values())
    # copy-on-write: changing a loaded weight in place never writes to the checkpoint
    with torch.no_grad():
        model.language.model.embed_tokens.weight.add_(1.0)
    del model
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == before


def test_load_with_bfloat16_converts_every_tensor(tiny_model, saved: Path) -> None:
    model, _ = load_native(saved, dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16
    expected = tiny_model.state_dict()
    for name, tensor in model.state_dict().items():
        assert tensor.dtype == torch.bfloat16, name
        assert torch.equal(tensor, expected[name].to(torch.bfloat16)), name
    logits = _logits(model).float()
    reference = _logits(tiny_model)
    assert torch.allclose(logits, reference, atol=0.1 * reference.abs().max().item())
    # converted tensors own their memory: they are not inside the file mapping
    ranges = _file_mappings(saved / WEIGHTS)
    ptr = model.language.model.embed_tokens.weight.untyped_storage().data_ptr()
    assert not any(start <= ptr < end for start, end in ranges)


def test_load_with_matching_dtype_keeps_the_mapping(saved: Path) -> None:
    model, _ = load_native(saved, dtype=torch.float32)
    ranges = _file_mappings(saved / WEIGHTS)
    ptr = model.language.model.embed_tokens.weight.untyped_storage().data_ptr()
    assert any(start <= ptr < end for start, end in ranges)


def test_a_file_with_unaligned_tensors_is_read_into_aligned_memory(tiny_model, saved: Path) -> None:
    # safetensors' own writer puts tensors anywhere; such tensors are read, not mapped in place
    for pad in range(1, 64):  # a header length that leaves the data section off a 64-byte boundary
        save_file(tiny_model.state_dict(), saved / WEIGHTS, metadata={"pad": "x" * pad})
        if (8 + int.from_bytes((saved / WEIGHTS).read_bytes()[:8], "little")) % 64:
            break
    model, _ = load_native(saved)
    ranges = _file_mappings(saved / WEIGHTS)
    expected = tiny_model.state_dict()
    read = 0
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, expected[name]), name
        ptr = tensor.untyped_storage().data_ptr()
        assert ptr % 64 == 0, name
        read += not any(start <= ptr < end for start, end in ranges)
    assert read > len(expected) // 2


# --- atomic replacement -------------------------------------------------------------------------


def _other_model(tiny_model):
    other = type(tiny_model)(tiny_model.config).eval()
    other.load_state_dict(tiny_model.state_dict())
    with torch.no_grad():
        for p in other.parameters():
            p.add_(1.0)
    return other


def test_saving_over_a_checkpoint_replaces_it_and_leaves_no_temp_dirs(tiny_model, tokenizer, saved: Path) -> None:
    other = _other_model(tiny_model)
    assert save_native(other, tokenizer, saved) == saved
    assert [p.name for p in saved.parent.iterdir()] == [saved.name]  # no .ckpt.* temp or .old dirs
    model, _ = load_native(saved)
    assert torch.equal(model.language.model.norm.weight, other.language.model.norm.weight)
    assert not torch.equal(model.language.model.norm.weight, tiny_model.language.model.norm.weight)


def test_a_loaded_model_survives_its_checkpoint_being_replaced(tiny_model, tokenizer, saved: Path) -> None:
    model, _ = load_native(saved)  # memory-mapped from the file that the next save unlinks
    save_native(_other_model(tiny_model), tokenizer, saved)
    for name, tensor in tiny_model.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name
    assert torch.equal(_logits(model), _logits(tiny_model))


def test_a_failed_save_keeps_the_old_checkpoint(tiny_model, tokenizer, saved: Path, monkeypatch) -> None:
    def broken_save_file(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(native, "save_aligned", broken_save_file)
    with pytest.raises(OSError, match="disk full"):
        save_native(_other_model(tiny_model), tokenizer, saved)
    assert [p.name for p in saved.parent.iterdir()] == [saved.name]
    model, _ = load_native(saved)
    assert torch.equal(model.language.model.norm.weight, tiny_model.language.model.norm.weight)


# --- damaged checkpoints ------------------------------------------------------------------------


def test_corrupted_config_json(saved: Path) -> None:
    (saved / CONFIG).write_text('{"format": "omnivision-native", "config": {')
    with pytest.raises(CheckpointError) as excinfo:
        load_native(saved)
    message = _one_line_error(excinfo)
    assert CONFIG in message and "cannot read the config" in message


def test_config_of_another_format(saved: Path) -> None:
    (saved / CONFIG).write_text(json.dumps({"model_type": "qwen2"}))
    with pytest.raises(CheckpointError, match="not an omnivision checkpoint config"):
        load_native(saved)


def test_unsupported_format_version(saved: Path) -> None:
    meta = json.loads((saved / CONFIG).read_text())
    meta["format_version"] = 99
    (saved / CONFIG).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="format_version 99"):
        load_native(saved)


@pytest.mark.parametrize("where", ["top", "vision"])
def test_unknown_config_field(saved: Path, where: str) -> None:
    meta = json.loads((saved / CONFIG).read_text())
    (meta["config"] if where == "top" else meta["config"]["vision"])["mystery_knob"] = 3
    (saved / CONFIG).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError) as excinfo:
        load_native(saved)
    message = _one_line_error(excinfo)
    assert "invalid config" in message and "mystery_knob" in message and CONFIG in message


def test_invalid_config_value(saved: Path) -> None:
    meta = json.loads((saved / CONFIG).read_text())
    meta["config"]["projector"]["compression"] = "zip"
    (saved / CONFIG).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="compression"):
        load_native(saved)


# found by fuzzing (native:0:73, native:0:125, native:0:419, native:0:223): these reached torch
# and ended in a TypeError, a RuntimeError or a RecursionError traceback
@pytest.mark.parametrize("part,field,value,problem", [
    ("vision", "layer_norm_eps", [], "'layer_norm_eps': must be a finite number, got list []"),
    ("vision", "patch_size", 0.5, "'patch_size': must be an integer, got float 0.5"),
    ("text", "tie_word_embeddings", "yes", "'tie_word_embeddings': must be true or false"),
    ("text", "vocab_size", 2**63 - 1, f"'vocab_size': must be between 1 and {2**24}, got {2**63 - 1}"),
    ("text", "num_layers", 2**31 - 1, "'num_layers': must be between 1 and 1024"),
    ("processing", "image_std", ["a", 1, 1], "'image_std': must be a list of numbers"),
    (None, "stop_token_ids", [1.5], "'stop_token_ids': must be a list of integers"),
    (None, "vision", 7, "'vision': must be an object, got int"),
])
def test_config_value_of_the_wrong_type_or_size(saved: Path, part, field, value, problem) -> None:
    meta = json.loads((saved / CONFIG).read_text())
    (meta["config"][part] if part else meta["config"])[field] = value
    (saved / CONFIG).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError) as excinfo:
        load_native(saved)
    message = _one_line_error(excinfo)
    assert CONFIG in message and "invalid config" in message and problem in message, message


def test_an_integer_eps_is_held_as_a_float(saved: Path) -> None:
    # found by fuzzing (native:0:2184): rms_norm_eps 2**64 reached torch as an int, OverflowError
    meta = json.loads((saved / CONFIG).read_text())
    meta["config"]["text"]["rms_norm_eps"] = 2**64
    (saved / CONFIG).write_text(json.dumps(meta))
    model, _ = load_native(saved)
    assert type(model.config.text.rms_norm_eps) is float
    assert _logits(model).shape[-1] == model.config.text.vocab_size


def test_config_nested_deeper_than_json_parses(saved: Path) -> None:
    meta = json.loads((saved / CONFIG).read_text())
    meta["config"]["vision"]["hidden_size"] = "DEEP"
    (saved / CONFIG).write_text(json.dumps(meta).replace('"DEEP"', "[" * 100_000 + "]" * 100_000))
    with pytest.raises(CheckpointError) as excinfo:
        load_native(saved)
    message = _one_line_error(excinfo)
    assert "cannot read the config" in message and "recursion" in message


def test_missing_tensor(saved: Path) -> None:
    state = load_file(saved / WEIGHTS)
    del state["language.model.norm.weight"]
    save_file(state, saved / WEIGHTS)
    with pytest.raises(CheckpointError) as excinfo:
        load_native(saved)
    message = _one_line_error(excinfo)
    assert "missing" in message and "language.model.norm.weight" in message and WEIGHTS in message


def test_unexpected_tensor(saved: Path) -> None:
    state = load_file(saved / WEIGHTS)
    state["language.extra.weight"] = torch.zeros(2)
    save_file(state, saved / WEIGHTS)
    with pytest.raises(CheckpointError, match="unexpected.*language.extra.weight"):
        load_native(saved)


def test_wrong_shape_tensor(saved: Path) -> None:
    state = load_file(saved / WEIGHTS)
    state["projector.2.bias"] = torch.zeros(63)
    save_file(state, saved / WEIGHTS)
    with pytest.raises(CheckpointError) as excinfo:
        load_native(saved)
    message = _one_line_error(excinfo)
    assert "'projector.2.bias'" in message and "(63,)" in message and "(64,)" in message


def test_non_float_tensor(saved: Path) -> None:
    state = load_file(saved / WEIGHTS)
    state["projector.2.bias"] = torch.zeros(64, dtype=torch.int32)
    save_file(state, saved / WEIGHTS)
    with pytest.raises(CheckpointError, match="'projector.2.bias' has non-float dtype"):
        load_native(saved)


def test_truncated_weights_file(saved: Path) -> None:
    data = (saved / WEIGHTS).read_bytes()
    (saved / WEIGHTS).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as excinfo:
        load_native(saved)
    assert WEIGHTS in _one_line_error(excinfo)


def test_missing_tokenizer(saved: Path) -> None:
    (saved / TOKENIZER).unlink()
    with pytest.raises(CheckpointError, match=f"no {TOKENIZER}"):
        load_native(saved)


def test_unreadable_tokenizer(saved: Path) -> None:
    (saved / TOKENIZER).write_text("{}")
    with pytest.raises(CheckpointError) as excinfo:
        load_native(saved)
    assert "cannot load the tokenizer" in _one_line_error(excinfo)
