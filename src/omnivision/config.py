"""Model configuration: one dataclass per component, nested in `OmniVisionConfig`, plus named presets.

The config is the whole contract between a checkpoint and the code that runs it: shapes, the
compression mode, the chat template and the image preprocessing all live here, so nothing is ever
guessed from a file name. Derived values and validation sit in `__post_init__`; a bad value raises
`ValueError` naming the field.

Shapes of the official release follow `docs/official-release.md` section 5.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
from dataclasses import dataclass, field
from typing import Any

COMPRESSIONS = ("concat9", "spatial3x3", "none")
"""Projector token compression: the official flat 9-token concat, a 3x3 spatial merge, or none."""

TEMPLATES = ("omnivision", "omnivision-v1", "omnivision-ocr", "chatml")
"""Chat templates (see `processing/prompt.py`); `omnivision` is the official image-first one."""

RESIZES = ("official", "pil")
"""Image resize: the reference runtime's corner-aligned bicubic, or PIL's bicubic."""


MAX_SIZE = 2**24
"""Largest width, vocabulary or context a config may claim: far above any real model, and small
enough that no tensor shape built from the config overflows before loading compares it with the
checkpoint's own tensors."""
MAX_LAYERS = 1024
MAX_IMAGE_SIZE = 2**16


def _require(cond: bool, name: str, message: str) -> None:
    if not cond:
        raise ValueError(f"config field {name!r}: {message}")


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


