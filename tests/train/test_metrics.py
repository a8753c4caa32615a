"""metrics.jsonl truncation on resume (no duplicate steps, torn lines dropped) and the curves PNG."""

from __future__ import annotations

import json
import sys

import pytest

from omnivision.train.metrics import MetricsLog, plot_curves, read_records


def test_resume_truncates_after_the_checkpoint_and_drops_a_torn_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    with MetricsLog(path, resume_step=0) as log:
        for step in range(1, 6):
            log.log({"step": step, "loss": 1.0 / step})
    with open(path, "a") as fh:
        fh.write('{"step": 6, "lo')  # killed mid-write
    log = MetricsLog(path, resume_step=3)
    assert log.last == {"step": 3, "loss": 1.0 / 3}
    log.log({"step": 4, "loss": 0.2})
    log.close()
    assert [r["step"] for r in read_records(path)] == [1, 2, 3, 4]
    assert json.loads(path.read_text().splitlines()[-1]) == {"step": 4, "loss": 0.2}
    MetricsLog(path, resume_step=0).close()  # a fresh run starts empty
    assert path.read_text() == ""


def test_plot_curves_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "metrics.jsonl"
    with MetricsLog(path) as log:
        for step in range(1, 11):
            log.log({"step": step, "loss": 2.0 / step, "lr": 1e-3, "grad_norm": 1.0, "note": "text"})
    png = plot_curves(path, tmp_path / "curves.png")
    assert png == tmp_path / "curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_curves_without_matplotlib_is_a_note(tmp_path, monkeypatch, caplog):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 1.0}\n')
    with caplog.at_level("INFO", logger="omnivision.train.metrics"):
        assert plot_curves(path, tmp_path / "curves.png") is None
    assert "matplotlib" in caplog.text and not (tmp_path / "curves.png").exists()
