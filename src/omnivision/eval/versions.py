"""The installed version of a package, for the run metadata and for naming where a grader prompt
came from."""

from __future__ import annotations

import importlib.metadata


def package_version(name: str) -> str | None:
    """The installed distribution's version, or None when it is not installed."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None
