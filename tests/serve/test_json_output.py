"""response_format: constrained decoding makes the bundled model (which never saw JSON in training)
answer with JSON that parses and matches the schema; a schema that cannot be compiled is a 400."""

from __future__ import annotations

import json

import pytest

from tests.serve.conftest import client_for

pytest.importorskip("llguidance")

SCHEMA = {"type": "object", "additionalProperties": False, "required": ["shape", "colour", "big"],
          "properties": {"shape": {"enum": ["triangle", "circle", "square"]},
                         "colour": {"enum": ["red", "green", "blue", "yellow"]}, "big": {"type": "boolean"}}}


def _ask(scene_url: str, **extra) -> dict:
    return {"model": "omnivision", "max_tokens": 60, "temperature": 0, **extra, "messages": [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": scene_url}},
                                     {"type": "text", "text": "What shape is the object at the top left?"}]}]}


@pytest.mark.long
def test_json_schema_answers_parse_and_match(nano, scene_url) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "shape", "schema": SCHEMA, "strict": True}}
    with client_for(nano) as client:
        plain = client.post("/v1/chat/completions", json=_ask(scene_url)).json()
        for extra in ({}, {"temperature": 1.3, "seed": 5, "n": 3}):
            r = client.post("/v1/chat/completions", json=_ask(scene_url, response_format=fmt, **extra)).json()
            for choice in r["choices"]:
                assert choice["finish_reason"] == "stop"
                value = json.loads(choice["message"]["content"])
                assert set(value) == {"shape", "colour", "big"} and value["shape"] in ("triangle", "circle", "square")
                assert isinstance(value["big"], bool)
    with pytest.raises(ValueError):
        json.loads(plain["choices"][0]["message"]["content"])  # unconstrained, it is not JSON


def _stream(client, body: dict) -> tuple[str, list[str]]:
    """The streamed answer's text and its finish reasons."""
    r = client.post("/v1/chat/completions", json={**body, "stream": True})
    assert r.status_code == 200 and r.text.rstrip().endswith("data: [DONE]"), r.text[-500:]
    pieces = [json.loads(line[6:]) for line in r.text.split("\n\n") if line.startswith("data: {")]
    text = "".join(p["choices"][0]["delta"].get("content") or "" for p in pieces if p["choices"])
    reasons = [p["choices"][0]["finish_reason"] for p in pieces if p["choices"]]
    return text, [r for r in reasons if r]


def test_json_modes_stream_what_they_answer(nano, scene_url) -> None:
    """Streamed under a schema, the pieces join into one whole object and the answer ends by itself
    (the grammar closes the object), not at the token limit. Streamed in JSON mode, the pieces are
    the unstreamed answer. (The bundled model, which never saw JSON, does not close a free-form
    object by itself: its first key runs on to the token limit.)"""
    fmt = {"type": "json_schema", "json_schema": {"name": "shape", "schema": SCHEMA, "strict": True}}
    with client_for(nano) as client:
        text, reasons = _stream(client, _ask(scene_url, response_format=fmt, max_tokens=200))
        assert reasons == ["stop"], text
        assert set(json.loads(text)) == {"shape", "colour", "big"}, text
        body = _ask(scene_url, response_format={"type": "json_object"}, max_tokens=40)
        text, reasons = _stream(client, body)
        whole = client.post("/v1/chat/completions", json=body).json()["choices"][0]
    assert text == whole["message"]["content"] and text.startswith("{"), (text, whole)
    assert reasons == [whole["finish_reason"]], (reasons, whole)


def test_a_schema_that_cannot_compile_is_a_400(nano, scene_url) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}}
    with client_for(nano) as client:
        r = client.post("/v1/chat/completions", json=_ask(scene_url, response_format=fmt))
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "response_format.json_schema.schema"
