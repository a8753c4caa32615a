"""TrainConfig validation and `load_config`: YAML, `a.b=value` overrides, nested dataclasses, errors."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import yaml

from omnivision.train.config import TrainConfig, config_to_dict, load_config


@dataclass
class Recipe:
    train: TrainConfig
    data: str
    tags: list[str] = field(default_factory=list)
    note: str | None = None
    ratio: float = 0.5


def test_defaults_and_validation_names_the_field():
    cfg = TrainConfig()
    assert (cfg.steps, cfg.batch_size, cfg.betas, cfg.precision) == (100, 8, (0.9, 0.95), "auto")
    for kwargs, name in [({"steps": 0}, "steps"), ({"precision": "fp16"}, "precision"),
                         ({"betas": (0.9, 1.0)}, "betas"), ({"keep_last": 0}, "keep_last"),
                         ({"distributed": "deepspeed"}, "distributed"), ({"lr": 0.0}, "lr")]:
        with pytest.raises(ValueError, match=f"'{name}'"):
            TrainConfig(**kwargs)
    assert TrainConfig(betas=[0.8, 0.9]).betas == (0.8, 0.9)


def test_yaml_plus_overrides_build_nested_dataclasses(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text("data: shapes\ntrain:\n  steps: 20\n  lr: 3e-4\n  betas: [0.9, 0.99]\n")
    cfg = load_config(Recipe, path, ["train.steps=7", "train.lr=1e-3", "tags=[a, b]", "note=0.10",
                                     "--train.progress=false", "ratio=1"])
    assert isinstance(cfg.train, TrainConfig)
    assert cfg.train.steps == 7 and cfg.train.lr == 1e-3 and cfg.train.betas == (0.9, 0.99)
    assert cfg.train.progress is False
    assert cfg.tags == ["a", "b"] and cfg.note == "0.10" and cfg.ratio == 1.0
    assert cfg.data == "shapes" and cfg.train.batch_size == 8  # untouched keys keep their values


def test_missing_nested_section_takes_defaults_and_round_trips(tmp_path):
    cfg = load_config(Recipe, None, ["data=d"])
    assert cfg.train == TrainConfig()
    path = tmp_path / "dumped.yaml"
    path.write_text(yaml.safe_dump(config_to_dict(cfg)))
    assert load_config(Recipe, path, []) == cfg


@pytest.mark.parametrize("yaml_text, overrides, key", [
    ("data: d\ntrain:\n  lrr: 1\n", [], "train.lrr"),
    ("data: d\n", ["train.stepz=3"], "train.stepz"),
    ("data: d\n", ["extra=1"], "extra"),
    ("data: d\n", ["train.steps=many"], "train.steps"),
    ("data: d\n", ["train.betas=[0.9]"], "train.betas"),
    ("data: d\ntrain: 3\n", [], "train"),
    ("train: {}\n", [], "data"),
    ("data: d\n", ["train.progress=maybe"], "train.progress"),
])
def test_errors_name_the_key(tmp_path, yaml_text, overrides, key):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ValueError, match=f"'{key}'"):
        load_config(Recipe, path, overrides)


def test_bad_override_syntax():
    with pytest.raises(ValueError, match="key.sub=value"):
        load_config(Recipe, None, ["train.steps"])
    with pytest.raises(ValueError, match="'steps'"):
        load_config(Recipe, None, ["data=d", "train.steps=0"])  # __post_init__ validation
