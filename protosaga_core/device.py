"""Where the computation runs by default: the one place that chooses."""

from __future__ import annotations

import torch


def default_device() -> torch.device:
    """CUDA when there is one (gsplat backend), else the CPU (the torch rasterizer)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
