"""LoRA fine-tuning through `peft`: adapters on chosen components, merged back on save.

`add_lora(model, settings)` wraps the linear layers named in `settings.targets` inside the chosen
components (the language model, and the vision tower's encoder; the projector and the tower's
unused pooling head learn fully or not at all) with peft's LoRA layers, in place; only the adapter
matrices are then trainable there (`lora_parameters`). `merged_state_dict(state, settings)` is the
plain state dict with every adapter folded in (W + (alpha / rank) * B @ A, peft's update for a
linear layer) under the original names, so a LoRA run saves an ordinary checkpoint that loads
without peft. The merge works on a state dict (under
FSDP the gathered one) and leaves the model alone: peft's own `merge()` would rewrite the frozen
weights in place and, undone by `unmerge()`, leave them off by rounding, breaking exact resumption.

peft is an optional dependency (`pip install omnivision[lora]`), imported only when LoRA is used.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from omnivision.train.parts import trainable_parts

ADAPTED = {"language": "language", "vision": "vision.encoder"}
"""The components that can take adapters, and the module inside each that gets them."""
LINEAR_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "out_proj", "gate_proj", "up_proj",
                "down_proj", "fc1", "fc2")
"""Every linear layer of the language model and vision tower, by its module name."""


@dataclass
class LoraSettings:
    """LoRA settings of a stage; `rank: 0` means full fine-tuning (no adapters)."""

    rank: int = 0
    """Adapter rank r; 0 turns LoRA off."""
    alpha: float = 16.0
    """Scale numerator: the update is (alpha / rank) * B @ A."""
    dropout: float = 0.0
    """Dropout on the adapter's input."""
    parts: list[str] = field(default_factory=lambda: ["language"])
    """Components whose linear layers get adapters: language and/or vision (they must also be
    trainable)."""
    targets: list[str] = field(default_factory=lambda: list(LINEAR_NAMES))
    """Module names of the linear layers to adapt."""

    def __post_init__(self) -> None:
        if self.rank < 0:
            raise ValueError(f"config field 'lora.rank': must be 0 (off) or positive, got {self.rank}")
        if not set(self.parts) <= set(ADAPTED) or not self.parts:
            raise ValueError(f"config field 'lora.parts': must be a non-empty subset of {list(ADAPTED)}, "
                             f"got {self.parts}")
        unknown = set(self.targets) - set(LINEAR_NAMES)
        if unknown or not self.targets:
            raise ValueError(f"config field 'lora.targets': must be a non-empty subset of "
                             f"{LINEAR_NAMES}, got {self.targets}")

    @property
    def enabled(self) -> bool:
        return self.rank > 0


def _peft():
    try:
        import peft
    except ImportError as e:
        raise ImportError("LoRA needs the peft package: pip install 'omnivision[lora]'") from e
    return peft


def add_lora(model: nn.Module, settings: LoraSettings, seed: int = 0) -> None:
    """Wrap the target linear layers of `settings.parts` with LoRA adapters, in place; their
    random initial A matrices come from `seed` (B starts at zero, so the model is unchanged)."""
    peft = _peft()
    config = peft.LoraConfig(r=settings.rank, lora_alpha=settings.alpha,
                             lora_dropout=settings.dropout, target_modules=list(settings.targets),
                             bias="none")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for part in settings.parts:
            peft.inject_adapter_in_model(config, model.get_submodule(ADAPTED[part]), adapter_name=ADAPTER)


ADAPTER = "default"
_BASE_WEIGHT = ".base_layer.weight"


def is_lora_parameter(name: str) -> bool:
    return ".lora_A." in name or ".lora_B." in name


def lora_parameters(parts: list[str], settings: LoraSettings):
    """A `trainable` selector for `train()`: the named parts learn, fully or through their adapters."""
    full = trainable_parts(parts)  # checks the part names
    missing = set(settings.parts) - set(parts)
    if missing:
        raise ValueError(f"LoRA parts {sorted(missing)} are not among the trainable parts {list(parts)}")

    def select(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
        return [(name, p) for name, p in full(model)
                if name.split(".", 1)[0] not in settings.parts or is_lora_parameter(name)]

    return select


def merged_state_dict(state: Mapping[str, torch.Tensor], settings: LoraSettings) -> dict[str, torch.Tensor]:
    """A state dict of an adapted model as if it had no adapters: each adapted weight becomes
    W + (alpha / rank) * B @ A under its original name, the adapter tensors are dropped."""
    scale = settings.alpha / settings.rank
    out = {}
    for name, tensor in state.items():
        if is_lora_parameter(name):
            continue
        if name.endswith(_BASE_WEIGHT):
            prefix = name[:-len(_BASE_WEIGHT)]
            a = state[f"{prefix}.lora_A.{ADAPTER}.weight"]  # [r, in]
            b = state[f"{prefix}.lora_B.{ADAPTER}.weight"]  # [out, r]
            tensor = tensor + (scale * (b.float() @ a.float())).to(tensor.dtype)  # [out, in]
        out[name.replace(".base_layer.", ".")] = tensor
    return out


def prepare_parts(model: nn.Module, parts: list[str], settings: LoraSettings, seed: int = 0):
    """What a recipe hands to `train()` and to its saves, adapters added first when LoRA is on:
    the `trainable` selector, and the function that turns the model's full state dict into the
    one to save (identity without LoRA, the merge with it)."""
    if not settings.enabled:
        return trainable_parts(parts), lambda state: state
    select = lora_parameters(parts, settings)  # checks the parts before the model is changed
    add_lora(model, settings, seed)
    return select, lambda state: merged_state_dict(state, settings)
