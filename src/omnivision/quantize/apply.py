"""`quantize_model`: swap the nn.Linear layers of chosen model parts for Int8Linear / Int8GroupLinear /
Int4Linear.

Parts are `model.language`, `model.projector` and `model.vision`. Only `nn.Linear` modules are
replaced: embeddings, convolutions, norms and the vision pooling head's `nn.MultiheadAttention` stay
as they are, and so does the Linear inside `nn.MultiheadAttention` (its forward reads the weight
directly). The output head (a separate `lm_head`, or the tied embedding that serves as head) stays
in full precision unless `head=True`: then `lm_head` is quantized like any Linear, or the tied
embedding becomes a `QuantizedEmbedding` (one quantized table for lookups and head). For int4,
a layer whose in_features the requested group size does not divide uses the largest smaller allowed
group size that does; a layer that no allowed group size divides (SigLIP's fc2 takes 4304 = 16 x 269
inputs) is stored int8 instead, per output channel, and listed in `int8_fallback`; so is an
`int8-g32` layer whose inputs are not a multiple of 32. `int8-g32` keeps the vision tower's layers
per output channel by design (see `quantize.scheme`).

The summary is also kept on the model as `model.quantization`, so that `save_native` can record it and
a loaded checkpoint rebuilds the same layers (`quantize.checkpoint`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from omnivision.quantize.embedding import QuantizedEmbedding
from omnivision.quantize.int4_linear import Int4Linear, fitting_group_size
from omnivision.quantize.int8_group_linear import Int8GroupLinear
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
    head: bool = False  # the output head (or tied embedding) is quantized too
    int8_fallback: list[str] = field(default_factory=list)  # grouped layers no group size fits, stored int8


def _tensor_bytes(module: nn.Module) -> int:
    tensors = list(module.parameters(recurse=False)) + list(module.buffers(recurse=False))
    return sum(t.numel() * t.element_size() for t in tensors)


def _quantized(linear: nn.Linear, scheme: QuantScheme, part: str = "language") -> nn.Module:
    if scheme.bits == 8:
        if scheme.group_size and part != "vision" and linear.in_features % scheme.group_size == 0:
            return Int8GroupLinear.from_linear(linear)
        return Int8Linear.from_linear(linear)
    try:
        group = fitting_group_size(linear.in_features, scheme.group_size)
    except ValueError:
        return Int8Linear.from_linear(linear)
    return Int4Linear.from_linear(linear, group, scheme.symmetric)


def _note_fallback(summary: QuantSummary, scheme: QuantScheme, name: str, layer: nn.Module) -> None:
    per_row_by_design = scheme.bits == 8 and name.startswith("vision.")
    if scheme.group_size and isinstance(layer, Int8Linear) and not per_row_by_design:
        summary.int8_fallback.append(name)


def _quantize_tied_embedding(model: nn.Module, scheme: QuantScheme, summary: QuantSummary) -> None:
    embed = model.language.model.embed_tokens
    as_linear = nn.Linear(embed.embedding_dim, embed.num_embeddings, bias=False, device=embed.weight.device,
                          dtype=embed.weight.dtype)
    as_linear.weight = embed.weight  # [vocab, dim]: the head's weight, shared
    table = _quantized(as_linear, scheme)
    _note_fallback(summary, scheme, "language.model.embed_tokens", table)
    model.language.model.embed_tokens = QuantizedEmbedding(table)
    summary.layers += 1
    summary.bytes_before += _tensor_bytes(embed)
    summary.bytes_after += _tensor_bytes(table)


def quantize_model(model: nn.Module, scheme: str | QuantScheme,
                   parts: str | tuple[str, ...] = ("language", "projector", "vision"),
                   head: bool = False) -> QuantSummary:
    """Replace, in place, the nn.Linear layers of `parts` of an OmniVisionModel (and with `head`, the
    output head or tied embedding); returns a summary."""
    scheme = parse_scheme(scheme)
    parts = parse_parts(parts)
    previous = getattr(model, "quantization", None)
    if previous is not None and previous.scheme != scheme.name:
        # one scheme per model: a checkpoint records a single scheme to rebuild the layers with
        raise SchemeError(f"the model is already quantized with {previous.scheme}, not {scheme.name}")
    head = head and "language" in parts
    summary = QuantSummary(scheme.name, parts, head=head)
    if head and model.language.lm_head is None and isinstance(model.language.model.embed_tokens, nn.Embedding):
        _quantize_tied_embedding(model, scheme, summary)
    for part in parts:
        root = getattr(model, part)
        inside_mha = {f"{n}.{c}" for n, m in root.named_modules() if isinstance(m, nn.MultiheadAttention)
                      for c, _ in m.named_children()}
        for name, linear in list(root.named_modules()):
            if not isinstance(linear, nn.Linear):
                continue
            full = f"{part}.{name}"
            keep = (full == _OUTPUT_HEAD and not head) or name in inside_mha
            if keep:
                summary.skipped.append(full)
                continue
            new = _quantized(linear, scheme, part)
            if part == "vision" and isinstance(new, Int8Linear):
                new.activation_quantization = True  # 729 rows a product: int8 units where faster
            _note_fallback(summary, scheme, full, new)
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
                        skipped, previous.head or new.head,
                        [s for s in previous.int8_fallback if s.split(".")[0] not in new.parts] + new.int8_fallback)
