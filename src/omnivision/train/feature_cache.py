"""Vision-tower features computed once and kept on disk, keyed by image content.

Stage 1 trains only the projector, so the tower's output for an image never changes during the
stage: computing it once turns every later epoch into projector + decoder work. The key is the
SHA-256 of the image file's bytes together with a fingerprint of the tower (its config and a hash of
its weights), so a changed image or a different tower never reuses a stale entry. Each entry is a
small safetensors file `<key>.safetensors` holding `features` [num_patches, hidden].

With `step` (a run's `TrainConfig`) the features are computed under that run's step numerics
(autocast and attention kernels, `loop.step_numerics`), as the tower computes them inside a step:
stage 2 with the tower frozen then trains on the numbers it would have met without the cache, and
only runs faster (on the CPU bit for bit: each image's features come out the same in batches of 16
as in a step's 32). The numerics are part of the key.
"""

from __future__ import annotations

import hashlib
import json
import os
from contextlib import nullcontext
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from omnivision.model import OmniVisionModel
from omnivision.train.config import TrainConfig
from omnivision.train.image_loader import ImageLoader
from omnivision.train.loop import autocast_dtype, step_numerics


def tower_fingerprint(model: OmniVisionModel, numerics: str = "") -> str:
    h = hashlib.sha256(json.dumps(model.config.vision.__dict__, sort_keys=True).encode())
    if numerics:
        h.update(numerics.encode())
    h.update(json.dumps(model.config.processing.__dict__, sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.vision.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().float().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


class FeatureCache:
    def __init__(self, directory: str | Path, model: OmniVisionModel, loader: ImageLoader,
                 batch: int = 16, step: TrainConfig | None = None) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.model, self.loader, self.batch, self.step = model, loader, batch, step
        # what `step_numerics` depends on: the autocast dtype and the device (its attention kernels)
        amp = None if step is None else autocast_dtype(step, model.device)
        numerics = "" if step is None else f"as a step on {model.device.type}: autocast {amp}"
        self.fingerprint = tower_fingerprint(model, numerics)
        self.computed = 0
        self.reused = 0

    def key(self, image: str) -> str:
        digest = hashlib.sha256((self.loader.root / image).read_bytes()).hexdigest()
        return hashlib.sha256(f"{self.fingerprint}:{digest}".encode()).hexdigest()[:32]

    def _path(self, key: str) -> Path:
        return self.dir / f"{key}.safetensors"

    @torch.no_grad()
    def features(self, images: list[str]) -> dict[str, torch.Tensor]:
        """Features [P, D] for each distinct image name, computing only the missing ones."""
        keys = {name: self.key(name) for name in dict.fromkeys(images)}
        out: dict[str, torch.Tensor] = {}
        missing = []
        for name, key in keys.items():
            if self._path(key).is_file():
                out[name] = load_file(self._path(key))["features"]
                self.reused += 1
            else:
                missing.append(name)
        for start in range(0, len(missing), self.batch):
            names = missing[start:start + self.batch]
            pixels = torch.stack([self.loader(n) for n in names])
            with nullcontext() if self.step is None else step_numerics(self.step, self.model.device):
                feats = self.model.vision(pixels.to(self.model.device, self.model.dtype))  # [n, P, D_v]
            feats = feats.float().cpu()
            for name, f in zip(names, feats):
                path = self._path(keys[name])
                tmp = path.with_suffix(f".{os.getpid()}.tmp")
                save_file({"features": f.contiguous()}, str(tmp))
                os.replace(tmp, path)
                out[name] = f
                self.computed += 1
        return out
