"""Security defaults: the Host check without a key, the key on every route but /health, constant-time
comparison, and the body cap (413) for declared and for chunked bodies."""

from __future__ import annotations

import asyncio
import base64
import json

import pytest

from omnivision.serve import guard
from omnivision.serve.settings import Limits, ServerSettings
from tests.serve.conftest import client_for

KEY = "sk-test-0123456789"


@pytest.mark.parametrize("host,status", [("evil.example", 403), (":8080", 403), ("", 403),
                                         ("localhost:8080", 200), ("127.0.0.1:9", 200), ("[::1]:8080", 200),
                                         ("LOCALHOST", 200)])
def test_keyless_server_answers_localhost_hosts_only(nano, host, status) -> None:
    with client_for(nano) as client:
        r = client.get("/v1/models", headers={"host": host})
    assert r.status_code == status
    if status == 403:
        assert r.json()["error"]["code"] == "host_not_allowed"


def test_extra_host_names(nano) -> None:
    with client_for(nano, ServerSettings(allowed_hosts=("box.lan",))) as client:
        assert client.get("/v1/models", headers={"host": "box.lan:8080"}).status_code == 200


def test_with_a_key_every_route_but_health_needs_it(nano) -> None:
    with client_for(nano, ServerSettings(api_key=KEY), base_url="http://any.host") as client:
        app = client.app.app
        paths = {route.path for route in app.routes if "{" not in route.path}
        assert {"/", "/health", "/v1/models", "/v1/chat/completions"} <= paths
        for path in paths:
            r = client.request("POST" if path == "/v1/chat/completions" else "GET", path)
            if path == "/health":
                assert r.status_code == 200
            else:
                assert r.status_code == 401, path
                assert r.json()["error"]["type"] == "authentication_error"
        assert client.get("/v1/models", headers={"authorization": "Bearer wrong"}).status_code == 401
        assert client.get("/v1/models", headers={"authorization": f"Bearer {KEY}"}).status_code == 200
        assert client.get("/v1/models", headers={"x-api-key": KEY}).status_code == 200
        basic = base64.b64encode(f"user:{KEY}".encode()).decode()
        assert client.get("/", headers={"authorization": f"Basic {basic}"}).status_code == 200
        assert client.get("/", headers={"authorization": "Basic ###"}).status_code == 401
        for junk in ("Basic \u00e9\u00e9", "Basic " + base64.b64encode(b"\xff\xfe:x").decode(), "Bearer", ""):
            assert client.get("/v1/models", headers={"authorization": junk.encode("latin-1")}).status_code == 401


def test_keys_are_compared_in_constant_time(nano, monkeypatch) -> None:
    calls = []
    real = guard.hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(guard.hmac, "compare_digest", spy)
    with client_for(nano, ServerSettings(api_key=KEY)) as client:
        client.get("/v1/models", headers={"authorization": "Bearer nope"})
    assert calls == [(b"nope", KEY.encode())]


