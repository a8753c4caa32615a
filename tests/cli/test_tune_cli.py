"""`omnivision tune`: every bf16 product shape of the bundled model gets a kernel per row bucket,
kept on disk and reused by the next run; with timing turned off it is a one-line error."""

from __future__ import annotations

import json
import re

import pytest
import torch

from omnivision.cli.main import main
from omnivision.kernels.choices import CACHE_ENV, TUNING_ENV
from omnivision.model import linear as linear_module
from omnivision.model.linear import ROW_BUCKETS


@pytest.fixture(autouse=True)
def _threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_tune_chooses_every_shape_once_and_remembers(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(TUNING_ENV, "on")
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "choices.json"))
    monkeypatch.setattr(linear_module, "_chosen", {})
    assert main(["tune", "--threads", "1"]) == 0
    first = capsys.readouterr().out
    rows = [line for line in first.splitlines() if re.match(r"\s*\d+x\d+ ", line)]
    stored = json.loads((tmp_path / "choices.json").read_text())
    stored = {k: v for k, v in stored.items() if "/bf16-few-rows/" in k}
    assert len(stored) == len(rows) > 0 and len(rows) % len(ROW_BUCKETS) == 0
    kernels = {"F.linear", "weight-major", "compiled-dot", "dense-kernel"}
    assert {entry["choice"] for entry in stored.values()} <= kernels
    monkeypatch.setattr(linear_module, "_chosen", {})  # a new process
    assert main(["tune", "--threads", "1"]) == 0
    assert capsys.readouterr().out.count("remembered from an earlier run") == len(rows)


def test_tune_also_makes_the_vision_towers_choices(tmp_path, monkeypatch, capsys):
    from omnivision.model import attention as attention_module

    monkeypatch.setenv(TUNING_ENV, "on")
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "choices.json"))
    monkeypatch.setattr(attention_module, "MIN_TOKENS", 1)  # the nano tower's few tokens count as many
    monkeypatch.setattr(attention_module, "_chosen", {})
    assert main(["tune", "--threads", "1"]) == 0
    (line,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("vision tower")]
    assert re.match(r"vision tower attention-bf16/h\d+/n\d+/d\d+: (sdpa|sdpa-fp32|bf16-products) "
                    r"\(sdpa \d+, sdpa-fp32 \d+, bf16-products \d+\)", line)


def _tune_quantized(scheme: str, chosen_in, tmp_path, monkeypatch, capsys) -> str:
    """`omnivision tune` on the bundled model quantized to `scheme`, timing on, with the module
    `chosen_in`'s choices of this process forgotten; its output."""
    from omnivision.loader import BUNDLED

    quantized = tmp_path / scheme
    assert main(["quantize", str(BUNDLED), str(quantized), "--scheme", scheme]) == 0
    monkeypatch.setenv(TUNING_ENV, "on")
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "choices.json"))
    monkeypatch.setattr(chosen_in, "_chosen", {})
    capsys.readouterr()
    assert main(["tune", "--model", str(quantized), "--threads", "1"]) == 0
    return capsys.readouterr().out


def test_tune_makes_a_quantized_decoders_one_row_choices(tmp_path, monkeypatch, capsys):
    from omnivision.quantize import int8_linear

    out = _tune_quantized("int8", int8_linear, tmp_path, monkeypatch, capsys)
    lines = [line for line in out.splitlines() if line.startswith("decoder, one token")]
    shapes = {re.search(r"int8-one-row/(\d+x\d+):", line).group(1) for line in lines}
    assert lines and all(re.search(r": (int8pack_mm|compiled-dot) \(", line) for line in lines)
    assert len(shapes) == len(lines)  # each shape timed once


def test_tune_makes_a_quantized_decoders_many_row_choices(tmp_path, monkeypatch, capsys):
    """Prompts of each bucket's length: the group-wise int8 products on many rows, timed once per
    shape and bucket against the few-row kernel run on all rows."""
    from omnivision.quantize import many_rows

    out = _tune_quantized("int8-g32", many_rows, tmp_path, monkeypatch, capsys)
    for tokens in (many_rows.MID_TIMED_ROWS, many_rows.MANY_TIMED_ROWS):
        lines = [line for line in out.splitlines() if line.startswith(f"decoder, {tokens} tokens")]
        assert lines and all(re.search(rf"int8-g32-many-rows/\d+x\d+/bfloat16/rows={tokens}: (dequantised|q8-kernel) "
                                       r"\(dequantised \d+, q8-kernel \d+\)", line) for line in lines), out


def test_tune_with_timing_off_is_an_error(monkeypatch, capsys):
    monkeypatch.setenv(TUNING_ENV, "off")
    assert main(["tune"]) == 2
    assert "OMNIVISION_KERNEL_TUNING=off" in capsys.readouterr().err
