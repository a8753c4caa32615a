"""The fuzz harness itself: mutations rebuild from their key, and every kind of failure it exists to
catch (a traceback, a second stderr line, output from below Python, a hang, a dead worker, memory
past the limit, a changed input file, a 5xx or a bare 4xx) is caught and named."""

from __future__ import annotations

import json
import random
import struct

import pytest

from tests.fuzz.cases import PATHS, Case, make_case
from tests.fuzz.contract import judge_request
from tests.fuzz.json_mutations import mutate_json
from tests.fuzz.mutations import (
    EXTREMES,
    OPERATORS,
    delete_span,
    duplicate_span,
    overwrite_integer,
    truncate,
)

pytestmark = pytest.mark.long  # starts worker processes (torch imported in each: seconds)


@pytest.mark.parametrize("path", PATHS)
def test_a_case_is_rebuilt_from_its_key(seeds, path):
    a, b = make_case(seeds, path, 7, 3), make_case(seeds, path, 7, 3)
    assert a == b and a.key == f"{path}:7:3"
    others = [make_case(seeds, path, 7, i) for i in range(4, 12)]
    assert all(c.files != a.files or c.body != a.body or c.argv != a.argv for c in others)


def test_an_overwritten_integer_is_an_extreme_at_its_place():
    data = bytes(range(256)) * 4
    for seed in range(50):
        out, what = overwrite_integer(data, random.Random(seed), focus=64)
        width = 4 if what.startswith("int32") else 8
        pos = int(what.rsplit(" at ", 1)[1])
        order = what[len(f"int{8 * width}")]
        (value,) = struct.unpack(order + ("I" if width == 4 else "Q"), out[pos:pos + width])
        assert value in {e % 2**(8 * width) for e in EXTREMES}
        assert out[:pos] == data[:pos] and out[pos + width:] == data[pos + width:]


@pytest.mark.parametrize("operator", OPERATORS)
def test_every_operator_takes_an_empty_file(operator):
    # a truncation to nothing can come before any operator (the 5,000-case run met it)
    for seed in range(20):
        assert isinstance(operator(b"", random.Random(seed), None)[0], bytes)


def test_spans_are_cut_copied_and_deleted():
    data = bytes(range(200))
    rng = random.Random(1)
    assert len(truncate(data, rng, None)[0]) < len(data)
    copied, what = duplicate_span(data, rng, None)
    assert len(copied) == len(data) + int(what.split()[1])
    deleted, what = delete_span(data, rng, 50)
    start, n = int(what.rsplit(" ", 1)[1]), int(what.split()[1])
    assert deleted == data[:start] + data[start + n:]


def test_json_mutations_change_the_document_and_can_nest_past_any_parser():
    doc = {"a": [1, 2, {"b": "c"}], "d": 1.5}
    texts = [mutate_json(doc, random.Random(seed))[0] for seed in range(200)]
    assert sum(t != json.dumps(doc).encode() for t in texts) > 190
    assert any(t.count(b"[") >= 2_000 for t in texts)


def _probe(harness, **probe) -> tuple[str, str]:
    outcome = harness.run(Case("probe", 0, 0, "none", files={"input.bin": b"abc"}, probe=probe))
    return outcome.kind, outcome.detail


def test_answers_and_one_line_refusals_pass(harness):
    assert _probe(harness, probe="print", stderr="", rc=0)[0] == "answered"
    assert _probe(harness, probe="print", stderr="error: bad file", rc=2) == ("refused", "error: bad file")


@pytest.mark.parametrize("probe,kind", [
    ({"probe": "print", "stderr": "warning: x\nerror: bad file", "rc": 2}, "contract"),
    ({"probe": "print", "stderr": "error: bad file", "stray": "from C\n", "rc": 2}, "contract"),
    ({"probe": "print", "stderr": "error: " + "x" * 2000, "rc": 2}, "contract"),
    ({"probe": "print", "stderr": "error: bad file", "rc": 1}, "contract"),
    ({"probe": "raise", "message": "boom"}, "traceback"),
    ({"probe": "allocate", "bytes": 16 * 2**30}, "memory"),
    ({"probe": "write", "file": "{dir}/input.bin"}, "modified"),
])
def test_each_failure_is_named(harness, probe, kind):
    assert _probe(harness, **probe)[0] == kind


def test_a_hang_and_a_death_are_caught_and_the_next_case_gets_a_fresh_worker(harness):
    restarts, harness.timeout_s = harness.restarts, 1.0
    try:
        assert _probe(harness, probe="sleep", seconds=30) == ("hang", "no result within 1 s")
    finally:
        harness.timeout_s = 30.0
    assert _probe(harness, probe="die", status=3) == ("died", "the worker exited with status 3")
    assert _probe(harness, probe="print", stderr="", rc=0)[0] == "answered"
    assert harness.restarts == restarts + 2


@pytest.mark.parametrize("status,text,kind", [
    (200, "{}", "answered"),
    (400, '{"error": {"message": "bad", "type": "invalid_request_error", "param": null}}', "refused"),
    (400, json.dumps({"error": {"message": "x" * 1001, "type": "invalid_request_error"}}), "contract"),
    (422, '{"detail": [{"loc": ["body"], "msg": "bad"}]}', "envelope"),
    (400, "not json", "envelope"),
    (500, '{"error": {"message": "oops", "type": "server_error"}}', "server-error"),
])
def test_request_outcomes(status, text, kind):
    assert judge_request({"status": status, "response": text, "exception": None})[0] == kind
