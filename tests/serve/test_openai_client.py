"""The official `openai` client against a live server on loopback: plain, streamed, an image as a
data URL, a multi-turn conversation, and errors arriving as the client's typed exceptions."""

from __future__ import annotations

import pytest

from omnivision.serve.settings import ServerSettings
from omnivision.vlm import Turn
from tests.serve.conftest import SCENE, live_server

openai = pytest.importorskip("openai")

QUESTION = "What shape is the object at the top left?"


@pytest.fixture(scope="module")
def server(nano):
    with live_server(nano) as (url, engine):
        yield url, engine


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server[0] + "/v1", api_key="unused", max_retries=0, timeout=60)


def _image_turn(scene_url: str, text: str = QUESTION) -> dict:
    return {"role": "user", "content": [{"type": "image_url", "image_url": {"url": scene_url}},
                                        {"type": "text", "text": text}]}


def test_plain_answer_matches_the_python_api(client, nano, scene_url) -> None:
    r = client.chat.completions.create(model="omnivision", messages=[_image_turn(scene_url)], max_tokens=16,
                                       temperature=0)
    direct = nano.answer(SCENE, QUESTION, max_new_tokens=16)
    assert r.choices[0].message.content == direct.text
    assert r.usage.completion_tokens == len(direct.token_ids)
    assert [m.id for m in client.models.list().data] == ["omnivision"]


def test_streamed_answer(client, scene_url) -> None:
    plain = client.chat.completions.create(model="omnivision", messages=[_image_turn(scene_url)], max_tokens=16,
                                           temperature=0)
    stream = client.chat.completions.create(model="omnivision", messages=[_image_turn(scene_url)], max_tokens=16,
                                            temperature=0, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    assert chunks[-1].usage.total_tokens == plain.usage.total_tokens


def test_multi_turn_about_an_earlier_image(client, nano, scene_url) -> None:
    r = client.chat.completions.create(model="omnivision", max_tokens=8, temperature=0, messages=[
        _image_turn(scene_url), {"role": "assistant", "content": "a triangle"},
        {"role": "user", "content": "What colour is it?"}])
    history = [Turn(QUESTION, "a triangle", SCENE)]
    direct = nano.answer(None, "What colour is it?", history=history, max_new_tokens=8)
    assert r.usage.prompt_tokens == direct.prompt_tokens
    assert r.choices[0].message.content == direct.text


def test_errors_are_typed_exceptions(client, scene_url) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="omnivision", messages=[_image_turn(scene_url)], temperature=7)
    assert info.value.body["param"] == "temperature"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="omnivision", messages=[_image_turn("data:image/png;base64,AAAA")])
    assert info.value.body["code"] == "invalid_image"


def test_wrong_key_is_an_authentication_error(nano) -> None:
    with live_server(nano, ServerSettings(api_key="right-key")) as (url, _):
        wrong = openai.OpenAI(base_url=url + "/v1", api_key="wrong-key", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            wrong.models.list()
        right = openai.OpenAI(base_url=url + "/v1", api_key="right-key", max_retries=0)
        r = right.chat.completions.create(model="omnivision", messages=[{"role": "user", "content": "hi"}],
                                          max_tokens=2)
        assert r.choices[0].message.role == "assistant"
