"""`linear` and `Linear`: `F.linear`, with a choice of kernel for inference on a few rows in bf16 or fp32.

On a few rows (decode steps, short prompts, the 81 image tokens) two ways of computing the product
compete, and which is faster depends on the CPU. Measured (torch 2.13, 2 threads, 4864x896 bf16):
on the AMX Xeon `F.linear` took 683 us on 1 row and `torch.mv(W, x)` 473 us (on 2-111 rows
758-1155 against 447-837 us for `(W @ X^T)^T`, which reads the weight in its stored row-major
order); on the AVX-512 EPYC without AMX it is the other way round, 352 against 597 us on 1 row. So
the path is chosen per machine, weight shape and row bucket by timing both once
(`omnivision.kernels.choices`, remembered on disk), with `F.linear` as the default. On one row (a
decode step) two more compete: the multiply-and-sum loop `torch.compile` makes
(`kernels.compiled_dot`), which streams the weight about twice as fast as either on the EPYC, and
this project's C++ loop (`kernels/dense_dot.cpp`), which also runs where inductor's loop is refused
(held to AVX2) and keeps the decode step in one C++ call (`model/native_decode.py`). From
`FEW_ROWS` rows on (the 729-token vision tower) `F.linear` is used; so it is on other devices and
whenever autograd records (training).

fp32 weights take the same choice, kept apart from bf16's: on the EPYC torch's fp32 one-row products
stream at 15-28 GB/s, half the bandwidth on most shapes, where the compiled loop reached 35 GB/s on
the 151936x896 output head (15.7 against 36.0 ms) and took 184 against 883 us on 4864x896 (the
weights streamed from memory; one-off timing, 2 threads, torch 2.13); on 896x4864 `F.linear` was
the faster (610 against 752 us). fp32 is the precision `--dtype auto` picks where the CPU has no
native bf16 (AVX2 laptops).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from omnivision.kernels.choices import CHOICES, streamed, tuning_enabled
from omnivision.kernels.compiled_dot import bf16_dot, compiled, verified
from omnivision.kernels.cpp_build import ops as cpp_ops

FEW_ROWS = 128
"""Up to this many rows the kernel is chosen per machine (see the module docstring)."""
ROW_BUCKETS = ((1, 1), (16, 8), (FEW_ROWS, 64))
"""(largest row count of the bucket, row count it is timed at)."""
F_LINEAR, WEIGHT_MAJOR, COMPILED_DOT, DENSE_KERNEL = "F.linear", "weight-major", "compiled-dot", "dense-kernel"

Product = tuple[Callable[..., torch.Tensor], tuple]
"""A layer's product on one row as a pure function and its arguments: fn(x [1, K], *args) -> [1, N]
(the compiled decode step, `model.one_row_step`, traces it)."""

CHOSEN_DTYPES = {torch.bfloat16: "bf16", torch.float32: "fp32"}
"""The weight dtypes whose few-row products are chosen per machine, and their names in the choices."""

_chosen: dict[tuple[int, int, int, int, torch.dtype], str] = {}
"""This process's choices by (N, K, row bucket, threads, dtype), so the hot path asks the disk cache once."""


def _fast_path(x: torch.Tensor, weight: torch.Tensor) -> bool:
    # inside a graph torch.compile traces (the static decode step), the compiler picks its own kernels
    return (x.device.type == "cpu" and x.dtype == weight.dtype and weight.dtype in CHOSEN_DTYPES
            and x.numel() <= FEW_ROWS * x.shape[-1] and not torch.compiler.is_compiling()
            and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)))


