"""`omnivision eval score` end to end: records written back with every field kept, the metrics as
JSON on the last stdout line, the convention and MMMU fallback switches, and bad input (an --out
that is a folder included) exiting 2 with `error: ...`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from omnivision.cli.main import main

POPE = [
    {"question_id": 7, "question": "Is there a dog?", "answer": "yes", "category": "random",
     "image": "coco/1.jpg", "prediction": "Yes, there is a dog."},
    {"question_id": 8, "question": "Is there a cat?", "answer": "no", "category": "random",
     "image": "coco/1.jpg", "prediction": "no"},
]


def write(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def run(capsys, *argv: str) -> tuple[int, list[str], str]:
    code = main(["eval", *argv])
    out, err = capsys.readouterr()
    return code, out.splitlines(), err


def test_scores_and_writes_records(tmp_path, capsys):
    src, out = write(tmp_path / "pope.jsonl", POPE), tmp_path / "scored.jsonl"
    code, lines, _ = run(capsys, "score", "--task", "pope", "--input", str(src), "--out", str(out))
    assert code == 0
    metrics = json.loads(lines[-1])
    # lmms-eval: the sentence is not exactly "yes": 1 of 2 right, no TP so precision 0
    assert metrics["accuracy"] == 0.5 and metrics["precision"] == 0.0
    assert metrics["random"]["n"] == 2
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [{k: v for k, v in r.items() if k not in ("score", "parsed")} for r in rows] == POPE
    assert [(r["score"], r["parsed"]) for r in rows] == [(0.0, None), (1.0, "no")]
    # written through a temporary file that is renamed: nothing else is left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pope.jsonl", "scored.jsonl"]


def test_vlmevalkit_convention(tmp_path, capsys):
    src = write(tmp_path / "pope.jsonl", POPE)
    code, lines, _ = run(capsys, "score", "--task", "pope", "--input", str(src),
                         "--convention", "vlmevalkit")
    assert code == 0
    metrics = json.loads(lines[-1])
    assert metrics["accuracy"] == 1.0 and metrics["f1_score"] == 1.0


def test_mmmu_dev_alias(tmp_path, capsys):
    rows = [{"id": "dev_Math_1", "question_type": "multiple-choice", "options": "['1', '2']",
             "answer": "B", "prediction": "(B)"},
            {"id": "dev_Math_2", "question_type": "open", "options": "[]", "answer": "4",
             "prediction": "The result is 4.0"}]
    src = write(tmp_path / "mmmu.jsonl", rows)
    code, lines, _ = run(capsys, "score", "--task", "mmmu_dev", "--input", str(src))
    metrics = json.loads(lines[-1])
    assert code == 0 and metrics["overall"] == 1.0
    assert metrics["subjects"]["Math"] == {"acc": 1.0, "num": 2}
    assert metrics["random_fallbacks"] == 0


def test_bad_record_exits_2_and_leaves_out_untouched(tmp_path, capsys):
    src = write(tmp_path / "pope.jsonl", [POPE[0], {"answer": "no", "question": "q"}])
    out = tmp_path / "scored.jsonl"
    out.write_text("old\n")
    code, lines, err = run(capsys, "score", "--task", "pope", "--input", str(src),
                           "--out", str(out))
    assert code == 2
    assert err.strip() == f"error: {src}:2: missing field 'prediction'"
    assert lines == []
    assert out.read_text() == "old\n"


def test_missing_input_exits_2(tmp_path, capsys):
    missing = str(tmp_path / "none.jsonl")
    code, _, err = run(capsys, "score", "--task", "chartqa", "--input", missing)
    assert code == 2 and err.startswith("error: ") and "none.jsonl" in err


def test_no_action_is_a_usage_error(capsys):
    code, _, err = run(capsys)
    assert code == 2 and err.startswith("error: eval needs an action") and "score" in err


def test_unknown_task_or_convention_is_refused(tmp_path, capsys):
    src = write(tmp_path / "pope.jsonl", POPE)
    for argv in (["--task", "mmvet", "--input", str(src)],
                 ["--task", "pope", "--input", str(src), "--convention", "vqa"]):
        with pytest.raises(SystemExit) as e:
            main(["eval", "score", *argv])
        assert e.value.code == 2
        assert "error:" in capsys.readouterr().err


def test_out_that_is_a_folder_exits_2_naming_it(tmp_path, capsys):
    src = write(tmp_path / "pope.jsonl", POPE)
    folder = tmp_path / "scored"
    folder.mkdir()
    code, lines, err = run(capsys, "score", "--task", "pope", "--input", str(src), "--out", str(folder))
    assert code == 2 and err.startswith(f"error: {folder} is a folder") and ".tmp" not in err
    assert lines == [] and list(folder.iterdir()) == []


def test_mmmu_fallback_switch(tmp_path, capsys):
    rows = [{"id": "validation_Art_1", "question_type": "multiple-choice", "options": "['1', '2']",
             "answer": "A", "prediction": "B)"}]
    src = write(tmp_path / "mmmu.jsonl", rows)
    code, lines, _ = run(capsys, "score", "--task", "mmmu_val", "--input", str(src),
                         "--mmmu-fallback", "wrong")
    metrics = json.loads(lines[-1])
    assert code == 0 and (metrics["overall"], metrics["wrong_fallbacks"]) == (0.0, 1)
    code, lines, _ = run(capsys, "score", "--task", "mmmu_val", "--input", str(src))
    assert code == 0 and json.loads(lines[-1])["random_fallbacks"] == 1
