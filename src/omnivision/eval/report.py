"""The report of a benchmark run: `results.json` (every metric of every task, and the run's
metadata), `report.md` (our headline numbers beside the published ones of OmniVision-968M v1,
OmniVision v2 and nanoLLaVA, with their sources) and `report.png` (the same as a bar chart; skipped
with a note when matplotlib, the `plots` extra, is missing).

A run writes into a folder that earlier runs may have written to: `build_results` keeps the entries
of tasks this run did not touch (from the previous results.json) and replaces those it did, so a
rerun with fewer tasks loses nothing; each entry carries the time of the run that made it.

The published numbers are those of the table in docs/published-numbers.md (section 1), each cell
as printed there, with its source (section 2). Splits, prompts and scoring tools differ between
them and from ours, so the comparison is indicative. Our headline numbers are on a 0-100 scale.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from omnivision.json_files import write_json

RESULTS_NAME, MARKDOWN_NAME, CHART_NAME = "results.json", "report.md", "report.png"


@dataclass(frozen=True)
class Headline:
    """One row of the comparison: a metric of one of our tasks, scaled to 0-100."""

    benchmark: str
    task: str
    metric: str
    label: str
    scale: float = 100.0

    def value(self, entry: Mapping) -> float | None:
        metrics = entry.get("metrics") or {}
        value = metrics.get(self.metric)
        return None if value is None else float(value) * self.scale


HEADLINES = (
    Headline("MM-Vet", "mmvet", "total", "GPT-judge score", scale=1.0),  # already 0-100
    Headline("ChartQA", "chartqa", "relaxed_overall", "relaxed accuracy (test)"),
    Headline("MMMU", "mmmu_val", "overall", "accuracy (val)"),
    Headline("ScienceQA", "scienceqa_img", "exact_match", "accuracy (IMG test)"),
    Headline("POPE", "pope", "accuracy", "accuracy"),
    Headline("POPE", "pope", "f1_score", "F1"),
)


@dataclass(frozen=True)
class Published:
    model: str
    source: str
    """The source's tag in docs/published-numbers.md and the address it resolves to."""
    cells: Mapping[str, str]
    """Benchmark -> the cell as printed in the table ("–" where none is given)."""
    values: Mapping[str, float]
    """Benchmark -> the number on the split we measure, where the cell gives one."""


PUBLISHED = (
    Published("OmniVision-968M v1",
              "[N6] https://huggingface.co/NexaAIDev/OmniVLM-968M/commit/"
              "a55214f73af83de3410d88ee01e2b93c1acb07f6 (vendor model card)",
              {"MM-Vet": "27.5", "ChartQA": "59.2 (test)", "MMMU": "41.8 test / 39.9 val",
               "ScienceQA": "64.5 test / 62.2 val", "POPE": "89.4"},
              {"MM-Vet": 27.5, "ChartQA": 59.2, "MMMU": 39.9, "ScienceQA": 64.5, "POPE": 89.4}),
    Published("OmniVision v2",
              "[N8] https://huggingface.co/menglc/SliMM-Qwen2-0.5B/commit/"
              "cc16ea5f693c26f1e4103f5ce03c642347ba6795 (third-party card quoting the numbers)",
              {"MM-Vet": "30.9", "ChartQA": "61.9", "MMMU": "42.1 / 40.0", "ScienceQA": "71.0",
               "POPE": "93.3"},
              # MMMU: the second figure, read as val like the v1 row's "test / val"
              {"MM-Vet": 30.9, "ChartQA": 61.9, "MMMU": 40.0, "ScienceQA": 71.0, "POPE": 93.3}),
    Published("nanoLLaVA 1.0",
              "[B2] https://huggingface.co/qnguyen3/nanoLLaVA/blob/main/README.md (model card)",
              {"MM-Vet": "23.9", "ChartQA": "–", "MMMU": "28.6 / 30.4", "ScienceQA": "59.0",
               "POPE": "84.1"},
              {"MM-Vet": 23.9, "MMMU": 30.4, "ScienceQA": 59.0, "POPE": 84.1}),
)

NOTES = (
    "Published numbers: the table of docs/published-numbers.md in the omnivision repository, cells "
    "as printed there. Splits, prompts and scoring tools differ, so the comparison is indicative.",
    "POPE: the cards give one number without saying whether it is accuracy or F1, so it stands "
    "beside both.",
    "MMMU: our figure is the validation split; the chart compares it with each card's val figure "
    "(the second of \"test / val\").",
    "ScienceQA: ours is lmms-eval's scienceqa_img (image questions, test split); the chart uses each "
    "card's test or only figure.",
)


def read_results(out_dir: Path) -> dict | None:
    """The results.json an earlier run left in `out_dir`, or None when there is none."""
    path = Path(out_dir) / RESULTS_NAME
    if not path.exists():
        return None
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read the earlier results ({e}); move it away to start "
                         f"a new report") from None
    if not isinstance(results, dict) or not isinstance(results.get("tasks"), dict):
        raise ValueError(f"{path}: not a results file (no 'tasks' object); move it away to start "
                         f"a new report")
    return results


def build_results(tasks: Mapping[str, dict], metadata: dict, previous: dict | None = None) -> dict:
    """The contents of results.json: the metadata of this run, each task's entry (those of
    `previous` results that this run did not redo kept, in their order) and the headline rows."""
    merged = {**(previous or {}).get("tasks", {}), **tasks}
    return {"metadata": metadata, "tasks": merged, "headline": headline_rows(merged)}


