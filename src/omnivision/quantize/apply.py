"""`quantize_model`: swap the nn.Linear layers of chosen model parts for Int8Linear / Int4Linear.

Parts are `model.language`, `model.projector` and `model.vision`. Only `nn.Linear` modules are
replaced: embeddings, convolutions, norms and the vision pooling head's `nn.MultiheadAttention` stay
as they are, and so does the Linear inside `nn.MultiheadAttention` (its forward reads the weight
directly). The output head also stays: `Qwen2ForCausalLM.logits` reads `lm_head.weight` (or the
tied embedding) directly, so a separate `lm_head` Linear is skipped and listed in `skipped`. For int4,
a layer whose in_features the requested group size does not divide uses the largest smaller allowed
group size that does; a layer that no allowed group size divides stays unquantized (`skipped`).

The summary is also kept on the model as `model.quantization`, so that `save_native` can record it and
a loaded checkpoint rebuilds the same layers (`quantize.checkpoint`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from omnivision.quantize.int4_linear import Int4Linear, fitting_group_size
from omnivision.quantize.int8_linear import Int8Linear
from omnivision.quantize.scheme import QuantScheme, SchemeError, parse_parts, parse_scheme

_OUTPUT_HEAD = "language.lm_head"


@dataclass
class QuantSummary:
    scheme: str
    parts: tuple[str, ...]
    layers: int = 0  # Linear layers replaced
    bytes_before: int = 0  # their weights + biases before
    bytes_after: int = 0  # their quantized buffers + biases after
    skipped: list[str] = field(default_factory=list)  # Linear layers of the chosen parts left alone


def _tensor_bytes(module: nn.Module) -> int:
    tensors = list(module.parameters(recurse=False)) + list(module.buffers(recurse=False))
    return sum(t.numel() * t.element_size() for t in tensors)


def _quantized(linear: nn.Linear, scheme: QuantScheme) -> nn.Module | None:
    if scheme.bits == 8:
        return Int8Linear.from_linear(linear)
    try:
        group = fitting_group_size(linear.in_features, scheme.group_size)
    except ValueError:
        return None
    return Int4Linear.from_linear(linear, group, scheme.symmetric)


def quantize_model(model: nn.Module, scheme: str | QuantScheme,
                   parts: str | tuple[str, ...] = ("language", "projector", "vision")) -> QuantSummary:
    """Replace, in place, the nn.Linear layers of `parts` of an OmniVisionModel; returns a summary."""
    scheme = parse_scheme(scheme)
    parts = parse_parts(parts)
    previous = getattr(model, "quantization", None)
    if previous is not None and previous.scheme != scheme.name:
        # one scheme per model: a checkpoint records a single scheme to rebuild the layers with
        raise SchemeError(f"the model is already quantized with {previous.scheme}, not {scheme.name}")
    summary = QuantSummary(scheme.name, parts)
    for part in parts:
        root = getattr(model, part)
        inside_mha = {f"{n}.{c}" for n, m in root.named_modules() if isinstance(m, nn.MultiheadAttention)
                      for c, _ in m.named_children()}
        for name, linear in list(root.named_modules()):
            if not isinstance(linear, nn.Linear):
                continue
            full = f"{part}.{name}"
            keep = full == _OUTPUT_HEAD or name in inside_mha
            new = None if keep else _quantized(linear, scheme)
            if new is None:
                summary.skipped.append(full)
                continue
            parent_name, _, child = full.rpartition(".")
            setattr(model.get_submodule(parent_name), child, new)
            summary.layers += 1
            summary.bytes_before += _tensor_bytes(linear)
            summary.bytes_after += _tensor_bytes(new)
    model.quantization = _merged(previous, summary)
    return summary


def _merged(previous: QuantSummary | None, new: QuantSummary) -> QuantSummary:
    """What the model holds after `new` was applied on top of `previous` (same scheme)."""
    if previous is None:
        return new
    parts = tuple(dict.fromkeys(previous.parts + new.parts))
    skipped = [s for s in previous.skipped if s.split(".")[0] not in new.parts] + new.skipped
    return QuantSummary(new.scheme, parts, previous.layers + new.layers,
                        previous.bytes_before + new.bytes_before, previous.bytes_after + new.bytes_after,
                        skipped)
