"""MM-Vet scores from the judge's grades, and the names the runner and the CLI use for MM-Vet
(the grader prompt from `mmvet_prompt`, the judge from `mmvet_judge`).

Aggregation follows the official evaluator on the 0-100 scale: per run, the total is the mean
score x 100, and a capability's score is the mean over the samples that have it (for MM-Vet's
comma lists this is the same grouping as lmms-eval's substring test). Reported values are the mean
over runs, and `std` is the population std of the run totals (numpy's default, as the official
evaluator uses). Nothing is rounded here; the official tables round to 1 decimal. Grades that fell
back to 0.0 are counted by kind (`failures`).
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

from omnivision.eval.scoring.mmvet_judge import Grade, MMVetJudge, MMVetRecord, mmvet_records
from omnivision.eval.scoring.mmvet_prompt import GraderPrompt, MMVetError, load_grader_prompt

CAPABILITIES = ("rec", "ocr", "know", "gen", "spat", "math")

__all__ = ["CAPABILITIES", "GraderPrompt", "Grade", "MMVetError", "MMVetJudge", "MMVetRecord",
           "MMVetScores", "aggregate", "load_grader_prompt"]


@dataclass
class MMVetScores:
    total: float
    """Mean over runs of the run total, 0-100."""
    std: float
    """Population std of the run totals (0 for one run)."""
    runs: list[float]
    capabilities: dict[str, float]
    capability_std: dict[str, float]
    combinations: dict[str, float]
    """Capability sets matched exactly, named like `rec_ocr` in CAPABILITIES order."""
    count: int
    failures: dict[str, int]
    """Grades that fell back to 0.0, by status."""

    def to_dict(self) -> dict:
        return asdict(self)


def aggregate(records: Sequence[Mapping | MMVetRecord], grades: Sequence[Sequence[Grade]]) -> MMVetScores:
    """Scores from `judge`'s grades ([run][record]) for the same records."""
    checked = mmvet_records(records)
    if not checked or not grades:
        raise MMVetError("aggregate: no records or no runs")
    for run, row in enumerate(grades):
        if [g.question_id for g in row] != [r.question_id for r in checked]:
            raise MMVetError(f"aggregate: run {run}'s grades do not match the records one to one")

    def per_run(members: list[int]) -> list[float]:
        return [100 * statistics.fmean(row[i].score for i in members) for row in grades]

    caps, combos = _capability_groups(checked)
    totals = per_run(list(range(len(checked))))
    cap_runs = {cap: per_run(members) for cap, members in caps.items()}
    failures = Counter(g.status for row in grades for g in row if g.status != "ok")
    return MMVetScores(
        total=statistics.fmean(totals), std=statistics.pstdev(totals), runs=totals,
        capabilities={cap: statistics.fmean(v) for cap, v in cap_runs.items()},
        capability_std={cap: statistics.pstdev(v) for cap, v in cap_runs.items()},
        combinations={name: statistics.fmean(per_run(members)) for name, members in combos.items()},
        count=len(checked), failures={"unparsed": failures["unparsed"], "error": failures["error"]})


def _capability_groups(records: Sequence[MMVetRecord]) -> tuple[dict[str, list[int]], dict[str, list[int]]]:
    """Record indices per capability, and per exact capability set (named like `rec_ocr`); the
    known six come first in CAPABILITIES order, then any others by name."""
    order = {c: i for i, c in enumerate(CAPABILITIES)}

    def rank(cap: str) -> tuple[int, str]:
        return order.get(cap, len(order)), cap

    caps = {cap: [i for i, r in enumerate(records) if cap in r.capabilities]
            for cap in sorted({c for r in records for c in r.capabilities}, key=rank)}
    sets = sorted({tuple(sorted(r.capabilities, key=rank)) for r in records},
                  key=lambda combo: [rank(c) for c in combo])
    combos = {"_".join(combo): [i for i, r in enumerate(records) if set(r.capabilities) == set(combo)]
              for combo in sets}
    return caps, combos
