"""The decode step's layers in one C++ call (`kernels/decode_layers.cpp`), for decoders whose seven
products per layer are all this project's ops: group-wise int8 (`q8_linear`), group-wise int4 on the
project's kernel (`q4_linear`), fp32 / bf16 on the project's kernel (`dense_linear`), or torch's own
products behind `linear` / `weight_major`.

Why: the compiled layer step (`model/one_row_step.py`) spends about 150 us per layer outside its
products, in Python (the graph's wrapper, guards, entering the compiled region); on the 2-core AMD
EPYC that was 3.5 ms of a 22 ms int8 token. The C++ loop runs the same maths with a few
microseconds per layer beyond the products, and needs no `torch.compile` at all. Decoders with any
other product (the compiled multiply-and-sum, torch's packed int8 or int4 kernels) keep the compiled
step. `OMNIVISION_NATIVE_DECODE=off` keeps them on it too.
"""

from __future__ import annotations

import functools
import os
from typing import Callable, NamedTuple

import torch

from omnivision.model.kv_cache import KVCache
from omnivision.model.linear import Product

SWITCH_ENV = "OMNIVISION_NATIVE_DECODE"
Q8, Q4, LINEAR, WEIGHT_MAJOR, DENSE = 0, 1, 2, 3, 4
"""Product kinds, as `decode_layers.cpp` numbers them."""


class NativeLayers(NamedTuple):
    """Every layer's tensors in the order `decode_layers` takes them (see its header)."""

    norms: list[torch.Tensor]  # [2L] of [D]: each layer's input norm, then its post-attention norm
    eps: float
    heads: int
    kinds: list[int]  # [7L]
    groups: list[int]  # [7L]: the int4 group size, 0 for the other kinds
    weights: list[torch.Tensor | None]  # [21L]: per product (codes or weight, scales or table or None, bias)

    def layers(self, start: int, stop: int) -> NativeLayers:
        """Layers start..stop-1 alone."""
        return self._replace(norms=self.norms[2 * start:2 * stop], kinds=self.kinds[7 * start:7 * stop],
                             groups=self.groups[7 * start:7 * stop], weights=self.weights[21 * start:21 * stop])


def native_allowed() -> bool:
    return os.environ.get(SWITCH_ENV, "on").lower() not in ("off", "0", "false", "no")


_KINDS: dict[Callable, int] = {}
"""The product functions of `Q8` and `Q4` layers (`register`)."""


def register(function: Callable, kind: int) -> None:
    """Declares that `function` (args as `Int8GroupLinear` / `Int4Linear` hand them over: codes, scales or
    table, bias; int4's group size as its `group_size` keyword) computes `kind`'s product."""
    _KINDS[function] = kind


def _product_spec(product: Product) -> tuple[int, int, list[torch.Tensor | None]] | None:
    """(kind, group, [a, b, bias]) for a product `decode_layers` can run, else None."""
    function, args = product
    base, group = function, 0
    if isinstance(function, functools.partial) and not function.args:
        base, group = function.func, int(function.keywords.get("group_size", 0))
    kind = _KINDS.get(base)
    if kind == Q8:
        q, scales, bias = args
        return Q8, 0, [q, scales.to(torch.float16), bias]
    if kind == Q4 and group > 0:
        packed, table, bias = args
        return Q4, group, [packed, table, bias]
    kind = _DENSE_KINDS.get(getattr(function, "_qualified_op_name", None))
    if kind is not None:
        weight, bias = args
        return kind, 0, [weight, None, bias]
    return None


_DENSE_KINDS = {"omnivision::linear": LINEAR, "omnivision::weight_major": WEIGHT_MAJOR,
                "omnivision::dense_linear": DENSE}
"""The ops of fp32 / bf16 weights, by their qualified names."""


def native_layers(plans) -> NativeLayers | None:
    """The layers of `plans` (a list of `one_row_step.LayerPlan`) as `decode_layers` takes them, or None
    where a product is not one of its kinds."""
    norms, kinds, groups, weights = [], [], [], []
    for plan in plans:
        norms += [plan.input_norm, plan.post_norm]
        for product in (plan.q, plan.k, plan.v, plan.o, plan.gate, plan.up, plan.down):
            spec = _product_spec(product)
            if spec is None:
                return None
            kinds.append(spec[0])
            groups.append(spec[1])
            weights += spec[2]
    return NativeLayers(norms, plans[0].eps, plans[0].heads, kinds, groups, weights)


def run(native: NativeLayers, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: KVCache,
        position: int, start: int = 0) -> torch.Tensor:
    """Layers start.. of `native` on x [1, D] at `position` (cos/sin [1, 1, 1, hd]) -> [1, D]; writes
    each layer's key and value into `cache` at `position`."""
    stop = start + len(native.norms) // 2
    return torch.ops.omnivision.decode_layers(
        x, native.norms, native.eps, native.heads, native.kinds, native.groups, native.weights,
        cos.reshape(-1), sin.reshape(-1), cache.keys[start:stop], cache.values[start:stop], position)
