"""`omnivision eval --model ... --tasks ...` end to end on a tiny random checkpoint: the files it
writes with `--limit`, the same files from two processes under torchrun (gloo on CPU), endpoint runs
(its progress bar, the MMMU fallback option, an empty task), the command going through the runner's
one sequence (`runner.evaluate`), and bad input failing with `error:` before any model is loaded."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from omnivision.cli import model_args
from omnivision.cli.main import main
from tests.chat_server import ChatServer
from tests.conftest import REPO
from tests.eval.tiny_run import write_benchmarks, write_checkpoint, write_mmmu, write_mmvet

TASKS = "pope,scienceqa_img,chartqa"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval-run")
    return {"root": root, "model": write_checkpoint(root / "ckpt"),
            "data": write_benchmarks(root / "data", n=5)}


def eval_args(setup, out, *extra) -> list[str]:
    return ["eval", "--model", str(setup["model"]), "--dtype", "float32", "--device", "cpu",
            "--tasks", TASKS, "--data", str(setup["data"]), "--out", str(out), *extra]


@pytest.fixture(scope="module")
def single(setup):
    """One process, --limit 3."""
    out = setup["root"] / "single"
    assert main(eval_args(setup, out, "--limit", "3", "--batch", "2", "--no-progress")) == 0
    return out


def lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_limit_run_writes_predictions_scores_and_report(single):
    results = json.loads((single / "results.json").read_text())
    for task in TASKS.split(","):
        predictions = lines(single / task / "predictions.jsonl")
        assert [r["id"] for r in predictions] == ["0", "1", "2"], task
        assert all(isinstance(r["prediction"], str) and r["prompt"] for r in predictions)
        scored = lines(single / task / "scored.jsonl")
        assert [r["id"] for r in scored] == ["0", "1", "2"] and all("score" in r for r in scored)
        assert results["tasks"][task]["n"] == 3 and results["tasks"][task]["status"] == "scored"
    assert results["metadata"]["limit"] == 3 and results["metadata"]["model"]["backend"] == "local"
    assert results["metadata"]["tasks"] == TASKS.split(",")
    assert "| POPE | accuracy |" in (single / "report.md").read_text()
    assert (single / "report.png").is_file()


@pytest.mark.long
def test_two_processes_under_torchrun_match_one(setup, single):
    out = setup["root"] / "torchrun"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    # a different batch size too: answers do not depend on how samples are grouped
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "omnivision", *eval_args(setup, out, "--limit", "3", "--batch", "1", "--no-progress")]
    proc = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "(process 1 of 2)" in proc.stderr  # it did run as two processes
    for task in TASKS.split(","):
        for name in ("predictions.jsonl", "scored.jsonl", "run.json"):
            assert (out / task / name).read_bytes() == (single / task / name).read_bytes(), (task, name)
        assert sorted(p.name for p in (out / task).iterdir()) == ["predictions.jsonl", "run.json",
                                                                   "scored.jsonl"]
    one, two = (json.loads((d / "results.json").read_text()) for d in (single, out))
    assert two["tasks"].keys() == one["tasks"].keys()
    for task in one["tasks"]:
        assert two["tasks"][task]["metrics"] == one["tasks"][task]["metrics"]
    assert two["metadata"]["processes"] == 2


def test_endpoint_run_with_progress_bar(setup, tmp_path, capsys):
    server = ChatServer(lambda n, body: (200, "Yes"))
    try:
        code = main(["eval", "--endpoint", server.url, "--endpoint-model", "peer", "--endpoint-key-env",
                     "NO_SUCH_KEY_VAR", "--tasks", "pope", "--data", str(setup["data"]), "--out",
                     str(tmp_path), "--limit", "2"])
    finally:
        server.close()
    out, err = capsys.readouterr()
    assert code == 0
    assert "2/2" in err and "100%" in err  # tqdm's bar, with its time estimate
    # every answer "Yes": lmms-eval lowercases it to "yes"; gold yes, no -> accuracy 1/2
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["tasks"]["pope"]["metrics"]["accuracy"] == 0.5
    assert results["metadata"]["model"] == {"backend": "endpoint", "url": server.url + "/chat/completions",
                                            "model": "peer", "served_model": "served-model", "seed": 1234}
    assert "| POPE | accuracy | 50.0 | 2 |" in out


def test_the_command_runs_the_runners_one_sequence(setup, tmp_path, monkeypatch):
    """`omnivision eval` goes through `runner.evaluate`, the sequence tests/eval/test_runner.py
    covers; the model is made for the device the runner gives it."""
    from omnivision.eval import runner

    calls = []
    real = runner.evaluate

    def spy(tasks, model, settings, options=None, device="auto"):
        calls.append((tuple(t.name for t in tasks), device, options["limit"]))
        return real(tasks, model, settings, options, device)

    monkeypatch.setattr(runner, "evaluate", spy)
    assert main(eval_args(setup, tmp_path, "--limit", "1", "--no-progress")) == 0
    assert calls == [(tuple(TASKS.split(",")), "cpu", 1)]
    assert json.loads((tmp_path / "results.json").read_text())["metadata"]["model"]["backend"] == "local"


@pytest.mark.parametrize("extra, message", [
    (["--tasks", "pope,nope"], "unknown task 'nope'"),
    (["--tasks", "pope", "--data", "{root}/missing"], "missing: no such data folder"),
    (["--tasks", "mmvet", "--judge-url", "http://127.0.0.1:9/v1"], "--judge-url needs --judge-model"),
    (["--tasks", "pope", "--endpoint", "http://127.0.0.1:9/v1"], "either --model or --endpoint"),
    (["--tasks", "pope", "--limit", "-1"], "limit must be a whole number >= 0"),
    (["--tasks", "pope", "--batch", "0"], "batch must be >= 1"),
])
def test_bad_input_fails_before_the_model_is_loaded(setup, tmp_path, capsys, monkeypatch, extra, message):
    def no_load(args):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(model_args, "load_model", no_load)
    argv = ["eval", "--model", str(setup["model"]), "--data", str(setup["data"]), "--out", str(tmp_path)]
    argv += [a.format(root=tmp_path) for a in extra]
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and message in err, err


def endpoint_run(server, data, out, *extra) -> int:
    return main(["eval", "--endpoint", server.url, "--endpoint-key-env", "NO_SUCH_KEY_VAR", "--data",
                 str(data), "--out", str(out), "--no-progress", *extra])


@pytest.mark.parametrize("fallback", ["random", "wrong"])
def test_mmmu_fallback_option(tmp_path, capsys, fallback):
    data = write_mmmu(tmp_path / "data")
    server = ChatServer(lambda n, body: (200, "B)"))  # no readable letter (reference 3.2)
    try:
        code = endpoint_run(server, data, tmp_path / "out", "--tasks", "mmmu_val",
                            "--mmmu-fallback", fallback)
    finally:
        server.close()
    assert code == 0, capsys.readouterr().err
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    entry = results["tasks"]["mmmu_val"]
    assert results["metadata"]["mmmu_fallback"] == entry["mmmu_fallback"] == fallback
    # one multiple-choice question (validation_Art_1) falls back
    assert entry["metrics"][f"{fallback}_fallbacks"] == 1


def test_an_empty_mmvet_run_is_no_error(tmp_path, capsys):
    data = write_mmvet(tmp_path / "data")
    server = ChatServer(lambda n, body: (200, "1.0"))
    try:
        code = endpoint_run(server, data, tmp_path / "out", "--tasks", "mmvet", "--limit", "0",
                            "--judge-url", server.url, "--judge-model", "judge",
                            "--judge-key-env", "NONE_SET", "--judge-prompt", str(write_prompt(tmp_path)))
    finally:
        server.close()
    out, err = capsys.readouterr()
    assert code == 0, err
    assert json.loads((tmp_path / "out" / "results.json").read_text())["tasks"]["mmvet"]["status"] == "empty"
    assert "| MM-Vet | GPT-judge score | empty | 0 |" in out


def write_prompt(tmp_path):
    path = tmp_path / "grader.txt"
    path.write_text("GRADER\n")
    return path


def test_score_action_still_works(single, capsys):
    scored = single / "pope" / "scored.jsonl"
    assert main(["eval", "score", "--task", "pope", "--input", str(scored)]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["n"] == 3
