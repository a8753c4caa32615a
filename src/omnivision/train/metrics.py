"""Training metrics: one JSON object per logged step in `metrics.jsonl`, and a PNG of the curves.

`MetricsLog(path, resume_step)` keeps the lines with `step <= resume_step` (a resumed run re-logs
the steps after its checkpoint, so nothing is duplicated; a fresh run passes 0 and starts empty) and
drops a torn last line left by a killed process. Each `log` appends one line and flushes it.

`plot_curves` draws every numeric column against `step` with matplotlib's object API (no pyplot, so
no global backend is touched); matplotlib is optional (`pip install omnivision[plots]`) and imported
inside the function. Knows nothing of models or the loop.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def read_records(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The well-formed records of a metrics file (a torn or foreign line is skipped)."""
    records = []
    p = Path(path)
    if not p.is_file():
        return records
    for line in p.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int):
            records.append(record)
    return records


class MetricsLog:
    """Append-only JSONL metrics, truncated to `resume_step` when opened."""

    def __init__(self, path: str | os.PathLike, resume_step: int = 0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = [r for r in read_records(self.path) if r["step"] <= resume_step]
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in kept)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        self.last: dict[str, Any] | None = kept[-1] if kept else None
        self._fh = open(self.path, "a", encoding="utf-8")

    def log(self, record: dict[str, Any]) -> None:
        """Append one record (must hold an int `step`)."""
        self._fh.write(json.dumps(record) + "\n")
        self._fh.flush()
        self.last = record

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def plot_curves(jsonl_path: str | os.PathLike, png_path: str | os.PathLike) -> Path | None:
    """Write a PNG with one panel per numeric metric; None (and a log note) without matplotlib."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        log.info("matplotlib is not installed: no curves PNG (pip install 'omnivision[plots]')")
        return None
    records = read_records(jsonl_path)
    keys = [k for k in dict.fromkeys(k for r in records for k in r) if k != "step"
            and any(isinstance(r.get(k), (int, float)) and not isinstance(r.get(k), bool) for r in records)]
    if not keys:
        return None
    cols = min(2, len(keys))
    rows = math.ceil(len(keys) / cols)
    fig = Figure(figsize=(5 * cols, 3 * rows), layout="constrained")
    FigureCanvasAgg(fig)
    for i, key in enumerate(keys):
        ax = fig.add_subplot(rows, cols, i + 1)
        points = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
        ax.plot([p[0] for p in points], [p[1] for p in points])
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if key == "loss" and all(p[1] > 0 for p in points):
            ax.set_yscale("log")
    png = Path(png_path)
    fig.savefig(png, dpi=100)
    return png
