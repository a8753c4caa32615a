"""The decoder's step for one new position of one sequence, each layer compiled by `torch.compile`.

A decode step of one sequence runs some fifteen small operations per layer around its seven one-row
products, and in eager mode each pays torch's dispatch. Profiled on the 2-core AMD EPYC (968M
shapes, int8 weights, torch 2.13): the products took 28 of the step's 42 ms, and the norms, rotary
positions, cache writes, activations and residual sums most of the rest. Compiled, each layer is a
few fused loops around the products (the multiply-and-sum products of `kernels.compiled_dot` are
generated inside them; torch's packed int8 / int4 kernels are called from them), and a decode step
of that model took 32 ms instead of 44 (bf16: 60 instead of 73).

What it covers: one row, one new position, a `KVCache` without padding, on the CPU, outside
autograd, in decoders of at least `MIN_WEIGHTS` weights in their layers (a smaller one decodes in a
few milliseconds and would only pay the compile, a few seconds once per process). Every linear
layer must describe its one-row product as a pure function (`one_row_product`); a layer that cannot
(an int8 layer torch's kernel cannot take) keeps the whole decoder eager. Every other step (prompts,
batches, padded rows, training) runs the eager layers.

The layer step is one function compiled per process for every layer of the same kernels, with
torch's automatic dynamic shapes: compiled first for the sizes it meets, then once more where the
position or the cache length changes, with those as symbols and every other size (hidden size,
heads, weights) still a constant. Compiled with every size a symbol from the start (as it was
before), the 968M decoded slower on the 2-core EPYC (five alternating rounds in one process, torch
2.13: int4 63.7 against 68.2 tok/s, int8-g32 43.3 against 48.5; bf16 level). Inductor's on-disk
cache shortens the compiles in later processes. The first step of each decoder, and any step during
which a graph was compiled, is checked against the eager layer; a compile failure or a
disagreement (torch 2.13's inductor has given wrong dynamic-shape reductions under
`ATEN_CPU_CAPABILITY=avx2`) keeps that decoder eager, with a warning. `OMNIVISION_COMPILE=off`
keeps every decoder eager.

Where every product of a decoder is one of `kernels/decode_layers.cpp`'s kinds (group-wise int8,
the project's int4 kernel, torch's own products), its steps skip the compiled layer and run every
layer in one C++ call (`model/native_decode.py`: the compiled step's Python costs about 150 us a
layer), checked against the eager layer 0 on the first step the same way.
"""

from __future__ import annotations

import threading
import warnings
import weakref
from typing import NamedTuple

import torch
import torch.nn.functional as F

from omnivision.kernels.compiled_dot import compile_allowed
from omnivision.kernels.cpp_build import ops as cpp_ops
from omnivision.model import native_decode
from omnivision.model.kv_cache import KVCache
from omnivision.model.linear import Product
from omnivision.model.qwen2 import (Qwen2Attention, Qwen2DecoderLayer, Qwen2ForCausalLM, Qwen2MLP, RMSNorm,
                                    apply_rotary, one_query_attention, rms_norm)

COMPUTE_DTYPES = (torch.float32, torch.bfloat16)
"""The compute dtypes whose one-row products the layers describe (fp16 takes other paths)."""
MIN_WEIGHTS = 50_000_000
"""Decoders with fewer weights in their layers decode eagerly (the 968M's have 358 million)."""


class LayerPlan(NamedTuple):
    """One decoder layer as tensors and pure product functions, what `layer_step` takes."""

    input_norm: torch.Tensor  # [D]
    post_norm: torch.Tensor  # [D]
    eps: float
    heads: int
    q: Product
    k: Product
    v: Product
    o: Product
    gate: Product
    up: Product
    down: Product


def _run(product: Product, x: torch.Tensor) -> torch.Tensor:
    function, args = product
    return function(x, *args)


