"""`Int4Linear`: group-wise int4 weights (asymmetric min/max or symmetric), fp32 scales and zeros.

Dequantisation follows the convention of torch's CPU int4 kernel: w = (q - 8) * scale + zero with
q in 0..15, one (scale, zero) per group of `group_size` input features of each output row.

Storage (`state_dict`): `qweight` uint8 [N, K/2], two codes per byte (column 2j in the high nibble),
independent of any kernel layout, plus `scales` and `zeros` fp32 [N, K/group_size].

Kernel: on CPU with fp32/bf16 activations and N divisible by 16 the forward calls
`torch.ops.aten._weight_int4pack_mm_for_cpu` on the layout from
`torch.ops.aten._convert_weight_to_int4pack_for_cpu`, in bf16 (fp32 activations are rounded to bf16:
the kernel's fp32 path measured ~30x slower, torch 2.13, 1x896 @ 896x4864, 2 threads). That layout is
tiled, so it is built once from `qweight` and cached beside it with bf16 scales and zeros (run-time
memory: one more 0.5 byte per weight). Elsewhere the forward dequantises and uses `F.linear`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from omnivision.quantize.scheme import GROUP_SIZES

_KERNEL_DTYPES = (torch.float32, torch.bfloat16)
_INNER_K_TILES = 8  # the tile count torchao's int4 "tinygemm" layout uses by default


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


def pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """int codes 0..15 [N, K] (K even) -> uint8 [N, K/2], column 2j in the high nibble."""
    return (codes[:, 0::2] << 4 | codes[:, 1::2]).to(torch.uint8)


def unpack_nibbles(packed: torch.Tensor) -> torch.Tensor:
    """uint8 [N, K/2] -> int32 codes [N, K]."""
    p = packed.to(torch.int32)
    return torch.stack([p >> 4, p & 15], dim=-1).reshape(p.shape[0], -1)


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

    @classmethod
    def from_linear(cls, linear: nn.Linear, group_size: int, symmetric: bool = False) -> Int4Linear:
        """Raises ValueError when in_features is not divisible by `group_size` (see fitting_group_size)."""
        layer = cls(linear.in_features, linear.out_features, group_size, linear.bias is not None,
                    linear.weight.dtype)
        codes, scales, zeros = quantize_int4(linear.weight, group_size, symmetric)
        layer.qweight.copy_(pack_nibbles(codes))
        layer.scales.copy_(scales)
        layer.zeros.copy_(zeros)
        if linear.bias is not None:
            layer.bias.data.copy_(linear.bias.detach())
        return layer.to(linear.weight.device)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        q = unpack_nibbles(self.qweight).float().reshape(self.out_features, -1, self.group_size)
        w = (q - 8) * self.scales[..., None] + self.zeros[..., None]
        return w.reshape(self.out_features, self.in_features).to(dtype)

    def _kernel_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(packed weight, bf16 scales-and-zeros [K/g, N, 2]), rebuilt only when a buffer changed
        (a new tensor or an in-place load_state_dict)."""
        key = tuple((t.data_ptr(), t._version) for t in (self.qweight, self.scales, self.zeros))
        if self._packed_key != key:
            codes = unpack_nibbles(self.qweight).contiguous()
            weight = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, _INNER_K_TILES)
            scales_zeros = torch.stack([self.scales.t(), self.zeros.t()], dim=-1).to(torch.bfloat16)
            self._packed, self._packed_key = (weight, scales_zeros.contiguous()), key
        return self._packed

    def _use_kernel(self, x: torch.Tensor) -> bool:
        return x.device.type == "cpu" and x.dtype in _KERNEL_DTYPES and self.out_features % 16 == 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        if not self._use_kernel(x):
            return F.linear(x, self.dequantize(x.dtype), bias)
        flat = x.reshape(-1, self.in_features).to(torch.bfloat16).contiguous()
        weight, scales_zeros = self._kernel_tensors()
        out = torch.ops.aten._weight_int4pack_mm_for_cpu(flat, weight, self.group_size, scales_zeros)
        out = out.reshape(*x.shape[:-1], self.out_features).to(x.dtype)
        return out if bias is None else out + bias

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"group_size={self.group_size}, bias={self.bias is not None}")
