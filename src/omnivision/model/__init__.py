"""Model code: pure tensors in, tensors out. No sampling, no files."""

from omnivision.model.kv_cache import KVCache
from omnivision.model.omnivision import OmniVisionModel, init_weights

__all__ = ["KVCache", "OmniVisionModel", "init_weights"]
