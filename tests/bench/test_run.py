"""`bench.run`: the plan refuses a llama.cpp folder without the package, and the machine record says
which precision is the unquantized baseline, and the kernels are chosen for every checkpoint of ours."""

from __future__ import annotations

import pytest
import torch

from omnivision.bench import run
from omnivision.bench.run import Plan, machine
from omnivision.loader import resolve_dtype


def test_a_llama_cpp_folder_must_hold_the_package(tmp_path):
    with pytest.raises(ValueError, match="holds no llama_cpp package"):
        Plan(llama_cpp_dir=tmp_path)
    (tmp_path / "llama_cpp").mkdir()
    assert Plan(llama_cpp_dir=tmp_path).llama_cpp_dir == tmp_path


def test_a_llama_cpp_folder_counts_as_installed(tmp_path, monkeypatch):
    monkeypatch.setitem(run.PEER_PACKAGES, "llama.cpp", "no_such_package_here")
    assert not run._installed("llama.cpp", Plan())
    (tmp_path / "llama_cpp").mkdir()
    assert run._installed("llama.cpp", Plan(llama_cpp_dir=tmp_path))


def test_the_machine_record_names_the_default_precision(monkeypatch):
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    record = machine()
    assert record["default_precision"] == ("bf16" if resolve_dtype("auto") == torch.bfloat16 else "fp32")
    assert record["onednn_max_isa"] == "AVX2"


def test_kernels_are_chosen_for_fp32_checkpoints_too(monkeypatch):
    asked = []
    monkeypatch.setattr(run, "_run_worker", lambda spec, timeout_s: asked.append(spec) or {"chosen": 1})
    specs = [dict(impl="ours", precision="fp32", path="a", work={}),
             dict(impl="transformers", precision="fp32", work={})]
    assert run._choose_kernels(specs, Plan(), lambda line: None) == {"chosen": 1}
    assert [(s["impl"], s["paths"], s["precisions"]) for s in asked] == [("tune", ["a"], ["fp32"])]
    # nothing of ours measured: no worker
    assert run._choose_kernels(specs[1:], Plan(), lambda line: None) == {} and len(asked) == 1
