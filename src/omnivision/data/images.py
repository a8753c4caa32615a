"""Load-time image checks: every image a dataset names exists under its folder and decodes.

Problems are found before training starts, never mid-epoch. Each distinct image path is checked
once (decoded fully with `omnivision.processing.image.load_image`). A path that could leave the
image folder (absolute, a drive, or a `..` part) is refused without touching the file system; the
check is lexical, so a symlinked image folder still works.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Protocol, TypeVar

from omnivision.json_files import DataError
from omnivision.data.records import Source
from omnivision.processing.image import DEFAULT_MAX_PIXELS, ImageError, load_image

REASONS = ("outside root", "missing", "undecodable")


class _HasImage(Protocol):
    image: str | None
    source: Source | None


R = TypeVar("R", bound=_HasImage)


@dataclass
class ImageReport:
    """What `check_images` found: files checked, records kept, records skipped per reason."""

    checked: int = 0
    kept: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    first_problems: list[str] = field(default_factory=list)
    """Up to 5 skipped records' messages (`file:line: image ...: problem`), for the user."""

    @property
    def dropped(self) -> int:
        return sum(self.skipped.values())

    def summary(self) -> str:
        """One line, such as `kept 98 of 100 records; skipped 2 (missing 1, undecodable 1)`."""
        total = self.kept + self.dropped
        line = f"kept {self.kept} of {total} records ({self.checked} images checked)"
        if self.dropped:
            reasons = ", ".join(f"{r} {self.skipped[r]}" for r in REASONS if self.skipped[r])
            line += f"; skipped {self.dropped} ({reasons})"
        return line


def _escapes(name: str) -> bool:
    for pure in (PurePosixPath(name), PureWindowsPath(name)):
        if pure.is_absolute() or pure.drive or pure.root or ".." in pure.parts:
            return True
    return False


def _problem(root: Path, name: str, max_pixels: int) -> tuple[str, str] | None:
    """`(reason, message)` for a bad image, or None when it is fine."""
    if _escapes(name):
        return "outside root", "is outside the image folder (absolute path or '..')"
    path = root / name
    if not path.exists():
        return "missing", f"not found under {root}"
    try:
        load_image(path, max_pixels=max_pixels)
    except ImageError as e:
        return "undecodable", f"cannot be decoded: {e}"
    return None


def check_images(records: Sequence[R], image_root: str | os.PathLike, skip_bad: bool = False,
                 *, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[list[R], ImageReport]:
    """Check every record's image under `image_root`; return the records kept and a report.

    Records without an image are kept unchecked. A bad image raises `DataError` naming the record's
    file and line (a record built in memory, with no `source`, is named `<records>:{index + 1}`),
    unless `skip_bad`, which drops the record and counts it under its reason in the report.
    """
    root = Path(image_root)
    if not root.is_dir():
        raise ValueError(f"image folder {root} does not exist or is not a directory")
    found: dict[str, tuple[str, str] | None] = {}
    report, kept = ImageReport(), []
    for n, record in enumerate(records):
        name = record.image
        if name is not None:
            if name not in found:
                found[name] = _problem(root, name, max_pixels)
            problem = found[name]
            if problem is not None:
                file, line = record.source if record.source is not None else ("<records>", n + 1)
                error = DataError(file, line, f"image {name!r} {problem[1]}")
                if not skip_bad:
                    raise error
                report.skipped[problem[0]] += 1
                if len(report.first_problems) < 5:
                    report.first_problems.append(str(error))
                continue
        kept.append(record)
    report.checked, report.kept = len(found), len(kept)
    return kept, report
