"""Label maps on disk: single-channel uint16 PNGs, 0 = unlabeled (uint8 cannot hold > 255 instances)."""

from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from .atomic import atomic_open

MAX_LABEL = np.iinfo(np.uint16).max


def load_label_map(path: str | os.PathLike, width: int | None = None, height: int | None = None) -> Tensor:
    """A uint8/uint16 label PNG as int64 [H, W], resized by nearest neighbour when a size is given."""
    with Image.open(path) as img:
        if img.mode not in ("I;16", "I;16B", "I;16L", "I", "L", "P"):
            raise ValueError(f"{path}: label maps must be single-channel integer PNGs, got mode {img.mode}")
        if width is not None and height is not None and img.size != (width, height):
            img = img.resize((width, height), Image.Resampling.NEAREST)
        return torch.from_numpy(np.asarray(img).astype(np.int64))


def save_label_map(path: str | os.PathLike, labels: Tensor | np.ndarray) -> None:
    """Write integer labels [H, W] in 0..65535 as a uint16 PNG, atomically."""
    array = labels.detach().cpu().numpy() if isinstance(labels, Tensor) else np.asarray(labels)
    if array.ndim != 2:
        raise ValueError(f"{path}: a label map must be [H, W], got shape {list(array.shape)}")
    if array.size and (array.min() < 0 or array.max() > MAX_LABEL):
        raise ValueError(f"{path}: labels must lie in 0..{MAX_LABEL}, got {array.min()}..{array.max()}")
    with atomic_open(path) as handle:
        Image.fromarray(array.astype(np.uint16)).save(handle, format="PNG")
