"""Running fuzz cases: the worker process's life (start, time limit, kill, restart), the case folder,
the hashes that show a file was not changed, and each case's `Outcome`.

One long-lived worker (`tests.fuzz.worker`) runs every case, because starting Python and importing
torch costs seconds and a case costs tens of milliseconds. A worker that does not answer within the
time limit, or dies, is killed; the case is recorded as a failure and the next case gets a fresh one.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import select
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import omnivision
from tests.fuzz.cases import Case
from tests.fuzz.contract import ANSWERED, REFUSED, judge_command, judge_request
from tests.fuzz.seeds import Seeds

REPO = Path(__file__).resolve().parents[2]
GiB = 2**30


@dataclass(frozen=True)
class Outcome:
    key: str
    kind: str
    """`answered`, `refused`, or a failure kind of `tests.fuzz.contract.FAILURES`."""
    detail: str
    mutation: str
    seconds: float

    @property
    def failed(self) -> bool:
        return self.kind not in (ANSWERED, REFUSED)

    def __str__(self) -> str:
        return f"{self.key} {self.kind}: {self.detail} [{self.mutation}]"


class WorkerProcess:
    """One `python -m tests.fuzz.worker`, spoken to in JSON lines."""

    def __init__(self, memory_bytes: int, log: Path, startup_s: float = 120.0) -> None:
        env = {**os.environ, "OMNIVISION_KERNEL_TUNING": "off", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
               "PYTHONPATH": os.pathsep.join([str(REPO), str(Path(omnivision.__file__).parents[1]),
                                              os.environ.get("PYTHONPATH", "")])}
        env.pop("PYTHONWARNINGS", None)  # warnings show as they would to a user
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.fuzz.worker", "--memory", str(memory_bytes)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log.open("ab"),
                                     cwd=REPO, env=env)
        self.buffer, self.closed = b"", False
        if self.receive(startup_s) != {"ready": True}:
            self.kill()
            raise RuntimeError(f"the fuzz worker did not start (see {log})")

    def call(self, job: dict, timeout_s: float) -> dict | None:
        """The job's result, or None when the worker hung (past `timeout_s`) or died."""
        try:
            self.proc.stdin.write((json.dumps(job) + "\n").encode())
            self.proc.stdin.flush()
        except BrokenPipeError:
            return None
        return self.receive(timeout_s)

    def receive(self, timeout_s: float) -> dict | None:
        deadline = time.monotonic() + timeout_s
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 1 << 16)
            if not chunk:  # the worker closed its output: it is exiting (see `judge`)
                self.closed = True
                return None
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return json.loads(line)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        if self.alive():
            self.proc.kill()
        self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            pipe.close()


def _hashes(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


class Harness:
    """Runs cases against one worker at a time, under a memory limit and a per-case time limit."""

    def __init__(self, seeds: Seeds, workdir: Path, timeout_s: float = 30.0, memory_bytes: int = 3 * GiB) -> None:
        self.seeds, self.workdir = seeds, workdir
        self.timeout_s, self.memory_bytes = timeout_s, memory_bytes
        self.worker: WorkerProcess | None = None
        self.restarts = 0
        workdir.mkdir(parents=True, exist_ok=True)

    def case_dir(self) -> Path:
        return self.workdir / "case"

    def run(self, case: Case) -> Outcome:
        folder = self.case_dir()
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        for name, data in case.files.items():
            (folder / name).write_bytes(data)
        before = _hashes(folder)
        if case.body is not None:
            job = {"body": base64.b64encode(case.body).decode(), "model": str(self.seeds.native)}
        elif case.probe is not None:
            job = {k: v.replace("{dir}", str(folder)) if isinstance(v, str) else v for k, v in case.probe.items()}
        else:
            job = {"argv": [a.replace("{dir}", str(folder)) for a in case.argv]}
        start = time.monotonic()
        kind, detail = self.judge(job, request=case.body is not None)
        seconds = time.monotonic() - start
        after = _hashes(folder)
        if after != before and kind not in ("hang", "died"):
            changed = sorted(n for n in before.keys() | after.keys() if before.get(n) != after.get(n))
            kind, detail = "modified", f"changed: {', '.join(changed)} (the call ended {kind}: {detail})"
        return Outcome(case.key, kind, detail, case.mutation, seconds)

    def judge(self, job: dict, request: bool = False) -> tuple[str, str]:
        """Run one job on the worker (starting one if needed) and judge its result."""
        if self.worker is None:
            self.worker = WorkerProcess(self.memory_bytes, self.workdir / "worker.log")
        result = self.worker.call(job, self.timeout_s)
        if result is None:
            if self.worker.closed:  # its output ended before the process was reaped: wait for the exit
                try:
                    self.worker.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    pass
            alive = self.worker.alive()
            status = self.worker.proc.returncode
            self.worker.kill()
            self.worker = None
            self.restarts += 1
            if alive:
                return "hang", f"no result within {self.timeout_s:g} s"
            return "died", f"the worker exited with status {status}"
        return judge_request(result) if request else judge_command(result)

    def close(self) -> None:
        if self.worker is not None:
            self.worker.kill()
            self.worker = None
