"""Building and loading this project's C++ kernels on the machine they run on.

Six sources, one library of `torch.ops.omnivision` ops:

- `q8_dot.cpp`: `q8_linear(x [M, K], q [N, K] int8, d [N, K/32] fp16, bias [N] or None) -> [M, N]`,
  the group-wise int8 few-row product (x fp32 or bf16, the result in x's dtype, summed in fp32):
  each 32-block of each row of x is rounded to int8 (scale max|x| / 127, as llama.cpp's Q8_0 dot
  product does) and each block's product summed in int32;
- `q4_dot.cpp`: `q4_linear(x [M, K], packed [N, K/2] uint8, table [N/64, K/G, 2, 64], G, bias)`,
  the same for `Int4Linear`'s group-wise int4 codes, read in their stored (64-row blocked) layout,
  with their scales and zeros rearranged block by block;
- `dense_dot.cpp`: `dense_linear(x [M, K], w [N, K], bias)`, the few-row product of fp32 or bf16
  weights, each weight row read once for all rows of x (one of the candidates `model/linear.py`
  times);
- `opaque_products.cpp`: `linear` and `weight_major`, torch's own few-row products behind ops that
  `torch.compile` does not rewrite (the compiled decode step calls them);
- `decode_layers.cpp`: `decode_layers`, every layer of a decode step of one sequence in one call,
  for decoders whose products are all the ops above (`model/native_decode.py`);
- `dequantized_products.cpp`: `q4_dequantized_linear` / `q8_dequantized_linear`, the many-row
  products of int4 and int8 weights: each weight dequantised by one pass of vector loops into a
  buffer the thread keeps, then one float matrix product on torch's path (`quantize.many_rows`).

The library is compiled at first use with torch's extension builder for this CPU's own instruction
sets (`-march=native`; without AVX-512 where `ATEN_CPU_CAPABILITY` holds torch to AVX2, so the
laptop stand-in measures what a laptop gets), into `~/.cache/omnivision/kernels/` under a name that
changes with the sources, the flags, the CPU and torch, so a later process loads it in a moment and
any change rebuilds it (about 10 s). It needs a C++ compiler and `ninja` (torch's inductor needs the
compiler too); where either is missing or the build fails, `ops` returns None once a warning has
said why, and the callers use torch's kernels. `OMNIVISION_KERNEL_BUILD=off` does the same (asked at
every call; `OMNIVISION_COMPILE`, which is about `torch.compile`, leaves these kernels alone).
Fake (shape-only) versions of the ops let `torch.compile` trace through them.
"""

from __future__ import annotations

import hashlib
import os
import platform
import threading
import warnings
from pathlib import Path

import torch

from omnivision.kernels.machine import cpu_description

SOURCES = tuple(Path(__file__).with_name(name)
                for name in ("q8_dot.cpp", "q4_dot.cpp", "dense_dot.cpp", "opaque_products.cpp", "decode_layers.cpp",
                             "dequantized_products.cpp"))
BUILD_ROOT = Path.home() / ".cache" / "omnivision" / "kernels"
BUILD_ENV = "OMNIVISION_KERNEL_BUILD_DIR"
SWITCH_ENV = "OMNIVISION_KERNEL_BUILD"
PATHS = {5: "AVX512-VBMI-VNNI", 4: "AVX512-VNNI", 3: "AVX-VNNI", 2: "AVX2", 1: "portable"}
"""`torch.ops.omnivision.q8_path()` / `q4_path()`: the code path of `q8_dot.cpp` / `q4_dot.cpp` the
build compiled (only `q4_dot.cpp` has a path of its own for AVX512-VBMI; without VBMI it runs
256-bit registers on AVX512-VNNI)."""
DENSE_PATHS = {4: "AVX512-BF16", 3: "AVX-512", 2: "AVX2", 1: "portable"}
"""`torch.ops.omnivision.dense_path()`: the code path of `dense_dot.cpp` the build compiled."""

_lock = threading.Lock()
_state: dict[str, bool] = {}


def build_allowed() -> bool:
    """Whether `OMNIVISION_KERNEL_BUILD` lets this process build and use the kernels (default: yes)."""
    return os.environ.get(SWITCH_ENV, "on").lower() not in ("off", "0", "false", "no")


def _is_x86() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64", "i686", "x86")


