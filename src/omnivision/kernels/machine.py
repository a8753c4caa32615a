"""Which machine this is, as far as kernel speed goes: the CPU model and its instruction-set flags,
the instruction sets torch is allowed to use, the torch version and the thread count. A kernel
choice measured under one identity is never reused under another (a different CPU, a torch
upgrade, another thread count, the wider instruction sets switched off)."""

from __future__ import annotations

import functools
import hashlib
import os
import platform
from pathlib import Path

import torch

CPUINFO = Path("/proc/cpuinfo")


def _cpuinfo_field(text: str, name: str) -> str:
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == name:
            return value.strip()
    return ""


@functools.cache
def cpu_description() -> tuple[str, str]:
    """(CPU model name, its sorted instruction-set flags), from /proc/cpuinfo where there is one."""
    try:
        text = CPUINFO.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return platform.processor() or platform.machine(), ""
    model = _cpuinfo_field(text, "model name") or _cpuinfo_field(text, "Model") or platform.machine()
    flags = _cpuinfo_field(text, "flags") or _cpuinfo_field(text, "Features")
    return model, " ".join(sorted(flags.split()))


def instruction_sets() -> str:
    """The instruction sets torch's kernels use here: ATen's CPU capability (lowered by
    `ATEN_CPU_CAPABILITY`) and oneDNN's ceiling (`ONEDNN_MAX_CPU_ISA`), e.g. "AVX512" or "AVX2/AVX2"."""
    return f"{torch.backends.cpu.get_cpu_capability()}/{os.environ.get('ONEDNN_MAX_CPU_ISA', 'ALL')}"


def machine_key() -> str:
    """A short stable key of this machine's identity (see the module docstring)."""
    model, flags = cpu_description()
    ident = (f"{model}|{flags}|{instruction_sets()}|torch {torch.__version__}"
             f"|threads {torch.get_num_threads()}")
    return hashlib.blake2b(ident.encode(), digest_size=8).hexdigest()


def describe() -> str:
    """One line for reports: the CPU model, torch and threads."""
    return f"{cpu_description()[0]}; torch {torch.__version__}; {torch.get_num_threads()} threads"
