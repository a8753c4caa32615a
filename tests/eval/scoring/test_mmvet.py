"""MM-Vet judging (`mmvet_prompt`, `mmvet_judge`, `mmvet`): where the grader prompt comes from (a
file, an installed lmms-eval, or a clear error), the judge query, reply parsing, bounded re-asks
against a scripted judge server, raw replies kept, and N-run aggregation worked out by hand."""

from __future__ import annotations

import hashlib
import importlib.util
import re
import sys
import threading
import types
from collections import Counter

import pytest

from omnivision.chat_client import ChatClient
from omnivision.eval.scoring.mmvet import aggregate
from omnivision.eval.scoring.mmvet_judge import (ROW_END_OFFICIAL, Grade, MMVetJudge, MMVetRecord,
                                                 judge_query, mmvet_records, parse_score)
from omnivision.eval.scoring.mmvet_prompt import MMVetError, load_grader_prompt
from omnivision.eval.scoring.protocol import FieldError
from tests.chat_server import ChatServer

PROMPT = "Test grader: score the last row.\nQ | GT | P | C\n"


# --- the grader prompt ----------------------------------------------------------------------------

def test_prompt_file_is_used_byte_for_byte(tmp_path):
    raw = b"Grade it \xe2\x80\x94 carefully.\r\nQ | GT | P | C\n"
    path = tmp_path / "grader.txt"
    path.write_bytes(raw)
    prompt = load_grader_prompt(path)
    assert prompt.text == raw.decode("utf-8")  # CRLF and the final newline kept
    assert str(path) in prompt.source
    assert prompt.sha256 == hashlib.sha256(raw).hexdigest()


def test_prompt_file_problems_name_the_file(tmp_path):
    with pytest.raises(MMVetError, match="missing.txt: cannot read"):
        load_grader_prompt(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text(" \n")
    with pytest.raises(MMVetError, match="empty.txt: the grader prompt file is empty"):
        load_grader_prompt(tmp_path / "empty.txt")
    (tmp_path / "latin1.txt").write_bytes(b"caf\xe9")
    with pytest.raises(MMVetError, match="latin1.txt: .*not UTF-8"):
        load_grader_prompt(tmp_path / "latin1.txt")


@pytest.fixture
def no_lmms_eval(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "lmms_eval" else real(name, *a))
    monkeypatch.delitem(sys.modules, "lmms_eval", raising=False)


def test_without_file_or_lmms_eval_the_error_names_both(no_lmms_eval):
    with pytest.raises(MMVetError, match=r"--judge-prompt FILE.*pip install lmms-eval"):
        load_grader_prompt()


@pytest.fixture
def fake_lmms_eval(tmp_path, monkeypatch):
    """Writes an lmms_eval package whose tasks/mmvet/utils.py holds the given source."""
    def make(utils_source: str):
        package = tmp_path / "site" / "lmms_eval"
        (package / "tasks" / "mmvet").mkdir(parents=True)
        for folder in (package, package / "tasks", package / "tasks" / "mmvet"):
            (folder / "__init__.py").write_text("")
        (package / "tasks" / "mmvet" / "utils.py").write_text(utils_source)
        monkeypatch.syspath_prepend(str(tmp_path / "site"))

    yield make
    for name in [n for n in sys.modules if n == "lmms_eval" or n.startswith("lmms_eval.")]:
        del sys.modules[name]


def test_lmms_eval_constant_is_read_without_running_the_module(fake_lmms_eval):
    # recent lmms-eval builds its own judge client when utils is imported; reading the literal
    # must not execute that (here: an import that would fail)
    fake_lmms_eval('MM_VET_PROMPT = """Fake grader.\n| a | b |\n"""\n'
                   'raise RuntimeError("a judge client that needs an API key")\n')
    prompt = load_grader_prompt()
    assert prompt.text == "Fake grader.\n| a | b |\n"
    assert prompt.source.startswith("lmms_eval ") and "tasks.mmvet.utils.MM_VET_PROMPT" in prompt.source
    assert "lmms_eval.tasks.mmvet.utils" not in sys.modules


def test_lmms_eval_constant_that_is_not_a_literal_is_imported(fake_lmms_eval):
    fake_lmms_eval('PART = "built "\nMM_VET_PROMPT = PART + "at import\\n"\n')
    assert load_grader_prompt().text == "built at import\n"
    assert "lmms_eval.tasks.mmvet.utils" in sys.modules


def test_lmms_eval_that_fails_to_import_gives_a_clear_error(fake_lmms_eval):
    fake_lmms_eval('import a_dependency_that_is_missing\nMM_VET_PROMPT = "x" * 3\n')
    with pytest.raises(MMVetError, match="cannot import lmms_eval.tasks.mmvet.utils .*prompt as a file"):
        load_grader_prompt()


def test_a_file_wins_over_lmms_eval(fake_lmms_eval, tmp_path):
    fake_lmms_eval('MM_VET_PROMPT = "from lmms-eval"\n')
    (tmp_path / "p.txt").write_text("from the file\n")
    assert load_grader_prompt(tmp_path / "p.txt").text == "from the file\n"


def test_lmms_eval_modules_already_in_sys_modules(monkeypatch):
    names = ["lmms_eval", "lmms_eval.tasks", "lmms_eval.tasks.mmvet", "lmms_eval.tasks.mmvet.utils"]
    for name in names:
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))  # no spec, no file
    sys.modules["lmms_eval.tasks.mmvet.utils"].MM_VET_PROMPT = "in memory\n"
    assert load_grader_prompt().text == "in memory\n"
    del sys.modules["lmms_eval.tasks.mmvet.utils"].MM_VET_PROMPT
    with pytest.raises(MMVetError, match="has no string MM_VET_PROMPT"):
        load_grader_prompt()


