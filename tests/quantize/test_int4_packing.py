"""The two int4 code layouts: exact round trips, row gathers, and the kernel reading the blocked one."""

from __future__ import annotations

import pytest
import torch

from omnivision.quantize.int4_packing import (gather_codes, is_blocked, kernel_reads_blocked, pack_codes,
                                              to_kernel, unpack_codes)


def _codes(n: int, k: int) -> torch.Tensor:
    return torch.randint(0, 16, (n, k), generator=torch.Generator().manual_seed(n * k))


def test_row_layout_puts_the_even_column_in_the_high_nibble():
    packed = pack_codes(torch.tensor([[1, 2, 15, 0]]))
    assert packed.dtype == torch.uint8 and packed.tolist() == [[0x12, 0xF0]]


def test_blocked_layout_pairs_row_i_with_row_i_plus_32():
    codes = _codes(128, 6)
    packed = pack_codes(codes)
    assert packed.shape == (128, 3)
    flat = packed.view(2, 6, 32)  # [block, column, byte]
    assert int(flat[1, 4, 7]) == int(codes[64 + 7, 4]) | int(codes[64 + 32 + 7, 4]) << 4


@pytest.mark.parametrize("n,k", [(64, 32), (192, 96), (96, 32), (10, 8)])
def test_round_trip_and_gather(n, k):
    codes = _codes(n, k)
    packed = pack_codes(codes)
    assert is_blocked(n) == (n % 64 == 0)
    assert torch.equal(unpack_codes(packed, n), codes.to(torch.uint8))
    index = torch.tensor([n - 1, 0, n // 2, 33 % n])
    assert torch.equal(gather_codes(packed, n, index), codes[index].to(torch.uint8))
    many = torch.arange(64) % n  # 64 rows gathered from a layer of any layout
    assert torch.equal(gather_codes(packed, n, many), codes[many].to(torch.uint8))


def test_the_kernel_reads_the_stored_codes_without_a_copy():
    if not kernel_reads_blocked():
        pytest.skip("this torch's CPU int4 layout differs; to_kernel converts (covered by the layer tests)")
    packed = pack_codes(_codes(128, 64))
    assert to_kernel(packed, 128) is packed


def test_the_kernel_computes_the_product_of_converted_row_layout_codes():
    codes = _codes(96, 64)  # 96 rows: stored row-major, converted for the kernel
    x = torch.randn(2, 64).bfloat16()
    scales_zeros = torch.stack([torch.full((2, 96), 0.5), torch.zeros(2, 96)], dim=-1).bfloat16()  # [K/g, N, 2]
    out = torch.ops.aten._weight_int4pack_mm_for_cpu(x, to_kernel(pack_codes(codes), 96), 32, scales_zeros)
    want = x.float() @ ((codes.float() - 8) * 0.5).t()  # (q - 8) * scale + zero, zero = 0
    assert torch.allclose(out.float(), want, atol=0.1, rtol=1e-2)
