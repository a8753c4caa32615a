"""save_aligned: a valid safetensors file, every 64-byte-multiple tensor starting on a 64-byte boundary."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from omnivision.weights.safetensors_check import check_safetensors
from omnivision.weights.safetensors_write import ALIGNMENT, save_aligned


def _state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "a.weight": torch.randn(96, 32, generator=g).bfloat16(),  # 6144 bytes, aligned
        "a.bias": torch.randn(7, generator=g),  # 28 bytes, odd
        "b.codes": torch.randint(-128, 127, (64, 3), generator=g, dtype=torch.int8),  # 192 bytes
        "c.half": torch.randn(5, 3, generator=g).half(),
        "d.scalar": torch.tensor(3.5, dtype=torch.float64),
        "e.empty": torch.zeros(0, 4),
        "f.mask": torch.tensor([True, False, True]),
        "g.ids": torch.arange(16, dtype=torch.int64),  # 128 bytes
        "h.view": torch.randn(8, 16, generator=g).t(),  # non-contiguous input
    }


def _offsets(path: Path) -> dict[str, int]:
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    return {k: 8 + n + v["data_offsets"][0] for k, v in header.items() if k != "__metadata__"}


def test_round_trip_through_the_safetensors_package(tmp_path: Path) -> None:
    state = _state()
    path = tmp_path / "w.safetensors"
    save_aligned(state, path, metadata={"format": "pt", "step": 3})
    check_safetensors(path)
    back = load_file(path)
    assert set(back) == set(state)
    for name, tensor in state.items():
        assert back[name].dtype == tensor.dtype and torch.equal(back[name], tensor), name
    with safe_open(path, framework="pt") as f:
        assert f.metadata() == {"format": "pt", "step": "3"}


def test_tensors_of_64_byte_multiples_start_aligned(tmp_path: Path) -> None:
    state = _state()
    path = tmp_path / "w.safetensors"
    save_aligned(state, path)
    offsets = _offsets(path)
    sized = [k for k, t in state.items() if t.numel() * t.element_size() % ALIGNMENT == 0]
    assert {"a.weight", "b.codes", "g.ids"} <= set(sized)
    for name in sized:
        assert offsets[name] % ALIGNMENT == 0, name


def test_refuses_what_the_format_cannot_hold(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'z'.*complex"):
        save_aligned({"z": torch.zeros(2, dtype=torch.complex64)}, tmp_path / "w.safetensors")
    assert not (tmp_path / "w.safetensors").exists()
