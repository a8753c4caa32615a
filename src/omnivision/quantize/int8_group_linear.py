"""`Int8GroupLinear`: symmetric int8 weights with one fp16 scale per 32 consecutive inputs of a row.

This is llama.cpp's Q8_0 layout (scheme `int8-g32`). One scale per output row (`Int8Linear`, what
torch's packed int8 kernel takes) lets one outlier input column set the step of a whole row: on the
real Qwen2.5-0.5B weights it left 6 to 15 times the squared error of groups of 32, and 98.1 %
top-1 agreement against Q8_0's 99.4 % (README, Quantization). A Q8_0 GGUF tensor loads into this
layer unchanged (`weights/gguf_quantized`).

Kernels: up to `KERNEL_MAX_ROWS` rows (decode steps, a batch of them) on the CPU the product runs on
this project's group-wise kernel (`kernels/q8_dot.cpp`, built for the machine at first use: each
32-block of the input rounded to int8 like llama.cpp does, summed in int32 on the CPU's int8
multiply-add), where it builds and where this machine's timing prefers it to dequantising; on
the 2-core AMX Xeon it streamed a 4864x896 weight from memory at 18.8 GB/s against 11.1 GB/s for
torch's per-row `_weight_int8pack_mm` (one-off timing, 2 threads, torch 2.13). More rows (prompts)
run on what `many_row_kernel` chooses (`quantize.many_rows`): the weight dequantised by the project's
C++ loops for one float product (140 rows x 4864x896 on the Xeon: 1.7 ms against 5.9 ms with torch
operators), or the group-wise kernel. Other devices and machines without the C++ kernels dequantise
the weight slice by slice with torch operators (`row_blocks`). Both dequantised paths are exact to
the stored weights.
"""

from __future__ import annotations

import torch
from torch import nn

from omnivision.kernels.choices import CHOICES, streamed, tuning_enabled
from omnivision.kernels.cpp_build import build_allowed, q8_linear
from omnivision.model.native_decode import Q8, register
from omnivision.model.linear import Product
from omnivision.quantize import many_rows
from omnivision.quantize.from_linear import filled_from
from omnivision.quantize.many_rows import DEQUANTISED
from omnivision.quantize.row_blocks import linear_in_row_blocks

GROUP = 32
KERNEL_MAX_ROWS = 8
"""Up to this many rows the group-wise kernel may run (its cost grows with the rows: it is a decode
kernel; prompts dequantise into the CPU's fastest float product)."""
KERNEL, DEQUANTISE = "q8-kernel", "dequantise"

_chosen: dict[tuple, str] = {}
"""This process's choices by (N, K, rows, threads), so the hot path asks the disk cache once."""


