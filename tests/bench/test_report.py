"""The benchmark's targets are the issue's ratios, worked from a results document made by hand."""

from __future__ import annotations

import json

import pytest

from omnivision.bench import report


def _doc(**changes) -> dict:
    rows = [
        {"impl": "ours", "precision": "bf16", "preprocess_ms": 5.0, "vision_ms": 400.0, "projector_ms": 10.0,
         "prefill_ms": 100.0, "ttft_ms": 520.0, "ttft_uncompressed_ms": 1500.0, "decode_tok_s": 20.0,
         "e2e_ms": 3700.0, "answer_peak_rss_mb": 1900.0, "peak_rss_mb": 2300.0, "prompt_tokens": 111},
        {"impl": "ours", "precision": "int8", "preprocess_ms": 5.0, "vision_ms": 500.0, "projector_ms": 10.0,
         "prefill_ms": 150.0, "ttft_ms": 670.0, "decode_tok_s": 30.0, "e2e_ms": 2800.0, "answer_peak_rss_mb": 1100.0,
         "peak_rss_mb": 1200.0},
        {"impl": "ours", "precision": "int4", "preprocess_ms": 5.0, "vision_ms": 500.0, "projector_ms": 10.0,
         "prefill_ms": 150.0, "ttft_ms": 670.0, "decode_tok_s": 40.0, "e2e_ms": 2250.0, "answer_peak_rss_mb": 850.0,
         "peak_rss_mb": 900.0},
        {"impl": "transformers", "precision": "bf16", "preprocess_ms": 8.0, "vision_ms": 700.0,
         "projector_ms": 12.0, "prefill_ms": 160.0, "ttft_ms": 1000.0, "decode_tok_s": 10.0, "e2e_ms": 7300.0,
         "peak_rss_mb": 2500.0},
        {"impl": "llama.cpp", "precision": "Q8_0", "prefill_ms": 400.0, "decode_tok_s": 45.0},
        {"impl": "llama.cpp", "precision": "Q4_0", "prefill_ms": 380.0, "decode_tok_s": 63.0},
        {"impl": "ours", "precision": "fp32", "error": "out of memory"},
        {"impl": "ours", "precision": "int4-lm", "preprocess_ms": 5.0, "vision_ms": 400.0, "projector_ms": 10.0,
         "prefill_ms": 150.0, "ttft_ms": 570.0, "decode_tok_s": 40.0, "e2e_ms": 2150.0, "answer_peak_rss_mb": 1300.0,
         "peak_rss_mb": 1500.0},
    ]
    doc = {"results": rows, "workload": {"answer_tokens": 64, "runs": 5, "threads": 2}, "preset": "p",
           "machine": {"cpu": "cpu", "logical_cpus": 2, "torch_threads": 2, "versions": {"torch": "x"}}}
    doc.update(changes)
    return doc


def _by_name(doc: dict) -> dict:
    return {t["target"]: t for t in report.targets(doc)}


def test_ratios_are_worked_from_the_same_run() -> None:
    t = _by_name(_doc())
    # ours' fastest end to end is int4-lm (2150 ms); transformers 7300 ms
    assert t["end to end vs transformers (speed-up)"]["value"] == pytest.approx(7300 / 2150, abs=1e-3)
    # best mix: transformers 8 + 700 + 12 ms, then llama.cpp Q4_0 380 ms + 63 tokens at 63 tok/s
    mix = 8 + 700 + 12 + 380 + 63 / 63 * 1000
    assert t["end to end vs best peer mix (speed-up)"]["value"] == pytest.approx(mix / 2150, abs=1e-3)
    assert t["TTFT bf16 / transformers bf16"]["value"] == pytest.approx(0.52)
    assert t["TTFT bf16 / transformers bf16"]["met"]  # 0.52 <= 0.6
    assert t["vision bf16 speed-up over transformers"]["value"] == pytest.approx(1.75)
    assert t["decode bf16 / transformers bf16"]["value"] == pytest.approx(2.0)
    assert t["decode int8 / llama.cpp Q8_0"]["value"] == pytest.approx(30 / 45, abs=1e-3)
    assert not t["decode int8 / llama.cpp Q8_0"]["met"]
    assert t["decode int4 / llama.cpp Q4_0"]["value"] == pytest.approx(40 / 63, abs=1e-3)
    # the quantized prefills (150 ms against bf16's 100) are the phases that gain least; int4 named first
    slowest = t["slowest quantized phase vs bf16 (speed-up)"]
    assert slowest["value"] == pytest.approx(100 / 150, abs=1e-3) and slowest["detail"] == "int4 prefill_ms"
    assert not slowest["met"]
    # memory: the one-answer peak, not the whole benchmark process's
    memory = t["peak memory answering once, int4 (MB)"]
    assert memory["value"] == 850.0 and memory["met"] and "int8 1100" in memory["detail"]