def layer_step(plan: LayerPlan, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
               keys: torch.Tensor, values: torch.Tensor, position: int) -> torch.Tensor:
    """`Qwen2DecoderLayer` on one new position: x [1, D], cos/sin [1, 1, 1, hd], this layer's cache
    buffers keys/values [1, Hkv, L, hd] with `position` positions filled -> [1, D]; writes the new
    key and value at `position`."""
    kv_heads, head_dim = keys.shape[1], keys.shape[3]
    h = rms_norm(x, plan.input_norm, plan.eps)
    q = _run(plan.q, h).view(1, plan.heads, 1, head_dim)  # [1, H, 1, hd]
    k = _run(plan.k, h).view(1, kv_heads, 1, head_dim)  # [1, Hkv, 1, hd]
    v = _run(plan.v, h).view(1, kv_heads, 1, head_dim)
    q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
    keys[:, :, position:position + 1] = k
    values[:, :, position:position + 1] = v
    end = position + 1
    attended = one_query_attention(q, keys[:, :, :end], values[:, :, :end], None)  # [1, H, 1, hd]
    x = x + _run(plan.o, attended.reshape(1, plan.heads * head_dim))
    h = rms_norm(x, plan.post_norm, plan.eps)
    return x + _run(plan.down, F.silu(_run(plan.gate, h)) * _run(plan.up, h))


def _describes_its_forward(module) -> bool:
    """Whether the module's class defines `one_row_product` beside its own `forward` (a subclass that
    changes `forward` and inherits the product would be compiled with the wrong maths)."""
    own = vars(type(module))
    return "one_row_product" in own and "forward" in own


def _layer_plan(layer: Qwen2DecoderLayer) -> LayerPlan | None:
    attn, mlp = layer.self_attn, layer.mlp
    if (type(layer), type(attn), type(mlp)) != (Qwen2DecoderLayer, Qwen2Attention, Qwen2MLP) or not all(
            type(n) is RMSNorm for n in (layer.input_layernorm, layer.post_attention_layernorm)):
        return None  # the step copies these classes' maths
    modules = (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj)
    products = [m.one_row_product() if _describes_its_forward(m) else None for m in modules]
    if any(p is None for p in products):
        return None
    return LayerPlan(layer.input_layernorm.weight, layer.post_attention_layernorm.weight,
                     layer.input_layernorm.eps, attn.num_heads, *products)


class _Decoder:
    """A decoder's plans, the state of its weights they were made from, whether they are trusted, and
    the generation they were last found current for."""

    def __init__(self, key: tuple, plans: list[LayerPlan] | None) -> None:
        self.key, self.plans, self.checked = key, plans, False
        self.native = None if plans is None or cpp_ops() is None else native_decode.native_layers(plans)
        """The layers as the C++ loop takes them, where every product is one of its kinds."""
        self.native_checked = False
        self.generations: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
        """Generations running when the plans were last found current (several threads may decode)."""


_decoders: weakref.WeakKeyDictionary[Qwen2ForCausalLM, _Decoder] = weakref.WeakKeyDictionary()
_compiled_step = None
_lock = threading.Lock()


def _weights_key(lm: Qwen2ForCausalLM) -> tuple:
    """Changes when a layer's tensor is replaced or changed in place, or the thread count changes
    (kernel choices are made per thread count)."""
    tensors = [t for layer in lm.model.layers for t in (*layer.parameters(), *layer.buffers())]
    return (torch.get_num_threads(), lm.model.norm.weight.dtype, *((t.data_ptr(), t._version) for t in tensors))


def layer_weights(lm: Qwen2ForCausalLM) -> int:
    cfg = lm.config
    per_layer = cfg.hidden_size * (2 * cfg.num_heads * cfg.head_dim + 2 * cfg.num_kv_heads * cfg.head_dim
                                   + 3 * cfg.intermediate_size)
    return cfg.num_layers * per_layer


def _step_function():
    global _compiled_step
    if _compiled_step is None:
        with _lock:
            if _compiled_step is None:
                _compiled_step = torch.compile(layer_step, dynamic=None)  # automatic: see the module docstring
    return _compiled_step


