"""`omnivision bench`: time each phase of answering one image question, and peak memory, per
precision, optionally beside transformers and llama.cpp measured in the same run (`omnivision.bench`).
"""

from __future__ import annotations

import sys
from pathlib import Path

from omnivision.bench import report
from omnivision.bench.prepare import PRECISIONS
from omnivision.bench.run import PEERS, Plan, run as run_plan
from omnivision.bench.workload import Workload


def _names(text: str) -> tuple[str, ...]:
    return tuple(n.strip() for n in text.split(",") if n.strip())


def add_parser(sub, name: str) -> None:
    p = sub.add_parser(name, help="measure speed and memory, optionally against transformers, llama.cpp and OpenVINO")
    p.add_argument("--preset", default="omnivision-968m",
                   help="model shapes to measure, random weights (default omnivision-968m; tiny for a smoke test)")
    p.add_argument("--precisions", default=",".join(PRECISIONS),
                   help=f"comma-separated, among {', '.join(PRECISIONS)} (default: all)")
    p.add_argument("--against", action="append", default=[], choices=PEERS,
                   help="measure a peer in the same run (repeatable)")
    p.add_argument("--runs", type=int, default=5, help="timed runs per phase after a warm-up (default 5)")
    p.add_argument("--decode-tokens", type=int, default=128, help="tokens to measure decode speed over")
    p.add_argument("--answer-tokens", type=int, default=64, help="answer length of the end-to-end figure")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (default: torch's choice)")
    p.add_argument("--workdir", type=Path, default=Plan.workdir,
                   help="where the benchmark's checkpoints and GGUF files are made and kept")
    p.add_argument("--llama-cpp-dir", type=Path, metavar="DIR",
                   help="a folder holding another build of llama-cpp-python (pip install --target DIR), "
                        "used by the llama.cpp measurements instead of the installed one")
    p.add_argument("--json", type=Path, metavar="FILE", help="write every figure and the targets as JSON")
    p.add_argument("--png", type=Path, metavar="FILE", help="draw TTFT, decode speed and memory")
    p.set_defaults(handler=run)


def run(args) -> int:
    work = Workload(runs=args.runs, decode_tokens=args.decode_tokens, answer_tokens=args.answer_tokens,
                    threads=args.threads)
    plan = Plan(preset=args.preset, precisions=_names(args.precisions), against=tuple(dict.fromkeys(args.against)),
                workdir=args.workdir, work=work, llama_cpp_dir=args.llama_cpp_dir)
    doc = run_plan(plan, log=lambda line: print(line, file=sys.stderr, flush=True))
    print(report.table(doc))
    if args.json:
        report.write_json(doc, args.json)
    if args.png and not report.write_png(doc, args.png):
        print("note: matplotlib is not installed; no PNG drawn", file=sys.stderr)
    failed = [r for r in doc["results"] if "error" in r]
    return 1 if failed else 0
