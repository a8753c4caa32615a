"""write_release -> find_release + load_release on the tiny model.

Covers: exact F32 round trip, F16 within fp16 rounding, Q8_0 within its quantisation bound (and the
same greedy decisions up to near-ties), the metadata keys, value types and tensor dtypes of
docs/official-release.md 2.1 and 2.2, the `omnivision.*` keys for non-official settings, the number of image
tokens inferred from `mm.0.weight`, and the choice among several language-model files.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import gguf
import pytest
import torch
from gguf import GGUFValueType

from omnivision.config import OmniVisionConfig
from omnivision.generation.generate import GenerationConfig, generate
from omnivision.model import OmniVisionModel, init_weights
from omnivision.processing.byte_tokenizer import byte_level_tokenizer
from omnivision.weights.errors import CheckpointError
from omnivision.weights.gguf_file import GGUFFile
from omnivision.weights.gguf_write import write_gguf
from omnivision.weights.release_read import find_release, load_release, release_config
from omnivision.weights.release_write import write_release

MMPROJ_KEYS = {
    "general.architecture", "general.file_type", "general.name", "general.description",
    "siglip.has_omni_vlm_projector", "siglip.vision.image_size", "siglip.vision.patch_size",
    "siglip.vision.embedding_length", "siglip.vision.attention.head_count",
    "siglip.vision.feed_forward_length", "siglip.vision.block_count", "siglip.vision.projection_dim",
    "siglip.vision.image_mean", "siglip.vision.image_std",
}
LLM_KEYS = {
    "general.architecture", "general.file_type", "general.name", "qwen2.block_count",
    "qwen2.context_length", "qwen2.embedding_length", "qwen2.feed_forward_length",
    "qwen2.attention.head_count", "qwen2.attention.head_count_kv", "qwen2.rope.freq_base",
    "qwen2.attention.layer_norm_rms_epsilon", "tokenizer.ggml.model", "tokenizer.ggml.pre",
    "tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.add_bos_token",
    "tokenizer.ggml.eos_token_id", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.padding_token_id",
    "tokenizer.ggml.merges",  # always: llama.cpp refuses a byte-level vocabulary without it
}


@pytest.fixture
def tokenizer():
    return byte_level_tokenizer()


def _model(config: OmniVisionConfig) -> OmniVisionModel:
    torch.manual_seed(0)
    model = OmniVisionModel(config).eval()
    init_weights(model, std=0.1)
    return model


def _variant(config: OmniVisionConfig, **changes) -> OmniVisionConfig:
    """A copy of `config` with dotted fields changed, e.g. `projector__compression="none"`."""
    parts: dict = {}
    for key, value in changes.items():
        part, field = key.split("__")
        parts.setdefault(part, {})[field] = value
    return dataclasses.replace(config, **{p: dataclasses.replace(getattr(config, p), **f)
                                          for p, f in parts.items()})


def _load(directory: Path, gguf_type: str | None = None):
    return load_release(find_release(directory, gguf_type))


def _prompt(model: OmniVisionModel, tokenizer) -> list[int]:
    cfg = model.config
    return ([tokenizer.im_start_id] + tokenizer.encode("user\n\n") + [tokenizer.vision_start_id]
            + [cfg.image_token_id] * cfg.num_image_tokens + [tokenizer.vision_end_id]
            + tokenizer.encode("What is in the picture?") + [tokenizer.im_end_id])


def _pixels(config: OmniVisionConfig) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    return torch.rand(1, 3, config.vision.image_size, config.vision.image_size, generator=g) * 2 - 1


def _logits(model: OmniVisionModel, ids: list[int], pixels: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids]), pixel_values=pixels)[0]


def _rewrite(path: Path, drop: set[str] = frozenset(), set_: dict | None = None) -> None:
    """Rewrite a GGUF file with metadata keys dropped or changed (tensors and their types kept)."""
    f = GGUFFile.open(path)
    metadata = {k: v for k, v in f.metadata.items() if k not in drop}
    metadata.update(set_ or {})
    tensors = {name: (f.tensor(name), info.ggml_type.name) for name, info in f.tensors.items()}
    write_gguf(path, f.architecture, metadata, tensors)


# --- precision round trips ----------------------------------------------------------------------


def test_f32_round_trip_is_bit_identical(tiny_model, tokenizer, tmp_path: Path) -> None:
    llm_path, mm_path = write_release(tiny_model, tokenizer, tmp_path, "F32")
    assert (llm_path.name, mm_path.name) == ("omnivision-llm-F32.gguf", "omnivision-mmproj-f32.gguf")
    model, tok = _load(tmp_path)
    assert model.config == tiny_model.config
    expected = tiny_model.state_dict()
    got = model.state_dict()
    assert set(got) == set(expected)
    for name, tensor in expected.items():
        assert got[name].shape == tensor.shape and torch.equal(got[name], tensor), name
    ids = _prompt(tiny_model, tokenizer)
    assert tok.encode("héllo <|im_end|>") == tokenizer.encode("héllo <|im_end|>")
    pixels = _pixels(tiny_model.config)
    assert torch.equal(_logits(model, ids, pixels), _logits(tiny_model, ids, pixels))


def test_f16_round_trip_is_fp16_rounding(tiny_model, tokenizer, tmp_path: Path) -> None:
    write_release(tiny_model, tokenizer, tmp_path, "F16")
    model, _ = _load(tmp_path)
    llm = GGUFFile.open(tmp_path / "omnivision-llm-F16.gguf")
    got = model.state_dict()
    halved = 0
    for name, tensor in tiny_model.state_dict().items():
        # matrices and the conv are stored as f16, so they come back exactly as fp16-rounded values;
        # 1-D tensors (and v.head.attention.in_weight) are stored as f32 and come back exactly
        exact = torch.equal(got[name], tensor)
        rounded = torch.equal(got[name], tensor.half().float())
        assert exact or rounded, name
        halved += not exact
    assert halved > 0
    assert llm.tensors["token_embd.weight"].ggml_type.name == "F16"
    ids, pixels = _prompt(tiny_model, tokenizer), _pixels(tiny_model.config)
    reference = _logits(tiny_model, ids, pixels)
    assert torch.allclose(_logits(model, ids, pixels), reference, atol=0.01 * reference.abs().max().item())


def test_q8_0_language_model_is_within_the_quantisation_bound(tiny_model, tokenizer, tmp_path: Path) -> None:
    write_release(tiny_model, tokenizer, tmp_path, "Q8_0")
    llm = GGUFFile.open(tmp_path / "omnivision-llm-Q8_0.gguf")
    assert (tmp_path / "omnivision-mmproj-f16.gguf").is_file()  # the mmproj stays f16 for Q8_0
    model, _ = _load(tmp_path)
    got = model.state_dict()
    for name, tensor in tiny_model.state_dict().items():
        if not name.startswith("language."):
            assert torch.equal(got[name], tensor) or torch.equal(got[name], tensor.half().float()), name
        elif tensor.dim() == 1:
            assert torch.equal(got[name], tensor), name  # norms stay f32
        else:
            # Q8_0: blocks of 32 along a row, scale d = amax / 127 stored as f16, error <= d / 2 (+ the
            # scale's own f16 rounding, at most 127 * d * 2**-11 ~ 0.06 d)
            blocks = tensor.reshape(-1, 32)
            bound = blocks.abs().amax(dim=1, keepdim=True) / 127 * 0.57 + 1e-7
            error = (got[name].reshape(-1, 32) - blocks).abs()
            assert (error <= bound).all(), name
            assert not torch.equal(got[name], tensor), f"{name} was not quantised"
    q8 = [n for n, t in llm.tensors.items() if t.ggml_type.name == "Q8_0"]
    assert "token_embd.weight" in q8 and "blk.0.attn_q.weight" in q8


def test_q8_0_greedy_decoding_agrees_up_to_near_ties(tiny_model, tokenizer, tmp_path: Path) -> None:
    """Greedy tokens of the Q8_0 model match the f32 model's, except where the f32 model's best two
    logits are closer than the quantisation error.

    The tiny random model has flat logits (the top two are often ~0.01 apart while Q8_0 moves logits
    by ~0.05), so exact equality of whole greedy sequences would test the seed, not the code. So the
    check is: logits agree within a tolerance, and each greedy choice of the Q8_0 model, scored
    by the f32 model on the same prefix, is within that tolerance of the f32 model's best.
    """
    write_release(tiny_model, tokenizer, tmp_path, "Q8_0")
    quant, _ = _load(tmp_path)
    ids, pixels = _prompt(tiny_model, tokenizer), _pixels(tiny_model.config)
    cfg = GenerationConfig(max_new_tokens=12)
    with torch.no_grad():
        ref_embeds, q_embeds = tiny_model.encode_images(pixels), quant.encode_images(pixels)
    ref_tokens = list(generate(tiny_model, ids, ref_embeds, cfg))
    q_tokens = list(generate(quant, ids, q_embeds, cfg))
    assert len(ref_tokens) == len(q_tokens) == 12

    n = len(ids)
    with torch.no_grad():
        ref = tiny_model(torch.tensor([ids + q_tokens]), image_embeds=ref_embeds)[0, n - 1:-1]
        got = quant(torch.tensor([ids + q_tokens]), image_embeds=q_embeds)[0, n - 1:-1]
    tol = 0.05 * ref.abs().max().item()
    assert (got - ref).abs().max().item() <= tol
    best = ref.max(dim=-1).values
    chosen = ref[torch.arange(len(q_tokens)), torch.tensor(q_tokens)]
    assert (chosen >= best - 2 * tol).all(), "a Q8_0 greedy choice is not a near-tie of the f32 best"
    # where the f32 model has a clear winner, the Q8_0 model picks it (checked along the shared prefix)
    for step, (a, b) in enumerate(zip(ref_tokens, q_tokens)):
        top2 = ref[step].topk(2).values
        if a != b:
            assert top2[0] - top2[1] < 2 * tol, f"step {step}: clear winner {a}, Q8_0 chose {b}"
            break


def test_untied_output_weight_round_trips(tiny_config, tokenizer, tmp_path: Path) -> None:
    model = _model(_variant(tiny_config, text__tie_word_embeddings=False))
    write_release(model, tokenizer, tmp_path, "F32")
    assert "output.weight" in GGUFFile.open(tmp_path / "omnivision-llm-F32.gguf").tensors
    loaded, _ = _load(tmp_path)
    assert loaded.config.text.tie_word_embeddings is False
    assert torch.equal(loaded.language.lm_head.weight, model.language.lm_head.weight)


# --- metadata, value types and tensor dtypes -----------------------------------------------------


def _types(reader: gguf.GGUFReader, key: str) -> list[GGUFValueType]:
    return list(reader.fields[key].types)


def test_mmproj_metadata_and_dtypes(tiny_model, tokenizer, tmp_path: Path) -> None:
    _, mm_path = write_release(tiny_model, tokenizer, tmp_path, "F16")
    f = GGUFFile.open(mm_path)
    cfg = tiny_model.config
    assert set(f.metadata) == MMPROJ_KEYS  # in particular no omnivision.* key for the official layout
    assert f.metadata["general.architecture"] == "siglip"
    assert f.metadata["general.description"] == "image encoder for omni-vlm"
    assert f.metadata["general.name"] == "omni-vlm"
    assert f.metadata["general.file_type"] == 1
    assert f.metadata["siglip.has_omni_vlm_projector"] is True
    assert f.metadata["siglip.vision.image_size"] == 84
    assert f.metadata["siglip.vision.patch_size"] == 14
    assert f.metadata["siglip.vision.embedding_length"] == 32
    assert f.metadata["siglip.vision.attention.head_count"] == 4
    assert f.metadata["siglip.vision.feed_forward_length"] == 64
    assert f.metadata["siglip.vision.block_count"] == 2
    assert f.metadata["siglip.vision.projection_dim"] == cfg.projector.hidden_size == 48
    assert f.metadata["siglip.vision.image_mean"] == [0.5, 0.5, 0.5]
    assert f.metadata["siglip.vision.image_std"] == [0.5, 0.5, 0.5]
    # clip.cpp reads the counts with get_u32 and the mean/std as f32 arrays
    reader = gguf.GGUFReader(mm_path)
    for key in ("general.file_type", "siglip.vision.image_size", "siglip.vision.block_count",
                "siglip.vision.projection_dim", "siglip.vision.attention.head_count"):
        assert _types(reader, key) == [GGUFValueType.UINT32], key
    assert _types(reader, "siglip.vision.image_mean") == [GGUFValueType.ARRAY, GGUFValueType.FLOAT32]
    assert _types(reader, "siglip.has_omni_vlm_projector") == [GGUFValueType.BOOL]

    types = {name: info.ggml_type.name for name, info in f.tensors.items()}
    shapes = {name: info.shape for name, info in f.tensors.items()}
    assert types["v.patch_embd.weight"] == "F16" and shapes["v.patch_embd.weight"] == (32, 3, 14, 14)
    assert types["v.patch_embd.bias"] == "F32"
    assert types["v.position_embd.weight"] == "F16" and shapes["v.position_embd.weight"] == (36, 32)
    assert shapes["v.head.probe"] == (32,) and types["v.head.probe"] == "F32"  # squeezed to 1-D
    assert types["v.head.attention.in_weight"] == "F32"  # the name does not end in ".weight"
    assert types["v.head.attention.in_bias"] == "F32"
    assert shapes["mm.0.weight"] == (48, 9 * 32) and types["mm.0.weight"] == "F16"
    assert types["mm.0.bias"] == "F32" and types["mm.2.bias"] == "F32"
    assert shapes["mm.2.weight"] == (64, 48) and types["mm.2.weight"] == "F16"
    assert shapes["v.blk.0.ffn_down.weight"] == (64, 32)  # ffn_down is SigLIP's fc1 (32 -> 64)
    assert shapes["v.blk.0.ffn_up.weight"] == (32, 64)
    assert {n.split(".")[2] for n in f.tensors if n.startswith("v.blk.")} == {"0", "1"}
    assert not any(n.startswith(("v.pre_ln", "v.class_embd")) for n in f.tensors)
    for name, info in f.tensors.items():
        if name == "v.head.attention.in_weight":
            continue
        half = len(info.shape) == 4 or (len(info.shape) == 2 and name.endswith(".weight"))
        assert info.ggml_type.name == ("F16" if half else "F32"), name


def test_mmproj_is_all_f32_in_f32_mode(tiny_model, tokenizer, tmp_path: Path) -> None:
    _, mm_path = write_release(tiny_model, tokenizer, tmp_path, "F32")
    f = GGUFFile.open(mm_path)
    assert f.metadata["general.file_type"] == 0
    assert {info.ggml_type.name for info in f.tensors.values()} == {"F32"}


@pytest.mark.parametrize("dtype, file_type, matrix_type", [("F32", 0, "F32"), ("F16", 1, "F16"),
                                                          ("Q8_0", 7, "Q8_0")])
def test_llm_metadata_and_dtypes(tiny_model, tokenizer, tmp_path: Path, dtype, file_type, matrix_type) -> None:
    llm_path, _ = write_release(tiny_model, tokenizer, tmp_path, dtype)
    f = GGUFFile.open(llm_path)
    t = tiny_model.config.text
    assert set(f.metadata) == LLM_KEYS
    assert f.metadata["general.architecture"] == "qwen2"
    assert f.metadata["general.file_type"] == file_type
    assert f.metadata["qwen2.block_count"] == t.num_layers
    assert f.metadata["qwen2.context_length"] == t.max_position_embeddings
    assert f.metadata["qwen2.embedding_length"] == t.hidden_size
    assert f.metadata["qwen2.feed_forward_length"] == t.intermediate_size
    assert f.metadata["qwen2.attention.head_count"] == t.num_heads
    assert f.metadata["qwen2.attention.head_count_kv"] == t.num_kv_heads
    assert f.metadata["qwen2.rope.freq_base"] == 1e6
    assert f.metadata["qwen2.attention.layer_norm_rms_epsilon"] == pytest.approx(1e-6)
    assert f.metadata["tokenizer.ggml.model"] == "gpt2" and f.metadata["tokenizer.ggml.pre"] == "qwen2"
    assert len(f.metadata["tokenizer.ggml.tokens"]) == t.vocab_size  # padded to the embedding rows
    assert f.metadata["tokenizer.ggml.eos_token_id"] == tokenizer.im_end_id
    reader = gguf.GGUFReader(llm_path)
    assert _types(reader, "qwen2.block_count") == [GGUFValueType.UINT32]
    assert _types(reader, "qwen2.rope.freq_base") == [GGUFValueType.FLOAT32]

    assert "output.weight" not in f.tensors  # tied embeddings
    assert f.tensors["token_embd.weight"].shape == (t.vocab_size, t.hidden_size)
    expected = {"token_embd.weight", "output_norm.weight"} | {
        f"blk.{i}.{s}" for i in range(t.num_layers) for s in (
            "attn_norm.weight", "attn_q.weight", "attn_q.bias", "attn_k.weight", "attn_k.bias",
            "attn_v.weight", "attn_v.bias", "attn_output.weight", "ffn_norm.weight",
            "ffn_gate.weight", "ffn_up.weight", "ffn_down.weight")}
    assert set(f.tensors) == expected
    for name, info in f.tensors.items():
        assert info.ggml_type.name == ("F32" if len(info.shape) == 1 else matrix_type), name


# --- omnivision.* keys for non-official settings ------------------------------------------------


@pytest.mark.parametrize("changes, key, value", [
    ({"projector__compression": "spatial3x3"}, "omnivision.projector.compression", "spatial3x3"),
    ({"projector__compression": "none"}, "omnivision.projector.compression", "none"),
    ({"processing__template": "omnivision-v1"}, "omnivision.template", "omnivision-v1"),
    ({"processing__system_prompt": "Be brief."}, "omnivision.system_prompt", "Be brief."),
    ({"processing__system_prompt": ""}, "omnivision.system_prompt", ""),  # the nano model's: no text
    ({"vision__layer_norm_eps": 1e-5}, "siglip.vision.attention.layer_norm_epsilon", 1e-5),
])
def test_non_official_settings_are_recorded_and_read_back(tiny_config, tokenizer, tmp_path: Path,
                                                         changes, key, value) -> None:
    config = _variant(tiny_config, **changes)
    model = _model(config)
    _, mm_path = write_release(model, tokenizer, tmp_path, "F32")
    f = GGUFFile.open(mm_path)
    extra = set(f.metadata) - MMPROJ_KEYS
    assert extra == {key}
    assert f.metadata[key] == pytest.approx(value) if isinstance(value, float) else f.metadata[key] == value
    loaded, _ = _load(tmp_path)
    assert loaded.config.projector == config.projector
    assert loaded.config.processing == config.processing
    assert loaded.config.vision.layer_norm_eps == pytest.approx(config.vision.layer_norm_eps)
    ids, pixels = _prompt(model, tokenizer), _pixels(config)
    assert torch.allclose(_logits(loaded, ids, pixels), _logits(model, ids, pixels), atol=1e-5)


def test_official_layout_writes_no_omnivision_key(tiny_model, tokenizer, tmp_path: Path) -> None:
    llm_path, mm_path = write_release(tiny_model, tokenizer, tmp_path, "Q8_0")
    for path in (llm_path, mm_path):
        assert not [k for k in GGUFFile.open(path).metadata if k.startswith("omnivision.")]
    loaded, _ = _load(tmp_path)
    assert loaded.config.projector.compression == "concat9"
    assert loaded.config.processing.template == "omnivision"


# --- image tokens from mm.0.weight --------------------------------------------------------------


def test_image_token_count_comes_from_mm0(tiny_config, tiny_model, tokenizer, tmp_path: Path) -> None:
    none_model = _model(_variant(tiny_config, projector__compression="none"))
    write_release(tiny_model, tokenizer, tmp_path / "concat9", "F32")
    write_release(none_model, tokenizer, tmp_path / "none", "F32")
    mm_concat = GGUFFile.open(tmp_path / "concat9" / "omnivision-mmproj-f32.gguf")
    mm_none = GGUFFile.open(tmp_path / "none" / "omnivision-mmproj-f32.gguf")
    assert mm_concat.tensors["mm.0.weight"].shape == (48, 288)
    assert mm_none.tensors["mm.0.weight"].shape == (48, 32)  # 9x fewer inputs
    assert _load(tmp_path / "concat9")[0].config.num_image_tokens == 4
    assert _load(tmp_path / "none")[0].config.num_image_tokens == 36

    # "none" is not official, so its key is written; without it the shape alone still says "none"
    assert mm_none.metadata["omnivision.projector.compression"] == "none"
    _rewrite(mm_none.path, drop={"omnivision.projector.compression"})
    files = find_release(tmp_path / "none")
    assert "omnivision.projector.compression" not in files.mmproj.metadata
    config = release_config(files.llm, files.mmproj, tokenizer)
    assert config.projector.compression == "none" and config.num_image_tokens == 36
    loaded, _ = load_release(files)
    ids, pixels = _prompt(none_model, tokenizer), _pixels(none_model.config)
    assert len(ids) > 36 and torch.equal(_logits(loaded, ids, pixels), _logits(none_model, ids, pixels))


def test_mm0_width_that_is_neither_1x_nor_9x_is_an_error(tiny_model, tokenizer, tmp_path: Path) -> None:
    _, mm_path = write_release(tiny_model, tokenizer, tmp_path, "F32")
    f = GGUFFile.open(mm_path)
    tensors = {name: (f.tensor(name), "F32") for name in f.tensors}
    tensors["mm.0.weight"] = (torch.zeros(48, 64), "F32")
    write_gguf(mm_path, "siglip", f.metadata, tensors)
    with pytest.raises(CheckpointError, match="mm.0.weight takes 64 inputs"):
        _load(tmp_path)


def test_missing_required_key_is_an_error(tiny_model, tokenizer, tmp_path: Path) -> None:
    _, mm_path = write_release(tiny_model, tokenizer, tmp_path, "F32")
    _rewrite(mm_path, drop={"siglip.vision.block_count"})
    with pytest.raises(CheckpointError, match="missing metadata key 'siglip.vision.block_count'"):
        _load(tmp_path)


@pytest.mark.parametrize("path_name, key", [
    ("omnivision-llm-F32.gguf", "qwen2.attention.layer_norm_rms_epsilon"),
    ("omnivision-llm-F32.gguf", "qwen2.rope.freq_base"),
    ("omnivision-llm-F32.gguf", "qwen2.block_count"),
])
def test_bool_where_a_number_belongs_is_an_error(tiny_model, tokenizer, tmp_path: Path, path_name, key) -> None:
    write_release(tiny_model, tokenizer, tmp_path, "F32")
    _rewrite(tmp_path / path_name, set_={key: True})
    with pytest.raises(CheckpointError, match=f"metadata key '{key}' has the wrong type \\(bool\\)"):
        _load(tmp_path)


def test_float32_keys_read_back_as_their_decimal_values(tiny_config, tokenizer, tmp_path: Path) -> None:
    # stored as float32: 1e-5 would otherwise come back as 9.999999747378752e-06
    config = _variant(tiny_config, text__rms_norm_eps=1e-5, text__rope_theta=10_000.0,
                      vision__layer_norm_eps=1e-5, processing__image_mean=(0.485, 0.456, 0.406))
    write_release(_model(config), tokenizer, tmp_path, "F32")
    loaded, _ = _load(tmp_path)
    assert loaded.config.text.rms_norm_eps == 1e-5
    assert loaded.config.text.rope_theta == 10_000.0
    assert loaded.config.vision.layer_norm_eps == 1e-5
    assert loaded.config.processing.image_mean == (0.485, 0.456, 0.406)
    assert loaded.config == config


# --- choosing the language-model file -----------------------------------------------------------


@pytest.fixture
def three_precisions(tiny_model, tokenizer, tmp_path: Path) -> Path:
    """One folder: F32, F16 and Q8_0 language-model files and the f16 mmproj."""
    combo = tmp_path / "combo"
    combo.mkdir()
    for dtype in ("F32", "F16", "Q8_0"):
        llm_path, mm_path = write_release(tiny_model, tokenizer, tmp_path / dtype, dtype)
        shutil.copy(llm_path, combo / llm_path.name)
    shutil.copy(tmp_path / "F16" / "omnivision-mmproj-f16.gguf", combo)
    shutil.copy(tmp_path / "F32" / "omnivision-mmproj-f32.gguf", tmp_path)  # kept aside
    return combo


def test_default_pick_is_the_highest_precision(three_precisions: Path) -> None:
    files = find_release(three_precisions)
    assert files.llm.path.name == "omnivision-llm-F32.gguf"
    assert files.mmproj.path.name == "omnivision-mmproj-f16.gguf"
    assert "highest precision" in files.note and "F32" in files.note


@pytest.mark.parametrize("asked", ["Q8_0", "q8_0"])
def test_gguf_type_picks_that_file(tiny_model, three_precisions: Path, asked: str) -> None:
    files = find_release(three_precisions, asked)
    assert files.llm.path.name == "omnivision-llm-Q8_0.gguf"
    assert "Q8_0" in files.note
    model, _ = load_release(files)
    emb = model.language.model.embed_tokens.weight
    reference = tiny_model.language.model.embed_tokens.weight
    assert not torch.equal(emb, reference) and torch.allclose(emb, reference, atol=0.01)


def test_gguf_type_that_is_absent_lists_what_is_present(three_precisions: Path) -> None:
    with pytest.raises(CheckpointError) as excinfo:
        find_release(three_precisions, "BF16")
    message = str(excinfo.value)
    assert "BF16" in message and "present: F16, F32, Q8_0" in message


def test_two_mmprojs_are_an_error(three_precisions: Path) -> None:
    shutil.copy(three_precisions.parent / "omnivision-mmproj-f32.gguf", three_precisions)
    with pytest.raises(CheckpointError, match="found 2"):
        find_release(three_precisions)


def test_no_mmproj_is_an_error(three_precisions: Path) -> None:
    (three_precisions / "omnivision-mmproj-f16.gguf").unlink()
    with pytest.raises(CheckpointError, match="found 0"):
        find_release(three_precisions)


def test_no_language_model_is_an_error(three_precisions: Path) -> None:
    for p in three_precisions.glob("omnivision-llm-*.gguf"):
        p.unlink()
    with pytest.raises(CheckpointError, match="general.architecture 'qwen2'"):
        find_release(three_precisions)