def _decoder(lm: Qwen2ForCausalLM, generation: object) -> _Decoder:
    """The decoder's plans, made anew when its weights changed; weights do not change during one
    generation, so they are looked at once per generation (a pass over every layer tensor costs
    about 0.7 ms on the 968M, 2 % of an int8 step)."""
    known = _decoders.get(lm)
    if known is not None and known.generations.get(id(generation)) is generation:
        return known
    with _lock:
        key = _weights_key(lm)
        known = _decoders.get(lm)
        if known is None or known.key != key:
            plans = [_layer_plan(layer) for layer in lm.model.layers]
            known = _Decoder(key, None if any(p is None for p in plans) else plans)
            _decoders[lm] = known
        known.generations[id(generation)] = generation  # by id: the state need not be hashable
    return known


def applies(lm: Qwen2ForCausalLM, embeds: torch.Tensor, key_valid: torch.Tensor | None, cache) -> bool:
    """Whether `forward` takes this step (see the module docstring)."""
    return (embeds.shape[:2] == (1, 1) and key_valid is None and type(cache) is KVCache
            and embeds.device.type == "cpu" and embeds.dtype in COMPUTE_DTYPES and not torch.is_grad_enabled() and compile_allowed()
            and layer_weights(lm) >= MIN_WEIGHTS)


def forward(lm: Qwen2ForCausalLM, embeds: torch.Tensor, positions: torch.Tensor, cache: KVCache,
            generation: object) -> torch.Tensor | None:
    """`lm(embeds, positions, None, cache)` for one new position of one sequence (embeds [1, 1, D],
    positions [1, 1]) through the compiled layer step: the final-norm hidden states [1, 1, D], or None
    where this decoder keeps the eager step. `generation` is an object that lives as long as one
    generation (its decoding state) and no longer: the weights are assumed not to change within it."""
    decoder = _decoder(lm, generation)
    plans = decoder.plans  # this step's own reference: another thread may disable the decoder
    if plans is None:
        return None
    cos, sin = lm.model.rotary(positions, embeds.dtype)  # [1, 1, 1, hd]
    position = cache.length
    if position + 1 > cache.max_len:
        raise ValueError(f"KV cache overflow: {position + 1} positions needed, {cache.max_len} allocated")
    x = embeds[:, 0]  # [1, D]
    if decoder.native is not None and native_decode.native_allowed():
        hidden = _native_step(lm, decoder, x, cos, sin, cache)
        if hidden is not None:
            return hidden
    step = _step_function()
    first = 0
    if not decoder.checked:
        x = _first_layer_checked(lm, lambda *args: step(plans[0], *args), x, cos, sin, cache,
                                 "the compiled decoder layer", "torch.compile")
        if x is None:
            decoder.plans = None
            return None
        decoder.checked, first = True, 1
    try:
        if first == 0:  # a step after the first: checked again if it compiles a graph
            compiled = _graphs_compiled()
            got = step(plans[0], x, cos, sin, cache.keys[0], cache.values[0], position)
            if _graphs_compiled() != compiled and not _recompiled_layer_agrees(lm, got, x, cos, sin, cache):
                warnings.warn("decode steps stay eager: a recompiled decoder layer disagrees with the eager one",
                              stacklevel=2)
                decoder.plans = None
                return None
            x, first = got, 1
        for i in range(first, len(plans)):
            x = step(plans[i], x, cos, sin, cache.keys[i], cache.values[i], position)
    except Exception as err:  # noqa: BLE001 - a later recompile can fail too: decode eagerly
        # nothing has advanced the cache: the eager step writes the same position again
        warnings.warn(f"decode steps stay eager: a compiled decoder layer failed "
                      f"({type(err).__name__}: {str(err)[:200]})", stacklevel=3)
        decoder.plans = None
        return None
    cache.advance(1)
    return lm.model.norm(x)[:, None]


def layer_outputs_agree(got: torch.Tensor, want: torch.Tensor) -> bool:
    """Whether a compiled layer's result is the eager one's up to rounding: finite, and off by at most
    2^-5 of its norm in bf16 (the eager layer rounds every intermediate to bf16, the compiled one
    keeps them in fp32 inside its loops: a few bf16 steps apart) or 1e-4 in fp32. Wrong sums are off
    by about their whole norm."""
    tol = 1e-4 if want.dtype == torch.float32 else 2 ** -5
    difference = (got.float() - want.float()).norm()
    return bool(torch.isfinite(got).all()) and bool(difference <= tol * want.float().norm())


