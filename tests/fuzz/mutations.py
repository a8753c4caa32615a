"""Byte-level mutation of a valid file: bit flips, overwritten integers, truncation, duplicated and
deleted spans.

A plain seeded `random.Random` drives it rather than hypothesis or atheris: every case must be
rebuilt from its key `(path, seed, case index)` alone, by a script outside pytest and thousands of
cases into a run; hypothesis draws from its own database and shrinks by re-running (each run here is
a whole CLI call), and atheris needs an instrumented build and runs cases in its own process, where a
hang or a memory blow-up cannot be bounded per case.

`focus` is the length of the file's structure (a GGUF's header and tensor table, a safetensors
header): most offsets land in it, because flipping bits of tensor data only changes weights.
"""

from __future__ import annotations

import random
import struct

EXTREMES = (0, 1, -1, 2**31 - 1, 2**31, 2**32 - 1, 2**63 - 1, 2**63, 2**64 - 1, 2**62, 0xFFFFFFFF, 0x7FFF)
"""Integers written over 4 or 8 bytes (taken modulo the width): the values that break size checks."""


def _offset(rng: random.Random, size: int, focus: int | None, align: int = 1) -> int:
    """An offset in [0, size), in the first `focus` bytes three times in four, a multiple of `align`
    half the time."""
    end = min(focus, size) if focus and rng.random() < 0.75 else size
    pos = rng.randrange(max(end, 1))
    if align > 1 and rng.random() < 0.5:
        pos -= pos % align
    return min(pos, max(size - 1, 0))


def flip_bits(data: bytes, rng: random.Random, focus: int | None) -> tuple[bytes, str]:
    if not data:  # an earlier truncation left nothing
        return data, "no bits to flip"
    out = bytearray(data)
    where = []
    for _ in range(rng.randint(1, 8)):
        pos = _offset(rng, len(out), focus)
        out[pos] ^= 1 << rng.randrange(8)
        where.append(pos)
    return bytes(out), f"flip bits at {where}"


def set_bytes(data: bytes, rng: random.Random, focus: int | None) -> tuple[bytes, str]:
    if not data:
        return data, "no bytes to set"
    out = bytearray(data)
    pos = _offset(rng, len(out), focus)
    n = rng.randint(1, 4)
    value = rng.choice([b"\x00", b"\xff", b"\x7f", b"\x80", bytes([rng.randrange(256)])]) * n
    out[pos:pos + n] = value
    return bytes(out[:len(data)]), f"set {value.hex()} at {pos}"


def overwrite_integer(data: bytes, rng: random.Random, focus: int | None) -> tuple[bytes, str]:
    width = rng.choice([4, 8])
    value = rng.choice(EXTREMES) % 2**(8 * width)
    order = "<" if rng.random() < 0.75 else ">"  # GGUF and safetensors are little-endian, PNG big
    packed = struct.pack(order + ("I" if width == 4 else "Q"), value)
    pos = _offset(rng, len(data), focus, align=width)
    return data[:pos] + packed + data[pos + width:], f"int{8 * width}{order} {value:#x} at {pos}"


def truncate(data: bytes, rng: random.Random, focus: int | None) -> tuple[bytes, str]:
    keep = _offset(rng, len(data), focus) if rng.random() < 0.8 else len(data) - rng.randint(1, 16)
    keep = max(keep, 0)
    return data[:keep], f"truncate to {keep} bytes"


def duplicate_span(data: bytes, rng: random.Random, focus: int | None) -> tuple[bytes, str]:
    start = _offset(rng, len(data), focus)
    span = data[start:start + rng.randint(1, 64)]
    at = _offset(rng, len(data), focus)
    return data[:at] + span + data[at:], f"copy {len(span)} bytes from {start} to {at}"


def delete_span(data: bytes, rng: random.Random, focus: int | None) -> tuple[bytes, str]:
    start = _offset(rng, len(data), focus)
    n = rng.randint(1, 64)
    return data[:start] + data[start + n:], f"delete {n} bytes at {start}"


OPERATORS = (flip_bits, set_bytes, overwrite_integer, overwrite_integer, truncate, duplicate_span,
             delete_span)
"""Integer overwrites are drawn twice as often: sizes, counts and offsets are where parsers break."""


def mutate(data: bytes, rng: random.Random, focus: int | None = None) -> tuple[bytes, str]:
    """`data` after one to three mutations drawn from `rng`, and what was done, for the report."""
    done = []
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        data, what = rng.choice(OPERATORS)(data, rng, focus)
        done.append(what)
    return data, "; ".join(done)
