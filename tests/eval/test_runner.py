"""The runner: predictions kept per task with the sample's fields, equal to the model's answers one
by one; scores and metrics worked out by hand; resuming after a smaller limit or a killed run, and
refusing another model or other settings; MM-Vet unscored without a judge and graded with one;
multi-image samples counted; images decoded only by the process that answers; earlier tasks kept in
the report; the MMMU test submission; empty tasks; checks that run before any model is loaded; the
order of the run's steps across processes (join, answer, leave, then the main process finishes)."""

from __future__ import annotations

import json
import random

import pytest
import torch

import omnivision
from omnivision.eval import predictions, run_record, runner
from omnivision.eval.evaluated_models import LocalModel
from omnivision.eval.scoring.mmvet import GraderPrompt, load_grader_prompt
from omnivision.eval.tasks import Generation, TaskDataError, UnknownTaskError, get_task, images
from omnivision.process_group import DistInfo
from tests.chat_server import ChatServer
from tests.eval.tasks.files import b64, image_cell, write_parquet, write_tsv
from tests.eval.tiny_run import (POPE_TYPES, ScriptedModel, short, write_benchmarks, write_checkpoint,
                                 write_mmmu, write_mmvet)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_benchmarks(tmp_path_factory.mktemp("bench"), n=6)


def settings(out, data_dir, **kw) -> runner.RunSettings:
    return runner.RunSettings(data_dir, out, progress=False, **{"batch": 2, **kw})


