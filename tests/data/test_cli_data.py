"""`omnivision data shapes` and `omnivision data check` through the command line."""

from __future__ import annotations

import json

import pytest

from omnivision.cli.main import main
from omnivision.data.shapes_dataset import FILES


def test_shapes_writes_the_dataset_and_prints_one_line(tmp_path, capsys):
    out = tmp_path / "ds"
    assert main(["data", "shapes", "--out", str(out), "--n", "12", "--seed", "4",
                 "--image-size", "48", "--chart-fraction", "0.5"]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 1 and printed[0].startswith(f"wrote 12 scenes (6 shapes, 6 charts) to {out}")
    assert all((out / name).is_file() for name in FILES)
    assert len(list((out / "images").glob("*.png"))) == 12
    meta = json.loads((out / "meta.json").read_text())
    assert (meta["n"], meta["seed"], meta["image_size"]) == (12, 4, 48)

    assert main(["data", "check", str(out / "sft.json"), "--kind", "conversations",
                 "--images", str(out)]) == 0
    n = meta["counts"]["sft_conversations"]
    assert n > 12  # several conversations per image
    assert f"{n} records (conversations), all valid; images: kept {n} of {n}" in capsys.readouterr().out


def test_shapes_can_ask_every_question_one_at_a_time(tmp_path, capsys):
    args = ["data", "shapes", "--n", "6", "--seed", "4", "--image-size", "48", "--chart-fraction", "0"]
    assert main(args + ["--out", str(tmp_path / "one")]) == 0
    assert main(args + ["--out", str(tmp_path / "every"), "--sft-questions", "every", "--max-turns", "1"]) == 0
    one, every = (json.loads((tmp_path / d / "meta.json").read_text()) for d in ("one", "every"))
    assert (one["sft_questions"], every["sft_questions"]) == ("one", "every")
    assert (one["max_turns"], every["max_turns"]) == (12, 1)
    assert every["counts"]["sft_turns"] > one["counts"]["sft_turns"]
    assert every["counts"]["sft_turns"] == every["counts"]["sft_conversations"]
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(args + ["--out", str(tmp_path / "bad"), "--sft-questions", "all"])
    assert "invalid choice: 'all'" in capsys.readouterr().err


def test_check_reports_a_bad_record_as_one_error_line(tmp_path, capsys):
    path = tmp_path / "c.jsonl"
    path.write_text('{"image": "a.png", "caption": "ok"}\n{"image": "b.png"}\n')
    assert main(["data", "check", str(path), "--kind", "captions"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {path}:2: missing field 'caption'"]


def test_check_skip_bad_counts_missing_images(tmp_path, capsys):
    path = tmp_path / "c.jsonl"
    path.write_text('{"image": "gone.png", "caption": "ok"}\n')
    assert main(["data", "check", str(path), "--kind", "captions", "--images", str(tmp_path)]) == 2
    assert "c.jsonl:1: image 'gone.png' not found" in capsys.readouterr().err
    assert main(["data", "check", str(path), "--kind", "captions", "--images", str(tmp_path),
                 "--skip-bad"]) == 0
    assert "skipped 1 (missing 1)" in capsys.readouterr().out


def test_bad_arguments(tmp_path, capsys):
    assert main(["data", "shapes", "--out", str(tmp_path), "--n", "0", "--seed", "1"]) == 2
    assert "n must be at least 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["data"])
