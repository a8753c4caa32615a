"""The nano recipe's measured proof as a Markdown table: one row per stage, from `report.json`.

Columns: overall answer accuracy and each question type, overall accuracy with each question asked
second in a conversation, POPE-style accuracy and F1 for each negative-sampling strategy, and the
share of caption object mentions that name an absent object.
"""

from __future__ import annotations

from typing import Any

STAGE_NAMES = {"1-align": "stage 1 (align)", "2-sft": "stage 2 (SFT)", "3-dpo": "stage 3 (DPO)"}
STRATEGIES = ("random", "popular", "adversarial")


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def markdown_table(report: dict[str, Any]) -> str:
    """The per-stage table of a nano `report.json` (numbers in percent)."""
    stages = report["stages"]
    qtypes = sorted({k for s in stages.values() for k in s["qa"] if k != "overall"})
    head = (["after", "QA overall"] + [f"QA {q}" for q in qtypes] + ["QA overall, asked second"]
            + [f"POPE {s} acc / F1" for s in STRATEGIES] + ["absent objects in captions"])
    rows = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for key, scores in stages.items():
        qa, pope = scores["qa"], scores["pope"]
        cells = [STAGE_NAMES.get(key, key), _pct(qa["overall"])] + [_pct(qa[q]) for q in qtypes]
        second = scores.get("qa_second_turn")  # reports written before it was measured lack it
        cells.append(_pct(second["overall"]) if second else "-")
        cells += [f"{_pct(pope[s]['accuracy'])} / {_pct(pope[s]['f1'])}" for s in STRATEGIES]
        cells.append(_pct(scores["absent_objects"]["object_rate"]))
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"
