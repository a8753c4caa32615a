"""`Int8Linear`: symmetric per-output-channel int8 weights, fp32 scales, optional bias.

Kernel: on CPU with fp32/bf16 activations the forward calls torch's packed int8 weight matmul
`torch.ops.aten._weight_int8pack_mm` (x [M, K] @ int8 w [N, K]^T * scales [N]) in bf16: fp32
activations are rounded to bf16 for it, because its fp32 path measured ~6x slower than its bf16 one
(torch 2.13, 1x896 @ 896x4864, 2 threads) and bf16 rounding (2^-9) is no larger than the int8 weight
error. The kernel pays off only for a few rows: on 111 rows (a prompt) it took 6.9 ms against 2.1 ms
for dequantising to bf16 (1.1 ms) plus an AMX bf16 product, so from `KERNEL_MAX_ROWS` rows on, and
on other devices or dtypes, the forward dequantises the weight slice by slice (`row_blocks`) for
bf16/fp32 products.
"""

from __future__ import annotations

import torch
from torch import nn

from omnivision.quantize.row_blocks import linear_in_row_blocks

_KERNEL_DTYPES = (torch.float32, torch.bfloat16)
KERNEL_MAX_ROWS = 32


def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """weight [N, K] -> (int8 q [N, K], fp32 scales [N]) with w ~ q * scale, |w - q*scale| <= scale/2."""
    w = weight.detach().float()
    # an all-zero row gets a tiny positive scale so that q = 0 without dividing by zero
    scales = (w.abs().amax(dim=1) / 127).clamp(min=torch.finfo(torch.float32).tiny)
    q = torch.round(w / scales[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scales


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

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int8Linear:
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, linear.weight.dtype)
        q, scales = quantize_int8(linear.weight)
        layer.qweight.copy_(q)
        layer.scales.copy_(scales)
        if linear.bias is not None:
            layer.bias.data.copy_(linear.bias.detach())
        return layer.to(linear.weight.device)

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
        if x.device.type == "cpu" and x.dtype in _KERNEL_DTYPES and rows <= KERNEL_MAX_ROWS:
            flat = x.reshape(-1, self.in_features).to(torch.bfloat16).contiguous()
            out = torch.ops.aten._weight_int8pack_mm(flat, self.qweight, self._bf16_scales())
            out = out.reshape(*x.shape[:-1], self.out_features).to(x.dtype)
            return out if self.bias is None else out + self.bias.to(x.dtype)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return linear_in_row_blocks(x, self.out_features, lambda a, b: self._rows_between(a, b, x.dtype), bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"
