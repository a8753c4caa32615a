"""Weight-only quantization schemes: what `int8`, `int8-g32` and `int4[-g<group>][-sym]` mean, parsed
and checked.

- `int8`: symmetric, one scale per output channel (row of the weight).
- `int8-g32`: symmetric, one fp16 scale per 32 consecutive input features of each row (llama.cpp's
  Q8_0); the vision tower's layers stay per output channel (their many-row products run on int8
  activations, which take one scale per row: `quantize.int8_linear`).
- `int4`: one scale (and, unless `-sym`, one zero) per group of `group_size` consecutive input
  features of each row; `group_size` is one the CPU int4 kernel accepts (32, 64, 128 or 256; default 128).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

GROUP_SIZES = (32, 64, 128, 256)
DEFAULT_GROUP_SIZE = 128
INT8_GROUP = 32
PARTS = ("language", "projector", "vision")

_INT4 = re.compile(r"int4(?:-g(?P<group>\d+))?(?P<sym>-sym)?")


class SchemeError(ValueError):
    """A quantization scheme string or setting that is not supported."""


@dataclass(frozen=True)
class QuantScheme:
    bits: int  # 8 or 4
    group_size: int | None = None  # int4; int8: None (per row) or INT8_GROUP
    symmetric: bool = True  # int8 is always symmetric; int4 defaults to asymmetric (min/max)

    def __post_init__(self) -> None:
        if self.bits == 8:
            if self.group_size not in (None, INT8_GROUP) or not self.symmetric:
                raise SchemeError(f"int8 is symmetric, per output channel or in groups of {INT8_GROUP}")
        elif self.bits == 4:
            if self.group_size not in GROUP_SIZES:
                raise SchemeError(f"int4 group size must be one of {GROUP_SIZES}, got {self.group_size}")
        else:
            raise SchemeError(f"only 8- and 4-bit weights are supported, got {self.bits} bits")

    @property
    def name(self) -> str:
        if self.bits == 8:
            return "int8" if self.group_size is None else f"int8-g{self.group_size}"
        return f"int4-g{self.group_size}" + ("-sym" if self.symmetric else "")


def parse_scheme(text: str | QuantScheme) -> QuantScheme:
    """`int8`, `int4`, `int4-g64`, `int4-g32-sym` ... -> QuantScheme (a QuantScheme passes through)."""
    if isinstance(text, QuantScheme):
        return text
    spec = str(text).strip().lower()
    if spec == "int8":
        return QuantScheme(bits=8)
    if spec == f"int8-g{INT8_GROUP}":
        return QuantScheme(bits=8, group_size=INT8_GROUP)
    match = _INT4.fullmatch(spec)
    if match is None:
        raise SchemeError(f"unknown quantization scheme {text!r}; use int8, int8-g{INT8_GROUP}, int4, int4-g<group> "
                          f"(group in {GROUP_SIZES}) or int4-g<group>-sym")
    group = int(match["group"]) if match["group"] else DEFAULT_GROUP_SIZE
    return QuantScheme(bits=4, group_size=group, symmetric=bool(match["sym"]))


def parse_parts(parts: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """`"language,projector"` or a sequence -> validated tuple of model parts."""
    names = [p.strip() for p in parts.split(",")] if isinstance(parts, str) else list(parts)
    unknown = [p for p in names if p not in PARTS]
    if unknown or not names:
        raise SchemeError(f"unknown model part(s) {unknown or names!r}; choose from {PARTS}")
    return tuple(dict.fromkeys(names))