def quantize_int8_groups(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """weight [N, K] (K a multiple of 32) -> (int8 q [N, K], fp16 scales [N, K/32]),
    w ~ q * scale per 32-block; the step is rounded to fp16 first and the codes rounded with it,
    so |w - q*scale| <= scale/2 holds for the stored scale."""
    n, k = weight.shape
    blocks = weight.detach().float().reshape(n, k // GROUP, GROUP)  # [N, K/32, 32]
    scales = (blocks.abs().amax(dim=-1) / 127).half()  # [N, K/32]
    step = scales.float().clamp(min=torch.finfo(torch.float32).tiny)[..., None]
    q = torch.round(blocks / step).clamp(-127, 127).to(torch.int8)
    return q.reshape(n, k), scales


def group_product(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor,
                  bias: torch.Tensor | None) -> torch.Tensor:
    """x [M, K] @ (qweight [N, K] * scales per 32-block)^T (+ bias) -> [M, N] in x's dtype, on the
    group-wise kernel (a pure function of its tensors: the compiled decode step traces it)."""
    return torch.ops.omnivision.q8_linear(x, qweight, scales.to(torch.float16), bias)


register(group_product, Q8)  # the decode step's C++ layers run it (`model/native_decode.py`)


class Int8GroupLinear(nn.Module):
    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        if in_features % GROUP:
            raise ValueError(f"int8-g32 needs in_features divisible by {GROUP}, got {in_features}")
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("qweight", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("scales", torch.ones(out_features, in_features // GROUP, dtype=torch.float16))
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype), requires_grad=False) if bias else None

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int8GroupLinear:
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, linear.weight.dtype)
        q, scales = quantize_int8_groups(linear.weight)
        return filled_from(layer, linear, qweight=q, scales=scales)

    def _rows_between(self, start: int, stop: int, dtype: torch.dtype) -> torch.Tensor:
        q = self.qweight[start:stop].float().reshape(stop - start, -1, GROUP)  # [n, K/32, 32]
        return (q * self.scales[start:stop, :, None].float()).reshape(stop - start, -1).to(dtype)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return self._rows_between(0, self.out_features, dtype)

    def rows(self, index: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Dequantized weight rows index [...] -> [..., in_features] (an embedding lookup)."""
        q = self.qweight[index].float().unflatten(-1, (-1, GROUP))  # [..., K/32, 32]
        return (q * self.scales[index].float()[..., None]).flatten(-2).to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // self.in_features
        kind = self._kernel(x, rows)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        if kind == DEQUANTISE:
            return linear_in_row_blocks(x, self.out_features, lambda a, b: self._rows_between(a, b, x.dtype), bias)
        flat = x.reshape(rows, self.in_features)
        if kind == KERNEL:
            out = group_product(flat, self.qweight, self.scales, self.bias)
        else:
            out = self._dequantised_product(flat, bias)
        return out.reshape(*x.shape[:-1], self.out_features)

    def _kernel(self, x: torch.Tensor, rows: int) -> str:
        """KERNEL, DEQUANTISED (the C++ loops) or DEQUANTISE (torch operators) for `rows` rows of x."""
        if not (x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16) and rows > 0):
            return DEQUANTISE
        if rows <= KERNEL_MAX_ROWS:
            return few_row_kernel(self.out_features, self.in_features, rows)
        if many_rows.dequantised_products() is None:
            return DEQUANTISE
        return many_row_kernel(self.out_features, self.in_features, rows, x.dtype)

    def _dequantised_product(self, flat: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        scales = self.scales if self.scales.dtype in (torch.float16, torch.float32) else self.scales.float()
        return many_rows.dequantised_products().q8_dequantized_linear(flat, self.qweight, scales, bias)

    def one_row_product(self) -> Product | None:
        """The product `forward` computes on one row, as a pure function and its arguments; None
        where it dequantises (the compiled decode step then keeps the eager one)."""
        if few_row_kernel(self.out_features, self.in_features, 1) != KERNEL:
            return None
        return group_product, (self.qweight, self.scales, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


@torch.inference_mode()
def few_row_kernel(n: int, k: int, rows: int) -> str:
    """KERNEL or DEQUANTISE for `rows` rows times an [N, K] group-wise int8 weight on this machine:
    the kernel where it builds and, with timing on, where it is the faster of the two."""
    rows = 1 if rows == 1 else KERNEL_MAX_ROWS  # timed at the bucket's most rows
    key = (n, k, rows, torch.get_num_threads())
    if key not in _chosen:
        kernel = q8_linear()
        if kernel is None:
            if build_allowed():  # no kernel on this machine; switched off, not for now
                _chosen[key] = DEQUANTISE
            return DEQUANTISE
        if not tuning_enabled():
            _chosen[key] = KERNEL
            return KERNEL
        kept = CHOICES.remembered("int8-g32-few-rows", f"{n}x{k}/rows={rows}", [KERNEL, DEQUANTISE])
        if kept is not None:  # building the candidates would copy the weight
            _chosen[key] = kept
            return kept
        layer = Int8GroupLinear(k, n, bias=False, dtype=torch.bfloat16)
        layer.qweight.copy_(torch.randint(-127, 128, (n, k), dtype=torch.int8))
        layer.scales.fill_(0.01)
        x = torch.randn(rows, k, dtype=torch.bfloat16)
        next_weight = streamed(layer.qweight, layer.scales)

        def group_kernel():
            q, s = next_weight()
            return kernel(x, q, s)

        def dequantised():
            return linear_in_row_blocks(x, n, lambda a, b: layer._rows_between(a, b, torch.bfloat16), None)

        dequantised()  # makes the float product's own kernel choice before the timing lock is taken
        _chosen[key] = CHOICES.choose("int8-g32-few-rows", f"{n}x{k}/rows={rows}",
                                      {KERNEL: group_kernel, DEQUANTISE: dequantised})
    return _chosen[key]


def many_row_kernel(n: int, k: int, rows: int, dtype: torch.dtype) -> str:
    """DEQUANTISED or KERNEL for `rows` (> KERNEL_MAX_ROWS) rows of `dtype` times an [N, K]
    group-wise int8 weight on this machine (timed in that dtype)."""

    def candidates(timed: int) -> dict:
        layer = Int8GroupLinear(k, n, bias=False, dtype=torch.bfloat16)
        layer.qweight.copy_(torch.randint(-127, 128, (n, k), dtype=torch.int8))
        layer.scales.fill_(0.01)
        x = torch.randn(timed, k, dtype=dtype)
        return {DEQUANTISED: lambda: layer._dequantised_product(x, None),
                KERNEL: lambda: group_product(x, layer.qweight, layer.scales, None)}

    return many_rows.choose("int8-g32-many-rows", f"{n}x{k}/{many_rows.dtype_name(dtype)}", rows,
                            lambda timed: [DEQUANTISED, KERNEL], candidates)
