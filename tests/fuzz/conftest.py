"""Fixtures of the fuzz tests: the seed inputs (built once) and a harness with its worker process."""

from __future__ import annotations

import pytest

from tests.fuzz.runner import Harness
from tests.fuzz.seeds import make_seeds


@pytest.fixture(scope="session")
def seeds(tmp_path_factory):
    return make_seeds(tmp_path_factory.mktemp("fuzz-seeds"))


@pytest.fixture(scope="module")
def harness(seeds, tmp_path_factory):
    h = Harness(seeds, tmp_path_factory.mktemp("fuzz-work"))
    yield h
    h.close()