def _graphs_compiled() -> int:
    """How many graphs torch.compile has made in this process so far (its own counter)."""
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


def _written(cache: KVCache) -> list[torch.Tensor]:
    """Layer 0's key and value at the cache's next position, copied: [1, Hkv, hd] each."""
    return [b[0][:, :, cache.length].clone() for b in (cache.keys, cache.values)]


def _layer_agrees(x: torch.Tensor, got: torch.Tensor, want: torch.Tensor, got_written: list[torch.Tensor],
                  want_written: list[torch.Tensor]) -> bool:
    """Whether the compiled layer 0 agrees with the eager one on input x [1, D]: what each adds to the
    residual stream (outputs [1, D]) and the key and value each wrote (`_written`)."""
    pairs = [(got - x, want - x), *zip(got_written, want_written)]
    return all(layer_outputs_agree(g, w) for g, w in pairs)


def _recompiled_layer_agrees(lm: Qwen2ForCausalLM, got: torch.Tensor, x: torch.Tensor, cos: torch.Tensor,
                             sin: torch.Tensor, cache: KVCache) -> bool:
    """Whether layer 0's compiled output `got` [1, D] for input x [1, D], and the key and value it wrote
    at the cache's next position, are the eager layer's (which then writes its own there)."""
    written = _written(cache)
    want = lm.model.layers[0](x[:, None], (cos, sin), None, cache, 0)[:, 0]  # [1, D]
    return _layer_agrees(x, got, want, written, _written(cache))


def _first_layer_checked(lm: Qwen2ForCausalLM, layer, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                         cache: KVCache, what: str, maker: str) -> torch.Tensor | None:
    """`layer(x, cos, sin, keys, values, position)` (layer 0, compiled or in C++), checked against
    layer 0 eager on the same step: what each adds to the residual stream, and the key and value
    each writes at the same cache position. Its output [1, D], or None with a warning naming `what`
    disagreed or `maker` failed."""
    want = lm.model.layers[0](x[:, None], (cos, sin), None, cache, 0)[:, 0]  # [1, D]
    written = _written(cache)
    try:
        got = layer(x, cos, sin, cache.keys[0], cache.values[0], cache.length)
    except Exception as err:  # noqa: BLE001 - any compiler failure means: decode eagerly
        warnings.warn(f"{_FALLBACK[maker]}: {maker} failed ({type(err).__name__}: {str(err)[:200]})", stacklevel=4)
        return None
    if not _layer_agrees(x, got, want, _written(cache), written):
        warnings.warn(f"{_FALLBACK[maker]}: {what} disagrees with the eager one", stacklevel=4)
        return None
    return got


_FALLBACK = {"torch.compile": "decode steps stay eager", "decode_layers": "decode steps leave the C++ layers"}


def _native_step(lm: Qwen2ForCausalLM, decoder: _Decoder, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                 cache: KVCache) -> torch.Tensor | None:
    """The step through the C++ layers (`native_decode`): the final-norm hidden states [1, 1, D], or
    None (with a warning) where they failed or their layer 0 disagreed with the eager one on the
    decoder's first step; the decoder then leaves them for good."""
    native, first = decoder.native, 0
    if not decoder.native_checked:
        x = _first_layer_checked(
            lm, lambda x, cos, sin, keys, values, position: native_decode.run(
                native.layers(0, 1), x, cos, sin, cache, position), x, cos, sin, cache,
            "the C++ decoder layer", "decode_layers")
        if x is None:
            decoder.native = None
            return None
        decoder.native_checked, first = True, 1
    try:
        rest = native.layers(first, len(native.norms) // 2) if first else native
        x = native_decode.run(rest, x, cos, sin, cache, cache.length, start=first)
    except RuntimeError as err:  # the op's own checks: the cache has not advanced, the next path rewrites it
        warnings.warn(f"decode steps leave the C++ layers: {str(err).splitlines()[0][:200]}", stacklevel=3)
        decoder.native = None
        return None
    cache.advance(1)
    return lm.model.norm(x)[:, None]
