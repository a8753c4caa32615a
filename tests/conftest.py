"""Shared fixtures: seeded RNG, the tiny preset and a tiny random model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from omnivision.config import preset
from omnivision.model import OmniVisionModel, init_weights

REPO = Path(__file__).resolve().parents[1]
TEST_FILES = REPO / ".cache" / "test-files"

# Kernels are not timed in tests (the default is used, nothing is written under ~/.cache): results do
# not depend on how busy the machine is. tests/kernels and tests/model/test_linear.py turn it on.
os.environ.setdefault("OMNIVISION_KERNEL_TUNING", "off")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture
def tiny_config():
    return preset("tiny")


@pytest.fixture
def tiny_model(tiny_config):
    torch.manual_seed(0)
    model = OmniVisionModel(tiny_config).eval()
    init_weights(model, std=0.1)
    return model
