"""Every YAML config shipped in configs/ builds its recipe's config dataclass."""

from __future__ import annotations

import pytest

from omnivision.train.config import load_config
from omnivision.train.recipe_align import AlignConfig
from omnivision.train.recipe_dpo import DPOConfig
from omnivision.train.recipe_sft import SFTConfig
from tests.conftest import REPO

CONFIGS = {"stage1_align.yaml": AlignConfig, "stage2_sft.yaml": SFTConfig, "stage3_dpo.yaml": DPOConfig}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_shipped_config_loads(name):
    cfg = load_config(CONFIGS[name], REPO / "configs" / name, [])
    assert cfg.train.steps > 0 and cfg.model


def test_lora_from_the_command_line():
    cfg = load_config(SFTConfig, REPO / "configs" / "stage2_sft.yaml", ["lora.rank=16"])
    assert cfg.lora.enabled and cfg.lora.rank == 16 and cfg.lora.parts == ["language"]
    with pytest.raises(ValueError, match="lora.parts"):
        load_config(SFTConfig, REPO / "configs" / "stage2_sft.yaml", ["lora.parts=[eyes]"])


def test_every_shipped_config_is_covered():
    assert sorted(p.name for p in (REPO / "configs").glob("*.yaml")) == sorted(CONFIGS)
