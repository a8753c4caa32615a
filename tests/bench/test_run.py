"""`bench.run`: the plan refuses a llama.cpp folder without the package, and the machine record says
which precision is the unquantized baseline."""

from __future__ import annotations

import pytest
import torch

from omnivision.bench.run import Plan, machine
from omnivision.loader import resolve_dtype


def test_a_llama_cpp_folder_must_hold_the_package(tmp_path):
    with pytest.raises(ValueError, match="holds no llama_cpp package"):
        Plan(llama_cpp_dir=tmp_path)
    (tmp_path / "llama_cpp").mkdir()
    assert Plan(llama_cpp_dir=tmp_path).llama_cpp_dir == tmp_path


def test_the_machine_record_names_the_default_precision(monkeypatch):
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    record = machine()
    assert record["default_precision"] == ("bf16" if resolve_dtype("auto") == torch.bfloat16 else "fp32")
    assert record["onednn_max_isa"] == "AVX2"
