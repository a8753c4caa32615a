"""`omnivision bench` end to end on the tiny preset: every phase measured, in worker processes, with
transformers beside it; JSON, PNG and the table agree; a missing peer package is reported as skipped."""

from __future__ import annotations

import json

import pytest

from omnivision.bench import run as bench_run
from omnivision.cli.main import main

PHASES = ("preprocess_ms", "vision_ms", "projector_ms", "prefill_ms", "ttft_ms", "ttft_uncompressed_ms",
          "ttft_repeat_ms", "decode_tok_s", "e2e_ms", "answer_peak_rss_mb", "peak_rss_mb")


@pytest.mark.long
def test_bench_on_the_tiny_preset(tmp_path, capsys, monkeypatch) -> None:
    pytest.importorskip("transformers")
    monkeypatch.setitem(bench_run.PEER_PACKAGES, "llama.cpp", "no_such_package_here")
    code = main(["bench", "--preset", "tiny", "--precisions", "bf16,int4", "--runs", "1", "--decode-tokens", "4",
                 "--answer-tokens", "3", "--threads", "1", "--against", "transformers", "--against", "llama.cpp",
                 "--workdir", str(tmp_path / "work"), "--json", str(tmp_path / "b.json"),
                 "--png", str(tmp_path / "b.png")])
    out = capsys.readouterr().out
    assert code == 0, out
    doc = json.loads((tmp_path / "b.json").read_text())
    rows = {(r["impl"], r["precision"]): r for r in doc["results"]}
    assert set(rows) == {("ours", "bf16"), ("ours", "int4"), ("transformers", "bf16"), ("llama.cpp", "-")}
    for precision in ("bf16", "int4"):
        row = rows[("ours", precision)]
        assert all(row[k] > 0 for k in PHASES), row
        assert f"| ours {precision} | {row['preprocess_ms']:.1f} |" in out
    assert rows[("transformers", "bf16")]["decode_tok_s"] > 0
    assert "no_such_package_here is not installed" in rows[("llama.cpp", "-")]["skipped"]
    targets = {t["target"] for t in doc["targets"]}
    assert "TTFT bf16 / transformers bf16" in targets and "peak memory answering once, int4 (MB)" in targets
    assert doc["workload"] == {"runs": 1, "decode_tokens": 4, "answer_tokens": 3, "threads": 1}
    # the kernels were chosen before any measurement, for every bf16 shape bucket of the model
    bf16 = {key: kernel for key, kernel in doc["kernels"].items() if "/rows<=" in key}
    assert bf16 and set(bf16.values()) <= {"F.linear", "weight-major", "compiled-dot", "dense-kernel"}
    assert "Few-row bf16 kernels chosen on this machine" in out
    # and the int4 checkpoint's one-row products (tests run with timing off: the project's kernel)
    int4 = {key: kernel for key, kernel in doc["kernels"].items() if key.startswith("int4 ")}
    assert int4 and set(int4.values()) == {"q4-kernel"} and "int4 products (decoding): rows=1 " in out
    # the machine is named with the features that decide kernel speed
    assert doc["machine"]["torch_cpu_capability"] in out and "CPU features:" in out
    assert set(doc["machine"]["cpu_flags"]) <= set(bench_run.SPEED_FLAGS)
    # decode is put against the bandwidth bound of the machine
    assert doc["machine"]["read_bandwidth_gbs"] > 0
    assert rows[("ours", "int4")]["decode_bytes_per_token"] < rows[("ours", "bf16")]["decode_bytes_per_token"]
    assert "Decode against the memory bound" in out and "ours int4 " in out.split("memory bound")[1]
    assert (tmp_path / "b.png").read_bytes()[:4] == b"\x89PNG"
    # the prepared checkpoints are kept and reused
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == ["v5-tiny-seed0-bf16", "v5-tiny-seed0-int4"]


@pytest.mark.parametrize("argv,message", [
    (["--precisions", "fp8"], "precisions must be among"),
    (["--runs", "0"], "must be >= 1"),
])
def test_bad_settings_are_one_line_errors(tmp_path, capsys, argv, message) -> None:
    code = main(["bench", "--preset", "tiny", "--workdir", str(tmp_path), *argv])
    assert code == 2
    assert message in capsys.readouterr().err
