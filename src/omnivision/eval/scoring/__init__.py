"""Benchmark scorers, one module per benchmark, and the registry of them by lmms-eval task name.

Each module exposes `score(record, convention) -> Scored` and `aggregate(records, convention) ->
dict` (see `protocol`); `score_file` applies one to records or to a JSONL file of predictions.
Conventions: "lmms-eval" (default) and "vlmevalkit" (its rule-based path); the rules are in each
module's docstring and in docs/benchmark-scoring.md. MMMU's scorer also takes the
fallback for an unreadable letter ("random" or "wrong"); `score_options` gives a task's extra
keyword options.
"""

from __future__ import annotations

from types import ModuleType

from omnivision.eval.scoring import chartqa, mmmu, pope, scienceqa, shapes_qa
from omnivision.eval.scoring.protocol import CONVENTIONS, LMMS_EVAL, VLMEVALKIT, FieldError, Scored

SCORERS: dict[str, ModuleType] = {
    "pope": pope,
    "pope_adv": pope,
    "pope_pop": pope,
    "pope_random": pope,
    "scienceqa_img": scienceqa,
    "mmmu_val": mmmu,
    "mmmu_dev": mmmu,
    "chartqa": chartqa,
    # our generated data (`omnivision data shapes`); probes are scored by the POPE rules
    "shapes_qa": shapes_qa,
    "shapes_pope": pope,
}


MMMU_FALLBACKS = mmmu.FALLBACKS


def scorer_for(task: str) -> ModuleType:
    if task not in SCORERS:
        raise ValueError(f"no scorer for task {task!r} (known: {', '.join(sorted(SCORERS))})")
    return SCORERS[task]


def score_options(task: str, mmmu_fallback: str = mmmu.RANDOM) -> dict:
    """The keyword options `score` takes for `task` beyond the convention (checked)."""
    mmmu.check_fallback(mmmu_fallback)
    return {"fallback": mmmu_fallback} if scorer_for(task) is mmmu else {}


__all__ = ["CONVENTIONS", "LMMS_EVAL", "MMMU_FALLBACKS", "SCORERS", "VLMEVALKIT", "FieldError",
           "Scored", "score_options", "scorer_for"]