def _weight_major(rows: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """rows [M, K] @ weight [N, K]^T (+ bias [N]) -> [M, N], reading the weight in its stored order."""
    if rows.shape[0] == 1:
        out = torch.mv(weight, rows[0])[None]  # [1, N]
    else:
        out = (weight @ rows.t()).t().contiguous()  # [N, M] -> [M, N]
    return out if bias is None else out + bias


def _dot(rows: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
         dot: Callable = bf16_dot) -> torch.Tensor:
    """`dot` (+ bias): by default the uncompiled `bf16_dot`, for tracing into a compiled step."""
    out = dot(rows, weight)
    return out if bias is None else out + bias


def _bucket(m: int) -> tuple[int, int]:
    return next(b for b in ROW_BUCKETS if m <= b[0])


@torch.inference_mode()
def few_row_kernel(weight: torch.Tensor, m: int) -> str:
    """The kernel for `m` rows times this weight's shape on this machine: F_LINEAR, WEIGHT_MAJOR or
    (one row) COMPILED_DOT or DENSE_KERNEL."""
    top, timed_rows = _bucket(m)
    key = (weight.shape[0], weight.shape[1], top, torch.get_num_threads(), weight.dtype)
    if key not in _chosen:
        copies: list = []  # made when timing starts: a choice kept on disk needs none
        x = torch.randn(timed_rows, weight.shape[1], dtype=weight.dtype)

        def next_weight():
            if not copies:
                copies.append(streamed(weight))
            return copies[0]()

        def run(kernel):
            return lambda: kernel(x, *next_weight())

        candidates = {F_LINEAR: run(F.linear), WEIGHT_MAJOR: run(_weight_major)}
        op = f"{CHOSEN_DTYPES[weight.dtype]}-few-rows"
        if top == 1 and tuning_enabled():  # a process that cannot compile keeps its choice apart
            dot = compiled("bf16")
            if dot is None or not verified(dot, F.linear(x, weight), x, weight):
                op += "-eager"
            else:
                candidates[COMPILED_DOT] = run(dot)
        if top == 1 and (ops := cpp_ops()) is None:
            op += "-no-cpp"  # likewise a process without this project's C++ kernels
        elif top == 1:
            candidates[DENSE_KERNEL] = run(ops.dense_linear)
        _chosen[key] = CHOICES.choose(op, f"{key[0]}x{key[1]}/rows<={top}", candidates)
    return _chosen[key]


def choose_kernels(shapes: list[tuple[int, int]],
                   dtype: torch.dtype = torch.bfloat16) -> dict[tuple[int, int, int], str]:
    """Make every choice for these weight shapes in `dtype` now (`omnivision tune`, the bench before it
    measures): {(N, K, largest rows of the bucket): kernel}."""
    chosen = {}
    for n, k in shapes:
        weight = torch.empty(n, k, dtype=dtype).normal_()
        for top, timed in ROW_BUCKETS:
            chosen[(n, k, top)] = few_row_kernel(weight, timed)
    return chosen


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x [..., K] @ weight [N, K]^T (+ bias [N]) -> [..., N], as `F.linear` up to bf16 rounding (the
    weight-major and compiled kernels round the product to bf16 before adding the bias)."""
    if not _fast_path(x, weight):
        return F.linear(x, weight, bias)
    rows = x.reshape(-1, x.shape[-1])  # [M, K]
    kernel = few_row_kernel(weight, rows.shape[0])
    if kernel == COMPILED_DOT and (dot := compiled("bf16")) is not None:
        out = _dot(rows, weight, bias, dot)  # [M, N]
    elif kernel == DENSE_KERNEL and (ops := cpp_ops()) is not None:
        out = ops.dense_linear(rows, weight, bias)  # [M, N]
    elif kernel == WEIGHT_MAJOR:
        out = _weight_major(rows, weight, bias)
    else:
        return F.linear(x, weight, bias)
    return out.reshape(*x.shape[:-1], weight.shape[0])


class Linear(nn.Linear):
    """`nn.Linear` (same parameters and state-dict names) whose forward is `linear` above."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)

    def one_row_product(self) -> Product:
        """The product `linear` computes on one row here, as a pure function and its arguments.

        On the CPU torch's products go in as this project's opaque ops where they are built
        (`kernels/opaque_products.cpp`): inductor would rewrite a one-row mm or mv into a slower
        loop of its own."""
        weight = self.weight
        kernel = F_LINEAR
        if weight.device.type == "cpu" and weight.dtype in CHOSEN_DTYPES:
            kernel = few_row_kernel(weight, 1)
        function = {F_LINEAR: F.linear, WEIGHT_MAJOR: _weight_major, COMPILED_DOT: _dot}.get(kernel, F.linear)
        if weight.device.type == "cpu" and kernel != COMPILED_DOT and (ops := cpp_ops()) is not None:
            function = {F_LINEAR: ops.linear, WEIGHT_MAJOR: ops.weight_major, DENSE_KERNEL: ops.dense_linear}[kernel]
        return function, (weight, self.bias)
