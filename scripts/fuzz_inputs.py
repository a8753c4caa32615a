"""Mutation fuzzing of every input path, for the long pre-release run (CI runs 400 cases per path in
`tests/fuzz/test_fuzz_inputs.py`).

    python3 scripts/fuzz_inputs.py --path all --seed 0 --cases 5000
    python3 scripts/fuzz_inputs.py --path native --seed 0 --only 4711 --keep /tmp/case   # one case again

Paths: gguf (the GGUF pair through `omnivision info` / `run`), native (config.json, model.safetensors,
tokenizer.json through `info` / `run`), image (PNG, JPEG, WEBP, GIF, BMP through `run --image`),
request (chat-completion bodies through the server's app). Prints the count of each outcome per path
and every failure with its key `path:seed:index`; exit status 1 on any failure.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "src")]

from tests.fuzz.cases import PATHS, make_case
from tests.fuzz.runner import GiB, Harness
from tests.fuzz.seeds import make_seeds


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--path", choices=[*PATHS, "all"], default="all")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cases", type=int, default=5000, help="cases per path (indices 0 to N-1)")
    p.add_argument("--only", type=int, help="run this one case index (to reproduce a failure)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds a case may take")
    p.add_argument("--memory-gb", type=float, default=3.0, help="the worker's address-space limit")
    p.add_argument("--keep", type=Path, help="copy each failing case's files into KEEP/<key>/")
    return p.parse_args()


def _run_path(harness: Harness, seeds, path: str, args: argparse.Namespace) -> list:
    indices = [args.only] if args.only is not None else range(args.cases)
    counts: collections.Counter = collections.Counter()
    failures = []
    start = time.monotonic()
    for i in indices:
        case = make_case(seeds, path, args.seed, i)
        outcome = harness.run(case)
        counts[outcome.kind] += 1
        if outcome.failed or args.only is not None:
            print(outcome, flush=True)
        if outcome.failed:
            failures.append(outcome)
            if args.keep:
                _keep(harness.case_dir(), case, args.keep / outcome.key.replace(":", "-"))
    seconds = time.monotonic() - start
    summary = ", ".join(f"{kind} {n}" for kind, n in counts.most_common())
    print(f"{path}: {sum(counts.values())} cases in {seconds:.0f} s: {summary}; failures {len(failures)}",
          flush=True)
    return failures


def _keep(folder: Path, case, out: Path) -> None:
    shutil.copytree(folder, out, dirs_exist_ok=True)
    if case.body is not None:
        (out / "body.json").write_bytes(case.body)
    (out / "case.txt").write_text(f"{case.key}\n{case.mutation}\nomnivision {' '.join(case.argv)}\n")


def main() -> int:
    args = _args()
    with tempfile.TemporaryDirectory(prefix="omnivision-fuzz-") as tmp:
        seeds = make_seeds(Path(tmp) / "seeds")
        harness = Harness(seeds, Path(tmp) / "work", timeout_s=args.timeout,
                          memory_bytes=int(args.memory_gb * GiB))
        try:
            failures = [f for path in (PATHS if args.path == "all" else [args.path])
                        for f in _run_path(harness, seeds, path, args)]
        finally:
            harness.close()
    print(f"{len(failures)} failures" + (f"; worker restarts {harness.restarts}" if harness.restarts else ""))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
