"""Loading and preprocessing the images of a training batch, with a small in-memory cache.

Images were checked when the data set was loaded (`data/images.py`), so a failure here is a real
I/O error, not bad data. Preprocessing follows the model's own config, as at inference.
"""

from __future__ import annotations

from pathlib import Path

import torch

from omnivision.config import OmniVisionConfig
from omnivision.processing.image import ImageProcessor


class ImageLoader:
    def __init__(self, config: OmniVisionConfig, root: str | Path, cache: bool = True) -> None:
        self.processor = ImageProcessor(config.vision.image_size, config.processing)
        self.root = Path(root)
        self._cache: dict[str, torch.Tensor] | None = {} if cache else None

    def __call__(self, name: str) -> torch.Tensor:
        """One image [3, H, W] (preprocessed, float32)."""
        if self._cache is not None and name in self._cache:
            return self._cache[name]
        pixels = self.processor([self.root / name])[0]
        if self._cache is not None:
            self._cache[name] = pixels
        return pixels