def records(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_predictions_are_the_models_answers_one_by_one(tmp_path, data):
    vlm = omnivision.load(write_checkpoint(tmp_path / "ckpt"), dtype="float32")
    tasks = [short("pope"), short("scienceqa_img"), short("chartqa")]
    runner.evaluate(tasks, LocalModel(vlm), settings(tmp_path / "out", data, limit=3))
    for task in tasks:
        expected = []
        for s in task.samples(data, limit=3):
            answer = vlm.answer(s.images[0], s.prompt, stop=s.generation.until,
                                max_new_tokens=s.generation.max_new_tokens).text
            expected.append({**s.fields, "id": s.id, "prompt": s.prompt, "prediction": answer,
                             "n_images": 1, "images_used": 1})
        assert records(tmp_path / "out" / task.name / "predictions.jsonl") == expected, task.name


POPE_ANSWERS = {"0": "yes", "1": "no", "2": "Yes.", "3": "no"}  # gold: yes, no, yes, no
SQA_ANSWERS = {"0": "A", "1": "B.", "2": "(C)", "3": "D"}  # gold: A, B, C, A
CHARTQA_ANSWERS = {"0": "0", "1": "10.4", "2": "21", "3": "x"}  # gold: 0, 10, 20, 30


def scripted_run(out, data_dir, name, answers, convention="lmms-eval"):
    results = runner.evaluate([get_task(name)], ScriptedModel(answers),
                              settings(out, data_dir, limit=4, convention=convention))
    return results["tasks"][name], [r["score"] for r in records(out / name / "scored.jsonl")]


def test_scores_and_metrics_by_hand(tmp_path, data):
    # POPE, lmms-eval: only an exact "yes"/"no" counts, so "Yes." is wrong and sits in no cell:
    # TP 1 (id 0), FP 0, FN 0 -> precision 1, recall 1, F1 1; accuracy 3/4
    pope, scores = scripted_run(tmp_path / "a", data, "pope", POPE_ANSWERS)
    assert scores == [1.0, 1.0, 0.0, 1.0]
    assert (pope["metrics"]["accuracy"], pope["metrics"]["f1_score"]) == (0.75, 1.0)
    assert pope["status"] == "scored" and pope["convention"] == "lmms-eval" and pope["n"] == 4
    # VLMEvalKit reads "Yes." as yes: all four right
    pope, _ = scripted_run(tmp_path / "b", data, "pope", POPE_ANSWERS, "vlmevalkit")
    assert pope["metrics"]["accuracy"] == 1.0
    # ScienceQA, lmms-eval: "A" and "B." are right; "(C)" is not read; "D" is wrong
    sqa, scores = scripted_run(tmp_path / "c", data, "scienceqa_img", SQA_ANSWERS)
    assert scores == [1.0, 1.0, 0.0, 0.0] and sqa["metrics"]["exact_match"] == 0.5
    # ChartQA: "0" equals gold "0" as text; 10.4 and 21 are within 5% of 10 and 20; "x" is wrong.
    # Human questions are ids 0 and 2, augmented 1 and 3.
    chart, scores = scripted_run(tmp_path / "d", data, "chartqa", CHARTQA_ANSWERS)
    assert scores == [1.0, 1.0, 1.0, 0.0]
    assert {k: chart["metrics"][k] for k in ("relaxed_overall", "relaxed_human_split",
                                              "relaxed_augmented_split")} == {
        "relaxed_overall": 0.75, "relaxed_human_split": 1.0, "relaxed_augmented_split": 0.5}
    results = json.loads((tmp_path / "d" / "results.json").read_text())
    assert results["tasks"]["chartqa"]["metrics"]["relaxed_overall"] == 0.75
    assert results["headline"][1]["ours"] == 75.0 and results["metadata"]["limit"] == 4


def test_resume_after_a_smaller_limit_and_after_a_kill(tmp_path, data):
    task = [get_task("chartqa")]
    fresh = tmp_path / "fresh"
    runner.evaluate(task, ScriptedModel(), settings(fresh, data, limit=4))
    fresh_bytes = (fresh / "chartqa" / "predictions.jsonl").read_bytes()

    out = tmp_path / "out"
    first = ScriptedModel()
    runner.evaluate(task, first, settings(out, data, limit=2))
    more = ScriptedModel()
    results = runner.evaluate(task, more, settings(out, data, limit=4))
    assert (first.asked, more.asked) == (["0", "1"], ["2", "3"])
    path = out / "chartqa" / "predictions.jsonl"
    assert path.read_bytes() == fresh_bytes and results["tasks"]["chartqa"]["n"] == 4

    # killed while writing the last record: it is dropped and answered again
    path.write_bytes(fresh_bytes[:-20])
    again = ScriptedModel()
    runner.evaluate(task, again, settings(out, data, limit=4))
    assert again.asked == ["3"] and path.read_bytes() == fresh_bytes

    # a smaller limit asks nothing, scores its samples only, and keeps the other predictions
    fewer = ScriptedModel()
    results = runner.evaluate(task, fewer, settings(out, data, limit=1))
    assert fewer.asked == [] and results["tasks"]["chartqa"]["n"] == 1
    assert len(records(path)) == 4 and len(records(out / "chartqa" / "scored.jsonl")) == 1


def test_leftover_shards_count_as_done_and_are_merged(tmp_path, data):
    # a killed two-process run left process 1's shard: one process picks up from it
    out = tmp_path / "out"
    main = out / "chartqa" / predictions.MAIN_NAME
    main.parent.mkdir(parents=True)
    shard = predictions.shard_path(main, 1)
    shard.write_text(predictions.encode({"id": "1", "question": "What is bar 1?", "answer": "10",
                                         "type": "augmented_test", "prediction": "10"}))
    model = ScriptedModel()
    results = runner.evaluate([get_task("chartqa")], model, settings(out, data, limit=3))
    assert model.asked == ["0", "2"] and not shard.exists()
    assert [r["id"] for r in records(main)] == ["0", "1", "2"]
    assert records(main)[1]["prediction"] == "10" and results["tasks"]["chartqa"]["n"] == 3


def test_mmvet_unscored_without_a_judge_and_graded_with_one(tmp_path):
    data = write_mmvet(tmp_path / "data")
    task = [short("mmvet")]
    results = runner.evaluate(task, ScriptedModel(), settings(tmp_path / "a", data))
    entry = results["tasks"]["mmvet"]
    assert entry["status"] == "unscored" and "judge" in entry["reason"] and entry["n"] == 2
    assert len(records(tmp_path / "a" / "mmvet" / "predictions.jsonl")) == 2
    assert not (tmp_path / "a" / "mmvet" / "scored.jsonl").exists()
    assert "mmvet: unscored" in (tmp_path / "a" / "report.md").read_text()

    prompt_file = tmp_path / "grader.txt"
    prompt_file.write_text("GRADER PROMPT TABLE")
    # the judge grades v2 (the "What is x?" row) 1.0 and v1 0.5
    server = ChatServer(lambda n, body: (200, "1.0" if "What is x?" in body["messages"][0]["content"]
                                         else "0.5 partly"))
    try:
        judge = runner.JudgeSettings(server.url, "judge-model", load_grader_prompt(prompt_file),
                                     runs=2, key_env=None)
        results = runner.evaluate(task, ScriptedModel(), settings(tmp_path / "b", data, judge=judge))
    finally:
        server.close()
    entry = results["tasks"]["mmvet"]
    # total = mean(0.5, 1.0) x 100; rec is v1 only, ocr and math v2 only
    assert entry["status"] == "scored" and entry["metrics"]["total"] == 75.0
    assert entry["metrics"]["capabilities"] == {"rec": 50.0, "ocr": 100.0, "math": 100.0}
    assert entry["judge"]["runs"] == 2 and entry["judge"]["served_model"] == "served-model"
    assert len(server.bodies()) == 4  # 2 samples x 2 runs
    assert all(b["messages"][0]["content"].startswith("GRADER PROMPT TABLE\n") for b in server.bodies())
    scored = records(tmp_path / "b" / "mmvet" / "scored.jsonl")
    assert [r["score"] for r in scored] == [0.5, 1.0]
    assert [g["replies"] for g in scored[0]["grades"]] == [["0.5 partly"], ["0.5 partly"]]
    assert results["headline"][0]["ours"] == 75.0
    # judge failures are in the report, not only in results.json
    assert ("mmvet: judge failures, each scored 0.0: 0 grades without a usable score, 0 endpoint "
            "errors.") in (tmp_path / "b" / "report.md").read_text()


def test_multi_image_samples_are_counted(tmp_path):
    data = write_mmmu(tmp_path / "data")
    model = ScriptedModel({"validation_Art_1": "B", "validation_Math_2": "white"}, images=1)
    results = runner.evaluate([get_task("mmmu_val")], model, settings(tmp_path / "out", data))
    entry = results["tasks"]["mmmu_val"]
    assert entry["images_dropped"] == 1 and entry["metrics"]["overall"] == 1.0
    first = records(tmp_path / "out" / "mmmu_val" / "predictions.jsonl")[0]
    assert (first["n_images"], first["images_used"]) == (2, 1)
    assert "mmmu_val: 1 of 2 samples have several images" in (tmp_path / "out" / "report.md").read_text()


def test_a_per_strategy_pope_task_is_scored_by_the_pope_rules(tmp_path):
    write_parquet(tmp_path / "POPE/Full/random-00000-of-00001.parquet", {
        "id": ["0", "1"], "question_id": ["q0", "q1"], "question": ["Is there a dog?"] * 2,
        "answer": ["yes", "no"], "image": [image_cell("red")] * 2, "category": ["random"] * 2}, POPE_TYPES)
    results = runner.evaluate([get_task("pope_random")], ScriptedModel({"0": "yes", "1": "yes"}),
                              settings(tmp_path / "o", tmp_path))
    metrics = results["tasks"]["pope_random"]["metrics"]
    # one true positive, one false positive: accuracy 1/2, precision 1/2, recall 1
    assert (metrics["accuracy"], metrics["precision"], metrics["recall"]) == (0.5, 0.5, 1.0)


def test_checks_before_any_model(tmp_path, data):
    with pytest.raises(UnknownTaskError, match="unknown task 'popes'"):
        runner.resolve_tasks(["pope", "popes"])
    with pytest.raises(ValueError, match="task named twice: pope"):
        runner.resolve_tasks(["pope", "chartqa", "pope"])
    with pytest.raises(TaskDataError, match="no such data folder"):
        runner.check_data([get_task("pope")], tmp_path / "missing")
    with pytest.raises(TaskDataError, match="no data found"):
        runner.check_data([get_task("pope"), get_task("mmvet")], data)
    runner.check_data([get_task("pope"), get_task("chartqa")], data)
    with pytest.raises(ValueError, match="batch must be >= 1"):
        runner.RunSettings(data, tmp_path, batch=0)


def test_repeated_sample_ids_are_refused(tmp_path):
    write_parquet(tmp_path / "POPE/data/test-00000-of-00001.parquet", {
        "id": ["7", "7"], "question_id": ["a", "b"], "question": ["Q?", "Q?"], "answer": ["yes", "no"],
        "image": [image_cell("red")] * 2, "category": ["random"] * 2}, POPE_TYPES)
    with pytest.raises(TaskDataError, match="sample id '7' appears twice"):
        runner.evaluate([get_task("pope")], ScriptedModel(), settings(tmp_path / "o", tmp_path))


class LookingModel(ScriptedModel):
    """A scripted model that looks at each sample's first image, as a real one does."""

    def predict(self, samples):
        for s in samples:
            s.images[0].getpixel((0, 0))
        return super().predict(samples)


def test_a_process_decodes_only_the_images_of_its_own_samples(tmp_path, data, monkeypatch):
    decoded = []
    real = images._open
    monkeypatch.setattr(images, "_open", lambda *a: decoded.append(a[1]) or real(*a))
    # process 0 of 2 with 4 samples answers ids 0 and 2: two images decoded, once each (listing
    # the ids and skipping the other process's samples decodes none)
    order = runner.predict_task(get_task("chartqa"), LookingModel(), settings(tmp_path / "o", data, limit=4),
                                rank=0, world=2)
    assert order == ["0", "1", "2", "3"] and len(decoded) == 2
    assert ": row 0" in decoded[0] and ": row 2" in decoded[1]


class OtherModel(ScriptedModel):
    def describe(self) -> dict:
        return {"backend": "scripted", "name": "other"}


def test_run_json_refuses_another_model_or_other_settings(tmp_path, data):
    out = tmp_path / "out"
    runner.evaluate([short("chartqa")], ScriptedModel(), settings(out, data, limit=2))
    stored = json.loads((out / "chartqa" / "run.json").read_text())
    assert stored == {"model": {"backend": "scripted"},
                      "generation": {"max_new_tokens": 6, "temperature": 0.0, "do_sample": False,
                                     "num_beams": 1, "until": ["\n\n"]}}
    # the same model and settings resume (nothing left to ask)
    again = ScriptedModel()
    runner.evaluate([short("chartqa")], again, settings(out, data, limit=2))
    assert again.asked == []
    with pytest.raises(run_record.RunMismatchError,
                       match=r"chartqa holds predictions of another model or other settings "
                             r"\(model.name: None then, 'other' now\); use another --out, or delete"):
        runner.evaluate([short("chartqa")], OtherModel(), settings(out, data, limit=2))
    with pytest.raises(run_record.RunMismatchError, match="generation.max_new_tokens: 6 then, 9 now"):
        runner.evaluate([short("chartqa", max_new_tokens=9)], ScriptedModel(), settings(out, data, limit=2))
    assert len(records(out / "chartqa" / "predictions.jsonl")) == 2  # nothing was added


def test_run_identity_leaves_out_what_does_not_change_answers():
    described = {"backend": "local", "source": "ckpt", "seed": 7, "device": "cuda:1",
                 "served_model": "m"}
    greedy, sampled = Generation(8), Generation(8, temperature=0.5, do_sample=True)
    assert run_record.run_identity(described, greedy)["model"] == {"backend": "local", "source": "ckpt"}
    assert run_record.run_identity(described, sampled)["model"] == {"backend": "local", "source": "ckpt",
                                                                   "seed": 7}


def test_a_rerun_with_fewer_tasks_keeps_the_other_results(tmp_path, data):
    out = tmp_path / "out"
    first = runner.evaluate([get_task("pope"), get_task("chartqa")], ScriptedModel(POPE_ANSWERS),
                            settings(out, data, limit=4))
    second = runner.evaluate([get_task("chartqa")], ScriptedModel(CHARTQA_ANSWERS),
                             settings(out, data, limit=4))
    saved = json.loads((out / "results.json").read_text())
    assert saved["tasks"].keys() == {"pope", "chartqa"} and saved["metadata"]["tasks"] == ["chartqa"]
    assert saved["tasks"]["pope"] == first["tasks"]["pope"]  # kept as the first run wrote it
    assert saved["tasks"]["chartqa"] == second["tasks"]["chartqa"]
    text = (out / "report.md").read_text()
    assert "| POPE | accuracy | 75.0 | 4 |" in text and "| ChartQA | relaxed accuracy (test) |" in text
    assert saved["tasks"]["pope"]["created"] == first["metadata"]["created"]


def test_mmmu_test_writes_a_submission_file(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    write_tsv(root / "MMMU_TEST.tsv", ["index", "id", "image", "question", "A", "B"], [
        ["0", "test_Art_1", b64("red"), "Which is it? <image 1>", "same", "different"],
        ["1", "test_Math_2", b64("white"), "How many? <image 1>", "", ""],
    ])
    model = ScriptedModel({"test_Art_1": "B)", "test_Math_2": "The answer is 4"})
    out = tmp_path / "out"
    results = runner.evaluate([short("mmmu_test")], model, settings(out, root))
    entry = results["tasks"]["mmmu_test"]
    path = out / "mmmu_test" / "submission.json"
    assert entry["submission"] == str(path) and entry["status"] == "unscored"
    # by hand: "B)" has no readable letter, so the letter drawn by random.Random(<the id>) from
    # A, B (the scorer's fallback); the open answer's key "4" is read as the number 4.0
    expected_letter = random.Random("test_Art_1").choice(["A", "B"])
    assert json.loads(path.read_text()) == {"test_Art_1": expected_letter, "test_Math_2": [4.0]}
    assert entry["random_fallbacks"] == 1
    assert f"submission file for the MMMU evaluation server: {path}" in (out / "report.md").read_text()
    # with the "wrong" fallback the unread answer is sent as no letter at all
    wrong = runner.evaluate([short("mmmu_test")], ScriptedModel(), settings(out, root, mmmu_fallback="wrong"))
    assert json.loads(path.read_text())["test_Art_1"] == ""
    assert wrong["tasks"]["mmmu_test"]["wrong_fallbacks"] == 1


def test_an_empty_task_gives_an_empty_entry(tmp_path):
    data = write_mmvet(tmp_path / "data")
    server = ChatServer(lambda n, body: (200, "1.0"))
    try:
        judge = runner.JudgeSettings(server.url, "judge-model", GraderPrompt("P", "test"), key_env=None)
        results = runner.evaluate([short("mmvet")], ScriptedModel(), settings(tmp_path / "o", data, limit=0,
                                                                              judge=judge))
    finally:
        server.close()
    entry = results["tasks"]["mmvet"]
    assert (entry["status"], entry["n"]) == ("empty", 0) and server.bodies() == []
    assert "mmvet: no samples in this run" in (tmp_path / "o" / "report.md").read_text()


class Steps:
    """Stands in for the process group of one process of a two-process torchrun run, and records
    the order of the run's steps."""

    def __init__(self, rank: int) -> None:
        self.rank, self.seen = rank, []

    def setup(self, device):
        self.seen.append(f"setup {device}")
        return DistInfo(self.rank, 2, self.rank, torch.device("cpu"))

    def cleanup(self):
        self.seen.append("cleanup")

    def barrier(self):
        self.seen.append("barrier")


@pytest.mark.parametrize("rank", [0, 1])
def test_evaluate_joins_answers_leaves_then_the_main_process_finishes(tmp_path, data, monkeypatch, rank):
    """The one sequence `omnivision eval` runs (tests/cli/test_eval_run.py runs it under torchrun):
    join the group, make the model for this process's device, answer, leave the group (a barrier:
    every process has answered), and only then, on the main process, merge, score and report."""
    steps = Steps(rank)
    monkeypatch.setattr(runner, "process_group", steps)
    real_predict, real_finish = runner.predict, runner.finish
    monkeypatch.setattr(runner, "predict", lambda *a: steps.seen.append("predict") or real_predict(*a))
    monkeypatch.setattr(runner, "finish", lambda *a: steps.seen.append("finish") or real_finish(*a))

    def factory(device):
        steps.seen.append(f"model on {device}")
        return ScriptedModel()

    results = runner.evaluate([short("chartqa")], factory, settings(tmp_path, data, limit=2), device="cpu")
    expected = ["setup cpu", "model on cpu", "predict", "cleanup"] + (["finish"] if rank == 0 else [])
    assert steps.seen == expected
    assert (results is None) == (rank != 0)


def test_a_process_group_joined_before_is_kept(tmp_path, data, monkeypatch):
    steps = Steps(0)
    monkeypatch.setattr(runner, "process_group", steps)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(runner, "place", lambda: (0, 1))
    model = ScriptedModel()
    results = runner.evaluate([short("chartqa")], model, settings(tmp_path, data, limit=2))
    assert steps.seen == ["setup auto", "barrier"] and model.asked == ["0", "1"]
    assert results["tasks"]["chartqa"]["n"] == 2
