"""A benchmark run: ask a model every sample of the chosen tasks, keep each answer as it comes,
then score the answers and write the report.

Layout of the output folder, per task: `<out>/<task>/run.json` (the model and generation settings
that answered; a rerun with others is refused, see `run_record`), `<out>/<task>/predictions.jsonl`
(appended batch by batch; a rerun skips the ids already there, so a killed or limited run resumes
where it stopped) and `<out>/<task>/scored.jsonl` (the predictions of this run's samples with
`score` and `parsed`); `<out>/mmmu_test/submission.json` for the MMMU server; then `results.json`,
`report.md` and `report.png` (see `report`), which keep the tasks of earlier runs into the folder.

`evaluate` is the whole run, the one sequence both the `omnivision eval` command and the tests
go through. It has two phases, so that it can be spread over processes started by torchrun:

0. joining the process group torchrun describes (`process_group.setup`; a single process joins
   nothing), then getting the model: a factory gets this process's device, so that a local model
   is loaded where this process runs.
1. `predict`, on every process: process r of w takes every w-th sample (r, r+w, ...) of each
   task and appends to its shard `predictions.rank{r}.jsonl` (one process appends to the main file).
   Listing the samples decodes no image (`tasks.images.LazyImages`): a process decodes only the
   images of the samples it answers, when the model looks at them.
2. `finish`, on rank 0 only, after every process has finished phase 1: every process leaves the
   process group it joined (`process_group.cleanup`, a barrier), so rank 0 starts when all have
   answered and no process tears down while another still works. Each task's shards are merged
   into its main file in the task's sample order, and the samples are scored. One process and
   several give the same files.

Scoring uses the task's scorer from `scoring.SCORERS` under the chosen convention (and MMMU
fallback). MM-Vet is graded by an LLM judge, and only when judge settings are given; otherwise its
predictions are kept and the report marks it unscored. `mmmu_test`, whose answers are hidden, gets
a submission file instead: each prediction read as the scorer reads it. A task with no samples in
the run (a limit of 0) gets an empty entry.
"""

from __future__ import annotations

import platform
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch
from tqdm import tqdm

from omnivision import process_group
from omnivision.json_files import write_json_lines
from omnivision.eval import predictions, report, run_record
from omnivision.eval.judging import JudgeSettings, judge_records
from omnivision.eval.evaluated_models import EvalModel
from omnivision.eval.scoring import LMMS_EVAL, SCORERS, FieldError, mmmu
from omnivision.eval.scoring.score_file import ScoringError, score_records
from omnivision.eval.tasks import Sample, Task, TaskDataError, get_task, hub
from omnivision.eval.tasks.base import DataDir, check_limit
from omnivision.eval.tasks.mmmu import write_submission
from omnivision.eval.versions import package_version

JUDGED_TASK = "mmvet"
SUBMITTED_TASK = "mmmu_test"
SUBMISSION_NAME = "submission.json"


@dataclass(frozen=True)
class RunSettings:
    data_dir: DataDir
    out_dir: Path
    limit: int | None = None
    batch: int = 8
    convention: str = LMMS_EVAL
    judge: JudgeSettings | None = None
    progress: bool = True
    mmmu_fallback: str = mmmu.RANDOM

    def __post_init__(self) -> None:
        check_limit(self.limit)
        mmmu.check_fallback(self.mmmu_fallback)
        if self.batch < 1:
            raise ValueError(f"batch must be >= 1, got {self.batch}")


@dataclass
class Predicted:
    """What phase 1 leaves for phase 2: each task's sample ids in order, and timings."""

    world: int
    orders: dict[str, list[str]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    """Wall time of this process's generation, per task."""


# --- checks done before any model is loaded ----------------------------------------------------

def resolve_tasks(names: Sequence[str]) -> list[Task]:
    """The tasks named, in order; an unknown or repeated name raises ValueError."""
    if not names:
        raise ValueError("no tasks given")
    repeated = sorted({n for n in names if list(names).count(n) > 1})
    if repeated:
        raise ValueError(f"task named twice: {', '.join(repeated)}")
    return [get_task(name) for name in names]


def check_data(tasks: Sequence[Task], data_dir: DataDir) -> None:
    """Raise `TaskDataError` now if a task's data cannot be found (locating it reads no sample)."""
    if not hub.is_hub(data_dir) and not Path(data_dir).is_dir():
        raise TaskDataError(str(data_dir), "no such data folder")
    for task in tasks:
        task.samples(data_dir, limit=0)


# --- phase 1: predictions ------------------------------------------------------------------------

def place() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) outside torchrun."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def task_dir(settings: RunSettings, task: Task) -> Path:
    return Path(settings.out_dir) / task.name


