"""The user cache directory: the demo's scene and dataset, and fetched weights."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """$XDG_CACHE_HOME/protosaga or ~/.cache/protosaga."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "protosaga"
