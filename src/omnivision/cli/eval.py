"""`omnivision eval`: benchmark evaluation.

- `omnivision eval --model SRC | --endpoint URL [--endpoint-model NAME] --tasks pope,chartqa,...
  --data DIR --out DIR [--limit N] [--batch N] [--convention C] [--mmmu-fallback random|wrong]
  [--judge-url URL --judge-model NAME ...]` answers every sample of the tasks with a local model
  (default: the bundled nano model) or an OpenAI-compatible endpoint, keeps the answers in
  `OUT/<task>/predictions.jsonl` as they come (a rerun resumes), scores them and writes
  `OUT/results.json`, `OUT/report.md` and `OUT/report.png` (see `omnivision.eval.runner`). Under
  `torchrun --nproc-per-node N -m omnivision eval ...` the samples are shared out between the
  processes and rank 0 merges and scores. Task names and the data folder are checked before any
  model is loaded. A rerun into the same --out resumes, refuses another model or other generation
  settings, and keeps the report entries of tasks it does not redo.
- `omnivision eval score --task TASK --input FILE.jsonl [--convention lmms-eval|vlmevalkit]
  [--mmmu-fallback random|wrong] [--out FILE.jsonl]` scores records that carry the benchmark's
  fields plus `prediction`, writes them (all fields kept, `score` and `parsed` added) to `--out`,
  and prints the aggregate metrics, named as lmms-eval names them, as one JSON object on the last
  line of stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from omnivision.cli.model_args import add_model_options
from omnivision.eval.scoring import CONVENTIONS, LMMS_EVAL, MMMU_FALLBACKS, SCORERS
from omnivision.eval.scoring.score_file import score_file

USAGE = ("omnivision eval (--model SRC | --endpoint URL) --tasks T1,T2 --data DIR --out DIR [...], "
         "or omnivision eval score --task TASK --input FILE.jsonl [--convention C] [--out FILE.jsonl]")


def add_parser(sub, name: str) -> None:
    p = sub.add_parser(name, help="evaluate on benchmarks: run a model on them, or score predictions")
    p.set_defaults(handler=run, eval_action=None)
    _add_runner_options(p)
    actions = p.add_subparsers(dest="eval_action", metavar="ACTION")

    s = actions.add_parser("score", help="score predictions and print the benchmark's metrics")
    s.add_argument("--task", required=True, choices=sorted(SCORERS), help="benchmark task")
    s.add_argument("--input", required=True, metavar="FILE",
                   help="JSONL records: the benchmark's fields plus 'prediction'")
    s.add_argument("--convention", choices=CONVENTIONS, default=LMMS_EVAL,
                   help=f"whose scoring rules to follow (default {LMMS_EVAL})")
    _add_fallback_option(s, "mmmu_fallback")
    s.add_argument("--out", metavar="FILE", help="write the scored records here (JSONL)")
    s.set_defaults(handler=run)


def _add_fallback_option(p: argparse.ArgumentParser, dest: str) -> None:
    p.add_argument("--mmmu-fallback", dest=dest, choices=MMMU_FALLBACKS, default=MMMU_FALLBACKS[0],
                   help="MMMU multiple-choice answer with no readable letter: a random letter seeded "
                        "by the question id (lmms-eval's rule, the default) or wrong (VLMEvalKit's "
                        "exact matching)")


def _add_runner_options(p: argparse.ArgumentParser) -> None:
    add_model_options(p)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="where a local model runs (auto: CUDA when available; under torchrun one "
                        "device per process)")
    p.add_argument("--endpoint", metavar="URL",
                   help="ask an OpenAI-compatible server instead of a local model (API base URL)")
    p.add_argument("--endpoint-model", default="default", metavar="NAME",
                   help="model name sent to the endpoint (default: 'default')")
    p.add_argument("--endpoint-key-env", default="OPENAI_API_KEY", metavar="VAR",
                   help="environment variable holding the endpoint's API key (default OPENAI_API_KEY)")
    p.add_argument("--endpoint-concurrency", type=int, default=4, metavar="N",
                   help="endpoint requests in flight at once (default 4)")
    p.add_argument("--tasks", metavar="T1,T2", help="comma-separated lmms-eval task names, e.g. "
                                                    "pope,scienceqa_img,mmmu_val,chartqa,mmvet")
    p.add_argument("--data", metavar="DIR", help="folder holding the benchmark files (or hf://ORG)")
    p.add_argument("--out", dest="out_dir", metavar="DIR", help="folder for predictions and the report")
    p.add_argument("--limit", type=int, metavar="N", help="only the first N samples of each task")
    p.add_argument("--batch", type=int, default=8, metavar="N", help="samples per batch (default 8)")
    p.add_argument("--convention", dest="run_convention", choices=CONVENTIONS, default=LMMS_EVAL,
                   help=f"whose scoring rules to follow (default {LMMS_EVAL})")
    # a dest of its own: the `score` action's option of the same name would overwrite it
    _add_fallback_option(p, "run_mmmu_fallback")
    p.add_argument("--seed", type=int, default=1234, help="seed for tasks that sample (default 1234)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--judge-url", metavar="URL", help="MM-Vet judge: OpenAI-compatible API base URL")
    p.add_argument("--judge-model", metavar="NAME", help="MM-Vet judge model name")
    p.add_argument("--judge-runs", type=int, default=1, metavar="N",
                   help="MM-Vet grading runs, averaged (default 1; the paper used 5)")
    p.add_argument("--judge-prompt", metavar="FILE",
                   help="MM-Vet grader prompt file (default: the one of the installed lmms-eval)")
    p.add_argument("--judge-key-env", default="OPENAI_API_KEY", metavar="VAR",
                   help="environment variable holding the judge's API key (default OPENAI_API_KEY)")


def _score(args: argparse.Namespace) -> int:
    result = score_file(args.task, args.input, args.convention, args.out, args.mmmu_fallback)
    where = f"; wrote {args.out}" if args.out else ""
    print(f"scored {len(result.records)} records of {args.task} ({args.convention} rules) "
          f"from {args.input}{where}")
    print(json.dumps(result.metrics))
    return 0


def _task_names(text: str | None) -> list[str]:
    names = [n.strip() for n in (text or "").split(",") if n.strip()]
    if not names:
        raise ValueError(f"eval needs an action (score) or --tasks to run; usage: {USAGE}")
    return names


def _judge(args: argparse.Namespace, task_names: list[str]):
    """The judge settings (its grader prompt loaded now, so a missing one fails early), or None."""
    from omnivision.eval.judging import JudgeSettings
    from omnivision.eval.runner import JUDGED_TASK
    from omnivision.eval.scoring.mmvet_prompt import load_grader_prompt

    if args.judge_url is None:
        if JUDGED_TASK in task_names:
            print(f"note: no --judge-url: {JUDGED_TASK} answers are kept but not scored", file=sys.stderr)
        return None
    if not args.judge_model:
        raise ValueError("--judge-url needs --judge-model")
    if args.judge_runs < 1:
        raise ValueError(f"--judge-runs must be >= 1, got {args.judge_runs}")
    if JUDGED_TASK not in task_names:
        return None
    return JudgeSettings(args.judge_url, args.judge_model, load_grader_prompt(args.judge_prompt),
                         runs=args.judge_runs, key_env=args.judge_key_env)


def _settings(args: argparse.Namespace, task_names: list[str]):
    from omnivision.eval.runner import RunSettings

    if args.data is None or args.out_dir is None:
        raise ValueError(f"--data and --out are required; usage: {USAGE}")
    if args.endpoint and args.model:
        raise ValueError("give either --model or --endpoint, not both")
    return RunSettings(args.data, Path(args.out_dir), limit=args.limit, batch=args.batch,
                       convention=args.run_convention, judge=_judge(args, task_names),
                       progress=not args.no_progress, mmmu_fallback=args.run_mmmu_fallback)


def _model(args: argparse.Namespace, device):
    from omnivision.eval.evaluated_models import EndpointModel, LocalModel

    if args.endpoint:
        from omnivision.chat_client import ChatClient

        return EndpointModel(ChatClient(args.endpoint, api_key_env=args.endpoint_key_env),
                             args.endpoint_model, concurrency=args.endpoint_concurrency, seed=args.seed)
    from omnivision.cli.model_args import load_model
    from omnivision.loader import BUNDLED

    vlm = load_model(args)
    vlm.model.to(device)
    return LocalModel(vlm, source=args.model or str(BUNDLED), seed=args.seed)


def _run_tasks(args: argparse.Namespace) -> int:
    import torch

    from omnivision.eval import report, runner

    names = _task_names(args.tasks)
    tasks = runner.resolve_tasks(names)
    settings = _settings(args, names)
    runner.check_data(tasks, settings.data_dir)
    if not args.endpoint and args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: CUDA is not available")
    # the runner joins the process group after these checks, so bad input fails before any waiting
    options = {k: v for k, v in vars(args).items() if k != "handler"}
    results = runner.evaluate(tasks, lambda device: _model(args, device), settings, options,
                              device="cpu" if args.endpoint else args.device)
    if results is None:  # not the main process: it answered its share, the main one reports
        return 0
    print(report.markdown(results), end="")
    print(f"wrote {Path(settings.out_dir) / report.RESULTS_NAME}", file=sys.stderr)
    return 0


def run(args: argparse.Namespace) -> int:
    if args.eval_action == "score":
        return _score(args)
    return _run_tasks(args)
