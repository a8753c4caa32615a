"""`GroupedEncoder`: callers that arrive while an encoding runs are encoded together next, each gets
its own rows back, batches stay within `max_images`, and a failed batch fails each of its callers."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from omnivision.grouped_encoding import GroupedEncoder


def _embed(pixels: torch.Tensor) -> torch.Tensor:
    """A stand-in tower: [N, C, H, W] -> [N, 2, 3], row i depending on image i only."""
    return pixels.flatten(1)[:, :6].reshape(-1, 2, 3) * 2 + 1


class Gate:
    """An encode function whose first call waits until `open` is set."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.open, self.calls, self.fail_on = threading.Event(), 0, fail_on

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == 1:
            self.open.wait(10)
        if self.calls == self.fail_on:
            raise RuntimeError("tower failed")
        return _embed(pixels)


def _run_together(encoder: GroupedEncoder, gate: Gate, images: list[torch.Tensor]) -> list:
    """The first image starts an encoding that blocks; the others arrive meanwhile; then it is let go."""
    results: list = [None] * len(images)

    def ask(i: int) -> None:
        try:
            results[i] = encoder(images[i])
        except RuntimeError as error:
            results[i] = error

    threads = [threading.Thread(target=ask, args=(0,))]
    threads[0].start()
    while gate.calls == 0:
        time.sleep(0.001)
    for i in range(1, len(images)):  # one at a time, so they wait in this order
        threads.append(threading.Thread(target=ask, args=(i,)))
        threads[-1].start()
        while len(encoder._waiting) < i:
            time.sleep(0.001)
    gate.open.set()
    for t in threads:
        t.join(10)
    return results


def _images(counts: list[int]) -> list[torch.Tensor]:
    return [torch.randn(n, 3, 4, 4) for n in counts]


def test_a_caller_alone_encodes_at_once():
    encoder = GroupedEncoder(_embed)
    pixels = torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(encoder(pixels), _embed(pixels))
    assert encoder.batch_sizes == [2]


def test_callers_arriving_during_an_encoding_share_the_next_batch():
    gate = Gate()
    encoder = GroupedEncoder(gate)
    images = _images([1, 1, 2, 1])
    results = _run_together(encoder, gate, images)
    assert encoder.batch_sizes == [1, 4]  # the first alone, then the three that waited, together
    for pixels, got in zip(images, results):
        torch.testing.assert_close(got, _embed(pixels))


def test_a_batch_stays_within_max_images():
    gate = Gate()
    encoder = GroupedEncoder(gate, max_images=2)
    images = _images([1, 1, 1, 1, 3])
    results = _run_together(encoder, gate, images)
    assert encoder.batch_sizes == [1, 2, 1, 3]  # whole requests; one larger than the limit goes alone
    for pixels, got in zip(images, results):
        torch.testing.assert_close(got, _embed(pixels))


def test_a_failed_batch_fails_its_callers_only():
    gate = Gate(fail_on=2)
    encoder = GroupedEncoder(gate, max_images=2)
    images = _images([1, 1, 1, 1])
    results = _run_together(encoder, gate, images)
    assert encoder.batch_sizes == [1, 2, 1]
    assert [isinstance(r, RuntimeError) for r in results] == [False, True, True, False]
    torch.testing.assert_close(results[3], _embed(images[3]))


def test_max_images_must_be_positive():
    with pytest.raises(ValueError, match="max_images"):
        GroupedEncoder(_embed, max_images=0)
