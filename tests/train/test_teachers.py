"""Teachers: the oracle's rule, and the endpoint teacher against a local OpenAI-style server
(request shape, key from the environment, retries on 5xx, no retry on 4xx, timeouts, concurrency)."""

from __future__ import annotations

import time

from omnivision.train.teachers import (MINIMAL_EDIT_INSTRUCTION, EndpointTeacher, OracleTeacher,
                                       TeacherItem)
from tests import chat_server

server = chat_server.server  # the fixture: server(script) starts a ChatServer


def test_oracle_keeps_right_answers_and_corrects_wrong_ones():
    """Right and wrong by the generated data's rule (`data/answer_rule.py`, tested with the
    scorers in tests/data/test_answer_rule.py)."""
    items = [TeacherItem("q", "Red.", reference="red"), TeacherItem("q", "blue", reference="red"),
             TeacherItem("q", "x"), TeacherItem("q", "A circle.", reference="circle"),
             TeacherItem("q", "Yes, there is", reference="yes"), TeacherItem("q", "maybe", reference="no")]
    assert OracleTeacher().correct(items) == ["Red.", "red", None, "A circle.", "Yes, there is", "no"]


def test_request_shape_and_key(server, monkeypatch):
    monkeypatch.setenv("TEACHER_KEY", "sk-test")
    srv = server(lambda n, body: (200, " corrected "))
    teacher = EndpointTeacher(srv.url, "judge-1", api_key_env="TEACHER_KEY")
    out = teacher.correct([TeacherItem("What color?", "blue", image_url="data:image/png;base64,AA==")])
    assert out == ["corrected"]
    path, headers, body = srv.requests[0]
    assert path == "/v1/chat/completions"
    assert headers["Authorization"] == "Bearer sk-test"
    assert body["model"] == "judge-1" and body["temperature"] == 0
    assert body["messages"][0] == {"role": "system", "content": MINIMAL_EDIT_INSTRUCTION}
    parts = body["messages"][1]["content"]
    assert parts[0]["image_url"]["url"].startswith("data:image/png")
    assert "What color?" in parts[1]["text"] and "blue" in parts[1]["text"]


def test_retries_server_errors_then_succeeds(server):
    srv = server(lambda n, body: (503, "") if n < 3 else (200, "ok"))
    teacher = EndpointTeacher(srv.url, "m", retries=3, backoff=0.01)
    assert teacher.correct([TeacherItem("q", "a")]) == ["ok"]
    assert len(srv.requests) == 3


def test_gives_up_after_bounded_retries(server):
    srv = server(lambda n, body: (500, ""))
    teacher = EndpointTeacher(srv.url, "m", retries=2, backoff=0.01)
    assert teacher.correct([TeacherItem("q", "a")]) == [None]
    assert len(srv.requests) == 3


def test_client_errors_are_not_retried(server):
    srv = server(lambda n, body: (400, ""))
    teacher = EndpointTeacher(srv.url, "m", retries=3, backoff=0.01)
    assert teacher.correct([TeacherItem("q", "a")]) == [None]
    assert len(srv.requests) == 1


def test_timeout_counts_as_a_failed_try(server):
    # a wide margin both ways: a 0.2 s timeout failed the fast retry too on a loaded CI machine
    srv = server(lambda n, body: (200, "late", 3.0) if n == 1 else (200, "fast"))
    teacher = EndpointTeacher(srv.url, "m", timeout=1.0, retries=1, backoff=0.01)
    assert teacher.correct([TeacherItem("q", "a")]) == ["fast"]


def test_concurrency_overlaps_requests(server):
    srv = server(lambda n, body: (200, body["messages"][1]["content"][0]["text"][-1], 0.3))
    teacher = EndpointTeacher(srv.url, "m", concurrency=4)
    start = time.perf_counter()
    out = teacher.correct([TeacherItem("q", str(i)) for i in range(4)])
    assert out == ["0", "1", "2", "3"]  # order kept
    assert time.perf_counter() - start < 1.0  # 4 x 0.3 s in sequence would take 1.2 s