_TYPES = {  # annotation (a string: annotations are not evaluated) -> (check, what it needs)
    "int": (_is_int, "an integer"),
    "float": (_is_number, "a finite number"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "str": (lambda v: isinstance(v, str), "a string"),
    "tuple[float, float, float]": (lambda v: isinstance(v, (list, tuple)) and all(map(_is_number, v)),
                                   "a list of numbers"),
    "tuple[int, ...]": (lambda v: isinstance(v, (list, tuple)) and all(map(_is_int, v)), "a list of integers"),
}


def _check_types(config: Any) -> None:
    """Every field holds what its annotation says: a config read from JSON can hold anything, and a
    list where a number belongs would otherwise fail deep inside torch. A float field given an
    integer (JSON `1000000`) holds it as a float: torch takes an eps of 2**64 as a float, not as
    an int."""
    for f in dataclasses.fields(config):
        check, what = _TYPES.get(f.type, (None, ""))
        value = getattr(config, f.name)
        if check is not None and not check(value):
            shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
            raise ValueError(f"config field {f.name!r}: must be {what}, got {type(value).__name__} {shown}")
        if f.type == "float":
            setattr(config, f.name, float(value))


def _require_sizes(config: Any, names: tuple[str, ...], limit: int) -> None:
    for name in names:
        value = getattr(config, name)
        _require(0 < value <= limit, name, f"must be between 1 and {limit}, got {value}")


@dataclass
class VisionConfig:
    """SigLIP vision tower (defaults: so400m-patch14-384)."""

    image_size: int = 384
    patch_size: int = 14
    num_channels: int = 3
    hidden_size: int = 1152
    intermediate_size: int = 4304
    num_layers: int = 27
    num_heads: int = 16
    layer_norm_eps: float = 1e-6
    has_head: bool = True
    """Whether the (unused) attention-pooling head is part of the weights, as in the release."""

    def __post_init__(self) -> None:
        _check_types(self)
        _require_sizes(self, ("image_size", "patch_size"), MAX_IMAGE_SIZE)
        _require_sizes(self, ("num_channels", "hidden_size", "intermediate_size", "num_heads"), MAX_SIZE)
        _require_sizes(self, ("num_layers",), MAX_LAYERS)
        _require(self.image_size >= self.patch_size, "image_size",
                 f"{self.image_size} is smaller than patch_size {self.patch_size}")
        _require(self.hidden_size % self.num_heads == 0, "num_heads",
                 f"hidden_size {self.hidden_size} is not divisible by {self.num_heads} heads")

    @property
    def grid(self) -> int:
        """Patches per side (the stride-`patch_size` conv drops a remainder: 384 // 14 = 27)."""
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid * self.grid

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


@dataclass
class ProjectorConfig:
    """Token compression followed by Linear -> GELU(tanh) -> Linear."""

    compression: str = "concat9"
    hidden_size: int = 4096
    """Width of the MLP's middle layer (inferred from tensor shapes when loading)."""

    def __post_init__(self) -> None:
        _check_types(self)
        _require(self.compression in COMPRESSIONS, "compression",
                 f"{self.compression!r} is not one of {COMPRESSIONS}")
        _require_sizes(self, ("hidden_size",), MAX_SIZE)

    @property
    def merge(self) -> int:
        """How many vision tokens become one language-model token."""
        return 1 if self.compression == "none" else 9


@dataclass
class TextConfig:
    """Qwen2 decoder (defaults: Qwen2.5-0.5B-Instruct)."""

    vocab_size: int = 151936
    hidden_size: int = 896
    intermediate_size: int = 4864
    num_layers: int = 24
    num_heads: int = 14
    num_kv_heads: int = 2
    rope_theta: float = 1_000_000.0
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 32768
    tie_word_embeddings: bool = True

    def __post_init__(self) -> None:
        _check_types(self)
        _require_sizes(self, ("vocab_size", "hidden_size", "intermediate_size", "num_heads", "num_kv_heads",
                              "max_position_embeddings"), MAX_SIZE)
        _require_sizes(self, ("num_layers",), MAX_LAYERS)
        _require(self.hidden_size % self.num_heads == 0, "num_heads",
                 f"hidden_size {self.hidden_size} is not divisible by {self.num_heads} heads")
        _require(self.num_heads % self.num_kv_heads == 0, "num_kv_heads",
                 f"{self.num_heads} query heads are not a multiple of {self.num_kv_heads}")
        _require(self.head_dim % 2 == 0, "hidden_size", "head dimension must be even for RoPE")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


@dataclass
class ProcessingConfig:
    """How text and images are turned into model inputs."""

    template: str = "omnivision"
    resize: str = "official"
    image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    system_prompt: str = "You are Nano-Omni-VLM, created by Nexa AI. You are a helpful assistant."

    def __post_init__(self) -> None:
        _check_types(self)
        _require(self.template in TEMPLATES, "template", f"{self.template!r} is not one of {TEMPLATES}")
        _require(self.resize in RESIZES, "resize", f"{self.resize!r} is not one of {RESIZES}")
        self.image_mean = tuple(float(v) for v in self.image_mean)
        self.image_std = tuple(float(v) for v in self.image_std)
        _require(len(self.image_mean) == 3 and len(self.image_std) == 3, "image_mean",
                 "mean and std need 3 values")
        _require(all(s > 0 for s in self.image_std), "image_std", "must be positive")


@dataclass
class OmniVisionConfig:
    """The whole model: vision tower, projector, language model, and how inputs are prepared."""

    vision: VisionConfig = field(default_factory=VisionConfig)
    projector: ProjectorConfig = field(default_factory=ProjectorConfig)
    text: TextConfig = field(default_factory=TextConfig)
    processing: ProcessingConfig = field(default_factory=ProcessingConfig)
    image_token_id: int = 151655
    """`<|image_pad|>`: each occurrence in the input ids is replaced by one image embedding."""
    stop_token_ids: tuple[int, ...] = (151645, 151643)
    """`<|im_end|>` and `<|endoftext|>`."""
    name: str = "omnivision"

    def __post_init__(self) -> None:
        for part, cls in (("vision", VisionConfig), ("projector", ProjectorConfig),
                          ("text", TextConfig), ("processing", ProcessingConfig)):
            if isinstance(getattr(self, part), dict):
                setattr(self, part, cls(**getattr(self, part)))
            _require(isinstance(getattr(self, part), cls), part, "must be an object")
        _check_types(self)
        self.stop_token_ids = tuple(int(t) for t in self.stop_token_ids)
        n, merge = self.vision.num_patches, self.projector.merge
        _require(n % merge == 0, "projector.compression",
                 f"{n} patches do not divide into groups of {merge}")
        if self.projector.compression == "spatial3x3":
            _require(self.vision.grid % 3 == 0, "projector.compression",
                     f"a {self.vision.grid}x{self.vision.grid} grid cannot be merged 3x3")
        _require(0 <= self.image_token_id < self.text.vocab_size, "image_token_id",
                 f"{self.image_token_id} is outside the vocabulary of {self.text.vocab_size}")

    @property
    def num_image_tokens(self) -> int:
        """Language-model positions one image occupies (81 for the release)."""
        return self.vision.num_patches // self.projector.merge

    @property
    def projector_in_features(self) -> int:
        return self.vision.hidden_size * self.projector.merge

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "OmniVisionConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown config fields: {sorted(unknown)}")
        parts = {}
        for f in dataclasses.fields(cls):
            if f.name not in data:
                continue
            value = data[f.name]
            sub = {"vision": VisionConfig, "projector": ProjectorConfig,
                   "text": TextConfig, "processing": ProcessingConfig}.get(f.name)
            if sub is not None:
                _require(isinstance(value, dict), f.name, f"must be an object, got {type(value).__name__}")
                sub_known = {g.name for g in dataclasses.fields(sub)}
                bad = set(value) - sub_known
                if bad:
                    raise ValueError(f"unknown config fields in {f.name!r}: {sorted(bad)}")
                value = sub(**value)
            parts[f.name] = value
        return cls(**parts)

    @classmethod
    def from_json(cls, text: str) -> "OmniVisionConfig":
        return cls.from_dict(json.loads(text))


def _tiny() -> OmniVisionConfig:
    # An 84-pixel image in 14-pixel patches: a 6x6 grid, 36 patches, 4 image tokens after the merge.
    return OmniVisionConfig(
        vision=VisionConfig(image_size=84, patch_size=14, hidden_size=32, intermediate_size=64,
                            num_layers=2, num_heads=4),
        projector=ProjectorConfig(hidden_size=48),
        text=TextConfig(vocab_size=320, hidden_size=64, intermediate_size=128, num_layers=2,
                        num_heads=4, num_kv_heads=2, max_position_embeddings=2048),
        # ids of the byte-level fallback tokenizer (processing/byte_tokenizer.py)
        image_token_id=262,
        stop_token_ids=(258, 256),
        name="tiny",
    )


PRESETS = {
    "omnivision-968m": lambda: OmniVisionConfig(name="omnivision-968m"),
    "tiny": _tiny,
}


def preset(name: str) -> OmniVisionConfig:
    """A fresh config for a named preset."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
    return PRESETS[name]()
