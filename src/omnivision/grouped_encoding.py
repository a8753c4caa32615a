"""`GroupedEncoder`: images asked for by several threads at once are encoded in one batch.

A server answering several people runs one thread per request, and each brings its image to the
vision tower. Only one encoding runs at a time (the image cache and low-memory paging are shared),
so the others wait; here, whoever waits joins the next batch instead: when an encoding ends, the
next caller in line takes every image that arrived meanwhile (up to `max_images`) and encodes them
together, and each caller gets back its own rows. A caller alone encodes at once, as before.

An error while encoding a batch is raised in every caller whose images were in it.
"""

from __future__ import annotations

import threading
from typing import Callable

import torch


class _Request:
    def __init__(self, pixels: torch.Tensor) -> None:
        self.pixels = pixels  # [n, C, H, W]
        self.result: torch.Tensor | None = None
        self.error: BaseException | None = None
        self.done = False


class GroupedEncoder:
    def __init__(self, encode: Callable[[torch.Tensor], torch.Tensor], max_images: int = 16) -> None:
        if max_images < 1:
            raise ValueError(f"max_images must be >= 1, got {max_images}")
        self.encode, self.max_images = encode, max_images
        self._changed = threading.Condition()
        self._waiting: list[_Request] = []
        self._busy = False
        self.batch_sizes: list[int] = []
        """Images per encode call, in order (how much grouping happened)."""

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels [n, C, H, W] -> this caller's embeddings [n, K, D]."""
        request = _Request(pixels)
        with self._changed:
            self._waiting.append(request)
            while not request.done:
                if self._busy:
                    self._changed.wait()
                    continue
                # no encoding runs: this thread encodes the oldest waiting images, its own among
                # them unless more than a batch waited before it (then it leads the next one too)
                self._busy = True
                group = self._take_group()
                self._changed.release()
                try:
                    self._encode_group(group)
                finally:
                    self._changed.acquire()
                    self._busy = False
                    self._changed.notify_all()
        if request.error is not None:
            raise request.error
        return request.result

    def _take_group(self) -> list[_Request]:
        """Whole requests from the front of the line, up to `max_images` images (at least one)."""
        group, images = [], 0
        while self._waiting and (not group or images + len(self._waiting[0].pixels) <= self.max_images):
            request = self._waiting.pop(0)
            group.append(request)
            images += len(request.pixels)
        return group

    def _encode_group(self, group: list[_Request]) -> None:
        try:
            pixels = torch.cat([r.pixels for r in group])  # [N, C, H, W]
            self.batch_sizes.append(len(pixels))
            out = self.encode(pixels)  # [N, K, D]
            for request, rows in zip(group, out.split([len(r.pixels) for r in group])):
                request.result = rows
        except BaseException as error:  # noqa: BLE001 - raised in every caller of the group
            for request in group:
                request.error = error
        for request in group:
            request.done = True