def compiler_flags() -> list[str]:
    flags = ["-O3", "-march=native"] if _is_x86() else ["-O3", "-mcpu=native"]
    if _is_x86() and torch.backends.cpu.get_cpu_capability() in ("DEFAULT", "AVX2"):
        flags.append("-mno-avx512f")  # held to AVX2 (or less) like torch's own kernels
    return flags


def build_name(flags: list[str]) -> str:
    sources = [source.read_text(encoding="utf-8") for source in SOURCES]
    ident = "|".join([*sources, *flags, "openmp", *cpu_description(), torch.__version__])
    return "omnivision_kernels_" + hashlib.blake2b(ident.encode(), digest_size=6).hexdigest()


def _build() -> bool:
    from torch.utils import cpp_extension

    flags = compiler_flags()
    name = build_name(flags)
    directory = Path(os.environ.get(BUILD_ENV) or BUILD_ROOT) / name
    try:
        directory.mkdir(parents=True, exist_ok=True)
        # -fopenmp: ATen's parallel_for is OpenMP pragmas in its header; the process already holds
        # torch's libgomp.so.1, which the kernels then share (one thread pool)
        cpp_extension.load(name=name, sources=[str(s) for s in SOURCES], extra_cflags=flags + ["-fopenmp"],
                           extra_ldflags=["-fopenmp"], build_directory=str(directory),
                           is_python_module=False, verbose=False)
    except Exception as err:  # noqa: BLE001 - no compiler, no ninja, a failed build: torch's kernels
        last = str(err).strip().splitlines()[-1][:200] if str(err).strip() else ""
        warnings.warn(f"this project's C++ kernels are off: building them failed ({type(err).__name__}: {last})",
                      stacklevel=3)
        return False
    _register_fakes()
    return True


def _register_fakes() -> None:
    def q8(x: torch.Tensor, q: torch.Tensor, d: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        return x.new_empty((x.shape[0], q.shape[0]))

    def product(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        return x.new_empty((x.shape[0], w.shape[0]))

    def q4(x: torch.Tensor, packed: torch.Tensor, table: torch.Tensor, group: int,
           bias: torch.Tensor | None = None) -> torch.Tensor:
        return x.new_empty((x.shape[0], packed.shape[0]))

    def q4_dequantized(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, group: int,
                       bias: torch.Tensor | None = None) -> torch.Tensor:
        return x.new_empty((x.shape[0], packed.shape[0]))

    def q8_dequantized(x: torch.Tensor, q: torch.Tensor, scales: torch.Tensor,
                       bias: torch.Tensor | None = None) -> torch.Tensor:
        return x.new_empty((x.shape[0], q.shape[0]))

    torch.library.register_fake("omnivision::q4_dequantized_linear", q4_dequantized)
    torch.library.register_fake("omnivision::q8_dequantized_linear", q8_dequantized)
    torch.library.register_fake("omnivision::q8_linear", q8)
    torch.library.register_fake("omnivision::q4_linear", q4)
    torch.library.register_fake("omnivision::linear", product)
    torch.library.register_fake("omnivision::weight_major", product)
    torch.library.register_fake("omnivision::dense_linear", product)


def ops():
    """`torch.ops.omnivision` with the kernels built and loaded, or None where they cannot be built
    or `OMNIVISION_KERNEL_BUILD` is off (a build is tried once it is on)."""
    if not build_allowed():
        return None
    with _lock:
        if "built" not in _state:
            _state["built"] = _build()
        return torch.ops.omnivision if _state["built"] else None


def q8_linear():
    """The group-wise int8 kernel (`torch.ops.omnivision.q8_linear`), or None (see `ops`)."""
    built = ops()
    return None if built is None else built.q8_linear


def q4_linear():
    """The group-wise int4 kernel (`torch.ops.omnivision.q4_linear`), or None (see `ops`)."""
    built = ops()
    return None if built is None else built.q4_linear


def compiled_path(kernel: str = "q8") -> str | None:
    """The name of the code path the built `q8`, `q4` or `dense` kernel runs (None where it did not build)."""
    built = ops()
    if built is None:
        return None
    if kernel == "dense":
        return DENSE_PATHS[built.dense_path()]
    return PATHS[(built.q4_path if kernel == "q4" else built.q8_path)()]
