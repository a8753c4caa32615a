"""`ImageEmbeddingCache`: projected image embeddings kept by the content of their pixels.

The vision tower is most of the work before the first token (about 88 % at full size), so asking a
second question about the same image (a chat, or several prompts over one picture) reuses the
embeddings instead of encoding again. Keys are a digest of the preprocessed pixels, so the same
picture given as a path, bytes or a PIL image hits the same entry; least recently used entries are
dropped beyond `capacity`. The caller passes a `context` naming the weights the embeddings came from
(`OmniVision` passes the identity and version of every vision and projector tensor, and the dtype):
when it changes (a quantized, reloaded, moved or fine-tuned model), the cache starts empty.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Callable

import torch


def pixel_key(pixels: torch.Tensor) -> str:
    """A digest of one image's pixels [C, H, W] (dtype and shape included)."""
    data = pixels.detach().cpu().contiguous()
    digest = hashlib.blake2b(str((data.dtype, tuple(data.shape))).encode(), digest_size=16)
    digest.update(data.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class ImageEmbeddingCache:
    def __init__(self, capacity: int = 16) -> None:
        if capacity < 0:
            raise ValueError(f"cache capacity must be >= 0, got {capacity}")
        self.capacity = capacity
        self._entries: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._context: object = None
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        self._entries.clear()

    def encode(self, pixels: torch.Tensor, encoder: Callable[[torch.Tensor], torch.Tensor],
               context: object = None) -> torch.Tensor:
        """pixels [N, C, H, W] -> embeddings [N, K, D]; only images not cached go through `encoder`.
        `context`: what the embeddings depend on besides the pixels; a new value empties the cache."""
        if context != self._context:
            self._entries.clear()
            self._context = context
        keys = [pixel_key(p) for p in pixels]
        missing = [i for i, k in enumerate(keys) if k not in self._entries]
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        # each kept entry its own tensor: a view would keep the whole batch's output alive
        fresh = {keys[i]: e.clone() for i, e in zip(missing, encoder(pixels[missing]))} if missing else {}
        out = []
        for key in keys:
            value = fresh[key] if key in fresh else self._entries[key]
            out.append(value)
            if self.capacity:
                self._entries[key] = value
                self._entries.move_to_end(key)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)
        return torch.stack(out)
