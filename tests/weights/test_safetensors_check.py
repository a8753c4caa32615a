"""check_safetensors: accepts what the safetensors library writes, rejects malformed headers in one line."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from omnivision.weights.errors import CheckpointError
from omnivision.weights.safetensors_check import check_safetensors


def raw_file(
    tmp_path: Path, header: Any, data: bytes, *, header_bytes: bytes | None = None, length: int | None = None
) -> Path:
    body = json.dumps(header).encode() if header_bytes is None else header_bytes
    path = tmp_path / "t.safetensors"
    path.write_bytes(struct.pack("<Q", len(body) if length is None else length) + body + data)
    return path


def expect_error(path: Path, *phrases: str) -> None:
    with pytest.raises(CheckpointError) as excinfo:
        check_safetensors(path)
    message = str(excinfo.value)
    assert "\n" not in message and message.startswith(f"{path}: ")
    for phrase in phrases:
        assert phrase in message, message


def entry(dtype: str, shape: list[int], begin: int, end: int) -> dict[str, Any]:
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


def test_accepts_a_file_written_by_safetensors(tmp_path: Path) -> None:
    tensors = {
        "a": torch.zeros(3, 4),
        "b": torch.ones(5, dtype=torch.float16),
        "c": torch.zeros(2, 2, dtype=torch.bfloat16),
        "d": torch.zeros(0, 7),
        "e": torch.tensor([True, False]),
        "f": torch.zeros(1, dtype=torch.int64),
    }
    path = tmp_path / "m.safetensors"
    save_file(tensors, path, metadata={"format": "pt"})
    header = check_safetensors(path)
    assert set(header) == set(tensors)  # __metadata__ dropped
    assert header["a"]["dtype"] == "F32" and header["a"]["shape"] == [3, 4]
    assert header["b"]["dtype"] == "F16" and header["c"]["dtype"] == "BF16" and header["e"]["dtype"] == "BOOL"
    begin, end = header["a"]["data_offsets"]
    assert end - begin == 48
    assert header["d"]["shape"] == [0, 7] and header["d"]["data_offsets"][0] == header["d"]["data_offsets"][1]


def test_sub_byte_dtype(tmp_path: Path) -> None:
    assert check_safetensors(raw_file(tmp_path, {"a": entry("F4", [4], 0, 2)}, b"\0\0"))["a"]["dtype"] == "F4"
    expect_error(raw_file(tmp_path, {"a": entry("F4", [3], 0, 2)}, b"\0\0"), "do not fill whole bytes")


def test_too_short(tmp_path: Path) -> None:
    path = tmp_path / "t.safetensors"
    path.write_bytes(b"\x01\x02\x03")
    expect_error(path, "3 bytes", "at least 8")


def test_header_length_over_limit(tmp_path: Path) -> None:
    expect_error(raw_file(tmp_path, {}, b"", length=2**63), "header length 9223372036854775808", "over the limit")
    expect_error(raw_file(tmp_path, {}, b"", length=100 * 2**20 + 1), "over the limit")


def test_header_length_past_end_of_file(tmp_path: Path) -> None:
    expect_error(raw_file(tmp_path, {}, b"", length=1000), "header length 1000 runs past the end of the file")


def test_header_not_json(tmp_path: Path) -> None:
    expect_error(raw_file(tmp_path, None, b"", header_bytes=b"{not json"), "not valid JSON")
    expect_error(raw_file(tmp_path, None, b"", header_bytes=b'{"a": \xff}'), "not valid UTF-8")
    expect_error(raw_file(tmp_path, None, b"", header_bytes=b"[" * 100_000), "not valid JSON")


def test_header_not_an_object(tmp_path: Path) -> None:
    expect_error(raw_file(tmp_path, [1, 2], b""), "JSON list, not an object")


def test_duplicate_keys(tmp_path: Path) -> None:
    one = b'{"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}'
    body = b'{"a": ' + one + b', "a": ' + one + b"}"
    expect_error(raw_file(tmp_path, None, b"\0", header_bytes=body), "duplicate key 'a'")


def test_metadata_must_map_strings_to_strings(tmp_path: Path) -> None:
    ok = {"__metadata__": {"format": "pt"}, "a": entry("U8", [1], 0, 1)}
    assert list(check_safetensors(raw_file(tmp_path, ok, b"\0"))) == ["a"]
    expect_error(raw_file(tmp_path, {"__metadata__": {"k": 1}}, b""), "__metadata__")
    expect_error(raw_file(tmp_path, {"__metadata__": ["x"]}, b""), "__metadata__")


@pytest.mark.parametrize(
    ("bad_entry", "phrase"),
    [
        ("nope", "entry is not an object"),
        ({"shape": [1], "data_offsets": [0, 4]}, "missing 'dtype'"),
        ({"dtype": "F32", "data_offsets": [0, 4]}, "missing 'shape'"),
        ({"dtype": "F32", "shape": [1]}, "missing 'data_offsets'"),
        (entry("F128", [1], 0, 4), "unknown dtype 'F128'"),
        ({"dtype": 3, "shape": [1], "data_offsets": [0, 4]}, "unknown dtype 3"),
        (entry("F32", [-1], 0, 4), "not a list of non-negative integers"),
        (entry("F32", [1.0], 0, 4), "not a list of non-negative integers"),
        (entry("F32", [True], 0, 4), "not a list of non-negative integers"),
        ({"dtype": "F32", "shape": 1, "data_offsets": [0, 4]}, "not a list of non-negative integers"),
        ({"dtype": "F32", "shape": [1], "data_offsets": [0]}, "is not [begin, end]"),
        ({"dtype": "F32", "shape": [1], "data_offsets": [0, "4"]}, "is not [begin, end]"),
        (entry("F32", [1], 4, 0), "not 0 <= begin <= end"),
        (entry("F32", [1], -4, 0), "not 0 <= begin <= end"),
        (entry("F32", [2], 0, 4), "hold 4 bytes, but shape [2] of F32 needs 8"),
        (entry("F32", [2**40, 2**40], 0, 4), "needs 4835703278458516698824704"),
        (entry("F32", [4], 0, 16), "data runs past the end of the file"),
    ],
)
def test_bad_entries(tmp_path: Path, bad_entry: Any, phrase: str) -> None:
    expect_error(raw_file(tmp_path, {"t": bad_entry}, b"\0" * 4), "'t'", phrase)


def test_overlapping_tensors(tmp_path: Path) -> None:
    header = {"a": entry("F32", [2], 0, 8), "b": entry("F32", [1], 4, 8)}
    expect_error(raw_file(tmp_path, header, b"\0" * 8), "'a' and 'b' overlap")


def test_gap_between_tensors(tmp_path: Path) -> None:
    header = {"a": entry("F32", [1], 0, 4), "b": entry("F32", [1], 8, 12)}
    expect_error(raw_file(tmp_path, header, b"\0" * 12), "gap of 4 unused bytes before tensor 'b'")


def test_trailing_bytes(tmp_path: Path) -> None:
    expect_error(raw_file(tmp_path, {"a": entry("F32", [1], 0, 4)}, b"\0" * 9), "5 trailing bytes")


def test_unreadable_path(tmp_path: Path) -> None:
    expect_error(tmp_path / "missing.safetensors", "cannot read")
