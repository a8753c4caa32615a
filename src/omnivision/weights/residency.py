"""Handing a module's memory-mapped weight pages back to the operating system.

Native checkpoints are memory-mapped (`native.mmap_safetensors`), so a weight costs resident memory
only once it is touched, and the pages can be given back when a part of the model is done for a
while: the vision tower after an image is encoded, the language model while a new image is.
`page_out` asks the kernel to reclaim them with `madvise(MADV_PAGEOUT)` (Linux 5.4+). That advice
never loses data: clean file pages are dropped and read back from the file on the next touch, and
pages the process has written (copy-on-write) are left alone when there is no swap. Memory that is
not a file mapping (converted or quantized-on-load weights) is skipped, as is every platform without
the call; the result says how much was advised.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import sys
from functools import lru_cache
from pathlib import Path

import torch

MADV_PAGEOUT = getattr(mmap, "MADV_PAGEOUT", 21)  # Python's constant is missing with older headers


@lru_cache(maxsize=1)
def _madvise():
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    fn = libc.madvise
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


def _file_mappings() -> list[tuple[int, int]]:
    """[start, end) of this process's mappings of regular files (Linux /proc/self/maps)."""
    ranges = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) == 6 and parts[5].startswith("/") and parts[4] != "0":  # a path and an inode
            start, end = (int(x, 16) for x in parts[0].split("-"))
            ranges.append((start, end))
    return ranges


def page_out(*modules: torch.nn.Module) -> int:
    """Advise the kernel to reclaim the file-backed pages of every parameter and buffer of
    `modules`; returns the bytes advised (0 where the platform has no such call)."""
    madvise = _madvise()
    if madvise is None:
        return 0
    mappings = _file_mappings()
    page = mmap.PAGESIZE
    seen: set[int] = set()
    advised = 0
    for module in modules:
        for tensor in (*module.parameters(), *module.buffers()):
            if tensor.device.type != "cpu":
                continue
            storage = tensor.untyped_storage()
            begin = storage.data_ptr()
            if begin in seen or not any(lo <= begin < hi for lo, hi in mappings):
                continue
            seen.add(begin)
            # whole pages inside the tensor only: a neighbour sharing an edge page stays resident
            lo, hi = -(-begin // page) * page, (begin + storage.nbytes()) // page * page
            if hi > lo and madvise(lo, hi - lo, MADV_PAGEOUT) == 0:
                advised += hi - lo
    return advised