# --- the query and the reply ------------------------------------------------------------------------

def test_judge_query_by_hand():
    record = MMVetRecord("v1", "What is x?", "-1<AND>-5<OR>none", ("math",), "x = -1")
    # prompt, a newline, then: question | answer with spaces around the markers | prediction |
    assert judge_query("P\n", record) == "P\n\nWhat is x? | -1 <AND> -5 <OR> none | x = -1 |"
    assert judge_query("P\n", record, ROW_END_OFFICIAL).endswith("| x = -1 | ")


@pytest.mark.parametrize("reply, score", [
    ("0.5", 0.5), (" 1.0\n", 1.0), ("0.7 because it names both", 0.7), ("1", 1.0), ("0", 0.0),
    ("1.5", None), ("-0.1", None), ("nan", None), ("Score: 0.5", None), ("", None),
    ("0.5.", None),
    ("0.5\nbecause", None),  # tokens are split on spaces only, as the reference tools do
])
def test_parse_score(reply, score):
    assert parse_score(reply) == score


# --- judging against a scripted server --------------------------------------------------------------

@pytest.fixture
def judge_server():
    """A judge whose replies depend on the prediction (`PRED-<name>`) in the graded row: each
    request takes the next canned reply for it, and the last one repeats."""
    servers = []

    def make(canned: dict[str, list]):
        used, lock = Counter(), threading.Lock()

        def script(n, body):
            pred = re.findall(r"PRED-\w+", body["messages"][0]["content"])[-1]
            with lock:
                replies = canned[pred]
                reply = replies[min(used[pred], len(replies) - 1)]
                used[pred] += 1
            return reply if isinstance(reply, tuple) else (200, reply)

        servers.append(ChatServer(script))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


def rec(qid: str, caps, answer: str = "gt") -> dict:
    return {"question_id": qid, "question": f"question {qid}?", "answer": answer,
            "capability": caps, "prediction": f"PRED-{qid}"}


def make_judge(srv, **kwargs) -> MMVetJudge:
    client = ChatClient(srv.url, api_key_env=None, retries=0, backoff=0)
    return MMVetJudge(client, "judge-x", PROMPT, **kwargs)


def test_request_shape(judge_server):
    srv = judge_server({"PRED-q1": ["0.8"]})
    [[grade]] = make_judge(srv).judge([rec("q1", "rec", answer="a<OR>b")])
    assert grade == Grade("q1", 0, 0.8, "ok", ["0.8"], [0.0], "served-model")
    assert srv.bodies() == [{"model": "judge-x", "temperature": 0.0, "max_tokens": 128, "messages": [
        {"role": "user", "content": PROMPT + "\nquestion q1? | a <OR> b | PRED-q1 |"}]}]


def test_failed_replies_are_asked_again_warmer_and_all_kept(judge_server):
    srv = judge_server({"PRED-q1": ["Correctness: unclear", "1.5", "0.6 since it names one"]})
    [[grade]] = make_judge(srv, retry_suffix="\nDIGIT PLEASE").judge([rec("q1", "ocr")])
    assert (grade.score, grade.status) == (0.6, "ok")
    assert grade.replies == ["Correctness: unclear", "1.5", "0.6 since it names one"]
    assert grade.temperatures == [0.0, 0.5, 1.0]
    bodies = srv.bodies()
    assert [b["temperature"] for b in bodies] == [0.0, 0.5, 1.0]
    contents = [b["messages"][0]["content"] for b in bodies]
    assert contents[0].endswith("PRED-q1 |")  # the first ask has no suffix, re-asks do
    assert contents[1] == contents[2] == contents[0] + "\nDIGIT PLEASE"


def test_grading_always_ends(judge_server):
    # an out-of-range number forever makes lmms-eval's loop endless; here it is a failed try
    srv = judge_server({"PRED-q1": ["5"]})
    [[grade]] = make_judge(srv, max_tries=6).judge([rec("q1", "math")])
    assert (grade.score, grade.status) == (0.0, "unparsed")
    assert len(srv.requests) == 6 and grade.replies == ["5"] * 6
    assert grade.temperatures == [0.0, 0.5, 1.0, 1.5, 2.0, 2.0]  # capped at the API's maximum


