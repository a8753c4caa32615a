"""write_gguf: round trips through GGUFFile, agreement with gguf.GGUFReader, input errors, atomicity."""

from __future__ import annotations

import os
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, GGUFValueType

from omnivision.weights.gguf_file import GGUFFile
from omnivision.weights.gguf_write import write_gguf


def _rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_f32_round_trip_is_exact(tmp_path: Path) -> None:
    tensors = {"a": _rand(3, 5), "b": _rand(7, seed=1), "c": _rand(2, 3, 4, seed=2), "d": _rand(2, 1, 3, 4, seed=3)}
    path = tmp_path / "m.gguf"
    write_gguf(path, "test", {}, {k: (v, "F32") for k, v in tensors.items()})
    f = GGUFFile.open(path)
    assert list(f.tensors) == list(tensors)
    for name, expected in tensors.items():
        info = f.tensors[name]
        assert info.ggml_type == GGMLQuantizationType.F32
        assert info.shape == tuple(expected.shape)
        assert info.nbytes == expected.numel() * 4
        assert info.offset % 32 == 0
        got = f.tensor(name)
        assert got.dtype == torch.float32 and torch.equal(got, expected)


def test_tensor_result_owns_its_memory(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    write_gguf(path, "test", {}, {"a": (torch.ones(4), "F32")})
    f = GGUFFile.open(path)
    t = f.tensor("a")
    t.add_(1)  # would crash or corrupt if it aliased the read-only mapping
    assert torch.equal(f.tensor("a"), torch.ones(4))
    assert not f.raw("a").flags.writeable


def test_f16_round_trip_is_exact_for_f16_values(tmp_path: Path) -> None:
    values = _rand(4, 64).half()
    path = tmp_path / "m.gguf"
    write_gguf(path, "test", {}, {"w": (values.float(), "F16"), "w_np": (values.numpy(), "F16")})
    f = GGUFFile.open(path)
    assert f.tensors["w"].ggml_type == GGMLQuantizationType.F16
    assert f.tensors["w"].nbytes == values.numel() * 2
    assert torch.equal(f.tensor("w", dtype=torch.float16), values)
    assert torch.equal(f.tensor("w_np"), values.float())
    assert torch.equal(f.tensor("w", dtype=torch.bfloat16), values.to(torch.bfloat16))


def test_q8_0_round_trip_error_is_bounded(tmp_path: Path) -> None:
    values = _rand(16, 96) * torch.linspace(0.01, 10, 16)[:, None]  # rows of very different scales
    path = tmp_path / "m.gguf"
    write_gguf(path, "test", {}, {"q": (values, "Q8_0")})
    f = GGUFFile.open(path)
    info = f.tensors["q"]
    assert info.ggml_type == GGMLQuantizationType.Q8_0
    assert info.shape == (16, 96)
    assert info.nbytes == 16 * (96 // 32) * 34
    got = f.tensor("q")
    blocks, got_blocks = values.reshape(-1, 32), got.reshape(-1, 32)
    # each block stores q = round(x / d), |q| <= 127, with d = max|block| / 127; d is then stored as
    # f16 (relative error <= 2**-11), so |q * d16 - x| <= d / 2 + 127 * d * 2**-11
    d = blocks.abs().amax(dim=1, keepdim=True) / 127
    bound = d * (0.5 + 127 * 2**-11) + 1e-7
    assert ((got_blocks - blocks).abs() <= bound).all()
    assert not torch.equal(got, values)  # it really was quantised


@pytest.mark.parametrize(
    ("shape", "why"), [((64,), "2-D"), ((4, 33), "multiple of 32"), ((2, 2, 32), "2-D")]
)
def test_q8_0_rejects_unsuitable_shapes(tmp_path: Path, shape: tuple[int, ...], why: str) -> None:
    with pytest.raises(ValueError, match=why):
        write_gguf(tmp_path / "m.gguf", "test", {}, {"q": (torch.zeros(shape), "Q8_0")})
    assert list(tmp_path.iterdir()) == []


def test_metadata_round_trip(tmp_path: Path) -> None:
    metadata = {
        "test.name": "omni",
        "test.empty": "",
        "test.unicode": "héllo ✓ 世界",
        "test.count": 24,
        "test.big": 2**40,
        "test.negative": -5,
        "test.eps": 1e-6,
        "test.flag_on": True,
        "test.flag_off": False,
        "test.tokens": ["<|im_start|>", "Ġhello", "", "世"],
        "test.mean": [0.5, 0.25, 0.125],
        "test.types": [1, -2, 3],
        "test.bools": [True, False],
        "test.f64": np.float64(0.1),
        "test.u8_array": np.array([1, 2, 255], dtype=np.uint8),
    }
    path = tmp_path / "m.gguf"
    write_gguf(path, "qwen2", metadata, {"x": (torch.zeros(2), "F32")})
    got = GGUFFile.open(path).metadata
    assert got["general.architecture"] == "qwen2"
    for key, value in metadata.items():
        if key == "test.eps":
            assert got[key] == pytest.approx(1e-6, rel=1e-6)  # stored as FLOAT32
        elif isinstance(value, np.ndarray):
            assert got[key] == value.tolist()
        else:
            assert got[key] == value, key
            assert type(got[key]) is type(value if not isinstance(value, np.generic) else value.item()), key


def test_metadata_value_types_match_llama_cpp_expectations(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    metadata = {
        "qwen2.block_count": 24,
        "big": 2**40,
        "neg": -1,
        "eps": 1e-6,
        "flag": True,
        "s": "x",
        "strs": ["a", "b"],
        "floats": [0.5, 1],
        "ints": [1, 2],
        "wide_ints": [1, 2**40],
        "exact": np.int16(-3),
    }
    write_gguf(path, "qwen2", metadata, {})
    fields = gguf.GGUFReader(path).fields
    assert fields["general.architecture"].types == [GGUFValueType.STRING]
    expected = {
        "qwen2.block_count": [GGUFValueType.UINT32],
        "big": [GGUFValueType.INT64],
        "neg": [GGUFValueType.INT64],
        "eps": [GGUFValueType.FLOAT32],
        "flag": [GGUFValueType.BOOL],
        "s": [GGUFValueType.STRING],
        "strs": [GGUFValueType.ARRAY, GGUFValueType.STRING],
        "floats": [GGUFValueType.ARRAY, GGUFValueType.FLOAT32],
        "ints": [GGUFValueType.ARRAY, GGUFValueType.INT32],
        "wide_ints": [GGUFValueType.ARRAY, GGUFValueType.INT64],
        "exact": [GGUFValueType.INT16],
    }
    for key, types in expected.items():
        assert fields[key].types == types, key
    assert GGUFFile.open(path).metadata["floats"] == [0.5, 1.0]


def test_cross_check_with_gguf_reader(tmp_path: Path) -> None:
    tensors = {
        "token_embd.weight": (_rand(10, 64), "Q8_0"),
        "blk.0.attn_q.weight": (_rand(64, 64, seed=1), "F16"),
        "blk.0.attn_q.bias": (_rand(64, seed=2), "F32"),
        "v.patch_embd.weight": (_rand(8, 3, 2, 2, seed=3), "F16"),
    }
    path = tmp_path / "m.gguf"
    write_gguf(path, "test", {"general.alignment": 64, "test.n": 3}, tensors)
    ours = GGUFFile.open(path)
    reader = gguf.GGUFReader(path)
    assert ours.alignment == 64 and ours.metadata["general.alignment"] == 64
    assert [t.name for t in reader.tensors] == list(ours.tensors) == list(tensors)
    for rt in reader.tensors:
        info = ours.tensors[rt.name]
        assert info.shape == tuple(int(d) for d in reversed(rt.shape))
        assert info.ggml_type == rt.tensor_type
        assert info.offset == rt.data_offset and info.offset % 64 == 0
        assert info.nbytes == rt.n_bytes
        assert np.array_equal(ours.raw(rt.name), rt.data.view(np.uint8).reshape(-1))
        expected = gguf.quants.dequantize(rt.data, rt.tensor_type)
        assert torch.equal(ours.tensor(rt.name), torch.from_numpy(expected.copy()).reshape(info.shape))


def test_architecture_key_is_not_duplicated(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    write_gguf(path, "siglip", {"general.architecture": "siglip"}, {})
    reader = gguf.GGUFReader(path)
    assert [k for k in reader.fields if k == "general.architecture"] == ["general.architecture"]
    assert GGUFFile.open(path).architecture == "siglip"
    with pytest.raises(ValueError, match="contradicts"):
        write_gguf(path, "siglip", {"general.architecture": "clip"}, {})


@pytest.mark.parametrize(
    ("metadata", "tensors", "why"),
    [
        ({"k": []}, {}, "empty"),
        ({"k": [1, "a"]}, {}, "only strings"),
        ({"k": {"a": 1}}, {}, "unsupported value type"),
        ({"k": 2**70}, {}, "64 bits"),
        ({"general.alignment": 48}, {}, "power of two"),
        ({}, {"t": (torch.zeros(2), "Q2_K")}, "unsupported target type"),
        ({}, {"t": (torch.zeros(()), "F32")}, "dimensions"),
        ({}, {"t": (torch.zeros(0, 3), "F32")}, "dimensions"),
        ({}, {"t": (torch.zeros(1, 1, 1, 1, 1), "F32")}, "dimensions"),
        ({}, {"t": ([1.0], "F32")}, "expected a torch.Tensor"),
    ],
)
def test_bad_input_raises_value_error(tmp_path: Path, metadata: dict, tensors: dict, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        write_gguf(tmp_path / "m.gguf", "test", metadata, tensors)
    assert list(tmp_path.iterdir()) == []


def test_write_replaces_atomically_and_leaves_no_temp_files(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    write_gguf(path, "test", {}, {"a": (torch.ones(3), "F32")})
    write_gguf(path, "test", {}, {"a": (torch.full((3,), 2.0), "F32")})
    assert [p.name for p in tmp_path.iterdir()] == ["m.gguf"]
    assert torch.equal(GGUFFile.open(path).tensor("a"), torch.full((3,), 2.0))
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # an ordinary file, not a private temp file's mode


def test_failed_write_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "m.gguf"
    write_gguf(path, "test", {}, {"a": (torch.ones(3), "F32")})
    before = path.read_bytes()

    def boom(self: gguf.GGUFWriter, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", boom)
    with pytest.raises(OSError, match="disk full"):
        write_gguf(path, "test", {}, {"a": (torch.zeros(3), "F32")})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.gguf"]
