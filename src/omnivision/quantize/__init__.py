"""Weight-only int8 / int4 quantization of the language model, projector and vision tower (CPU kernels)."""

from omnivision.quantize.apply import QuantSummary, quantize_model
from omnivision.quantize.int4_linear import Int4Linear
from omnivision.quantize.int8_group_linear import Int8GroupLinear
from omnivision.quantize.int8_linear import Int8Linear
from omnivision.quantize.scheme import QuantScheme, SchemeError, parse_scheme

__all__ = ["Int4Linear", "Int8GroupLinear", "Int8Linear", "QuantScheme", "QuantSummary", "SchemeError", "parse_scheme",
           "quantize_model"]
