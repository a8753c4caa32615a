"""`KernelChoices`: pick the fastest of several implementations of one operation by timing them, once
per machine and shape, and keep the answer on disk.

Each candidate is a zero-argument callable doing the whole operation on representative inputs. They
are timed in turn (one warm-up call each, then `repeats` rounds, interleaved so that a slow moment
of the machine hits every candidate alike; a round calls each candidate as many times as its
fastest warm-up fits in `min_sample` seconds, so that a kernel of a few microseconds is not timed
by the clock's jitter) and the one with the lowest median per call wins; candidates the
caller lists first win ties within `noise` (relative), so the default is kept unless another is
clearly faster. The decision is stored under the machine's key (`machine.machine_key`), the
operation's name and its shape key, with the candidates' timings (a later set of candidates
other than the timed one is timed again), in a JSON file (`OMNIVISION_KERNEL_CACHE`, default
`~/.cache/omnivision/kernel-choices.json`), written atomically; a later process on the same machine
reads it instead of timing again, and a file that cannot be read or written only costs a timing.

`OMNIVISION_KERNEL_TUNING=off` turns timing off: every choice is then the first candidate (the safe
default), which is what a user who wants fully reproducible kernels, or a test, sets.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Iterable, Mapping

import torch

from omnivision.kernels.machine import machine_key

STREAM_BYTES = 48 * 2**20
"""Weights are timed as decoding meets them, streamed from memory: copies are cycled until they pass
this size (beyond the last-level caches of the CPUs measured)."""
MAX_COPIES = 64
MAX_CALLS = 200
"""The most calls of one candidate in one timed round."""
CACHE_ENV = "OMNIVISION_KERNEL_CACHE"
TUNING_ENV = "OMNIVISION_KERNEL_TUNING"
DEFAULT_CACHE = Path.home() / ".cache" / "omnivision" / "kernel-choices.json"


def streamed(*tensors: torch.Tensor) -> Callable[[], tuple[torch.Tensor, ...]]:
    """A function giving, call after call, the next of enough copies of `tensors` that a timing
    loop reads them from memory rather than from the caches (see `STREAM_BYTES`)."""
    size = max(1, sum(t.nbytes for t in tensors))
    copies = [tensors] + [tuple(t.clone() for t in tensors)
                          for _ in range(min(MAX_COPIES, max(1, STREAM_BYTES // size)) - 1)]
    turn = iter(range(1 << 62))
    return lambda: copies[next(turn) % len(copies)]


def tuning_enabled() -> bool:
    return os.environ.get(TUNING_ENV, "on").lower() not in ("off", "0", "false", "no")


def cache_path() -> Path:
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE)


class KernelChoices:
    def __init__(self, path: Path | None = None, clock: Callable[[], float] = time.perf_counter,
                 repeats: int = 7, noise: float = 0.03, min_sample: float = 2e-3) -> None:
        self.path = path
        self.clock, self.repeats, self.noise, self.min_sample = clock, repeats, noise, min_sample
        self._lock = threading.Lock()
        self._loaded_from: Path | None = None
        self._entries: dict[str, dict] = {}
        self.timings: dict[str, dict[str, float]] = {}
        """Medians in seconds of the candidates timed by this process, by entry key (for `tune`)."""

    def choose(self, op: str, shape: str, candidates: Mapping[str, Callable[[], object]]) -> str:
        """The name of the candidate to use for `op` on `shape` on this machine."""
        names = list(candidates)
        if not names:
            raise ValueError(f"no candidates for {op}")
        kept = self.remembered(op, shape, names)
        if kept is not None:
            return kept
        key = f"{machine_key()}/{op}/{shape}"
        with self._lock:
            medians = self._time(candidates)
            choice = self._fastest(names, medians)
            self._entries[key] = {"choice": choice, "median_s": medians}
            self.timings[key] = medians
            self._save()
        return choice

    def remembered(self, op: str, shape: str, names: Iterable[str]) -> str | None:
        """What `choose` would return without timing: the first name with timing off or a single
        name, the kept choice where it was timed among exactly `names`, else None. Callers whose
        candidates are costly to build (copies of a large weight, converted layouts) ask this first."""
        names = list(names)
        if len(names) == 1 or not tuning_enabled():
            return names[0] if names else None
        with self._lock:
            self._load()
            known = self._entries.get(f"{machine_key()}/{op}/{shape}")
        # kept while the candidates are the ones it was timed among: a new one is timed too
        if known is not None and known.get("choice") in names and set(known.get("median_s", ())) == set(names):
            return known["choice"]
        return None

    def chosen(self, key: str) -> str | None:
        """The candidate kept under a full entry key (as in `timings`), if any."""
        with self._lock:
            self._load()
            return self._entries.get(key, {}).get("choice")

    def _time(self, candidates: Mapping[str, Callable[[], object]]) -> dict[str, float]:
        warm = []
        for run in candidates.values():  # warm-up: first-call allocations and lazy initialisation
            start = self.clock()
            run()
            warm.append(self.clock() - start)
        calls = max(1, min(MAX_CALLS, int(self.min_sample / max(min(warm), 1e-9))))
        samples: dict[str, list[float]] = {name: [] for name in candidates}
        for _ in range(self.repeats):
            for name, run in candidates.items():
                start = self.clock()
                for _ in range(calls):
                    run()
                samples[name].append((self.clock() - start) / calls)
        return {name: statistics.median(times) for name, times in samples.items()}

    def _fastest(self, names: list[str], medians: dict[str, float]) -> str:
        best = min(medians.values())
        # the earliest-listed candidate within the noise of the best: defaults win ties
        return next(n for n in names if medians[n] <= best * (1 + self.noise))

    def _file(self) -> Path:
        return self.path if self.path is not None else cache_path()

    def _load(self) -> None:
        path = self._file()
        if self._loaded_from == path:
            return
        self._loaded_from, self._entries = path, {}
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return
        if isinstance(data, dict):
            self._entries = {k: v for k, v in data.items() if isinstance(v, dict)}

    def _save(self) -> None:
        path = self._file()
        tmp = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(self._entries, f, indent=1, sort_keys=True)
            os.replace(tmp, path)
        except OSError:  # a read-only home: the choice holds for this process only
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)


CHOICES = KernelChoices()
"""The process-wide choices every kernel consults."""
