"""`Int8Linear`: symmetric per-output-channel int8 weights, fp32 scales, optional bias.

Kernel: on CPU with fp32/bf16 activations the forward calls torch's packed int8 weight matmul
`torch.ops.aten._weight_int8pack_mm` (x [M, K] @ int8 w [N, K]^T * scales [N]) in bf16: fp32
activations are rounded to bf16 for it, because its fp32 path measured ~6x slower than its bf16 one
(torch 2.13, 1x896 @ 896x4864, 2 threads) and bf16 rounding (2^-9) is no larger than the int8 weight
error. The kernel pays off only for a few rows: on 111 rows (a prompt) it took 6.9 ms against 2.1 ms
for dequantising to bf16 (1.1 ms) plus an AMX bf16 product, so from `KERNEL_MAX_ROWS` rows on, and
on other devices or dtypes, the forward dequantises the weight slice by slice (`row_blocks`) for
bf16/fp32 products. So does a layer whose in_features is not a multiple of 16, on which torch's
kernel reads out of bounds (`PACKED_K_MULTIPLE`). Where the project's C++ kernels build, the slices
are one pass of C++ loops into one float product (`quantize.many_rows`: 4864x896 on 140 rows, 1.6
ms against 5.9 ms with torch operators, on the AMX Xeon), a candidate named `dequantised` beside
the int8-activation ones below.

On one row (a decode step) the loop `torch.compile` makes (`kernels.compiled_dot`) competes with
that kernel; it streams gate/up-shaped weights and the output head faster on the EPYC and loses on
down-shaped ones, so `one_row_kernel` chooses per machine and shape by timing (`PACKED` by default).

Int8 activations: on layers marked `activation_quantization` (the vision tower's, by
`quantize_model`) a product of `ACTIVATION_MIN_ROWS` rows or more may instead quantize its input per
row (token) to int8 at run time, multiply on the CPU's int8 units with `torch._int_mm` (int32
sums) and scale back by the row's and the weight's scales. On the AVX-512 EPYC without AMX,
fc1 of the SigLIP tower (729x1152 @ 1152x4304) took 8.6 ms in `_int_mm` against 17.5 ms in bf16,
about 10 ms with the quantization and rescaling around it. Which of the two is faster depends on
the CPU, so it is chosen per machine and shape by timing (`kernels.choices`), with a third
candidate: the same product compiled by `torch.compile`, which fuses the rounding and rescaling
around `_int_mm` (`_compiled_activations`); the error it adds is
that of rounding each activation to 1/254 of its row's largest magnitude (~1 % of the product,
`tests/quantize/test_int8_linear.py`). `OMNIVISION_INT8_ACTIVATIONS=off` keeps the weight-only path.
"""

from __future__ import annotations

import os
import warnings
from typing import Callable

import torch
from torch import nn

from omnivision.kernels.choices import CHOICES, streamed, tuning_enabled
from omnivision.kernels.compiled_dot import compile_allowed, compiled, int8_dot, verified
from omnivision.model.linear import Product
from omnivision.quantize import many_rows
from omnivision.quantize.from_linear import filled_from
from omnivision.quantize.many_rows import DEQUANTISED
from omnivision.quantize.row_blocks import linear_in_row_blocks

_KERNEL_DTYPES = (torch.float32, torch.bfloat16)
KERNEL_MAX_ROWS = 32
PACKED_K_MULTIPLE = 16
"""`_weight_int8pack_mm` reads past its input when in_features is not a multiple of 16 (torch 2.13:
garbage sums or a segmentation fault for 72, 104, 17, ...); such layers dequantise instead."""
ACTIVATION_MIN_ROWS = 256
"""From this many rows on, a layer marked `activation_quantization` may use int8 activations."""
ACTIVATION_TIMED_ROWS = 729
"""Rows the choice is timed at: one image through the vision tower."""
ACTIVATIONS_ENV = "OMNIVISION_INT8_ACTIVATIONS"
DEQUANTISE, INT8_ACTIVATIONS, COMPILED_ACTIVATIONS = "dequantise", "int8-activations", "int8-activations-compiled"
PACKED, COMPILED_DOT = "int8pack_mm", "compiled-dot"

