"""The user cache directory: the demo's scene and dataset, and fetched weights."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """$XDG_CACHE_HOME/protosaga, or ~/.cache/protosaga where XDG_CACHE_HOME is unset, empty or relative (the
    XDG Base Directory specification: a relative path is invalid and ignored)."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    return (Path(base) if os.path.isabs(base) else Path.home() / ".cache") / "protosaga"


def check_cache_dir() -> Path:
    """`cache_dir()`, checked before any work: it, or the nearest of the folders above it that exists, must
    be a folder (else nothing can be made there, and a command would fail only after its work).

    Raises:
        ValueError: naming the file (or broken link) in the way and how to choose another cache.
    """
    folder = cache_dir()
    for path in (folder, *folder.parents):
        if path.is_dir():
            return folder
        if path.exists() or path.is_symlink():  # a file, or a link to nothing (or a loop of links)
            base = os.environ.get("XDG_CACHE_HOME", "")
            origin = f"XDG_CACHE_HOME={base}" if os.path.isabs(base) else "the default under your home folder"
            raise ValueError(
                f"{path}: is not a folder, so protosaga's cache {folder} ({origin}) cannot be made; point "
                "XDG_CACHE_HOME at a folder (an absolute path), or move the file away"
            )
    return folder
