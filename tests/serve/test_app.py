"""The app in process: answers in OpenAI's shapes (plain, streamed, with logprobs, n, stop, usage),
and OpenAI's error object with the right status for each kind of bad request."""

from __future__ import annotations

import json

import pytest

from omnivision.serve import image_intake
from omnivision.serve.settings import Limits, ServerSettings
from tests.serve.conftest import SCENE, client_for, settle
from tests.serve.test_image_intake import bomb_png, _data_url


def _ask(url: str | None, text: str = "What shape is the object at the top left?", **extra) -> dict:
    content = [{"type": "text", "text": text}]
    if url:
        content.insert(0, {"type": "image_url", "image_url": {"url": url}})
    return {"model": "omnivision", "messages": [{"role": "user", "content": content}], **extra}


def _error(response, status: int) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and isinstance(error["type"], str)
    return error


def _events(response) -> list:
    lines = [line for line in response.text.split("\n\n") if line]
    assert all(line.startswith("data: ") for line in lines)
    return [line[6:] for line in lines]


def test_answers_about_the_shipped_image_like_the_python_api(nano, scene_url) -> None:
    with client_for(nano) as client:
        r = client.post("/v1/chat/completions", json=_ask(scene_url, max_tokens=16, temperature=0))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion" and body["model"] == "omnivision"
    choice = body["choices"][0]
    direct = nano.answer(SCENE, "What shape is the object at the top left?", max_new_tokens=16)
    assert choice["message"] == {"role": "assistant", "content": direct.text, "refusal": None}
    assert choice["finish_reason"] in ("stop", "length")
    assert body["usage"]["completion_tokens"] == len(direct.token_ids)
    assert body["usage"]["prompt_tokens"] == direct.prompt_tokens


def test_streaming_chunks_then_usage_then_done(nano, scene_url) -> None:
    with client_for(nano) as client:
        plain = client.post("/v1/chat/completions", json=_ask(scene_url, max_tokens=12, temperature=0)).json()
        r = client.post("/v1/chat/completions", json=_ask(scene_url, max_tokens=12, temperature=0, stream=True,
                                                          stream_options={"include_usage": True}))
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = _events(r)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == plain["choices"][0]["message"]["content"]
    finish = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert finish == [plain["choices"][0]["finish_reason"]]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == plain["usage"]
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks)


def test_logprobs_n_stop_and_seed(nano, scene_url) -> None:
    with client_for(nano) as client:
        r = client.post("/v1/chat/completions", json=_ask(scene_url, max_tokens=10, temperature=0, logprobs=True,
                                                          top_logprobs=3)).json()
        content = r["choices"][0]["logprobs"]["content"]
        assert content and all(len(e["top_logprobs"]) == 3 and e["logprob"] <= 0 for e in content)
        # greedy: the chosen token is the most likely one
        assert all(e["logprob"] == pytest.approx(e["top_logprobs"][0]["logprob"]) for e in content)
        sampled = [client.post("/v1/chat/completions", json=_ask(scene_url, max_tokens=10, temperature=1.5,
                                                                 seed=11, n=2)).json() for _ in range(2)]
        assert [c["message"]["content"] for c in sampled[0]["choices"]] == \
               [c["message"]["content"] for c in sampled[1]["choices"]]
        assert len(sampled[0]["choices"]) == 2 and sampled[0]["choices"][1]["index"] == 1
        answer = r["choices"][0]["message"]["content"]
        if len(answer) > 2:
            cut = client.post("/v1/chat/completions", json=_ask(scene_url, max_tokens=10, temperature=0,
                                                                stop=[answer[2:4]])).json()
            assert cut["choices"][0]["message"]["content"] == answer[:2].rstrip()
            assert cut["choices"][0]["finish_reason"] == "stop"


def test_multi_turn_with_the_image_in_an_earlier_turn(nano, scene_url) -> None:
    body = {"model": "omnivision", "max_tokens": 8, "temperature": 0, "messages": [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": scene_url}},
                                     {"type": "text", "text": "What shape is at the top left?"}]},
        {"role": "assistant", "content": "a triangle"},
        {"role": "user", "content": "And its colour?"}]}
    with client_for(nano) as client:
        r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] > nano.config.num_image_tokens


def test_models_and_health(nano) -> None:
    with client_for(nano) as client:
        assert client.get("/v1/models").json()["data"][0]["id"] == "omnivision"
        assert client.get("/health").json()["status"] == "ok"
        page = client.get("/")
        assert page.status_code == 200 and "<form" in page.text


@pytest.mark.parametrize("raw", [b"{not json", b"", b"\xff\xfe", b'{"model": "omnivision", "messages": [}',
                                 b"[" * 200_000, b'{"a":' * 100_000])
def test_malformed_json_is_400_not_422(nano, raw) -> None:
    with client_for(nano) as client:
        error = _error(client.post("/v1/chat/completions", content=raw,
                                   headers={"content-type": "application/json"}), 400)
    assert error["type"] == "invalid_request_error" and error["code"] == "invalid_json"


def test_a_lone_surrogate_and_a_huge_model_name_are_400_and_404(nano) -> None:
    # found by fuzzing (request:0:2322, request:0:3798): a 500, and a 404 quoting 70,000 characters
    with client_for(nano) as client:
        raw = b'{"model": "omnivision", "messages": [{"role": "user", "content": "\\udcff"}]}'
        error = _error(client.post("/v1/chat/completions", content=raw,
                                   headers={"content-type": "application/json"}), 400)
        assert error["code"] == "invalid_text" and error["param"] == "messages[0].content"
        error = _error(client.post("/v1/chat/completions", json={**_ask(None), "model": "A" * 70_000}), 404)
        assert len(error["message"]) < 200 and "(70002 characters)" in error["message"]


