"""`LazyImages`: listing a task's samples decodes no image; each image is decoded once, when first
looked at, and only the one looked at."""

from __future__ import annotations

import pytest
from PIL import Image

from omnivision.eval.tasks import get_task, images
from omnivision.eval.tasks.images import LazyImages
from tests.eval.tasks.files import COLOURS, b64, colour_of, write_tsv


def test_each_image_is_made_once_and_only_when_looked_at():
    made = []

    def loader(colour):
        return lambda: made.append(colour) or Image.new("RGB", (2, 2), COLOURS[colour])

    lazy = LazyImages([loader("red"), loader("green"), loader("blue")])
    assert len(lazy) == 3 and made == []
    assert colour_of(lazy[1]) == "green" and made == ["green"]
    assert lazy[1] is lazy[-2] and made == ["green"]  # kept, not made again
    assert [colour_of(i) for i in lazy[::2]] == ["red", "blue"]
    assert sorted(made) == ["blue", "green", "red"]
    with pytest.raises(IndexError):
        lazy[3]
    assert [colour_of(i) for i in lazy] == ["red", "green", "blue"] and len(made) == 3


def test_listing_samples_decodes_nothing(tmp_path, monkeypatch):
    write_tsv(tmp_path / "POPE.tsv", ["index", "image", "question", "answer", "category"],
              [[str(i), b64(c), "Q?", "Yes", "random"] for i, c in enumerate(["red", "green", "blue"])])
    decoded = []
    real = images._open
    monkeypatch.setattr(images, "_open", lambda *a: decoded.append(a[1]) or real(*a))
    samples = list(get_task("pope").samples(tmp_path))
    assert [s.id for s in samples] == ["0", "1", "2"] and [len(s.images) for s in samples] == [1, 1, 1]
    assert decoded == []
    assert colour_of(samples[2].images[0]) == "blue" and len(decoded) == 1
