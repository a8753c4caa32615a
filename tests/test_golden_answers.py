"""The bundled model gives the recorded answers and scores through every user-facing path (`run`,
`chat`, `serve`, `eval`, `quantize --check`), in float32 on one thread: refactorings keep behaviour.
The probes and how to re-record them are in `tests/golden_answers.py`."""

from __future__ import annotations

import json

import pytest

from omnivision.loader import BUNDLED
from omnivision.weights.native import is_native

from tests.golden_answers import RECORDED, capture, same_outputs

pytest.importorskip("fastapi")
pytest.importorskip("llguidance")
pytestmark = [pytest.mark.long, pytest.mark.skipif(not is_native(BUNDLED), reason="no bundled nano model")]


@pytest.fixture(scope="module")
def captured(tmp_path_factory):
    return json.loads(json.dumps(capture(tmp_path_factory.mktemp("golden"))))  # tuples as lists


@pytest.fixture(scope="module")
def recorded():
    return json.loads(RECORDED.read_text())


@pytest.mark.parametrize("path", ["run", "chat", "serve", "eval", "quantize"])
def test_same_outputs_as_recorded(captured, recorded, path):
    assert same_outputs(captured[path], recorded[path], path) == []


def test_the_comparison_catches_what_it_must():
    want = {"text": ["a", "b"], "logprob": -0.758274, "count": 3}
    assert same_outputs({"text": ["a", "b"], "logprob": -0.758272, "count": 3}, want) == []
    assert same_outputs({"text": ["a", "c"], "logprob": -0.758274, "count": 3}, want)
    assert same_outputs({"text": ["a", "b"], "logprob": -0.7584, "count": 3}, want)
    assert same_outputs({"text": ["a", "b"], "logprob": -0.758274, "count": 4}, want)
    assert same_outputs({"text": ["a"], "logprob": -0.758274, "count": 3}, want)
