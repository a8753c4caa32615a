"""One-row weight products compiled by `torch.compile` (inductor) into fused multiply-and-sum loops.

A decode step multiplies one row by every weight once, so its speed is how fast the weight streams
from memory. Torch's own one-row kernels fall short of that on some CPUs. On the 2-core AMD EPYC
(AVX512-BF16, no AMX; torch 2.13, weights streamed from memory) the loop inductor generates for
`(x * W).sum(-1)` took 315 us on a 4864x896 bf16 weight against 585 us for `F.linear`, and 8.2
against 15.4 ms on the 151936x896 output head; with int8 weights (one scale per output row) 240
against 315 us for `_weight_int8pack_mm` on 4864x896 and 6.3 against 11.7 ms on the head, but 436
against 200 us on 896x4864. Which wins depends on the CPU and the shape, so these are candidates of
the per-machine kernel choices (`model.linear`, `quantize.int8_linear`), never forced.

Each is compiled once per process with dynamic shapes (one kernel for every weight shape and row
count); inductor's on-disk cache makes the compile short in later processes. Where compiling is
off (`OMNIVISION_COMPILE=off`) or fails (no C++ compiler), `compiled` returns None once a warning
has said why, and the callers keep torch's kernels. A kernel is checked against the eager function
when compiled and against torch's product on each weight shape before it may be chosen (`verified`).
"""

from __future__ import annotations

import os
import threading
import warnings
from typing import Callable

import torch

COMPILE_ENV = "OMNIVISION_COMPILE"


def compile_allowed() -> bool:
    """Whether `OMNIVISION_COMPILE` lets this process use `torch.compile` (default: yes)."""
    return os.environ.get(COMPILE_ENV, "on").lower() not in ("off", "0", "false", "no")


def bf16_dot(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x [M, K] @ weight [N, K]^T -> [M, N] in x's dtype, summed in fp32."""
    return (x[:, None, :].float() * weight.float()).sum(-1).to(x.dtype)  # [M, N, K] -> [M, N]


def int8_dot(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """x [M, K] @ (qweight [N, K] int8 * scales [N] fp32)^T -> [M, N] in x's dtype, summed in fp32."""
    sums = (x[:, None, :].float() * qweight.float()).sum(-1)  # [M, N]
    return (sums * scales).to(x.dtype)


_FUNCTIONS = {"bf16": bf16_dot, "int8": int8_dot}
_compiled: dict[str, Callable | None] = {}
_lock = threading.Lock()


def _probe_inputs(name: str) -> tuple[torch.Tensor, ...]:
    x, weight = torch.randn(1, 64, dtype=torch.bfloat16), torch.randn(32, 64)
    if name == "bf16":
        return x, weight.bfloat16()
    return x, weight.clamp(-1, 1).mul(127).round().to(torch.int8), torch.full((32,), 0.01)


def compiled(name: str) -> Callable | None:
    """The compiled `bf16_dot` ("bf16") or `int8_dot` ("int8"), or None where compiling is off or
    fails. The first call compiles and checks the kernel against the eager function."""
    with _lock:
        if name not in _compiled:
            _compiled[name] = _compile(name)
        return _compiled[name]


def agrees(got: torch.Tensor, want: torch.Tensor) -> bool:
    """Whether a compiled product matches torch's within bf16 rounding of its largest value."""
    scale = want.float().abs().max().item()
    return bool(torch.allclose(got.float(), want.float(), rtol=2 ** -7, atol=2 ** -7 * scale + 1e-6))


def verified(kernel: Callable, want: torch.Tensor, *inputs: torch.Tensor) -> bool:
    """Whether `kernel(*inputs)` gives `want` (torch's result on the same inputs); a warning when not.

    Checked on every weight shape before a compiled kernel may be chosen for it: with torch 2.13
    under `ATEN_CPU_CAPABILITY=avx2`, inductor's dynamic-shape reduction gave wrong sums (NaN)."""
    if agrees(kernel(*inputs), want):
        return True
    shape = "x".join(map(str, inputs[1].shape))
    warnings.warn(f"the compiled one-row product is wrong on a {shape} weight: torch's kernel is kept",
                  stacklevel=3)
    return False


def _compile(name: str) -> Callable | None:
    if not compile_allowed():
        return None
    eager = _FUNCTIONS[name]
    kernel = torch.compile(eager, dynamic=True)
    probe = _probe_inputs(name)
    try:
        with torch.inference_mode():
            got, want = kernel(*probe), eager(*probe)
    except Exception as err:  # noqa: BLE001 - any compiler failure means: use torch's kernels
        warnings.warn(f"one-row products stay on torch's kernels: torch.compile failed "
                      f"({type(err).__name__}: {str(err)[:200]})", stacklevel=3)
        return None
    if not agrees(got, want):
        warnings.warn(f"one-row products stay on torch's kernels: the compiled {name} product "
                      f"disagrees with the eager one", stacklevel=3)
        return None
    return kernel