def test_missing_peers_give_fewer_targets_and_failures_show_in_the_table() -> None:
    doc = _doc()
    doc["results"] = [r for r in doc["results"] if r["impl"] == "ours"]
    names = set(_by_name(doc))
    assert names == {"peak memory answering once, int4 (MB)", "slowest quantized phase vs bf16 (speed-up)"}
    text = report.table(doc)
    assert "| ours fp32 | failed: out of memory |" in text
    assert "| ours bf16 | 5.0 | 400.0 | 10.0 | 100.0 | 520.0 | 1500.0 | - | 20.0 | 3700.0 | 1900.0 | 2300.0 |" in text


def test_json_holds_results_and_targets(tmp_path) -> None:
    report.write_json(_doc(), tmp_path / "b.json")
    data = json.loads((tmp_path / "b.json").read_text())
    assert len(data["results"]) == 8 and len(data["targets"]) == 9


def test_the_llama_cpp_build_is_printed_under_the_table() -> None:
    doc = _doc()
    for row in doc["results"]:
        if row["impl"] == "llama.cpp":
            row["system_info"] = "CPU : AVX2 = 1 | AVX512 = 1 | AVX512_VNNI = 1 | REPACK = 1 |"
    text = report.table(doc)
    assert text.count("llama.cpp build: CPU : AVX2 = 1 | AVX512 = 1") == 1  # once, not per row
    assert "llama.cpp build" not in report.table(_doc())


def test_the_vision_tower_is_put_against_openvino() -> None:
    doc = _doc()
    doc["results"].append({"impl": "openvino", "precision": "bf16", "vision_ms": 500.0, "peak_rss_mb": 900.0})
    target = _by_name(doc)["vision bf16 speed-up over OpenVINO bf16"]
    assert target["value"] == pytest.approx(500 / 400) and target["met"]
    assert "| openvino bf16 | - | 500.0 |" in report.table(doc)


def test_on_a_machine_without_native_bf16_the_targets_are_against_fp32() -> None:
    doc = _doc()
    rows = [r for r in doc["results"] if r["precision"] not in ("bf16", "fp32")]
    rows.append({**_doc()["results"][0], "precision": "fp32", "ttft_ms": 900.0, "decode_tok_s": 8.0})
    rows.append({**_doc()["results"][3], "precision": "fp32", "ttft_ms": 1800.0, "decode_tok_s": 5.0})
    doc.update(results=rows, machine={**doc["machine"], "default_precision": "fp32",
                                      "cpu_flags": ["avx2", "fma"], "torch_cpu_capability": "AVX2",
                                      "onednn_max_isa": "AVX2"})
    t = _by_name(doc)
    assert not any("bf16" in name for name in t)
    assert t["TTFT fp32 / transformers fp32"]["value"] == pytest.approx(0.5)
    assert t["decode fp32 / transformers fp32"]["value"] == pytest.approx(1.6)
    # int4 prefill 150 ms against fp32's 100: the quantized phases are held to the fp32 ones
    assert t["slowest quantized phase vs fp32 (speed-up)"]["value"] == pytest.approx(100 / 150, abs=1e-3)
    assert "oneDNN up to AVX2; unquantized precision fp32" in report.table(doc)


def test_the_kernel_choices_are_summed_up_under_the_table() -> None:
    kernels = {"896x896/rows<=1": "compiled-dot", "896x896/rows<=16": "F.linear",
               "4864x896/rows<=1": "compiled-dot", "vision attention h16/n729/d72": "sdpa",
               "int8 one-row 4864x896": "compiled-dot", "int8 many-rows 4304x1152": "int8-activations",
               "int4 rows=1 4864x896/g128": "q4-kernel", "int4 rows=8 896x4864/g128": "torch-int4",
               "many-rows int4 4864x896/g128/rows=128": "dequantised"}
    text = report.table(_doc(kernels=kernels))
    assert ("Quantized products on many rows (prompts, the vision tower, the projector): "
            "int4 4864x896/g128/rows=128: dequantised.") in text
    assert "int4 products (decoding): rows=1 4864x896/g128: q4-kernel; rows=8 896x4864/g128: torch-int4." in text
    assert "F.linear for 1 of 3 shape buckets, compiled-dot for 2 of 3 shape buckets" in text
    assert "Vision tower choices: attention h16/n729/d72: sdpa." in text
    assert "one-row 4864x896: compiled-dot; many-rows 4304x1152: int8-activations." in text
    # fp32 choices (keys named so) have a line of their own
    both = report.table(_doc(kernels={**kernels, "fp32 896x896/rows<=1": "compiled-dot"}))
    assert "Few-row fp32 kernels chosen on this machine: compiled-dot for 1 of 1 shape buckets." in both
    assert "Few-row bf16 kernels chosen on this machine: F.linear for 1 of 3 shape buckets" in both
    # without few-row choices there is no few-row line
    fp32_only = report.table(_doc(kernels={"int8 one-row 4864x896": "int8pack_mm"}))
    assert "Few-row" not in fp32_only and "one-row 4864x896: int8pack_mm." in fp32_only