def test_a_declared_body_over_the_cap_is_refused_unread(nano) -> None:
    with client_for(nano, ServerSettings(limits=Limits(body_bytes=1000))) as client:
        r = client.post("/v1/chat/completions", content=b"x" * 1001, headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"


def test_a_chunked_body_is_cut_at_the_cap() -> None:
    """ASGI level: the guard stops reading once the bytes pass the cap and never calls the app."""
    pulled, sent = [], []

    async def receive():
        pulled.append(1)
        return {"type": "http.request", "body": b"y" * 4096, "more_body": True}  # endless

    async def send(message):
        sent.append(message)

    async def app(scope, receive, send):
        raise AssertionError("the app saw an oversized body")

    g = guard.Guard(app, None, (), body_limit=16 * 1024)
    scope = {"type": "http", "path": "/v1/chat/completions", "method": "POST",
             "headers": [(b"host", b"localhost"), (b"transfer-encoding", b"chunked")]}
    asyncio.run(g(scope, receive, send))
    assert sent[0]["status"] == 413 and len(pulled) == 5  # 5 x 4 KiB > 16 KiB
    assert json.loads(sent[1]["body"])["error"]["code"] == "body_too_large"


def test_errors_leak_no_paths_or_traces(nano, tmp_path) -> None:
    settings = ServerSettings(image_root=tmp_path)
    with client_for(nano, settings) as client:
        body = {"model": "omnivision", "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "does/not/exist.png"}}]}]}
        r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 400 and str(tmp_path) not in r.text and "Traceback" not in r.text


def test_huge_headers_are_refused_and_the_server_stays_healthy(nano) -> None:
    import socket
    import urllib.request

    from tests.serve.conftest import live_server

    with live_server(nano) as (url, _):
        host, port = url.rsplit(":", 1)[0][7:], int(url.rsplit(":", 1)[1])
        for headers in ([("X-Big", "a" * 1_000_000)], [(f"X-H{i}", "b" * 8000) for i in range(200)]):
            with socket.create_connection((host, port), timeout=10) as s:
                head = "GET /health HTTP/1.1\r\nHost: localhost\r\n"
                head += "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n"
                try:
                    s.sendall(head.encode())
                except OSError:
                    pass  # the server may close before reading it all
                reply = s.recv(64)
            assert reply == b"" or reply.split(b" ")[1] in (b"400", b"413", b"431"), reply
        with urllib.request.urlopen(url + "/health", timeout=10) as r:
            assert r.status == 200


def _chat_scope() -> dict:
    return {"type": "http", "path": "/v1/chat/completions", "method": "POST",
            "headers": [(b"host", b"localhost"), (b"content-length", b"100")]}


def _run_guard(g: guard.Guard, receive) -> list[dict]:
    sent = []

    async def send(message):
        sent.append(message)

    asyncio.run(g(_chat_scope(), receive, send))
    return sent


def test_a_full_server_refuses_a_chat_request_before_reading_its_body() -> None:
    async def receive():
        raise AssertionError("the body was read")

    async def app(scope, receive, send):
        raise AssertionError("the app was called")

    g = guard.Guard(app, None, (), body_limit=1000, reserve=lambda: "all 1 slots are busy",
                    release=lambda: None, retry_after_s=3)
    sent = _run_guard(g, receive)
    headers = dict(sent[0]["headers"])
    assert sent[0]["status"] == 503 and headers[b"retry-after"] == b"3"
    assert json.loads(sent[1]["body"])["error"]["code"] == "server_overloaded"


def test_a_slow_body_gets_408_and_gives_its_place_back() -> None:
    places = []

    async def receive():
        if not places[1:]:
            places.append("first chunk")
            return {"type": "http.request", "body": b"{", "more_body": True}
        await asyncio.sleep(60)  # the rest never comes

    async def app(scope, receive, send):
        raise AssertionError("the app was called")

    g = guard.Guard(app, None, (), body_limit=1000, reserve=lambda: places.append("reserved"),
                    release=lambda: places.append("released"), body_read_s=0.05)
    sent = _run_guard(g, receive)
    assert sent[0]["status"] == 408 and json.loads(sent[1]["body"])["error"]["code"] == "request_timeout"
    assert places == ["reserved", "first chunk", "released"]


def test_a_reserved_place_is_handed_to_the_route() -> None:
    seen, released = [], []

    async def receive():
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def app(scope, receive, send):
        seen.append((scope["state"]["reserved"], (await receive())["body"]))

    g = guard.Guard(app, None, (), body_limit=1000, reserve=lambda: None, release=lambda: released.append(1))
    _run_guard(g, receive)
    assert seen == [(True, b"{}")] and released == []  # the route owns the place now


def test_a_refused_request_gives_its_place_back(nano) -> None:
    with client_for(nano) as client:
        engine = client.app.app.state.engine
        bad_json = client.post("/v1/chat/completions", content=b"{nope", headers={"content-type": "application/json"})
        unknown = client.post("/v1/chat/completions", json={"model": "other", "messages": [
            {"role": "user", "content": "hi"}]})
        assert (bad_json.status_code, unknown.status_code) == (400, 404)
        assert engine._admitted == 0 and engine.running == 0