_chosen: dict[tuple, str] = {}
"""This process's choices by (kind, N, K, dtype, threads), so the hot path asks the disk cache once."""


def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """weight [N, K] -> (int8 q [N, K], fp32 scales [N]) with w ~ q * scale, |w - q*scale| <= scale/2."""
    w = weight.detach().float()
    # an all-zero row gets a tiny positive scale so that q = 0 without dividing by zero
    scales = (w.abs().amax(dim=1) / 127).clamp(min=torch.finfo(torch.float32).tiny)
    q = torch.round(w / scales[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scales


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [..., K] float -> (int8 [M, K], fp32 scales [M, 1]) for its M rows: symmetric per row,
    scale = max|row| / 127."""
    xf = x.reshape(-1, x.shape[-1]).float()
    row_scales = (xf.abs().amax(dim=-1, keepdim=True) / 127).clamp_(min=torch.finfo(torch.float32).tiny)  # [M, 1]
    xq = torch.round(xf / row_scales).clamp_(-127, 127).to(torch.int8)  # [M, K]
    return xq, row_scales


def int8_activation_product(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """x [..., K] float @ (qweight [N, K] int8 * scales [N])^T -> [M, N] fp32 (M rows of x), with x
    rounded per row to int8 (`quantize_rows`) and the product summed in int32."""
    xq, row_scales = quantize_rows(x)
    sums = torch._int_mm(xq, qweight.t())  # [M, N] int32
    return sums.float().mul_(row_scales).mul_(scales)


def activation_product_out(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor,
                           bias: torch.Tensor | None) -> torch.Tensor:
    """`int8_activation_product` in x's dtype (+ bias), [..., N]: the whole of what a marked layer's
    many-row forward computes, as one function for `torch.compile` to fuse (`_compiled_activations`)."""
    out = int8_activation_product(x, qweight, scales).to(x.dtype).reshape(*x.shape[:-1], qweight.shape[0])
    return out if bias is None else out + bias.to(x.dtype)


_compiled_fn: list = []


def _compiled_activations():
    """`activation_product_out` compiled (one graph per shape: a tower has three), or None where
    compiling is off or fails. Fused, the rounding of the input and the rescaling of the int32 sums
    are one pass each instead of six: on the AMX Xeon 729x1152 @ 1152x4304 took 3.2 ms against 5.9 ms
    eager (bf16: 2.6 ms; `_int_mm` alone 2.1 ms; one-off timings, 2 threads)."""
    if not _compiled_fn:
        fn = None
        if compile_allowed():
            fn = torch.compile(activation_product_out, dynamic=False)
        _compiled_fn.append(fn)
    return _compiled_fn[0]


def packed_product(x: torch.Tensor, qweight: torch.Tensor, bf16_scales: torch.Tensor,
                   bias: torch.Tensor | None) -> torch.Tensor:
    """x [M, K] @ (qweight [N, K] * bf16_scales [N])^T (+ bias) -> [M, N] in x's dtype, on torch's
    packed int8 kernel (x rounded to bf16 for it)."""
    out = torch.ops.aten._weight_int8pack_mm(x.to(torch.bfloat16).contiguous(), qweight, bf16_scales).to(x.dtype)
    return out if bias is None else out + bias.to(x.dtype)


def dot_product(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor,
                bias: torch.Tensor | None, dot: Callable = int8_dot) -> torch.Tensor:
    """As `packed_product`, as the multiply-and-sum `dot` (by default the uncompiled `int8_dot`, for
    tracing into a compiled step)."""
    out = dot(x.to(torch.bfloat16), qweight, scales).to(x.dtype)
    return out if bias is None else out + bias.to(x.dtype)


def activations_allowed() -> bool:
    return os.environ.get(ACTIVATIONS_ENV, "on").lower() not in ("off", "0", "false", "no")


class Int8Linear(nn.Module):
    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("qweight", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("scales", torch.ones(out_features, dtype=torch.float32))
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype), requires_grad=False) if bias else None
        self._kernel_scales: torch.Tensor | None = None
        self._kernel_key: tuple | None = None
        self.activation_quantization = False
        """Many-row products may round activations to int8 (see the module docstring)."""

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int8Linear:
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, linear.weight.dtype)
        q, scales = quantize_int8(linear.weight)
        return filled_from(layer, linear, qweight=q, scales=scales)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return (self.qweight.float() * self.scales[:, None]).to(dtype)

    def _rows_between(self, start: int, stop: int, dtype: torch.dtype) -> torch.Tensor:
        return (self.qweight[start:stop].float() * self.scales[start:stop, None]).to(dtype)

    def rows(self, index: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Dequantized weight rows index [...] -> [..., in_features] (an embedding lookup)."""
        return (self.qweight[index].float() * self.scales[index][..., None]).to(dtype)

    def _bf16_scales(self) -> torch.Tensor:
        # cached: converting per call costs as much as a decode-sized matmul's tail
        key = (self.scales.data_ptr(), self.scales._version)
        if self._kernel_key != key:
            self._kernel_scales, self._kernel_key = self.scales.to(torch.bfloat16), key
        return self._kernel_scales

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // self.in_features
        if (x.device.type == "cpu" and x.dtype in _KERNEL_DTYPES and rows <= KERNEL_MAX_ROWS
                and self.in_features % PACKED_K_MULTIPLE == 0):
            flat = x.reshape(-1, self.in_features)
            one_row = rows == 1 and one_row_kernel(self.out_features, self.in_features) == COMPILED_DOT
            if one_row and (dot := compiled("int8")) is not None:
                out = dot_product(flat, self.qweight, self.scales, self.bias, dot)  # [1, N]
            else:
                out = packed_product(flat, self.qweight, self._bf16_scales(), self.bias)
            return out.reshape(*x.shape[:-1], self.out_features)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        kind = self._activation_kernel(x, rows)
        if kind == COMPILED_ACTIVATIONS and (compiled_fn := _compiled_activations()) is not None:
            return compiled_fn(x, self.qweight, self.scales, bias)
        if kind in (INT8_ACTIVATIONS, COMPILED_ACTIVATIONS):
            return activation_product_out(x, self.qweight, self.scales, bias)
        return self._dequantised(x, bias)

    def _dequantised(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """x [..., K] @ the dequantised weight^T (+ bias) -> [..., N]: on the C++ loops where they
        build (CPU, fp32 / bf16), else slice by slice with torch operators."""
        products = None if x.device.type != "cpu" else many_rows.dequantised_products()
        if products is None or x.dtype not in _KERNEL_DTYPES:
            return linear_in_row_blocks(x, self.out_features, lambda a, b: self._rows_between(a, b, x.dtype), bias)
        scales = self.scales if self.scales.dtype == torch.float32 else self.scales.float()
        out = products.q8_dequantized_linear(x.reshape(-1, self.in_features), self.qweight, scales[:, None], bias)
        return out.reshape(*x.shape[:-1], self.out_features)

    def one_row_product(self) -> Product | None:
        """The product `forward` computes on one row on the CPU, as a pure function and its arguments;
        None where it dequantises (in_features not a multiple of `PACKED_K_MULTIPLE`)."""
        if self.in_features % PACKED_K_MULTIPLE:
            return None
        if one_row_kernel(self.out_features, self.in_features) == COMPILED_DOT and compiled("int8") is not None:
            return dot_product, (self.qweight, self.scales, self.bias)
        return packed_product, (self.qweight, self._bf16_scales(), self.bias)

    def _activation_kernel(self, x: torch.Tensor, rows: int) -> str:
        if not (self.activation_quantization and x.device.type == "cpu" and x.dtype in _KERNEL_DTYPES
                and rows >= ACTIVATION_MIN_ROWS and activations_allowed()):
            return DEQUANTISE
        return many_row_kernel(self.out_features, self.in_features, x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


@torch.inference_mode()
def one_row_kernel(n: int, k: int) -> str:
    """PACKED or COMPILED_DOT for one row times an [N, K] int8 weight on this machine."""
    key = ("one-row", n, k, torch.get_num_threads())
    if key not in _chosen:
        dot = compiled("int8") if tuning_enabled() else None
        kept = None if dot is None else CHOICES.remembered("int8-one-row", f"{n}x{k}", [PACKED, COMPILED_DOT])
        if kept is not None:  # building the candidates would copy the weight
            _chosen[key] = kept
            return kept
        qweight = torch.randint(-127, 128, (n, k), dtype=torch.int8)
        scales = torch.full((n,), 0.01)
        x = torch.randn(1, k, dtype=torch.bfloat16)
        if dot is None or not verified(dot, torch.ops.aten._weight_int8pack_mm(x, qweight, scales.to(torch.bfloat16)),
                                       x, qweight, scales):
            _chosen[key] = PACKED
            return PACKED
        next_weight = streamed(qweight, scales, scales.to(torch.bfloat16))

        def packed():
            q, _, bf16_scales = next_weight()
            return torch.ops.aten._weight_int8pack_mm(x, q, bf16_scales)

        def compiled_dot():
            q, s, _ = next_weight()
            return dot(x, q, s)

        _chosen[key] = CHOICES.choose("int8-one-row", f"{n}x{k}", {PACKED: packed, COMPILED_DOT: compiled_dot})
    return _chosen[key]


@torch.inference_mode()
def many_row_kernel(n: int, k: int, dtype: torch.dtype) -> str:
    """DEQUANTISED (DEQUANTISE without the C++ kernels), INT8_ACTIVATIONS or COMPILED_ACTIVATIONS for
    a marked [N, K] layer on many rows on this machine."""
    key = ("many-rows", n, k, dtype, torch.get_num_threads())
    if key in _chosen:
        return _chosen[key]
    shape = f"{n}x{k}/{str(dtype).removeprefix('torch.')}"
    # named apart: a choice timed against torch operators' dequantising is not this one's
    dequantise = DEQUANTISE if many_rows.dequantised_products() is None else DEQUANTISED
    for names in ([dequantise, INT8_ACTIVATIONS, COMPILED_ACTIVATIONS], [dequantise, INT8_ACTIVATIONS]):
        if (kept := CHOICES.remembered("int8-many-rows", shape, names)) is not None:
            _chosen[key] = kept  # a kept choice needs no candidates (they copy the weight)
            return kept
    layer = Int8Linear(k, n, bias=True, dtype=dtype)
    layer.qweight.copy_(torch.randint(-127, 128, (n, k), dtype=torch.int8))
    layer.scales.fill_(0.01)
    x = torch.randn(ACTIVATION_TIMED_ROWS, k, dtype=dtype)

    def dequantised():
        return layer._dequantised(x, layer.bias)

    def int8_activations():
        return activation_product_out(x, layer.qweight, layer.scales, layer.bias)

    candidates = {dequantise: dequantised, INT8_ACTIVATIONS: int8_activations}
    compiled_fn = _compiled_activations() if tuning_enabled() else None
    if compiled_fn is not None and _compiles_right(compiled_fn, int8_activations(), x, layer):
        candidates[COMPILED_ACTIVATIONS] = lambda: compiled_fn(x, layer.qweight, layer.scales, layer.bias)
    _chosen[key] = CHOICES.choose("int8-many-rows", shape, candidates)
    return _chosen[key]


def _compiles_right(compiled_fn, want: torch.Tensor, x: torch.Tensor, layer: Int8Linear) -> bool:
    """Whether the compiled product compiles here and gives the eager one's result (it rounds the
    same way; a warning and the eager candidates otherwise)."""
    try:
        got = compiled_fn(x, layer.qweight, layer.scales, layer.bias)
    except Exception as err:  # noqa: BLE001 - any compiler failure means: the eager candidates
        warnings.warn(f"int8 activations stay eager: torch.compile failed ({type(err).__name__}: "
                      f"{str(err)[:200]})", stacklevel=3)
        return False
    return verified(lambda *_: got, want, x, layer.qweight)