def headline_rows(tasks: Mapping[str, dict]) -> list[dict]:
    rows = []
    for h in HEADLINES:
        entry = tasks.get(h.task)
        status = "not run" if entry is None else entry.get("status", "unscored")
        rows.append({"benchmark": h.benchmark, "task": h.task, "metric": h.metric, "label": h.label,
                     "ours": None if entry is None else h.value(entry), "status": status,
                     "n": None if entry is None else entry.get("n"),
                     "published": {p.model: {"cell": p.cells.get(h.benchmark, "–"),
                                             "value": p.values.get(h.benchmark)} for p in PUBLISHED}})
    return rows


def _ours(row: dict) -> str:
    if row["ours"] is not None:
        return f"{row['ours']:.1f}"
    return row["status"]


def markdown(results: dict) -> str:
    meta = results["metadata"]
    model = meta.get("model", {})
    who = model.get("source") or model.get("model") or model.get("backend", "model")
    limit = meta.get("limit")
    lines = [f"# Benchmark results: {who}", "",
             f"Scoring rules: {meta.get('convention')}; "
             + (f"first {limit} samples per task" if limit is not None else "all samples")
             + f"; {meta.get('created')}.", "",
             "| Benchmark | Metric | Ours | n | " + " | ".join(p.model for p in PUBLISHED) + " |",
             "|---|---|---|---|" + "---|" * len(PUBLISHED)]
    for row in results["headline"]:
        if row["status"] == "not run":
            continue
        cells = [row["published"][p.model]["cell"] for p in PUBLISHED]
        lines.append(f"| {row['benchmark']} | {row['label']} | {_ours(row)} | {row['n']} | "
                     + " | ".join(cells) + " |")
    lines += ["", "Every task (scalar metrics as scored; per-strategy, per-type and per-subject tables are "
              "in results.json):", "", "| Task | Status | Metrics |", "|---|---|---|"]
    lines += [f"| {name} | {entry['status']} | {_scalars(entry.get('metrics'))} |"
              for name, entry in results["tasks"].items()]
    lines += ["", "Sources:", ""] + [f"- {p.model}: {p.source}" for p in PUBLISHED]
    lines += ["", "Notes:", ""] + [f"- {n}" for n in NOTES] + _task_notes(results["tasks"],
                                                                         meta.get("created"))
    return "\n".join(lines) + "\n"


def _scalars(metrics: Mapping | None) -> str:
    """The top-level numbers of a task's metrics, `name value` joined by commas."""
    items = [(k, v) for k, v in (metrics or {}).items() if isinstance(v, (int, float))]
    return ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in items) or "-"


def _task_notes(tasks: Mapping[str, dict], created: str | None) -> list[str]:
    notes = []
    for name, entry in tasks.items():
        notes += [f"- {name}: {note}" for note in _entry_notes(entry)]
        if entry.get("created") and entry["created"] != created:
            notes.append(f"- {name}: from an earlier run ({entry['created']}).")
    return notes


_COUNT_NOTES = (
    ("images_dropped", "{count} of {n} samples have several images; the model was shown the first only."),
    ("random_fallbacks", "{count} multiple-choice answers had no readable letter and got a random one "
                         "(seeded by the sample id)."),
    ("wrong_fallbacks", "{count} multiple-choice answers had no readable letter and were scored wrong."),
    ("unknown_type", "{count} samples have no split type (the data names no human/augmented split): "
                     "they count in the overall figure only."),
)
"""Counts worth a note when not zero, found in a task's entry or in its metrics."""


def _entry_notes(entry: Mapping) -> list[str]:
    metrics = entry.get("metrics") or {}
    notes = []
    if entry.get("status") == "empty":
        notes.append("no samples in this run (a limit of 0), so no figures.")
    elif entry.get("status") != "scored":
        notes.append(f"unscored ({entry.get('reason', 'no score')}); {entry.get('n')} predictions "
                     f"kept in {entry.get('predictions')}.")
    if entry.get("submission"):
        notes.append(f"submission file for the MMMU evaluation server: {entry['submission']}.")
    for key, text in _COUNT_NOTES:
        count = entry.get(key) or metrics.get(key)
        if count:
            notes.append(text.format(count=count, n=entry.get("n")))
    failures = metrics.get("failures")
    if isinstance(failures, dict):
        notes.append(f"judge failures, each scored 0.0: {failures.get('unparsed', 0)} grades without "
                     f"a usable score, {failures.get('error', 0)} endpoint errors.")
    return notes


def bar_chart(results: dict, path: Path) -> bool:
    """Grouped bars per headline row, ours beside the published values; False (with a note on
    stderr) when matplotlib is not installed."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        print("note: matplotlib is not installed (pip install 'omnivision[plots]'): no "
              f"{path.name} chart", file=sys.stderr)
        return False
    rows = [r for r in results["headline"] if r["status"] != "not run"]
    series = [("ours", [r["ours"] for r in rows])]
    series += [(p.model, [r["published"][p.model]["value"] for r in rows]) for p in PUBLISHED]
    fig = Figure(figsize=(max(6.0, 1.6 * len(rows) + 2), 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    width = 0.8 / len(series)
    for k, (name, values) in enumerate(series):
        xs = [i + (k - (len(series) - 1) / 2) * width for i, v in enumerate(values) if v is not None]
        ax.bar(xs, [v for v in values if v is not None], width, label=name)
    ax.set_xticks(range(len(rows)), [f"{r['benchmark']}\n{r['label']}" for r in rows], fontsize=8)
    ax.set_ylabel("score (0-100)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return True


def write_report(results: dict, out_dir: Path) -> dict[str, Path]:
    """Write results.json, report.md and (with matplotlib) report.png; returns the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {"results": out_dir / RESULTS_NAME, "markdown": out_dir / MARKDOWN_NAME}
    write_json(written["results"], results)
    written["markdown"].write_text(markdown(results), encoding="utf-8")
    if bar_chart(results, out_dir / CHART_NAME):
        written["chart"] = out_dir / CHART_NAME
    return written
