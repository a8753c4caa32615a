"""GGUF Q4_0 / Q8_0 language models loaded straight into int4 / int8 layers (`keep_quantized`).

Q4_0 and Q8_0 must give bit-identical dequantised weights to the GGUF reader's own dequantisation
(Q8_0 into groups of 32; where the group-wise kernel cannot be built, regrouped per row, each
weight moving by at most half the row's new scale). Both must answer like the dequantised load,
and the conversion must not build a float copy of the whole model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, quants
from PIL import Image

from omnivision.loader import load
from omnivision.processing.byte_tokenizer import byte_level_tokenizer
from omnivision.quantize.embedding import QuantizedEmbedding
from omnivision.quantize.int4_linear import Int4Linear
from omnivision.quantize.int8_group_linear import Int8GroupLinear
from omnivision.quantize.int8_linear import Int8Linear
from omnivision.weights.errors import CheckpointError
from omnivision.weights.gguf_file import GGUFFile
from omnivision.weights.gguf_quantized import q4_0_to_int4, q8_0_to_int8, q8_0_to_int8_groups
from omnivision.weights.release_write import write_release


def _weights(rows: int = 6, cols: int = 96) -> np.ndarray:
    rng = np.random.default_rng(0)
    w = rng.normal(size=(rows, cols)).astype(np.float32)
    w[1] *= 40  # rows of very different ranges: per-row scales differ
    w[2, 5:37] = 0  # an all-zero block
    return w


def test_q4_0_blocks_become_exactly_the_same_int4_weights() -> None:
    w = _weights()
    raw = quants.quantize(w, GGMLQuantizationType.Q4_0)
    layer = Int4Linear(96, 6, group_size=32, bias=False)
    for name, value in q4_0_to_int4(raw, 6, 96).items():
        getattr(layer, name).copy_(value)
    expected = quants.dequantize(raw, GGMLQuantizationType.Q4_0)
    assert torch.equal(layer.dequantize(torch.float32), torch.from_numpy(expected))


def test_q8_0_blocks_are_regrouped_per_row_within_half_a_step() -> None:
    w = _weights()
    raw = quants.quantize(w, GGMLQuantizationType.Q8_0)
    buffers = q8_0_to_int8(raw, 6, 96)
    layer = Int8Linear(96, 6, bias=False)
    layer.qweight.copy_(buffers["qweight"])
    layer.scales.copy_(buffers["scales"])
    expected = torch.from_numpy(quants.dequantize(raw, GGMLQuantizationType.Q8_0))
    error = (layer.dequantize(torch.float32) - expected).abs()
    assert (error <= buffers["scales"][:, None] / 2 + 1e-6).all()
    assert torch.allclose(buffers["scales"], expected.abs().amax(dim=1) / 127)


def test_q8_0_blocks_become_exactly_the_same_group_wise_weights() -> None:
    w = _weights()
    raw = quants.quantize(w, GGMLQuantizationType.Q8_0)
    buffers, exact = q8_0_to_int8_groups(raw, 6, 96)
    layer = Int8GroupLinear(96, 6, bias=False)
    layer.qweight.copy_(buffers["qweight"])
    layer.scales.copy_(buffers["scales"])
    assert exact
    assert torch.equal(layer.dequantize(torch.float32), torch.from_numpy(quants.dequantize(raw, GGMLQuantizationType.Q8_0)))


def test_a_q8_0_code_of_minus_128_is_clamped_and_not_called_exact() -> None:
    raw = quants.quantize(_weights(), GGMLQuantizationType.Q8_0).copy()
    raw.reshape(6, 3, 34)[0, 0, 2] = np.uint8(128)  # the first code of the first block: -128
    buffers, exact = q8_0_to_int8_groups(raw, 6, 96)
    assert not exact and buffers["qweight"][0, 0] == -127


@pytest.mark.parametrize("ggml_type,layer_type,kernel", [("Q4_0", Int4Linear, True), ("Q8_0", Int8GroupLinear, True),
                                                         ("Q8_0", Int8Linear, False)])
def test_a_release_loads_into_quantized_layers_and_answers_alike(tiny_model, tmp_path: Path, ggml_type,
                                                                 layer_type, kernel, monkeypatch) -> None:
    if not kernel:  # a machine where the group-wise kernel cannot be built
        monkeypatch.setattr("omnivision.kernels.cpp_build.q8_linear", lambda: None)
    tokenizer = byte_level_tokenizer()
    write_release(tiny_model, tokenizer, tmp_path, ggml_type)
    plain = load(tmp_path, dtype="float32")
    kept = load(tmp_path, dtype="float32", keep_quantized=True)
    layers = [m for n, m in kept.model.language.named_modules() if isinstance(m, layer_type)]
    # q k v o gate up down in every layer, and the tied embedding / head (written in the same type)
    assert len(layers) == 7 * tiny_model.config.text.num_layers + 1
    assert isinstance(kept.model.language.model.embed_tokens, QuantizedEmbedding)
    ids = torch.tensor([[3, 40, 7]])
    assert torch.allclose(kept.model.language.embed(ids), plain.model.language.embed(ids),
                          atol=float(kept.model.language.model.embed_tokens.table.scales.max()))
    assert kept.model.quantization.parts == ("language",)
    assert ggml_type in kept.note
    q_proj = kept.model.language.model.layers[0].self_attn.q_proj
    reference = plain.model.language.model.layers[0].self_attn.q_proj.weight
    if layer_type is not Int8Linear:
        assert torch.equal(q_proj.dequantize(torch.float32), reference)
    else:
        assert (q_proj.dequantize(torch.float32) - reference).abs().max() <= q_proj.scales.max() / 2 + 1e-6
    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (84, 84, 3), dtype=np.uint8))
    ids, _ = plain.prompt_ids("What is in the picture?", image)
    pixels = plain.image_processor([image])
    with torch.inference_mode():
        want = plain.model(torch.tensor([ids]), pixel_values=pixels)[0, -1]
        got = kept.model(torch.tensor([ids]), pixel_values=pixels)[0, -1]
    assert (got - want).abs().max() < 0.05 * want.abs().max()


def test_keeping_needs_a_q8_0_or_q4_0_file(tiny_model, tmp_path: Path) -> None:
    write_release(tiny_model, byte_level_tokenizer(), tmp_path, "F16")
    with pytest.raises(CheckpointError, match="Q8_0 or Q4_0 .* F16"):
        load(tmp_path, keep_quantized=True)


def test_the_file_is_not_changed_by_loading(tiny_model, tmp_path: Path) -> None:
    llm, _ = write_release(tiny_model, byte_level_tokenizer(), tmp_path, "Q4_0")
    before = llm.read_bytes()
    vlm = load(tmp_path, keep_quantized=True)
    vlm.model.language.model.layers[0].mlp.up_proj.qweight.zero_()  # a private copy, never the file
    assert llm.read_bytes() == before
    assert GGUFFile.open(llm).tensors["blk.0.ffn_up.weight"].ggml_type.name == "Q4_0"


def test_a_head_of_another_type_stays_full_precision(tiny_model, tmp_path: Path) -> None:
    from omnivision.weights.gguf_write import write_gguf

    llm, _ = write_release(tiny_model, byte_level_tokenizer(), tmp_path, "Q4_0")
    f = GGUFFile.open(llm)
    tensors = {name: (f.tensor(name), "F16" if name == "token_embd.weight" else info.ggml_type.name)
               for name, info in f.tensors.items()}  # as llama.cpp's mixes keep the head finer
    write_gguf(llm, f.architecture, dict(f.metadata), tensors)
    kept = load(tmp_path, dtype="float32", keep_quantized=True)
    assert isinstance(kept.model.language.model.embed_tokens, torch.nn.Embedding)
    assert isinstance(kept.model.language.model.layers[0].mlp.up_proj, Int4Linear)
