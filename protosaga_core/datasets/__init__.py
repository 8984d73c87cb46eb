"""Read posed-image datasets (COLMAP, NeRF transforms.json, LLFF, Gaga's Replica) into one `Scene`.

Conventions of the result (DESIGN.md §2): OpenCV cameras, world-to-camera viewmat [4, 4], K [3, 3] in pixels at
the downscaled size, views sorted by name, `masks/<name>.png` attached when it exists. A view's masks, GT instance
and depth maps must have its size or its original image's (they are never stretched: see `labelmaps`).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Literal, get_args

import torch
import tyro

from .colmap import read_colmap
from .common import DatasetError, RawScene, to_view
from .llff import read_llff
from .nerf import SINGLE_FILE, SPLIT_FILES, read_nerf
from .replica import read_replica
from .scene import Scene, Split, View
from .splits import SplitRule, assign_splits

DatasetFormat = Literal["auto", "colmap", "nerf", "llff", "replica"]

READERS: dict[str, Callable[[Path, int], RawScene]] = {
    "colmap": read_colmap,
    "nerf": read_nerf,
    "llff": read_llff,
    "replica": read_replica,
}

__all__ = [
    "DatasetConfig",
    "DatasetError",
    "DatasetFormat",
    "Scene",
    "Split",
    "SplitRule",
    "View",
    "detect_format",
    "load_scene",
]


@dataclass(frozen=True)
class DatasetConfig:
    """Where the posed images are and how to read them."""

    root: tyro.conf.Positional[Path]
    """Dataset folder."""
    format: DatasetFormat = "auto"
    """Layout; "auto" detects it (replica, colmap, nerf, llff, in that order)."""
    downscale: int = 1
    """Shrink images by this factor (from the shipped images_N/ folder with the largest N not above it)."""
    split: SplitRule = "auto"
    """Train/test rule: split files, then train_/test_ name prefixes, then every 8th view held out."""

    def load(self) -> Scene:
        return load_scene(self.root, self.format, self.downscale, self.split)

    def load_at_most(self, max_width: int | None) -> tuple[Scene, int]:
        """The dataset shrunk by the smallest integer factor, never below `downscale`, that makes its widest
        view at most `max_width` pixels wide (None: `downscale` itself), and that factor."""
        probe = self.load()
        if max_width is None:
            return probe, self.downscale
        widest = max(view.width * view.downscale for view in probe.views)
        downscale = max(self.downscale, math.ceil(widest / max_width))
        return (probe if downscale == self.downscale else replace(self, downscale=downscale).load()), downscale


def detect_format(root: Path) -> str:
    """The layout of `root`: replica, colmap, nerf or llff."""
    has_model = (root / "sparse" / "0").is_dir() and (root / "images").is_dir()
    if has_model and any((root / "images").glob("train_rgb_*")):
        return "replica"
    if has_model:
        return "colmap"
    if any((root / name).is_file() for name in (SINGLE_FILE, *SPLIT_FILES.values())):
        return "nerf"
    if (root / "poses_bounds.npy").is_file():
        return "llff"
    raise DatasetError(
        f"{root}: no dataset layout recognised; expected sparse/0/ and images/ (COLMAP, Replica), "
        f"{SINGLE_FILE} or {SPLIT_FILES['train']} (NeRF), or poses_bounds.npy (LLFF)"
    )


def load_scene(
    root: str | Path, format: DatasetFormat = "auto", downscale: int = 1, split: SplitRule = "auto"
) -> Scene:
    """Read a dataset folder into a Scene.

    Args:
        root: the dataset folder.
        format: the layout, or "auto" to detect it.
        downscale: views get width // d x height // d pixels with K scaled by the actual ratio (or the size
            of a shipped images_N/ file).
        split: the train/test rule (see `splits.py`).

    Raises:
        DatasetError: naming the offending file, for any missing or inconsistent input.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset folder does not exist")
    if not isinstance(downscale, int) or downscale < 1:
        raise DatasetError(f"{root}: downscale must be a positive integer, got {downscale!r}")
    if format not in get_args(DatasetFormat):
        raise DatasetError(f"{root}: unknown dataset format {format!r}; expected one of {get_args(DatasetFormat)}")
    if split not in get_args(SplitRule):
        raise DatasetError(f"{root}: unknown split rule {split!r}; expected one of {get_args(SplitRule)}")
    layout = detect_format(root) if format == "auto" else format
    raw = READERS[layout](root, downscale)
    if not raw.images:
        raise DatasetError(f"{raw.source}: no images")
    images = sorted(raw.images, key=lambda image: image.name)
    repeated = sorted(name for name, count in Counter(image.name for image in images).items() if count > 1)
    if repeated:
        raise DatasetError(f"{raw.source}: several images share the names {repeated[:5]}")
    splits = assign_splits([image.name for image in images], [image.split for image in images], root, split)
    views = [to_view(image, view_split, downscale, root) for image, view_split in zip(images, splits)]
    return Scene(
        root=root,
        views=views,
        format=raw.format,
        points=None if raw.points is None else torch.from_numpy(raw.points).float(),
        point_colors=None if raw.point_colors is None else torch.from_numpy(raw.point_colors).float(),
    )
