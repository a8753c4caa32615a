"""Grading a task's records with the MM-Vet judge, for the runner: the judge's settings (an
OpenAI-compatible endpoint, a model name and the grader prompt), and the graded records, metrics and
description of the judge that go into the results.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from omnivision.chat_client import ChatClient
from omnivision.eval.scoring.mmvet import GraderPrompt, MMVetJudge
from omnivision.eval.scoring.mmvet import aggregate as mmvet_aggregate


@dataclass(frozen=True)
class JudgeSettings:
    """The MM-Vet judge: an OpenAI-compatible endpoint, a model name and a grader prompt."""

    url: str
    model: str
    prompt: GraderPrompt
    runs: int = 1
    key_env: str | None = "OPENAI_API_KEY"
    concurrency: int = 4


def judge_records(records: list[dict], judge: JudgeSettings) -> tuple[list[dict], dict, dict]:
    """MM-Vet records graded by the judge: records with `score` (mean over runs) and `grades`,
    the metrics, and the judge's description."""
    client = ChatClient(judge.url, api_key_env=judge.key_env)
    grader = MMVetJudge(client, judge.model, judge.prompt.text, runs=judge.runs,
                        concurrency=judge.concurrency)
    grades = grader.judge(records)
    scores = mmvet_aggregate(records, grades)
    scored = [{**r, "score": statistics.fmean(run[i].score for run in grades),
               "grades": [run[i].to_dict() for run in grades]} for i, r in enumerate(records)]
    served = next((g.judge_model for run in grades for g in run if g.judge_model), None)
    about = {"url": client.url, "model": judge.model, "served_model": served, "runs": judge.runs,
             "prompt_source": judge.prompt.source, "prompt_sha256": judge.prompt.sha256}
    return scored, scores.to_dict(), about
