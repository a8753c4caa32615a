"""Schema-driven fuzzing: a few hundred request bodies drawn from the server's own OpenAPI schema
(hypothesis-jsonschema), and mangled variants of them, never produce a 5xx or a non-envelope error."""

from __future__ import annotations

import json

import pytest

from omnivision.serve.settings import RemoteMedia, ServerSettings
from tests.serve.conftest import client_for

hypothesis = pytest.importorskip("hypothesis")
from_schema = pytest.importorskip("hypothesis_jsonschema").from_schema
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

pytestmark = pytest.mark.long

JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                    max_leaves=12)


@pytest.fixture(scope="module")
def fuzz_client(nano, tmp_path_factory):
    # short generations (the fuzz is about input handling), local paths and remote hosts enabled so
    # that image URLs reach every branch of the intake (the remote host never resolves here)
    settings = ServerSettings(request_timeout_s=0.02, image_root=tmp_path_factory.mktemp("images"),
                              remote=RemoteMedia(("images.invalid",), timeout_s=0.5))
    with client_for(nano, settings) as client:
        yield client


def _bounded(schema):
    """The schema with small array and string sizes, so that drawing examples stays fast."""
    if isinstance(schema, list):
        return [_bounded(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _bounded(v) for k, v in schema.items()}
    if out.get("type") == "array":
        out.setdefault("maxItems", 3)
    if out.get("type") == "string":
        out.setdefault("maxLength", 24)
    return out


@pytest.fixture(scope="module")
def request_schema(fuzz_client) -> dict:
    spec = fuzz_client.get("/openapi.json").json()
    return _bounded(spec["paths"]["/v1/chat/completions"]["post"]["requestBody"]["content"]["application/json"]["schema"])


def _check(response) -> None:
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        error = response.json()["error"]
        assert isinstance(error["message"], str) and isinstance(error["type"], str)


def test_bodies_from_the_openapi_schema(fuzz_client, request_schema) -> None:
    bodies = from_schema(request_schema)

    @settings(max_examples=200, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
    @given(body=bodies, model=st.sampled_from(["omnivision", "other"]))
    def run(body, model) -> None:
        body = {**body, "model": model}
        _check(fuzz_client.post("/v1/chat/completions", json=body))

    run()


def test_mangled_bodies(fuzz_client, request_schema) -> None:
    @settings(max_examples=100, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(body=from_schema(request_schema), key=st.text(max_size=12), value=JSON, raw=st.binary(max_size=64),
           how=st.sampled_from(["replace", "raw", "wrap"]))
    def run(body, key, value, raw, how) -> None:
        if how == "replace":
            keys = sorted(body) or [key]
            payload = json.dumps({**body, keys[len(key) % len(keys)]: value}).encode()
        elif how == "raw":
            payload = raw
        else:
            payload = json.dumps([body, value]).encode()
        _check(fuzz_client.post("/v1/chat/completions", content=payload, headers={"content-type": "application/json"}))

    run()
