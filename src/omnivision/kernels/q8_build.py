"""Building and loading `q8_dot.cpp`, the group-wise int8 few-row product, on the machine it runs on.

The kernel is compiled at first use with torch's extension builder for this CPU's own instruction
sets (`-march=native`; without AVX-512 where `ATEN_CPU_CAPABILITY` holds torch to AVX2, so the
laptop stand-in measures what a laptop gets), into `~/.cache/omnivision/kernels/` under a name that
changes with the source, the flags, the CPU and torch, so a later process loads it in a moment and
any change rebuilds it. It needs a C++ compiler and `ninja` (torch's inductor needs the compiler too);
where either is missing or the build fails, `q8_linear` returns None once a warning has said why,
and the callers use the portable path (dequantise and multiply). `OMNIVISION_KERNEL_BUILD=off`
keeps the portable path as well (asked at every call; `OMNIVISION_COMPILE`, which is about
`torch.compile`, leaves this kernel alone).

`torch.ops.omnivision.q8_linear(x [M, K], q [N, K] int8, d [N, K/32] fp16, bias [N] or None) -> [M, N]`
(x fp32 or bf16, the result in x's dtype, summed in fp32) rounds
each 32-block of each row of x to int8 (scale max|x| / 127, as llama.cpp's Q8_0 dot product does)
and sums each block's product in int32; its fake (shape-only) version lets `torch.compile` trace
through it.
"""

from __future__ import annotations

import hashlib
import os
import threading
import warnings
from pathlib import Path
from typing import Callable

import torch

from omnivision.kernels.machine import cpu_description

SOURCE = Path(__file__).with_name("q8_dot.cpp")
BUILD_ROOT = Path.home() / ".cache" / "omnivision" / "kernels"
BUILD_ENV = "OMNIVISION_KERNEL_BUILD_DIR"
SWITCH_ENV = "OMNIVISION_KERNEL_BUILD"

PATHS = {4: "AVX512-VNNI", 3: "AVX-VNNI", 2: "AVX2", 1: "portable"}
"""`torch.ops.omnivision.q8_path()`: the code path of `q8_dot.cpp` the build compiled."""

_lock = threading.Lock()
_state: dict[str, Callable | None] = {}


def build_allowed() -> bool:
    """Whether `OMNIVISION_KERNEL_BUILD` lets this process build and use the kernel (default: yes)."""
    return os.environ.get(SWITCH_ENV, "on").lower() not in ("off", "0", "false", "no")


def compiler_flags() -> list[str]:
    flags = ["-O3", "-march=native"] if _is_x86() else ["-O3", "-mcpu=native"]
    if _is_x86() and torch.backends.cpu.get_cpu_capability() in ("DEFAULT", "AVX2"):
        flags.append("-mno-avx512f")  # held to AVX2 (or less) like torch's own kernels
    return flags


def _is_x86() -> bool:
    import platform

    return platform.machine().lower() in ("x86_64", "amd64", "i686", "x86")


def build_name(flags: list[str]) -> str:
    ident = "|".join([SOURCE.read_text(encoding="utf-8"), *flags, "openmp", *cpu_description(), torch.__version__])
    return "omnivision_q8_" + hashlib.blake2b(ident.encode(), digest_size=6).hexdigest()


def _build() -> Callable | None:
    from torch.utils import cpp_extension

    flags = compiler_flags()
    name = build_name(flags)
    directory = Path(os.environ.get(BUILD_ENV) or BUILD_ROOT) / name
    try:
        directory.mkdir(parents=True, exist_ok=True)
        # -fopenmp: ATen's parallel_for is OpenMP pragmas in its header; the process already holds
        # torch's libgomp.so.1, which the kernel then shares (one thread pool)
        cpp_extension.load(name=name, sources=[str(SOURCE)], extra_cflags=flags + ["-fopenmp"],
                           extra_ldflags=["-fopenmp"], build_directory=str(directory),
                           is_python_module=False, verbose=False)
    except Exception as err:  # noqa: BLE001 - no compiler, no ninja, a failed build: the portable path
        warnings.warn(f"group-wise int8 products use the portable path: building the int8 kernel failed "
                      f"({type(err).__name__}: {str(err).strip().splitlines()[-1][:200] if str(err).strip() else ''})",
                      stacklevel=3)
        return None
    _register_fake()
    return torch.ops.omnivision.q8_linear


def _register_fake() -> None:
    @torch.library.register_fake("omnivision::q8_linear")
    def _(x: torch.Tensor, q: torch.Tensor, d: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        return x.new_empty((x.shape[0], q.shape[0]))


def compiled_path() -> str | None:
    """The name of the code path the built kernel runs (None where it did not build)."""
    return None if q8_linear() is None else PATHS[torch.ops.omnivision.q8_path()]


def q8_linear() -> Callable | None:
    """The built kernel (`torch.ops.omnivision.q8_linear`), or None where it cannot be built or
    `OMNIVISION_KERNEL_BUILD` is off (asked at every call: a build is tried once it is on)."""
    if not build_allowed():
        return None
    with _lock:
        if "kernel" not in _state:
            _state["kernel"] = _build()
        return _state["kernel"]
