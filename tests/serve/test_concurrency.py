"""Load on a live server: the bounded queue answers 503 with Retry-After beyond its size, and 64
streaming clients of which 8 leave after their first token: the rest finish, the leavers' jobs stop,
and no slot, queue entry or thread is left behind."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time

import pytest

from omnivision.serve.settings import ServerSettings
from tests.serve.conftest import live_server, settle

httpx = pytest.importorskip("httpx")


def _body(scene_url: str, tokens: int, stream: bool) -> dict:
    return {"model": "omnivision", "max_tokens": tokens, "temperature": 0, "stream": stream,
            "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": scene_url}},
                                                      {"type": "text", "text": "Describe the scene."}]}]}


def test_a_full_queue_answers_503_with_retry_after(nano, scene_url) -> None:
    async def main(url: str) -> list:
        async with httpx.AsyncClient(base_url=url, timeout=120) as client:
            return await asyncio.gather(*(client.post("/v1/chat/completions", json=_body(scene_url, 24, False))
                                          for _ in range(8)))

    with live_server(nano, ServerSettings(max_batch=1, queue=2)) as (url, engine):
        responses = asyncio.run(main(url))
        settle(engine)
        assert engine.running == 0 and engine.waiting == 0
    codes = sorted(r.status_code for r in responses)
    assert codes.count(200) >= 3 and set(codes) <= {200, 503} and 503 in codes
    for r in responses:
        if r.status_code == 503:
            assert r.headers["retry-after"].isdigit()
            assert r.json()["error"]["code"] == "server_overloaded"
        else:
            assert r.json()["choices"][0]["message"]["content"] is not None


@pytest.fixture
def slow_endless(nano, monkeypatch):
    """No stop token and >= 5 ms per decoding step: answers run to max_tokens, slowly enough that a
    generation left running after its client went away is seen."""
    monkeypatch.setattr(nano.config, "stop_token_ids", ())
    forward = nano.model.language.forward

    def slow(*args, **kwargs):
        time.sleep(0.005)
        return forward(*args, **kwargs)

    monkeypatch.setattr(nano.model.language, "forward", slow)
    return nano


def test_64_streaming_clients_with_8_leaving_early(slow_endless, scene_url) -> None:
    async def one(client, leave: bool) -> str:
        body = _body(scene_url, 400 if leave else 6, True)  # a leaver's answer would take over 2 s
        async with client.stream("POST", "/v1/chat/completions", json=body) as r:
            assert r.status_code == 200
            async for line in r.aiter_lines():
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    return "done"
                chunk = json.loads(line[6:])
                if leave and chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                    return "left"  # closing the stream here disconnects mid-answer
        return "cut"

    async def main(url: str) -> list:
        limits = httpx.Limits(max_connections=80)
        async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:
            return await asyncio.gather(*(one(client, leave=i % 8 == 3) for i in range(64)))

    threads_before = threading.active_count()
    with live_server(slow_endless, ServerSettings(max_batch=2, queue=64)) as (url, engine):
        threads_with_server = threading.active_count()
        outcomes = asyncio.run(main(url))
        settle(engine)
        assert engine.running == 0 and engine.waiting == 0
        assert engine.cancelled == 8  # every leaver's generation was stopped, none ran to its end
        # at most the event loop's pooled workers (image decoding, tokenizing) were added
        pool = min(32, (os.cpu_count() or 1) + 4)
        assert threading.active_count() <= threads_with_server + pool
        assert sum(t.name.startswith("omnivision-slot") for t in threading.enumerate()) == 2
    assert outcomes.count("left") == 8 and outcomes.count("done") == 56
    deadline = time.monotonic() + 10
    while threading.active_count() > threads_before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert threading.active_count() <= threads_before


def test_a_disconnected_stream_stops_its_generation(slow_endless, scene_url) -> None:
    """One slot, an answer of 400 tokens at >= 5 ms each: leaving after the first token frees the
    slot long before the answer could have finished."""
    async def main(url: str) -> None:
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            async with client.stream("POST", "/v1/chat/completions", json=_body(scene_url, 400, True)) as r:
                assert r.status_code == 200
                async for line in r.aiter_lines():
                    if line.startswith("data: ") and '"content": ""' not in line:
                        assert json.loads(line[6:])["choices"][0]["delta"]["content"]
                        return
                raise AssertionError("no content arrived")

    with live_server(slow_endless, ServerSettings(max_batch=1)) as (url, engine):
        asyncio.run(main(url))
        left = time.monotonic()
        while engine.running and time.monotonic() - left < 10:
            time.sleep(0.01)
        assert engine.running == 0 and engine.cancelled == 1
        assert time.monotonic() - left < 1.5  # the whole answer takes over 2 s


def test_a_client_leaving_a_plain_request_stops_its_generation(slow_endless, scene_url) -> None:
    async def main(url: str, engine) -> None:
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            task = asyncio.create_task(client.post("/v1/chat/completions", json=_body(scene_url, 400, False)))
            while not engine.running:
                await asyncio.sleep(0.01)
            task.cancel()  # closes the connection without reading an answer
            with pytest.raises(asyncio.CancelledError):
                await task

    with live_server(slow_endless, ServerSettings(max_batch=1)) as (url, engine):
        asyncio.run(main(url, engine))
        left = time.monotonic()
        while engine.running and time.monotonic() - left < 10:
            time.sleep(0.01)
        assert engine.running == 0 and engine.cancelled == 1
        assert time.monotonic() - left < 1.5


def test_batched_answers_are_the_answers_alone(scene_url) -> None:
    """max_batch 4 in fp32: four different questions asked at once get, token for token, the greedy
    answers they get one at a time; the batch is empty afterwards and its thread ends with the app."""
    from omnivision.loader import BUNDLED, load

    vlm = load(BUNDLED, dtype="float32")
    questions = ["Describe the scene.", "What color is the object at the top left?",
                 "How many objects are there?", "Is there a circle?"]

    def body(question: str) -> dict:
        return {**_body(scene_url, 24, False), "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": scene_url}}, {"type": "text", "text": question}]}]}

    async def ask(url: str) -> list[str]:
        async with httpx.AsyncClient(base_url=url, timeout=120) as client:
            replies = await asyncio.gather(*(client.post("/v1/chat/completions", json=body(q)) for q in questions))
        assert all(r.status_code == 200 for r in replies), [r.text for r in replies]
        return [r.json()["choices"][0]["message"]["content"] for r in replies]

    with live_server(vlm, ServerSettings(max_batch=1)) as (url, _):  # one slot: one answer at a time
        alone = asyncio.run(ask(url))
    with live_server(vlm, ServerSettings(max_batch=4)) as (url, engine):
        assert vlm.batcher is not None and vlm.batcher.batch.max_rows == 4
        together = asyncio.run(ask(url))
        settle(engine)
        assert vlm.batcher.batch.running == 0
    assert together == alone and len(set(alone)) > 1
    assert vlm.batcher is None and not any(t.name == "omnivision-batcher" for t in threading.enumerate())