def test_an_endpoint_failure_scores_zero_and_is_flagged(judge_server):
    srv = judge_server({"PRED-q1": [(400, "unknown model")]})
    [[grade]] = make_judge(srv).judge([rec("q1", "rec")])
    assert (grade.score, grade.status, grade.replies) == (0.0, "error", [])
    assert "HTTP 400" in grade.error and len(srv.requests) == 1


def test_two_runs_mean_std_and_capabilities_by_hand(judge_server):
    records = [rec("q1", "rec,ocr"), rec("q2", "ocr"), rec("q3", ["rec", "know"]), rec("q4", " ocr ")]
    # replies per record: run 0 then run 1 (one worker, so run 0 is graded first)
    srv = judge_server({"PRED-q1": ["1.0", "0.6"], "PRED-q2": ["0.5"], "PRED-q3": ["0.0", "0.4"],
                        "PRED-q4": ["0.5", "??", "??", "??"]})
    judge = make_judge(srv, runs=2, max_tries=3, concurrency=1)
    grades = judge.judge(records)
    assert [[g.score for g in run] for run in grades] == [[1.0, 0.5, 0.0, 0.5], [0.6, 0.5, 0.4, 0.0]]
    assert grades[1][3].replies == ["??", "??", "??"] and grades[1][3].status == "unparsed"

    scores = aggregate(records, grades)
    # run totals: (1 + .5 + 0 + .5) / 4 = 50.0 and (.6 + .5 + .4 + 0) / 4 = 37.5
    assert scores.runs == pytest.approx([50.0, 37.5])
    assert scores.total == pytest.approx(43.75)
    assert scores.std == pytest.approx(6.25)  # population std of two values: half their gap
    # rec = q1, q3: 50 and 50; ocr = q1, q2, q4: 200/3 and 110/3; know = q3: 0 and 40
    assert list(scores.capabilities) == ["rec", "ocr", "know"]
    assert scores.capabilities == pytest.approx({"rec": 50.0, "ocr": 155 / 3, "know": 20.0})
    assert scores.capability_std == pytest.approx({"rec": 0.0, "ocr": 15.0, "know": 20.0})
    # exact sets: {rec, ocr} = q1: (100 + 60) / 2; {ocr} = q2, q4: (50 + 25) / 2; {rec, know} = q3
    assert scores.combinations == pytest.approx({"rec_ocr": 80.0, "rec_know": 20.0, "ocr": 37.5})
    assert scores.count == 4 and scores.failures == {"unparsed": 1, "error": 0}
    assert scores.to_dict()["total"] == pytest.approx(43.75)


def test_one_run_has_zero_std_and_concurrency_keeps_order(judge_server):
    records = [rec(f"q{i}", "rec") for i in range(8)]
    srv = judge_server({f"PRED-q{i}": [f"0.{i}"] for i in range(8)})
    [grades] = make_judge(srv, concurrency=4).judge(records)
    assert [g.question_id for g in grades] == [f"q{i}" for i in range(8)]
    assert [g.score for g in grades] == [i / 10 for i in range(8)]
    scores = aggregate(records, [grades])
    assert scores.total == pytest.approx(35.0) and scores.std == 0.0  # mean of 0.0..0.7 is 0.35


# --- input checks -------------------------------------------------------------------------------------

def test_records_are_checked():
    assert mmvet_records([rec("a", "ocr, math")])[0].capabilities == ("ocr", "math")
    assert mmvet_records([rec("a", ["ocr", "math"])])[0].capabilities == ("ocr", "math")
    bad = rec("b", "rec")
    del bad["answer"]
    with pytest.raises(FieldError, match="record 1: missing field 'answer'") as e:
        mmvet_records([rec("a", "rec"), bad])
    assert e.value.field == "answer"
    with pytest.raises(FieldError, match="'prediction' must be a string"):
        mmvet_records([{**rec("a", "rec"), "prediction": 3}])
    with pytest.raises(FieldError, match="'capability' is empty"):
        mmvet_records([rec("a", " , ")])
    with pytest.raises(FieldError, match="question_id 'a' appears twice"):
        mmvet_records([rec("a", "rec"), rec("a", "ocr")])


def test_grades_must_match_the_records():
    grades = [[Grade("q2", 0, 1.0, "ok")]]
    with pytest.raises(MMVetError, match="run 0's grades do not match"):
        aggregate([rec("q1", "rec")], grades)


def test_bad_judge_settings_are_refused():
    client = ChatClient("http://127.0.0.1:9/v1")
    with pytest.raises(MMVetError, match="runs, max_tries"):
        MMVetJudge(client, "m", PROMPT, runs=0)
    with pytest.raises(MMVetError, match="prompt is empty"):
        MMVetJudge(client, "m", "  ")