def prediction_record(sample: Sample, prediction: str, images_used: int) -> dict:
    """What is kept of one answer: the benchmark fields the scorers read, plus the id, the prompt,
    the answer and how many of the sample's images the model saw."""
    return {**sample.fields, "id": sample.id, "prompt": sample.prompt, "prediction": prediction,
            "n_images": len(sample.images), "images_used": images_used}


def sample_ids(task: Task, settings: RunSettings) -> list[str]:
    """The ids of the run's samples in order; ids must be unique, since resuming goes by id."""
    ids, seen = [], set()
    for sample in task.samples(settings.data_dir, settings.limit):
        if sample.id in seen:
            raise TaskDataError(task.name, f"sample id {sample.id!r} appears twice; resuming needs "
                                           f"unique ids")
        seen.add(sample.id)
        ids.append(sample.id)
    return ids


def _batches(task: Task, settings: RunSettings, mine: set[str]):
    batch: list[Sample] = []
    for sample in task.samples(settings.data_dir, settings.limit):
        if sample.id in mine:
            batch.append(sample)
            if len(batch) == settings.batch:
                yield batch
                batch = []
    if batch:
        yield batch


def predict_task(task: Task, model: EvalModel, settings: RunSettings, rank: int = 0,
                 world: int = 1) -> list[str]:
    """Answer this process's share of the task's samples that have no prediction yet; returns
    all the run's sample ids in order."""
    order = sample_ids(task, settings)
    run_record.check_or_record(task_dir(settings, task),
                               run_record.run_identity(model.describe(), task.generation))
    main = task_dir(settings, task) / predictions.MAIN_NAME
    path = main if world == 1 else predictions.shard_path(main, rank)
    with predictions.Appender(path) as out:
        # what any earlier run left: the main file and every shard (this one's already read)
        earlier = [predictions.read(p) for p in [main, *predictions.shard_paths(main)] if p != path]
        done = predictions.by_id([*out.records, *(r for records in earlier for r in records)])
        share = order[rank::world]
        mine = {i for i in share if i not in done}
        note = f" (process {rank} of {world})" if world > 1 else ""
        print(f"{task.name}: {len(mine)} of {len(share)} samples to answer{note}, "
              f"{len(share) - len(mine)} already done", file=sys.stderr)
        with tqdm(total=len(mine), desc=task.name, unit="sample", dynamic_ncols=True,
                  disable=not settings.progress or rank != 0 or not mine) as bar:
            for batch in _batches(task, settings, mine):
                answers = model.predict(batch)
                out.append([prediction_record(s, a, model.images_used(s)) for s, a in zip(batch, answers)])
                bar.update(len(batch))
    return order


def predict(tasks: Sequence[Task], model: EvalModel, settings: RunSettings) -> Predicted:
    """Phase 1 on this process, task after task."""
    rank, world = place()
    done = Predicted(world)
    for task in tasks:
        start = time.perf_counter()
        done.orders[task.name] = predict_task(task, model, settings, rank, world)
        done.seconds[task.name] = time.perf_counter() - start
    return done


# --- phase 2: merging and scoring (rank 0) -------------------------------------------------------

def collect(task: Task, settings: RunSettings, order: list[str]) -> list[dict]:
    """The run's records of a task, in sample order, the shards merged into the main file."""
    main = task_dir(settings, task) / predictions.MAIN_NAME
    records = predictions.merge(main, predictions.shard_paths(main), order)
    if len(records) != len(order):
        raise ValueError(f"{task.name}: {len(order) - len(records)} of {len(order)} samples have no "
                         f"prediction in {main}")
    return records


def _located(task: Task, records: list[dict]):
    """Each record with where it is from, for error messages."""
    return ((f"{task.name}: sample {r['id']!r}", r) for r in records)


def submit(task: Task, records: list[dict], order: list[str], folder: Path, fallback: str) -> dict:
    """Write the MMMU test submission file (every prediction read as the scorer reads it); the
    entry's fields about it."""
    answers, fell_back = {}, 0
    for where, record in _located(task, records):
        try:
            answers[record["id"]], fell = mmmu.submission_answer(record, fallback)
        except FieldError as e:
            raise ScoringError(where, str(e)) from None
        fell_back += fell
    path = write_submission(answers, folder / SUBMISSION_NAME, expected_ids=order)
    return {"status": "unscored", "reason": "the test answers are hidden; send the submission file "
                                            "to the MMMU evaluation server",
            "submission": str(path), "mmmu_fallback": fallback, f"{fallback}_fallbacks": fell_back}


