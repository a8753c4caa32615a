"""The registry and file-level scoring: task names, line-numbered errors (a bad POPE category
included), records written back, MMMU's fallback option, and an --out that is a folder."""

from __future__ import annotations

import json
import re

import pytest

from omnivision.eval.scoring import (SCORERS, chartqa, mmmu, pope, scienceqa, score_options,
                                     scorer_for, shapes_qa)
from omnivision.eval.scoring.score_file import score_file


def test_registry_maps_lmms_eval_task_names():
    assert SCORERS == {"pope": pope, "pope_adv": pope, "pope_pop": pope, "pope_random": pope,
                       "scienceqa_img": scienceqa, "mmmu_val": mmmu, "mmmu_dev": mmmu,
                       "chartqa": chartqa, "shapes_qa": shapes_qa, "shapes_pope": pope}
    with pytest.raises(ValueError, match="no scorer for task 'mmvet'"):
        scorer_for("mmvet")


def write(path, rows) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def test_records_come_back_with_score_and_parsed(tmp_path):
    src = write(tmp_path / "in.jsonl", [
        {"question": "q", "answer": "12", "type": "human_test", "prediction": "12.5", "x": [1]},
        "",  # blank lines are skipped
        {"question": "q", "answer": "dog", "type": "augmented_test", "prediction": "cat"},
    ])
    out = tmp_path / "out.jsonl"
    result = score_file("chartqa", src, "lmms-eval", out)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows[0] == {"question": "q", "answer": "12", "type": "human_test",
                       "prediction": "12.5", "x": [1], "score": 1.0, "parsed": 12.5}
    assert rows[1]["score"] == 0.0 and rows[1]["parsed"] is None
    assert result.metrics["relaxed_overall"] == 0.5


@pytest.mark.parametrize("rows, message", [
    ([{"answer": "yes", "prediction": "yes"}, {"answer": "no"}],
     ":2: missing field 'prediction'"),
    ([{"answer": "yes", "prediction": "yes"}, "", '{"answer": "no", '],
     ":3: invalid JSON"),
    ([{"answer": "yes", "prediction": "yes"}, 42], ":2: expected a JSON object, got int"),
    ([{"answer": "perhaps", "prediction": "yes"}], ":1: 'answer' must be 'yes' or 'no'"),
    # the category is checked by `score`, so its error names the record's line too
    ([{"answer": "yes", "prediction": "yes"}, {"answer": "no", "prediction": "no", "category": 3}],
     ":2: 'category' must be a string, got 3"),
    ([], ":1: no records to score"),
])
def test_bad_records_name_the_line(tmp_path, rows, message):
    src = write(tmp_path / "bad.jsonl", rows)
    with pytest.raises(ValueError, match="^" + re.escape(src + message)):
        score_file("pope", src)


def test_out_that_is_a_folder_is_refused_by_name(tmp_path):
    src = write(tmp_path / "in.jsonl", [{"answer": "yes", "prediction": "yes"}])
    (tmp_path / "scored").mkdir()
    with pytest.raises(ValueError, match="^" + re.escape(f"{tmp_path / 'scored'} is a folder")):
        score_file("pope", src, out=tmp_path / "scored")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "scored"]  # no temp file left


def test_mmmu_fallback_option(tmp_path):
    # "B)" has no readable letter (docs/benchmark-scoring.md 3.2): random draws a letter, wrong gives none
    rows = [{"id": f"validation_Art_{i}", "question_type": "multiple-choice", "options": "['x', 'y']",
             "answer": "A", "prediction": "B)"} for i in range(20)]
    src = write(tmp_path / "mmmu.jsonl", rows)
    drawn = score_file("mmmu_val", src)
    assert drawn.metrics["random_fallbacks"] == 20 and drawn.metrics["wrong_fallbacks"] == 0
    assert 0 < drawn.metrics["overall"] < 1  # 20 draws between A and B are not all alike
    wrong = score_file("mmmu_val", src, mmmu_fallback="wrong")
    assert (wrong.metrics["overall"], wrong.metrics["wrong_fallbacks"]) == (0.0, 20)
    assert {r["parsed"]["letter"] for r in wrong.records} == {None}
    assert score_options("pope", "wrong") == {}
    assert score_options("mmmu_dev", "wrong") == {"fallback": "wrong"}
    with pytest.raises(ValueError, match="unknown MMMU fallback 'never'"):
        score_file("mmmu_val", src, mmmu_fallback="never")
