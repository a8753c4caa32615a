"""Runs the plugin's tests (test_on_vllm.py) in vLLM's own environment, so that `python3 -m pytest`
in this project's environment covers OmniVision on vLLM too. `scripts/setup.sh test` makes that
environment (`scripts/vllm_env.sh`); where it could not, this is skipped with the reason."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO

VENV = Path(os.environ.get("OMNIVISION_VLLM_VENV", REPO / ".cache" / "vllm-venv"))
PYTHON = VENV / "bin" / "python"
TESTS = "tests/vllm_plugin/test_on_vllm.py"


@pytest.mark.long
@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is here: test_on_vllm.py runs directly")
@pytest.mark.skipif(not PYTHON.exists(), reason=f"no vLLM environment at {VENV} (bash scripts/vllm_env.sh)")
def test_the_plugin_tests_pass_in_the_vllm_environment():
    run = subprocess.run([str(PYTHON), "-m", "pytest", "-o", "addopts=", "-q", "-p", "no:cacheprovider",
                          "-p", "no:warnings", TESTS],
                         cwd=REPO, capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-3000:]
    summary = next((line for line in reversed(run.stdout.splitlines()) if re.search(r"\d+ passed", line)), "")
    passed = re.search(r"(\d+) passed", summary)
    assert passed and int(passed.group(1)) >= 4 and "skipped" not in summary, summary