def finish_task(task: Task, settings: RunSettings, order: list[str], created: str) -> dict:
    """Merge, score and write `scored.jsonl`; the task's entry of the results."""
    records = collect(task, settings, order)
    folder = task_dir(settings, task)
    entry: dict = {"n": len(records),
                   "images_dropped": sum(r.get("images_used", 0) < r.get("n_images", 0) for r in records),
                   "predictions": str(folder / predictions.MAIN_NAME), "created": created}
    if not records:
        return {**entry, "status": "empty", "reason": "no samples in this run"}
    if task.name == JUDGED_TASK:
        if settings.judge is None:
            return {**entry, "status": "unscored", "reason": "no judge given (--judge-url)"}
        scored, metrics, about = judge_records(records, settings.judge)
        entry["judge"] = about
    elif task.name == SUBMITTED_TASK:
        return {**entry, **submit(task, records, order, folder, settings.mmmu_fallback)}
    elif task.name in SCORERS:
        scored = score_records(task.name, _located(task, records), settings.convention,
                               settings.mmmu_fallback)
        metrics = SCORERS[task.name].aggregate(scored, settings.convention)
        entry["convention"] = settings.convention
        if SCORERS[task.name] is mmmu:
            entry["mmmu_fallback"] = settings.mmmu_fallback
    else:
        return {**entry, "status": "unscored", "reason": f"no scorer for {task.name}"}
    write_json_lines(folder / "scored.jsonl", scored)
    return {**entry, "status": "scored", "scored": str(folder / "scored.jsonl"), "metrics": metrics}


def finish(tasks: Sequence[Task], settings: RunSettings, done: Predicted, model: EvalModel,
           options: Mapping | None = None) -> dict:
    """Phase 2: the results of every task, written with the report (the entries of tasks that
    earlier runs into the folder left and this one did not redo are kept); returns the results."""
    previous = report.read_results(Path(settings.out_dir))
    metadata = run_metadata(tasks, settings, model, done.world, options)
    entries = {}
    for task in tasks:
        entry = finish_task(task, settings, done.orders[task.name], metadata["created"])
        entries[task.name] = {**entry, "seconds": round(done.seconds.get(task.name, 0.0), 3)}
    results = report.build_results(entries, metadata, previous)
    report.write_report(results, Path(settings.out_dir))
    return results


ModelFactory = Callable[[torch.device], EvalModel]
"""This process's device -> the model that answers (e.g. a local model moved onto it)."""


def evaluate(tasks: Sequence[Task], model: EvalModel | ModelFactory, settings: RunSettings,
             options: Mapping | None = None, device: str = "auto") -> dict | None:
    """The whole run on this process (see the module docstring): join the process group torchrun
    describes on `device` (auto | cpu | cuda), get the model (`model` itself, or, when it has no
    `predict`, what the factory makes for this process's device), answer this process's share,
    wait for every process, then merge, score and report on the main process. Returns the results
    there, None on the other processes.

    A process group that was joined before the call is kept (only waited on); one joined here is
    left again before phase 2, so that a rank that has nothing more to do exits cleanly."""
    joined_before = torch.distributed.is_available() and torch.distributed.is_initialized()
    info = process_group.setup(device)
    answering = model if hasattr(model, "predict") else model(info.device)
    done = predict(tasks, answering, settings)
    # every process has answered: the barrier phase 2 needs
    if joined_before:
        process_group.barrier()
    else:
        process_group.cleanup()
    if not info.is_main:
        return None
    return finish(tasks, settings, done, answering, options)


def run_metadata(tasks: Sequence[Task], settings: RunSettings, model: EvalModel, world: int,
                 options: Mapping | None) -> dict:
    """When, what and how: `options` are the caller's settings as given (e.g. the CLI's)."""
    judge = settings.judge
    return {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "options": dict(options) if options is not None else None,
        "model": model.describe(),
        "tasks": [t.name for t in tasks],
        "generation": {t.name: t.generation.as_kwargs() for t in tasks},
        "data": str(settings.data_dir), "limit": settings.limit, "batch": settings.batch,
        "convention": settings.convention, "mmmu_fallback": settings.mmmu_fallback,
        "processes": world,
        "judge": None if judge is None else {"url": judge.url, "model": judge.model, "runs": judge.runs,
                                             "prompt_source": judge.prompt.source},
        "versions": {"omnivision": package_version("omnivision"), "torch": torch.__version__,
                     "python": platform.python_version(), "platform": platform.platform()},
    }
