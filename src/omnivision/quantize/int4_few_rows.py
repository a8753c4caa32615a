"""Which kernel multiplies a few rows (decode steps) by `Int4Linear`'s weights on this machine.

Two candidates, both reading the stored codes with no second copy of them:

- `q4-kernel`: this project's group-wise int4 kernel (`kernels/q4_dot.cpp`, built for the machine at
  first use): activations rounded to int8 per 32-block, codes multiplied on the CPU's int8
  multiply-add. On the 2-core AVX-512 EPYC (2 threads, torch 2.13, bf16 activations, weights
  streamed from memory, group 128) one row times a 4864x896 weight took 70 us against 137 on torch's
  kernel, times the 151936x896 output head 1.2 ms against 3.6;
- `torch-int4`: torch's `_weight_int4pack_mm_for_cpu` (exact to bf16 activations), the one used
  where the project's kernel does not build, for more than `Q4_MAX_ROWS` rows, and where timing on
  this machine prefers it.

The choice is timed once per machine and shape (`kernels.choices`) at one row and at `Q4_MAX_ROWS`
rows; with timing off the project's kernel is taken wherever it builds.
"""

from __future__ import annotations

import torch

from omnivision.kernels.choices import CHOICES, streamed, tuning_enabled
from omnivision.kernels.cpp_build import build_allowed, q4_linear
from omnivision.model.native_decode import Q4, register

Q4_KERNEL, TORCH_KERNEL = "q4-kernel", "torch-int4"
Q4_MAX_ROWS = 8
"""Up to this many rows the project's kernel may run (it rounds and multiplies row by row: a decode
kernel; prompts go to torch's kernel or dequantise)."""

_chosen: dict[tuple, str] = {}
"""This process's choices by (N, K, group, rows, threads), so the hot path asks the disk cache once."""


def q4_table(scales: torch.Tensor, zeros: torch.Tensor) -> torch.Tensor:
    """scales, zeros [N, G] -> [N/64, G, 2, 64] in the scales' dtype (fp32, or bf16 in a model cast to
    it): for each block of 64 rows and each group, the rows' scales then their zeros, the order the
    kernel reads them in (contiguous loads where [N, G] would take gathers)."""
    n, groups = scales.shape
    blocks = torch.stack([scales, zeros.to(scales.dtype)], dim=0).view(2, n // 64, 64, groups)  # [2, N/64, 64, G]
    return blocks.permute(1, 3, 0, 2).contiguous()  # [N/64, G, 2, 64]


def q4_product(x: torch.Tensor, qweight: torch.Tensor, table: torch.Tensor, bias: torch.Tensor | None,
               *, group_size: int) -> torch.Tensor:
    """x [M, K] @ the int4 weight (stored codes [N, K/2] and `q4_table`)^T (+ bias) -> [M, N] in x's
    dtype, on the project's kernel (a pure function: the compiled decode step traces it)."""
    return torch.ops.omnivision.q4_linear(x, qweight, table, group_size, bias)


register(q4_product, Q4)  # the decode step's C++ layers run it (`model/native_decode.py`)


@torch.no_grad()
def few_row_kernel(n: int, k: int, group_size: int, rows: int) -> str:
    """Q4_KERNEL or TORCH_KERNEL for `rows` (<= Q4_MAX_ROWS) rows times an [N, K] int4 weight in
    groups of `group_size` (N a multiple of 64) on this machine."""
    from omnivision.quantize.int4_linear import Int4Linear, packed_product

    rows = 1 if rows == 1 else Q4_MAX_ROWS  # timed at the bucket's most rows
    key = (n, k, group_size, rows, torch.get_num_threads())
    if key not in _chosen:
        kernel = q4_linear()
        if kernel is None:
            if build_allowed():  # no kernel on this machine; switched off, not for now
                _chosen[key] = TORCH_KERNEL
            return TORCH_KERNEL
        if not tuning_enabled():
            _chosen[key] = Q4_KERNEL
            return Q4_KERNEL
        shape = f"{n}x{k}/g{group_size}/rows={rows}"
        kept = CHOICES.remembered("int4-few-rows", shape, [Q4_KERNEL, TORCH_KERNEL])
        if kept is not None:  # building the candidates would copy the weight (torch's kernel: converted)
            _chosen[key] = kept
            return kept
        with torch.inference_mode(False):  # normal tensors (the layer's caches track versions), also in generate
            layer = Int4Linear(k, n, group_size, bias=False)
            layer.qweight.copy_(torch.randint(0, 256, (n, k // 2), dtype=torch.uint8))
            layer.scales.fill_(0.01)
            x = torch.randn(rows, k, dtype=torch.bfloat16)
            stored = streamed(layer.qweight, layer._q4_table())
            packed = streamed(*layer._kernel_tensors())

        def project_kernel():
            return kernel(x, *stored(), group_size, None)

        def torch_kernel():
            return packed_product(x, *packed(), None, group_size=group_size)

        _chosen[key] = CHOICES.choose("int4-few-rows", shape, {Q4_KERNEL: project_kernel, TORCH_KERNEL: torch_kernel})
    return _chosen[key]
