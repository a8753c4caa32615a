"""parse_chat_request: what a valid body becomes, and a 400 naming the field for each bad one."""

from __future__ import annotations

import pytest

from omnivision.serve.chat_request import parse_chat_request
from omnivision.serve.errors import APIError
from omnivision.serve.settings import Limits

PNG = "data:image/png;base64,iVBORw0KGgo="


def _body(**changes) -> dict:
    body = {"model": "omnivision", "messages": [{"role": "user", "content": "hi"}]}
    body.update(changes)
    return body


def _refused(body, limits: Limits = Limits()) -> APIError:
    with pytest.raises(APIError) as info:
        parse_chat_request(body, limits)
    assert info.value.status == 400
    return info.value


def test_a_full_request_with_an_image_and_history() -> None:
    req = parse_chat_request(_body(
        messages=[{"role": "system", "content": "Be brief."},
                  {"role": "user", "content": [{"type": "image_url", "image_url": {"url": PNG}},
                                               {"type": "text", "text": "What is it?"}]},
                  {"role": "assistant", "content": "A cat."},
                  {"role": "user", "content": [{"type": "text", "text": "What colour?"}]}],
        max_completion_tokens=20, temperature=0, top_p=0.5, stop="\n", seed=7, n=2, stream=True,
        stream_options={"include_usage": True}, logprobs=True, top_logprobs=3,
        response_format={"type": "json_object"}, some_future_field={"x": 1}), Limits())
    assert req.system_prompt == "Be brief."
    assert [(m.role, m.text) for m in req.messages] == [("user", "What is it?"), ("assistant", "A cat."),
                                                       ("user", "What colour?")]
    assert [i.url for i in req.images] == [PNG]
    assert req.images[0].param == "messages[1].content[0].image_url.url"
    assert (req.max_tokens, req.temperature, req.top_p, req.stop, req.seed, req.n) == (20, 0.0, 0.5, ("\n",), 7, 2)
    assert req.stream and req.include_usage and req.logprobs and req.top_logprobs == 3
    assert req.response_format == {"type": "json_object"}


def test_defaults_and_max_tokens_alias() -> None:
    req = parse_chat_request(_body(max_tokens=5), Limits())
    assert req.max_tokens == 5 and req.temperature == 1.0 and req.n == 1 and not req.stream
    assert req.system_prompt is None and req.response_format == {"type": "text"}


@pytest.mark.parametrize("changes,param", [
    ({"messages": None}, "messages"),
    ({"messages": []}, "messages"),
    ({"model": 3}, "model"),
    ({"max_tokens": "lots"}, "max_tokens"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_completion_tokens": True}, "max_completion_tokens"),
    ({"temperature": 5}, "temperature"),
    ({"temperature": float("nan")}, "temperature"),
    ({"top_p": -1}, "top_p"),
    ({"top_p": 0}, "top_p"),
    ({"n": 100}, "n"),
    ({"stop": ["a"] * 9}, "stop"),
    ({"stop": [""]}, "stop"),
    ({"top_logprobs": 3}, "top_logprobs"),
    ({"logprobs": True, "top_logprobs": 10_000}, "top_logprobs"),
    ({"seed": 2**70}, "seed"),
    ({"seed": "x"}, "seed"),
    ({"stream": "yes"}, "stream"),
    ({"stream_options": {"include_usage": True}}, "stream_options"),
    ({"response_format": {"type": "yaml"}}, "response_format.type"),
    ({"tools": [{"type": "function"}]}, "tools"),
    ({"presence_penalty": 1.5}, "presence_penalty"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": [{"type": "audio"}]}]}, "messages[0].content[0].type"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
     "messages[0].content[0].image_url.url"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}, "messages"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "system", "content": "late"},
                   {"role": "user", "content": "q"}]}, "messages[1].role"),
])
def test_bad_fields_are_named(changes, param) -> None:
    assert _refused(_body(**changes)).param == param


def test_images_per_message_and_per_request() -> None:
    two = [{"type": "image_url", "image_url": {"url": PNG}}] * 2
    error = _refused(_body(messages=[{"role": "user", "content": two}]))
    assert error.code == "too_many_images" and error.param == "messages[0].content"
    turns = []
    for _ in range(3):
        turns += [{"role": "user", "content": [{"type": "image_url", "image_url": PNG}]},
                  {"role": "assistant", "content": "ok"}]
    turns.append({"role": "user", "content": "and?"})
    assert parse_chat_request(_body(messages=turns), Limits(images_per_request=3)).images
    error = _refused(_body(messages=turns), Limits(images_per_request=2))
    assert error.code == "too_many_images" and "at most 2" in error.message


def test_an_assistant_turn_cannot_carry_an_image() -> None:
    bad = [{"role": "user", "content": "q"},
           {"role": "assistant", "content": [{"type": "image_url", "image_url": {"url": PNG}}]},
           {"role": "user", "content": "q"}]
    assert _refused(_body(messages=bad)).param == "messages[1].content[0]"


def test_prompt_bytes_are_capped_before_tokenizing() -> None:
    error = _refused(_body(messages=[{"role": "user", "content": "\n" * 2048}]), Limits(prompt_bytes=1024))
    assert error.code == "prompt_too_large" and "2048" in error.message


def test_a_body_that_is_not_an_object() -> None:
    assert _refused([1, 2]).param is None


# found by fuzzing (request:0:2322): JSON's "\udcff" escape gives a lone surrogate, which failed
# the byte-size check with UnicodeEncodeError, a 500
@pytest.mark.parametrize("content,param", [
    ("\udcff", "messages[0].content"),
    ([{"type": "text", "text": "ok \ud800"}], "messages[0].content[0].text"),
])
def test_text_with_a_lone_surrogate(content, param) -> None:
    error = _refused(_body(messages=[{"role": "user", "content": content}]))
    assert error.param == param and error.code == "invalid_text" and "lone surrogate" in error.message


# found by fuzzing (request:0:1327 and others): the refused value came back whole in the message
@pytest.mark.parametrize("field", ["temperature", "max_tokens", "stream", "seed"])
def test_a_huge_refused_value_is_quoted_short(field) -> None:
    error = _refused(_body(**{field: "A" * 70_000}))
    assert error.param == field and len(error.message) < 200 and "(70002 characters)" in error.message
