"""`Int4Linear`: group-wise int4 weights (asymmetric min/max or symmetric), fp32 scales and zeros.

Dequantisation follows the convention of torch's CPU int4 kernel: w = (q - 8) * scale + zero with
q in 0..15, one (scale, zero) per group of `group_size` input features of each output row.

Storage (`state_dict`): `qweight` uint8 [N, K/2], two codes per byte in the layout of
`int4_packing` (blocked by 64 rows when N allows, which is what torch's CPU kernel reads), plus
`scales` and `zeros` fp32 [N, K/group_size].

Kernels: on CPU with fp32/bf16 activations and N divisible by 64, up to `Q4_MAX_ROWS` rows (decode
steps) run on the kernel `int4_few_rows` chooses for this machine: the project's group-wise kernel
on the stored codes, or torch's (`torch.ops.aten._weight_int4pack_mm_for_cpu` on `qweight` itself,
in bf16: fp32 activations are rounded to bf16, the kernel's fp32 path measured ~30x slower, torch
2.13, 1x896 @ 896x4864, 2 threads; with a cached bf16 copy of the scales and zeros). More rows run
on what `many_row_kernel` chooses: the weight dequantised by the project's C++ loops for one float
product, or either kernel (`quantize.many_rows`). Where the C++ kernels do not build, torch's kernel
takes up to `KERNEL_MAX_ROWS` rows (111 rows: 6.1 ms against 4.3 ms dequantising plus 1 ms in
bf16); beyond, and on other devices or dtypes, the forward dequantises the weight slice by slice
with torch operators (`row_blocks`).
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from omnivision.model.linear import Product
from omnivision.quantize import int4_few_rows, many_rows
from omnivision.quantize.from_linear import filled_from
from omnivision.quantize.int4_few_rows import Q4_KERNEL, Q4_MAX_ROWS, TORCH_KERNEL, q4_product, q4_table
from omnivision.quantize.many_rows import DEQUANTISED
from omnivision.quantize.row_blocks import linear_in_row_blocks
from omnivision.quantize.int4_packing import gather_codes, is_blocked, pack_codes, to_kernel, unpack_codes
from omnivision.quantize.scheme import GROUP_SIZES

_KERNEL_DTYPES = (torch.float32, torch.bfloat16)
KERNEL_MAX_ROWS = 48
ROW_BLOCKS = "row-blocks"


def fitting_group_size(in_features: int, group_size: int) -> int:
    """The largest allowed group size <= `group_size` that divides `in_features` (ValueError if none)."""
    for g in sorted(GROUP_SIZES, reverse=True):
        if g <= group_size and in_features % g == 0:
            return g
    raise ValueError(f"int4 needs in_features divisible by a group size in {GROUP_SIZES} "
                     f"(<= {group_size}); {in_features} is not")


def quantize_int4(weight: torch.Tensor, group_size: int,
                  symmetric: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """weight [N, K] -> (codes int32 0..15 [N, K], scales [N, K/g], zeros [N, K/g]), all error <= scale/2."""
    n, k = weight.shape
    if k % group_size:
        raise ValueError(f"in_features {k} is not divisible by the int4 group size {group_size}")
    w = weight.detach().float().reshape(n, k // group_size, group_size)
    tiny = torch.finfo(torch.float32).tiny
    if symmetric:
        # codes 1..15 around 8: q - 8 in [-7, 7]
        scales = (w.abs().amax(dim=-1) / 7).clamp(min=tiny)
        zeros = torch.zeros_like(scales)
        q = torch.round(w / scales[..., None]) + 8
    else:
        lo, hi = w.amin(dim=-1), w.amax(dim=-1)
        scales = ((hi - lo) / 15).clamp(min=tiny)
        zeros = lo + 8 * scales  # so that code 0 decodes to the group's minimum
        q = torch.round((w - lo[..., None]) / scales[..., None])
    q = q.clamp(0, 15).to(torch.int32).reshape(n, k)
    return q, scales, zeros


def _dequantize(codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, group_size: int) -> torch.Tensor:
    """uint8 codes [R, K], scales and zeros [R, K/g] -> fp32 weights [R, K]."""
    rows = codes.shape[0]
    q = codes.view(rows, -1, group_size).to(torch.float32)  # [R, K/g, g]
    w = torch.addcmul(zeros[..., None] - 8 * scales[..., None], q, scales[..., None])  # (q - 8) * s + z
    return w.view(rows, -1)


def packed_product(x: torch.Tensor, weight: torch.Tensor, scales_zeros: torch.Tensor, bias: torch.Tensor | None,
                   *, group_size: int) -> torch.Tensor:
    """x [M, K] @ the int4 weight in torch's kernel layout -> [M, N] in x's dtype (+ bias), x rounded
    to bf16 for the kernel."""
    flat = x.to(torch.bfloat16).contiguous()
    out = torch.ops.aten._weight_int4pack_mm_for_cpu(flat, weight, group_size, scales_zeros).to(x.dtype)
    return out if bias is None else out + bias.to(x.dtype)


class Int4Linear(nn.Module):
    def __init__(self, in_features: int, out_features: int, group_size: int, bias: bool = True,
                 dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        if in_features % group_size:
            raise ValueError(f"in_features {in_features} is not divisible by the int4 group size {group_size}")
        self.in_features, self.out_features, self.group_size = in_features, out_features, group_size
        groups = in_features // group_size
        self.register_buffer("qweight", torch.zeros(out_features, in_features // 2, dtype=torch.uint8))
        self.register_buffer("scales", torch.ones(out_features, groups, dtype=torch.float32))
        self.register_buffer("zeros", torch.zeros(out_features, groups, dtype=torch.float32))
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype), requires_grad=False) if bias else None
        self._packed: tuple[torch.Tensor, torch.Tensor] | None = None
        self._packed_key: tuple | None = None
        self._table: torch.Tensor | None = None
        self._table_key: tuple | None = None

    @classmethod
    def from_linear(cls, linear: nn.Linear, group_size: int, symmetric: bool = False) -> Int4Linear:
        """Raises ValueError when in_features is not divisible by `group_size` (see fitting_group_size)."""
        layer = cls(linear.in_features, linear.out_features, group_size, linear.bias is not None,
                    linear.weight.dtype)
        codes, scales, zeros = quantize_int4(linear.weight, group_size, symmetric)
        return filled_from(layer, linear, qweight=pack_codes(codes), scales=scales, zeros=zeros)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        codes = unpack_codes(self.qweight, self.out_features)
        return _dequantize(codes, self.scales, self.zeros, self.group_size).to(dtype)

    def _rows_between(self, start: int, stop: int, dtype: torch.dtype) -> torch.Tensor:
        # rows start:stop are one contiguous byte range in both layouts (start, stop multiples of 64)
        codes = unpack_codes(self.qweight[start:stop], stop - start, is_blocked(self.out_features))
        return _dequantize(codes, self.scales[start:stop], self.zeros[start:stop], self.group_size).to(dtype)

    def rows(self, index: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Dequantized weight rows index [...] -> [..., in_features] (an embedding lookup)."""
        flat = index.reshape(-1)
        codes = gather_codes(self.qweight, self.out_features, flat)
        w = _dequantize(codes, self.scales[flat], self.zeros[flat], self.group_size)
        return w.reshape(*index.shape, self.in_features).to(dtype)

    def _buffers_key(self) -> tuple:
        """Changes with a new buffer tensor or an in-place load_state_dict: the derived tensors' key."""
        return tuple((t.data_ptr(), t._version) for t in (self.qweight, self.scales, self.zeros))

    def _q4_table(self) -> torch.Tensor:
        """The project's kernel's scales-and-zeros table (`int4_few_rows.q4_table`), rebuilt only when a
        buffer changed."""
        key = self._buffers_key()
        if self._table_key != key:
            self._table, self._table_key = q4_table(self.scales, self.zeros), key
        return self._table

    def _kernel_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(torch's kernel's codes, bf16 scales-and-zeros [K/g, N, 2]), rebuilt only when a buffer changed."""
        key = self._buffers_key()
        if self._packed_key != key:
            weight = to_kernel(self.qweight, self.out_features)
            scales_zeros = torch.stack([self.scales.t(), self.zeros.t()], dim=-1).to(torch.bfloat16)
            self._packed, self._packed_key = (weight, scales_zeros.contiguous()), key
        return self._packed

    def _kernel(self, x: torch.Tensor, rows: int) -> str:
        """Q4_KERNEL, TORCH_KERNEL, DEQUANTISED or ROW_BLOCKS for `rows` rows of x."""
        if not (x.device.type == "cpu" and x.dtype in _KERNEL_DTYPES):
            return ROW_BLOCKS
        if not is_blocked(self.out_features):  # the kernels read the blocked layout only
            return DEQUANTISED if many_rows.dequantised_products() is not None else ROW_BLOCKS
        if rows <= Q4_MAX_ROWS:
            return int4_few_rows.few_row_kernel(self.out_features, self.in_features, self.group_size, rows)
        if many_rows.dequantised_products() is None:
            return TORCH_KERNEL if rows <= KERNEL_MAX_ROWS else ROW_BLOCKS
        return many_row_kernel(self.out_features, self.in_features, self.group_size, rows, x.dtype)

    def _dequantised_product(self, flat: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(flat.dtype)
        return many_rows.dequantised_products().q4_dequantized_linear(
            flat, self.qweight, self.scales.float(), self.zeros.float(), self.group_size, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        kind = self._kernel(x, flat.shape[0])
        if kind == ROW_BLOCKS:
            bias = None if self.bias is None else self.bias.to(x.dtype)
            return linear_in_row_blocks(x, self.out_features, lambda a, b: self._rows_between(a, b, x.dtype), bias)
        if kind == Q4_KERNEL:
            out = q4_product(flat, self.qweight, self._q4_table(), self.bias, group_size=self.group_size)
        elif kind == DEQUANTISED:
            out = self._dequantised_product(flat)
        else:
            weight, scales_zeros = self._kernel_tensors()
            out = packed_product(flat, weight, scales_zeros, self.bias, group_size=self.group_size)
        return out.reshape(*x.shape[:-1], self.out_features)

    def one_row_product(self) -> Product | None:
        """The product `forward` computes on one row on the CPU, as a pure function and its arguments;
        None where it dequantises (out_features not a multiple of 64)."""
        if not is_blocked(self.out_features):
            return None
        if int4_few_rows.few_row_kernel(self.out_features, self.in_features, self.group_size, 1) == Q4_KERNEL:
            return (functools.partial(q4_product, group_size=self.group_size),
                    (self.qweight, self._q4_table(), self.bias))
        return functools.partial(packed_product, group_size=self.group_size), (*self._kernel_tensors(), self.bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"group_size={self.group_size}, bias={self.bias is not None}")


def many_row_kernel(n: int, k: int, group_size: int, rows: int, dtype: torch.dtype) -> str:
    """DEQUANTISED, Q4_KERNEL or (up to `many_rows.MID_MAX_ROWS` rows) TORCH_KERNEL for `rows` rows
    of `dtype` times an [N, K] int4 weight in groups of `group_size` (N a multiple of 64) on this
    machine (timed in that dtype: the dequantised product runs in it)."""

    def names(timed: int) -> list[str]:
        return [DEQUANTISED, Q4_KERNEL] + ([TORCH_KERNEL] if timed <= many_rows.MID_MAX_ROWS else [])

    def candidates(timed: int) -> dict:
        layer = Int4Linear(k, n, group_size, bias=False)
        layer.qweight.copy_(torch.randint(0, 256, (n, k // 2), dtype=torch.uint8))
        layer.scales.fill_(0.01)
        x = torch.randn(timed, k, dtype=dtype)
        table = layer._q4_table()
        found = {DEQUANTISED: lambda: layer._dequantised_product(x),
                 Q4_KERNEL: lambda: q4_product(x, layer.qweight, table, None, group_size=group_size)}
        if TORCH_KERNEL in names(timed):
            packed = layer._kernel_tensors()
            found[TORCH_KERNEL] = lambda: packed_product(x, *packed, None, group_size=group_size)
        return found

    return many_rows.choose("int4-many-rows", f"{n}x{k}/g{group_size}/{many_rows.dtype_name(dtype)}", rows,
                            names, candidates)
