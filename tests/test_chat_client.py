"""The OpenAI-compatible chat client against a local scripted server: request shape, the key from
the environment, which failures are retried, bounded tries, timeouts, backoff and messages."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from omnivision import chat_client
from omnivision.chat_client import (ChatClient, EndpointError, chat_completions_url, data_url,
                                 image_data_url, user_message)
from tests import chat_server

server = chat_server.server  # the fixture: server(script) starts a ChatServer


@pytest.fixture
def sleeps(monkeypatch):
    """Record backoff sleeps instead of waiting."""
    waited: list[float] = []
    monkeypatch.setattr(chat_client.time, "sleep", waited.append)
    return waited


def test_request_shape_key_and_reply(server, monkeypatch):
    monkeypatch.setenv("JUDGE_KEY", "sk-test")
    srv = server(lambda n, body: (200, " 0.5 "))
    client = ChatClient(srv.url, api_key_env="JUDGE_KEY")
    reply = client.complete("judge-1", [user_message("hi")], temperature=0, max_tokens=3)
    assert reply.text == " 0.5 " and reply.model == "served-model"  # text is not stripped
    path, headers, body = srv.requests[0]
    assert path == "/v1/chat/completions"
    assert headers["Authorization"] == "Bearer sk-test"
    assert body == {"model": "judge-1", "messages": [{"role": "user", "content": "hi"}],
                    "temperature": 0, "max_tokens": 3}


@pytest.mark.parametrize("key_env", ["UNSET_KEY_FOR_TEST", None])
def test_no_key_sends_no_authorization(server, monkeypatch, key_env):
    monkeypatch.delenv("UNSET_KEY_FOR_TEST", raising=False)
    srv = server(lambda n, body: (200, "ok"))
    ChatClient(srv.url, api_key_env=key_env).complete("m", [user_message("q")])
    assert "Authorization" not in srv.requests[0][1]


@pytest.mark.parametrize("status", [500, 503, 429, 408])
def test_retryable_statuses_are_retried(server, sleeps, status):
    srv = server(lambda n, body: (status, "busy") if n < 3 else (200, "ok"))
    reply = ChatClient(srv.url, retries=3).complete("m", [user_message("q")])
    assert reply.text == "ok" and len(srv.requests) == 3


@pytest.mark.parametrize("status", [400, 401, 404, 422])
def test_client_errors_fail_at_once(server, sleeps, status):
    srv = server(lambda n, body: (status, "bad request body"))
    with pytest.raises(EndpointError, match=f"HTTP {status}.*bad request body") as e:
        ChatClient(srv.url, retries=3).complete("m", [user_message("q")])
    assert e.value.status == status and e.value.attempts == 1
    assert len(srv.requests) == 1 and sleeps == []


def test_tries_are_bounded_and_backoff_doubles_up_to_the_cap(server, sleeps):
    srv = server(lambda n, body: (500, "down"))
    with pytest.raises(EndpointError, match="no reply after 4 tries.*HTTP 500") as e:
        ChatClient(srv.url, retries=3, backoff=1.0, max_backoff=3.0).complete("m", [user_message("q")])
    assert len(srv.requests) == 4 and e.value.attempts == 4 and e.value.status == 500
    assert sleeps == [1.0, 2.0, 3.0]  # 1, 2, 4 capped at 3; no sleep after the last try


def test_retry_after_is_honoured_within_the_cap(server, sleeps):
    srv = server(lambda n, body: (429, "slow down", 0, {"Retry-After": "7"}) if n == 1 else (200, "ok"))
    ChatClient(srv.url, retries=1, backoff=0.5, max_backoff=10).complete("m", [user_message("q")])
    assert sleeps == [7.0]


def test_malformed_replies_are_retried(server, sleeps):
    srv = server(lambda n, body: (200, [b"not json", b'{"choices": []}', "fine"][n - 1]))
    assert ChatClient(srv.url, retries=2).complete("m", [user_message("q")]).text == "fine"
    assert len(srv.requests) == 3


def test_null_content_is_a_failed_try(server, sleeps):
    srv = server(lambda n, body: (200, b'{"choices": [{"message": {"content": null}}]}'))
    with pytest.raises(EndpointError, match="no text content"):
        ChatClient(srv.url, retries=1).complete("m", [user_message("q")])
    assert len(srv.requests) == 2


def test_timeout_counts_as_a_failed_try(server):
    srv = server(lambda n, body: (200, "late", 0.6) if n == 1 else (200, "fast"))
    client = ChatClient(srv.url, timeout=0.2, retries=1, backoff=0.01)
    assert client.complete("m", [user_message("q")]).text == "fast"


def test_unreachable_server_gives_endpoint_error(sleeps):
    with pytest.raises(EndpointError, match="no reply after 2 tries") as e:
        ChatClient("http://127.0.0.1:9/v1", timeout=1, retries=1).complete("m", [user_message("q")])
    assert e.value.status is None


def test_bad_settings_are_refused():
    for kwargs in ({"retries": -1}, {"timeout": 0}, {"backoff": -1}):
        with pytest.raises(ValueError, match="endpoint"):
            ChatClient("http://x/v1", **kwargs)


def test_url_accepts_base_or_full_path():
    assert chat_completions_url("http://h:8000/v1/") == "http://h:8000/v1/chat/completions"
    assert chat_completions_url("http://h/v1/chat/completions") == "http://h/v1/chat/completions"


def test_messages_with_images():
    assert user_message("q") == {"role": "user", "content": "q"}
    assert user_message("q", as_parts=True)["content"] == [{"type": "text", "text": "q"}]
    parts = user_message("what?", ["data:a", "http://b"])["content"]
    assert [p["type"] for p in parts] == ["image_url", "image_url", "text"]
    assert parts[1]["image_url"]["url"] == "http://b" and parts[2]["text"] == "what?"
    assert data_url(b"\x00\xff", "image/jpeg") == "data:image/jpeg;base64,AP8="


def test_image_data_url_round_trips():
    image = Image.new("RGB", (3, 2), (10, 20, 30))
    url = image_data_url(image)
    assert url.startswith("data:image/png;base64,")
    decoded = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert decoded.size == (3, 2) and decoded.getpixel((2, 1)) == (10, 20, 30)
