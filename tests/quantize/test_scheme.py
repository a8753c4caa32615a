"""Scheme strings and model-part names: parsing and clear errors."""

import pytest

from omnivision.quantize import QuantScheme, SchemeError, parse_scheme
from omnivision.quantize.scheme import parse_parts


@pytest.mark.parametrize("text, bits, group, sym", [
    ("int8", 8, None, True),
    ("INT8", 8, None, True),
    ("int8-g32", 8, 32, True),
    ("int4", 4, 128, False),  # default group size
    ("int4-g32", 4, 32, False),
    ("int4-g256-sym", 4, 256, True),
])
def test_parse_scheme(text, bits, group, sym):
    scheme = parse_scheme(text)
    assert (scheme.bits, scheme.group_size, scheme.symmetric) == (bits, group, sym)
    assert parse_scheme(scheme.name) == scheme  # the name round-trips


@pytest.mark.parametrize("text, fragment", [
    ("int3", "unknown quantization scheme 'int3'"),
    ("int4-g48", "group size must be one of"),
    ("int4-g512", "group size must be one of"),
    ("int4g64", "unknown quantization scheme"),
    ("int8-g64", "unknown quantization scheme"),
])
def test_bad_scheme_strings(text, fragment):
    with pytest.raises(SchemeError, match=fragment):
        parse_scheme(text)
    assert issubclass(SchemeError, ValueError)


def test_bad_scheme_objects():
    with pytest.raises(SchemeError, match="in groups of 32"):
        QuantScheme(bits=8, group_size=64)
    with pytest.raises(SchemeError, match="symmetric"):
        QuantScheme(bits=8, group_size=32, symmetric=False)
    with pytest.raises(SchemeError, match="8- and 4-bit"):
        QuantScheme(bits=2)


def test_parse_parts():
    assert parse_parts("language, projector") == ("language", "projector")
    assert parse_parts(["vision", "vision"]) == ("vision",)
    with pytest.raises(SchemeError, match="unknown model part"):
        parse_parts(("language", "lm_head"))
    with pytest.raises(SchemeError, match="unknown model part"):
        parse_parts(())
