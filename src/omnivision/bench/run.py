"""Running a benchmark: prepare the files, start one worker per measurement, collect the results.

Each worker is a fresh `python -m omnivision.bench.worker` process (see `worker`). A worker that fails
or times out is recorded with its error and the others still run; a peer whose package is missing is
reported as skipped, not as a failure.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from omnivision.bench import prepare
from omnivision.bench.bandwidth import read_bandwidth_gbs
from omnivision.bench.worker import MARK
from omnivision.kernels.machine import cpu_description
from omnivision.loader import resolve_dtype
from omnivision.bench.workload import Workload

PEERS = ("transformers", "llama.cpp", "openvino")
PEER_PACKAGES = {"transformers": "transformers", "llama.cpp": "llama_cpp", "openvino": "openvino"}
LLAMA_TYPES = ("Q8_0", "Q4_0")


@dataclass
class Plan:
    preset: str = "omnivision-968m"
    precisions: tuple[str, ...] = prepare.PRECISIONS
    against: tuple[str, ...] = ()
    workdir: Path = Path.home() / ".cache" / "omnivision" / "bench"
    work: Workload = field(default_factory=Workload)
    seed: int = 0
    timeout_s: float = 3600.0
    llama_cpp_dir: Path | None = None
    """Another build of llama-cpp-python (`pip install --target`), put first on the llama.cpp
    workers' path: e.g. one built for AVX2 only."""

    def __post_init__(self) -> None:
        bad = [p for p in self.precisions if p not in prepare.PRECISIONS]
        if bad or not self.precisions:
            raise ValueError(f"precisions must be among {', '.join(prepare.PRECISIONS)}; got {bad or 'none'}")
        unknown = [a for a in self.against if a not in PEERS]
        if unknown:
            raise ValueError(f"unknown peer {unknown[0]!r}; use {' or '.join(PEERS)}")
        if self.llama_cpp_dir is not None and not (Path(self.llama_cpp_dir) / "llama_cpp").is_dir():
            raise ValueError(f"--llama-cpp-dir {self.llama_cpp_dir} holds no llama_cpp package")


SPEED_FLAGS = ("avx2", "fma", "avx_vnni", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_bf16",
               "amx_int8", "asimd", "sve", "bf16", "i8mm")
"""The instruction-set flags that decide which kernels are fast (x86 and ARM names)."""


def machine() -> dict:
    cpu, flags = cpu_description()
    versions = {"python": platform.python_version(), "torch": torch.__version__}
    for name, module in (("transformers", "transformers"), ("llama-cpp-python", "llama_cpp"),
                         ("openvino", "openvino"), ("nncf", "nncf")):
        if importlib.util.find_spec(module) is not None:
            versions[name] = __import__(module).__version__
    default = "bf16" if resolve_dtype("auto") == torch.bfloat16 else "fp32"
    return {"cpu": cpu, "cpu_flags": [f for f in SPEED_FLAGS if f in flags.split()],
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "onednn_max_isa": os.environ.get("ONEDNN_MAX_CPU_ISA"), "default_precision": default,
            "logical_cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "system": platform.platform(), "versions": versions}


def _run_worker(spec: dict, timeout_s: float, first_on_path: Path | None = None) -> dict:
    env = None
    if first_on_path is not None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(first_on_path),
                                                                         os.environ.get("PYTHONPATH")]))}
    try:
        proc = subprocess.run([sys.executable, "-m", "omnivision.bench.worker", json.dumps(spec)],
                              capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout_s:.0f} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(MARK):
            return json.loads(line[len(MARK):])
    tail = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
    return {"error": tail[:300]}


def _specs(plan: Plan, log: Callable[[str], None]) -> list[dict]:
    tokenizer, config = prepare.tokenizer_and_config(plan.preset)
    ids = prepare.prompt_ids(config, tokenizer)
    work = dataclasses.asdict(plan.work)
    specs = []
    for precision in plan.precisions:
        log(f"preparing our {precision} checkpoint")
        path = prepare.native_checkpoint(plan.workdir, plan.preset, precision, plan.seed)
        specs.append(dict(impl="ours", precision=precision, path=str(path), work=work))
    for peer in plan.against:
        if not _installed(peer, plan):
            specs.append(dict(impl=peer, precision="-", skipped=f"{PEER_PACKAGES[peer]} is not installed"))
        elif peer == "transformers":
            default = "bf16" if resolve_dtype("auto") == torch.bfloat16 else "fp32"
            for precision in [p for p in ("fp32", "bf16") if p in plan.precisions] or [default]:
                specs.append(dict(impl=peer, precision=precision, preset=plan.preset, prompt_ids=ids, work=work))
        elif peer == "openvino":  # the vision tower alone; int8 weights through nncf
            for precision in ("bf16", "int8"):
                specs.append(dict(impl=peer, precision=precision, preset=plan.preset, work=work))
        else:
            for ggml_type in LLAMA_TYPES:
                log(f"preparing the llama.cpp {ggml_type} GGUF")
                path = prepare.llama_cpp_gguf(plan.workdir, plan.preset, ggml_type, plan.work.threads or 2,
                                              plan.seed, plan.llama_cpp_dir)
                specs.append(dict(impl=peer, precision=ggml_type, path=str(path), prompt_ids=ids, work=work))
    return specs


def _installed(peer: str, plan: Plan) -> bool:
    """Whether `peer`'s package can be imported by its worker: llama.cpp's from `--llama-cpp-dir` when
    given (a build of its own, not installed in this environment)."""
    if peer == "llama.cpp" and plan.llama_cpp_dir is not None:
        return True  # `Plan` checked that the folder holds the package
    return importlib.util.find_spec(PEER_PACKAGES[peer]) is not None


def _choose_kernels(specs: list[dict], plan: Plan, log: Callable[[str], None]) -> dict:
    """This machine's kernel choices for every checkpoint of ours (bf16 and fp32 few-row products,
    quantized products, attention), made in a worker of their own before any measurement (so no
    measured phase, and no peak memory figure, carries the one-off timing)."""
    tuned = [s for s in specs if s["impl"] == "ours"]
    if not tuned:
        return {}
    log("choosing this machine's kernels")
    return _run_worker(dict(impl="tune", precision="-", paths=[s["path"] for s in tuned],
                            precisions=[s["precision"] for s in tuned], work=tuned[0]["work"]), plan.timeout_s)


def run(plan: Plan, log: Callable[[str], None] = lambda line: None) -> dict:
    """Measure everything the plan asks for; returns the JSON-ready results document."""
    plan.workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    specs = _specs(plan, log)
    kernels = _choose_kernels(specs, plan, log)
    for spec in specs:
        row = {"impl": spec["impl"], "precision": spec["precision"]}
        if "skipped" in spec:
            row["skipped"] = spec["skipped"]
        else:
            log(f"measuring {spec['impl']} {spec['precision']}")
            start = time.perf_counter()
            row.update(_run_worker(spec, plan.timeout_s,
                                   plan.llama_cpp_dir if spec["impl"] == "llama.cpp" else None))
            row["wall_s"] = round(time.perf_counter() - start, 1)
        rows.append(row)
    log("measuring the memory bandwidth")
    if plan.work.threads:
        torch.set_num_threads(plan.work.threads)
    bandwidth = read_bandwidth_gbs()
    return {"machine": {**machine(), "read_bandwidth_gbs": bandwidth}, "preset": plan.preset, "seed": plan.seed,
            "kernels": kernels,
            "workload": dataclasses.asdict(plan.work), "results": rows}
