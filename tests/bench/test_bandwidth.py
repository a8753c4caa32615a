"""The decode bound: bandwidth is measured as a positive rate, and the bytes per token are the
decoder's weights with a tied head counted once and quantized codes counted at their stored size."""

from __future__ import annotations

from omnivision.bench.bandwidth import decode_bytes_per_token, read_bandwidth_gbs
from omnivision.quantize import parse_scheme, quantize_model


def test_bandwidth_is_a_positive_rate():
    assert read_bandwidth_gbs(8 * 2**20, runs=2) > 0


def test_bytes_per_token_count_each_weight_once(tiny_model):
    language = tiny_model.language
    params = sum(p.nbytes for p in language.parameters())
    assert language.lm_head is None  # tied: the head reads the embedding table, counted once
    assert decode_bytes_per_token(language) == params
    bf16 = decode_bytes_per_token(language.bfloat16())
    assert bf16 == params // 2
    quantize_model(tiny_model, parse_scheme("int8"), ("language",))
    assert decode_bytes_per_token(tiny_model.language) < bf16
