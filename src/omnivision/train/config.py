"""`TrainConfig`, the settings of the shared loop, and YAML loading of any nested config dataclass.

A recipe nests `TrainConfig` inside its own dataclass (`@dataclass class SFTConfig: train:
TrainConfig; data: str; ...`) and calls `load_config(SFTConfig, "recipe.yaml", ["train.lr=3e-4"])`.
The YAML file is read first, then every `a.b=value` override is applied on top; the dataclass tree is
then built recursively from the merged mapping. Unknown keys, missing required keys and values of the
wrong type are errors naming the dotted key. Override values are parsed with `yaml.safe_load`, except
that a field typed `str` keeps the raw text (`name=0.10` stays "0.10") and a `float` field accepts
YAML 1.1's dotless exponents (`lr=1e-3`, which `safe_load` reads as a string). `_coerce` dispatches
each value on the kind of its field's annotation (union, literal, scalar, list/tuple, dict, nested
dataclass) to one small `_coerce_*`/`_to_*` function.

Knows nothing of models, data or the training loop. Follows `Lightning-AI/litgpt: litgpt/args.py`
(attribute docstrings plus `__post_init__` checks that name the field).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

PRECISIONS = ("auto", "fp32", "bf16")
"""`auto`: bf16 autocast where the hardware runs it natively, else fp32."""

DISTRIBUTED = ("auto", "none", "ddp", "fsdp")
"""`auto`: DDP when torchrun starts more than one process, else nothing."""

DEVICES = ("auto", "cpu", "cuda")
"""`auto`: CUDA when available, else CPU."""


def _require(cond: bool, name: str, message: str) -> None:
    if not cond:
        raise ValueError(f"config field {name!r}: {message}")


@dataclass
class TrainConfig:
    """The shared training loop's settings (`train/loop.py`)."""

    out_dir: str = "runs/train"
    """Run directory: metrics.jsonl, curves.png and checkpoints/step_XXXXXXXX/."""
    steps: int = 100
    """Optimizer steps of the whole run (also the length of the cosine schedule)."""
    batch_size: int = 8
    """Samples per process per micro-step; the global batch is batch_size * grad_accum * processes."""
    grad_accum: int = 1
    """Micro-steps whose gradients are summed (each micro loss divided by grad_accum) per optimizer step."""
    lr: float = 1e-3
    """Peak learning rate (AdamW)."""
    weight_decay: float = 0.0
    """AdamW decoupled weight decay, applied to parameters with 2 or more dimensions only."""
    betas: tuple[float, float] = (0.9, 0.95)
    """AdamW betas."""
    lr_scales: dict[str, float] = field(default_factory=dict)
    """Multipliers of `lr` (and of its whole schedule) per component, the first part of a parameter's
    name (`vision`, `projector`, `language`); components not named learn at `lr`. A projector
    learning fast next to a pretrained decoder that must learn slowly needs this (nano stage 2)."""
    warmup_steps: int = 0
    """Linear warmup from lr/warmup_steps to lr over this many steps."""
    min_lr_ratio: float = 0.1
    """The cosine decay ends at lr * min_lr_ratio on the last step."""
    max_grad_norm: float = 1.0
    """Clip the global gradient norm to this value; 0 turns clipping off (the norm is still logged)."""
    precision: str = "auto"
    """auto | fp32 | bf16: bf16 autocast (auto: only where the CPU or GPU supports bf16 natively)."""
    group_by_length: int = 0
    """Batch samples of similar length: runs of this many micro-batches are drawn together, sorted
    by length and cut into micro-batches, so that a batch pads little (`train/data_order.py`). 0:
    off. The recipe supplies the lengths (SFT, DPO and align do). A loss averaged over a batch's
    tokens then weighs the tokens of short samples more than random batches do."""
    grad_checkpointing: bool = False
    """Recompute activations in the backward pass (calls model.set_gradient_checkpointing(True))."""
    compile: bool = False
    """Run the model's compiled steps (calls model.set_compiled(True) before the first step and
    set_compiled(False) after the last; `OmniVisionModel` compiles its decoder with
    `torch.compile`, dynamic shapes). On the 2-core CPUs a step of the nano recipe's stage 2 then
    fuses the decoder's many small elementwise operations; it costs some 20-40 s of compiling in the
    first steps, and the CPU needs a C++ compiler (inductor's; without one, or where the compiled
    code sums wrongly, the decoder stays eager with a warning). `on_checkpoint` runs with the
    compiled decoder in place. A run resumes only with the same setting; resumption bit for bit is
    tested for eager runs. Tested on the CPU in one process, with and without gradient
    checkpointing; not yet under DDP or FSDP."""
    seed: int = 0
    """Seeds the data order (seed + epoch) and the per-step random state (seed, rank, step)."""
    save_every: int = 0
    """Write a checkpoint every this many steps; 0: only the final one."""
    keep_last: int = 2
    """Checkpoints kept on disk (older ones are deleted after each successful save)."""
    log_every: int = 10
    """Write a metrics line every this many steps (and on the last step)."""
    distributed: str = "auto"
    """auto | none | ddp | fsdp (fsdp shards each decoder layer of model.language.model.layers)."""
    progress: bool = True
    """Show a progress bar (on rank 0) with loss, learning rate and samples per second."""
    device: str = "auto"
    """auto | cpu | cuda: where training runs (under torchrun: cuda:LOCAL_RANK)."""
    ddp_find_unused: bool = False
    """DDP find_unused_parameters: needed only when some trainable parameters miss some batches."""

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)
        for name in ("steps", "batch_size", "grad_accum", "keep_last", "log_every"):
            _require(getattr(self, name) >= 1, name, f"must be at least 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "save_every", "seed", "group_by_length"):
            _require(getattr(self, name) >= 0, name, f"must be non-negative, got {getattr(self, name)}")
        _require(self.lr > 0, "lr", f"must be positive, got {self.lr}")
        _require(all(v > 0 for v in self.lr_scales.values()), "lr_scales",
                 f"multipliers must be positive, got {self.lr_scales}")
        _require(self.weight_decay >= 0, "weight_decay", f"must be non-negative, got {self.weight_decay}")
        _require(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "betas",
                 f"must be two numbers in [0, 1), got {self.betas}")
        _require(0 <= self.min_lr_ratio <= 1, "min_lr_ratio", f"must be in [0, 1], got {self.min_lr_ratio}")
        _require(self.max_grad_norm >= 0, "max_grad_norm", f"must be non-negative, got {self.max_grad_norm}")
        _require(self.precision in PRECISIONS, "precision", f"{self.precision!r} is not one of {PRECISIONS}")
        _require(self.distributed in DISTRIBUTED, "distributed",
                 f"{self.distributed!r} is not one of {DISTRIBUTED}")
        _require(self.device in DEVICES, "device", f"{self.device!r} is not one of {DEVICES}")
        _require(bool(self.out_dir), "out_dir", "must not be empty")


C = TypeVar("C")


@dataclass(frozen=True)
class _Raw:
    """An override's value as typed on the command line, parsed once its field's type is known."""

    text: str


def load_config(cls: type[C], yaml_path: str | Path | None, overrides: list[str]) -> C:
    """Build the dataclass `cls` from a YAML file (optional) plus `a.b=value` overrides."""
    data: dict[str, Any] = {}
    if yaml_path is not None:
        with open(yaml_path, encoding="utf-8") as fh:
            loaded = yaml.safe_load(fh)
        if loaded is not None and not isinstance(loaded, dict):
            raise ValueError(f"{yaml_path}: the top level must be a mapping, got {type(loaded).__name__}")
        data = loaded or {}
    for item in overrides:
        key, sep, value = item.lstrip("-").partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            raise ValueError(f"override {item!r} is not of the form key.sub=value")
        node = data
        for i, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ValueError(f"override {item!r}: {'.'.join(parts[:i + 1])!r} is not a section")
            node = child
        node[parts[-1]] = _Raw(value)
    return _build(cls, data, "")


def config_to_dict(config: Any) -> dict[str, Any]:
    """A dataclass tree as plain YAML/JSON data (tuples become lists)."""
    def plain(value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value
    return plain(dataclasses.asdict(config))


def _build(cls: type[C], data: Any, prefix: str) -> C:
    where = prefix.rstrip(".") or "the top level"
    if isinstance(data, _Raw):
        data = yaml.safe_load(data.text)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ValueError(f"config key {where!r}: expected a mapping for {cls.__name__}, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"unknown config key {prefix + str(unknown[0])!r} "
                         f"({cls.__name__} has {sorted(fields)})")
    kwargs = {}
    for name, f in fields.items():
        key = prefix + name
        if name in data:
            kwargs[name] = _coerce(data[name], hints[name], key)
        elif (f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING):
            if dataclasses.is_dataclass(hints[name]):
                kwargs[name] = _build(hints[name], {}, key + ".")
            else:
                raise ValueError(f"missing required config key {key!r}")
    return cls(**kwargs)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """`value` checked (and converted where lossless) against the annotation `tp`: dispatches on the
    kind of annotation to one `_coerce_*` function each."""
    if isinstance(value, _Raw):
        return _coerce_raw(value, tp, key)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key + ".")
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return _coerce_union(value, tp, key)
    if origin is typing.Literal:
        return _coerce_literal(value, tp, key)
    if tp is bool or tp is int or tp is float or tp is str:
        return _SCALARS[tp](value, key)
    if origin in (tuple, list) or tp in (tuple, list):
        return _coerce_sequence(value, tp, key)
    if origin is dict or tp is dict:
        return _coerce_dict(value, tp, key)
    if isinstance(tp, type):
        if isinstance(value, tp):
            return value
        _mismatch(value, tp, key)
    return value  # an annotation this loader does not interpret


def _coerce_raw(value: _Raw, tp: Any, key: str) -> Any:
    """An override's text parsed as YAML; where that does not fit `tp` but `tp` takes a string, the
    text as typed (`name=0.10` stays "0.10")."""
    parsed = yaml.safe_load(value.text) if value.text.strip() else None
    try:
        return _coerce(parsed, tp, key)
    except ValueError:
        if _accepts_str(tp):
            return value.text
        raise


def _coerce_union(value: Any, tp: Any, key: str) -> Any:
    """None for an optional field, else the value as the first member type that takes it."""
    args = typing.get_args(tp)
    if value is None and type(None) in args:
        return None
    for arg in (a for a in args if a is not type(None)):
        try:
            return _coerce(value, arg, key)
        except ValueError:
            pass
    _mismatch(value, tp, key)


def _coerce_literal(value: Any, tp: Any, key: str) -> Any:
    args = typing.get_args(tp)
    if value in args:
        return value
    raise ValueError(f"config key {key!r}: {value!r} is not one of {list(args)}")


def _to_bool(value: Any, key: str) -> bool:
    if isinstance(value, bool):
        return value
    _mismatch(value, bool, key)


def _to_int(value: Any, key: str) -> int:
    """An int, not a bool (YAML's `true` would otherwise pass as 1)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    _mismatch(value, int, key)


def _to_float(value: Any, key: str) -> float:
    """An int or float, or a string float() reads (YAML 1.1 leaves the dotless `1e-3` a string)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    _mismatch(value, float, key)


def _to_str(value: Any, key: str) -> str:
    if isinstance(value, str):
        return value
    _mismatch(value, str, key)


_SCALARS: dict[type, Callable[[Any, str], Any]] = {bool: _to_bool, int: _to_int, float: _to_float,
                                                   str: _to_str}


def _coerce_sequence(value: Any, tp: Any, key: str) -> list[Any] | tuple[Any, ...]:
    """A list or tuple item by item (keys `key[i]`); `tuple[A, B]` also fixes the length."""
    if not isinstance(value, (list, tuple)):
        _mismatch(value, tp, key)
    origin, args = typing.get_origin(tp) or tp, typing.get_args(tp)
    if origin is tuple and args and args[-1] is not Ellipsis:
        if len(args) != len(value):
            raise ValueError(f"config key {key!r}: expected {len(args)} items, got {value!r}")
        items = [_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args))]
    else:
        item_tp = args[0] if args else Any
        items = [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    return tuple(items) if origin is tuple else items


def _coerce_dict(value: Any, tp: Any, key: str) -> dict[Any, Any]:
    """A mapping, keys and values each checked (values under `key.k`)."""
    if not isinstance(value, dict):
        _mismatch(value, tp, key)
    k_tp, v_tp = typing.get_args(tp) or (Any, Any)
    return {_coerce(k, k_tp, key): _coerce(v, v_tp, f"{key}.{k}") for k, v in value.items()}


def _accepts_str(tp: Any) -> bool:
    return tp is str or tp is Any or str in typing.get_args(tp)


def _mismatch(value: Any, tp: Any, key: str) -> typing.NoReturn:
    name = getattr(tp, "__name__", None) if typing.get_origin(tp) is None else None
    raise ValueError(f"config key {key!r}: expected {name or tp}, got {value!r}")