def test_unknown_model_and_route(nano) -> None:
    with client_for(nano) as client:
        error = _error(client.post("/v1/chat/completions", json={**_ask(None), "model": "gpt-4o"}), 404)
        assert error["code"] == "model_not_found" and error["param"] == "model"
        _error(client.get("/v1/nothing"), 404)
        _error(client.get("/v1/chat/completions"), 405)


def test_context_overflow_is_found_before_any_image_is_decoded(nano, scene_url, monkeypatch) -> None:
    def never(*args):
        raise AssertionError("an image was fetched or decoded")

    monkeypatch.setattr(image_intake, "image_bytes", never)
    monkeypatch.setattr(image_intake, "decode", never)
    context = nano.config.text.max_position_embeddings
    with client_for(nano) as client:
        error = _error(client.post("/v1/chat/completions", json=_ask(scene_url, "word " * (context - 20))), 400)
        assert error["code"] == "context_length_exceeded" and error["param"] == "messages"
        error = _error(client.post("/v1/chat/completions", json=_ask(scene_url, max_tokens=context * 4)), 400)
        assert error["code"] == "context_length_exceeded" and error["param"] == "max_tokens"
        error = _error(client.post("/v1/chat/completions", json=_ask(scene_url, max_completion_tokens=context)), 400)
        assert error["param"] == "max_completion_tokens"


def _png(width: int, height: int) -> bytes:
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(out, format="PNG")
    return out.getvalue()


def test_the_servers_pixel_limit_reaches_the_image_processor(nano, monkeypatch) -> None:
    """One pixel limit: an image the server's `Limits` accept is not refused later inside a slot
    (that was a 500), whatever the image processor's own default; a larger one is a 400."""
    monkeypatch.setattr(nano.image_processor, "max_pixels", 64 * 64)
    with client_for(nano, ServerSettings(limits=Limits(max_pixels=120 * 120))) as client:
        r = client.post("/v1/chat/completions", json=_ask(_data_url(_png(100, 100)), max_tokens=2))
        assert r.status_code == 200, r.text
        error = _error(client.post("/v1/chat/completions", json=_ask(_data_url(_png(130, 130)), max_tokens=2)), 400)
        assert error["code"] == "image_too_large"


def test_image_errors_name_the_field(nano) -> None:
    field = "messages[0].content[0].image_url.url"
    with client_for(nano, ServerSettings(limits=Limits(images_per_request=1))) as client:
        error = _error(client.post("/v1/chat/completions", json=_ask(_data_url(bomb_png(20000, 20000)))), 400)
        assert error["code"] == "image_too_large" and error["param"] == field
        error = _error(client.post("/v1/chat/completions", json=_ask("data:image/png;base64,@@@@")), 400)
        assert error["param"] == field
        two_turns = {"model": "omnivision", "messages": [
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}]},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}]}]}
        assert _error(client.post("/v1/chat/completions", json=two_turns), 400)["code"] == "too_many_images"


def test_bad_parameters_never_reach_the_model(nano) -> None:
    with client_for(nano) as client:
        for extra, param in (({"n": 10**6}, "n"), ({"max_tokens": 10**9}, "max_tokens"),
                             ({"stop": ["x"] * 10**4}, "stop"), ({"logprobs": True, "top_logprobs": 10**4},
                                                                 "top_logprobs"),
                             ({"temperature": -1}, "temperature")):
            assert _error(client.post("/v1/chat/completions", json=_ask(None, **extra)), 400)["param"] == param
        assert client.engine.running == 0 and client.engine.waiting == 0


def test_odd_image_paths_are_400s(nano, tmp_path) -> None:
    with client_for(nano, ServerSettings(image_root=tmp_path)) as client:
        for url in ("a\u0000b.png", "file://[x", "https://[::1/x.png", "https://h:99999/x.png"):
            assert _error(client.post("/v1/chat/completions", json=_ask(url)), 400)["param"] == \
                "messages[0].content[0].image_url.url", url


def test_a_server_without_a_queue_still_uses_its_idle_slot(nano) -> None:
    with client_for(nano, ServerSettings(queue=0)) as client:
        assert client.post("/v1/chat/completions", json=_ask(None, max_tokens=2)).status_code == 200
        settle(client.engine)
        assert client.engine.running == 0 and client.engine.waiting == 0


def test_without_max_tokens_the_answer_is_capped_by_the_default(nano, monkeypatch) -> None:
    seen = []
    real = nano.stream_prompt

    def spy(ids, embeds=None, **kwargs):
        seen.append(kwargs["max_new_tokens"])
        return real(ids, embeds, **kwargs)

    monkeypatch.setattr(nano, "stream_prompt", spy)
    with client_for(nano, ServerSettings(default_max_tokens=7)) as client:
        assert client.post("/v1/chat/completions", json=_ask(None)).status_code == 200
    assert seen == [7]


def test_unknown_fields_are_ignored(nano) -> None:
    with client_for(nano) as client:
        r = client.post("/v1/chat/completions", json=_ask(None, max_tokens=2, future_field=[1, {"a": None}],
                                                          user="u1", metadata={"k": "v"}))
    assert r.status_code == 200, r.text
