"""Benchmark tasks that read the standard files from a local folder and build lmms-eval's default
prompts and generation settings: the registry of tasks by lmms-eval's task name, plus
`shapes_qa` and `shapes_pope`, which read our own generated data (see `generated_shapes`).

    from omnivision.eval.tasks import get_task
    for sample in get_task("pope_adv").samples("/data/benchmarks", limit=10):
        sample.images, sample.prompt, sample.generation, sample.fields
"""

from __future__ import annotations

from omnivision.eval.tasks import chartqa, generated_shapes, mmmu, mmvet, pope, scienceqa
from omnivision.eval.tasks.base import DEFAULT_UNTIL, Generation, Sample, Task, TaskDataError

TASKS: dict[str, Task] = {task.name: task for module in (pope, scienceqa, mmmu, chartqa, mmvet, generated_shapes)
                          for task in module.TASKS}


class UnknownTaskError(ValueError):
    """A task name that is not in the registry."""


def get_task(name: str) -> Task:
    """The task named `name` (lmms-eval's name, e.g. "mmmu_val")."""
    try:
        return TASKS[name]
    except KeyError:
        raise UnknownTaskError(f"unknown task {name!r} (known: {', '.join(TASKS)})") from None


__all__ = ["DEFAULT_UNTIL", "Generation", "Sample", "TASKS", "Task", "TaskDataError", "UnknownTaskError",
           "get_task"]
