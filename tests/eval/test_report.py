"""The report: every metric in results.json, our headline numbers (0-100) beside the published ones
with their sources in report.md, the published numbers as docs/published-numbers.md prints them
(the repository's own copy, read from this checkout), and the chart (skipped with a note without
matplotlib)."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from omnivision.eval import report

PUBLISHED_NUMBERS = Path(__file__).resolve().parents[2] / "docs" / "published-numbers.md"

TASKS = {
    "pope": {"status": "scored", "n": 10, "metrics": {"accuracy": 0.8, "f1_score": 0.75, "precision": 0.6,
                                                        "random": {"accuracy": 0.9, "n": 5}}},
    "chartqa": {"status": "scored", "n": 8, "metrics": {"relaxed_overall": 0.625, "n": 8}},
    "mmmu_val": {"status": "scored", "n": 4, "images_dropped": 3,
                 "metrics": {"overall": 0.25, "random_fallbacks": 2}},
    "mmvet": {"status": "unscored", "n": 2, "reason": "no judge given (--judge-url)",
              "predictions": "out/mmvet/predictions.jsonl"},
}
META = {"model": {"backend": "local", "source": "ckpt/nano"}, "convention": "lmms-eval", "limit": 10,
        "created": "2026-01-01T00:00:00+00:00"}


def row(text: str, benchmark: str, label: str) -> list[str]:
    line = next(l for l in text.splitlines() if l.startswith(f"| {benchmark} | {label} |"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_results_json_and_markdown(tmp_path):
    results = report.build_results(TASKS, META)
    written = report.write_report(results, tmp_path)
    saved = json.loads(written["results"].read_text())
    assert saved["tasks"] == TASKS and saved["metadata"] == META  # every metric, nested ones too
    text = written["markdown"].read_text()
    header = [c.strip() for c in text.splitlines()[4].strip("|").split("|")]
    assert header == ["Benchmark", "Metric", "Ours", "n", "OmniVision-968M v1", "OmniVision v2",
                      "nanoLLaVA 1.0"]
    # ours on the 0-100 scale, beside the cells as published
    assert row(text, "POPE", "accuracy") == ["POPE", "accuracy", "80.0", "10", "89.4", "93.3", "84.1"]
    assert row(text, "POPE", "F1")[2] == "75.0"
    assert row(text, "ChartQA", "relaxed accuracy (test)")[2:] == ["62.5", "8", "59.2 (test)", "61.9", "–"]
    assert row(text, "MMMU", "accuracy (val)")[2:] == ["25.0", "4", "41.8 test / 39.9 val", "42.1 / 40.0",
                                                       "28.6 / 30.4"]
    assert row(text, "MM-Vet", "GPT-judge score")[2] == "unscored"
    assert "| ScienceQA |" not in text  # not run
    for url in ("https://huggingface.co/NexaAIDev/OmniVLM-968M/commit/"
                "a55214f73af83de3410d88ee01e2b93c1acb07f6",
                "https://huggingface.co/menglc/SliMM-Qwen2-0.5B/commit/"
                "cc16ea5f693c26f1e4103f5ce03c642347ba6795",
                "https://huggingface.co/qnguyen3/nanoLLaVA/blob/main/README.md"):
        assert url in text
    assert "mmvet: unscored (no judge given (--judge-url)); 2 predictions kept" in text
    assert "mmmu_val: 3 of 4 samples have several images" in text
    assert "mmmu_val: 2 multiple-choice answers had no readable letter" in text
    assert "first 10 samples per task" in text
    # every task, not only the headline benchmarks, with its top-level numbers
    assert "| pope | scored | accuracy 0.8, f1_score 0.75, precision 0.6 |" in text
    assert "| mmmu_val | scored | overall 0.25, random_fallbacks 2 |" in text
    assert "| mmvet | unscored | - |" in text


def test_headline_values_for_the_chart():
    rows = {(r["benchmark"], r["metric"]): r for r in report.headline_rows(TASKS)}
    mmmu = rows[("MMMU", "overall")]
    # the chart compares our val figure with each card's val figure
    assert mmmu["ours"] == 25.0
    assert {m: p["value"] for m, p in mmmu["published"].items()} == {
        "OmniVision-968M v1": 39.9, "OmniVision v2": 40.0, "nanoLLaVA 1.0": 30.4}
    assert rows[("ChartQA", "relaxed_overall")]["published"]["nanoLLaVA 1.0"]["value"] is None
    assert rows[("ScienceQA", "exact_match")]["status"] == "not run"


def test_published_cells_are_those_of_the_docs():
    assert PUBLISHED_NUMBERS.is_file(), f"{PUBLISHED_NUMBERS} is missing from the repository"
    text = PUBLISHED_NUMBERS.read_text(encoding="utf-8")
    table = text[text.index("## 1. The table"):text.index("## 2. Sources")]
    header = next(l for l in table.splitlines() if l.startswith("| Model |"))
    assert [c.strip() for c in header.strip("|").split("|")] == [
        "Model", "MM-Vet", "ChartQA", "MMMU", "ScienceQA", "POPE", "Source"]
    sources = text[text.index("## 2. Sources"):]
    for published in report.PUBLISHED:
        rows = [l for l in table.splitlines() if l.startswith(f"| {published.model} |")]
        assert len(rows) == 1, f"no single row for {published.model} in {PUBLISHED_NUMBERS.name}"
        cells = [c.strip() for c in rows[0].strip("|").split("|")]
        assert cells[1:6] == [published.cells[b] for b in ("MM-Vet", "ChartQA", "MMMU", "ScienceQA", "POPE")]
        tag = re.fullmatch(r"\[\w+\]", cells[6]).group(0)
        assert published.source.startswith(tag + " ")
        url = published.source.split()[1]
        entry = sources[sources.index(f"**{tag}**"):]
        entry = entry[:entry.find("\n- **", 1) if "\n- **" in entry[1:] else len(entry)]
        assert url in entry, f"{tag}: {url} is not in its entry of {PUBLISHED_NUMBERS.name}"


def test_chart_is_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "report.png"
    assert report.bar_chart(report.build_results(TASKS, META), path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_no_matplotlib_no_chart(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)  # import fails
    written = report.write_report(report.build_results(TASKS, META), tmp_path)
    assert "chart" not in written and not (tmp_path / "report.png").exists()
    assert written["markdown"].is_file()
    assert "matplotlib is not installed" in capsys.readouterr().err


def test_earlier_entries_are_kept_and_marked():
    previous = report.build_results(TASKS, META)
    chart = {"status": "scored", "n": 3, "created": "2026-02-02T00:00:00+00:00",
             "metrics": {"relaxed_overall": 1.0, "n": 3}}
    merged = report.build_results({"chartqa": chart}, {**META, "created": chart["created"]}, previous)
    assert list(merged["tasks"]) == ["pope", "chartqa", "mmmu_val", "mmvet"]  # earlier order kept
    assert merged["tasks"]["chartqa"] == chart and merged["tasks"]["pope"] == TASKS["pope"]
    old = {**TASKS["pope"], "created": META["created"]}
    text = report.markdown(report.build_results({"chartqa": chart}, {**META, "created": chart["created"]},
                                                {"tasks": {"pope": old}}))
    assert "- pope: from an earlier run (2026-01-01T00:00:00+00:00)." in text
    assert "chartqa: from an earlier run" not in text


def test_unreadable_earlier_results_are_reported(tmp_path):
    assert report.read_results(tmp_path) is None
    (tmp_path / "results.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="results.json: not a results file"):
        report.read_results(tmp_path)


def test_notes_for_judge_failures_fallbacks_unknown_splits_and_empty_tasks():
    tasks = {"mmvet": {"status": "scored", "n": 4, "metrics": {"total": 50.0,
                                                               "failures": {"unparsed": 2, "error": 1}}},
             "mmmu_val": {"status": "scored", "n": 4, "metrics": {"overall": 0.5, "wrong_fallbacks": 3}},
             "chartqa": {"status": "scored", "n": 5, "metrics": {"relaxed_overall": 0.2, "unknown_type": 5}},
             "pope": {"status": "empty", "n": 0, "reason": "no samples in this run"}}
    text = report.markdown(report.build_results(tasks, META))
    assert ("- mmvet: judge failures, each scored 0.0: 2 grades without a usable score, 1 endpoint "
            "errors.") in text
    assert "- mmmu_val: 3 multiple-choice answers had no readable letter and were scored wrong." in text
    assert "- chartqa: 5 samples have no split type" in text
    assert "- pope: no samples in this run" in text and row(text, "POPE", "accuracy")[2] == "empty"
