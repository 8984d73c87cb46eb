"""The one in-memory scene type every loader produces and every stage consumes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ..cameras import Cameras
from ..labelmaps import load_label_map

Split = Literal["train", "test"]


@dataclass
class View:
    """One posed image.

    Attributes:
        name: the image's stem; masks, associations and predictions are stored as `<name>.png`.
        image_path: the RGB image on disk.
        K: intrinsics in pixels, at the (possibly downscaled) size below. [3, 3] float32
        viewmat: world-to-camera, OpenCV axes. [4, 4] float32
        width, height: image size in pixels after downscaling.
        split: "train" or "test".
        mask_path: the per-view SAM label map (uint16 PNG, 0 = no mask), when one exists.
        instance_path: the ground-truth instance map (uint16 PNG, 0 = none), when one exists.
        downscale: factor by which images and masks are shrunk when loaded.
        depth_path: the ground-truth depth map (integer PNG of camera z-depth, 0 = unknown), when one exists.
        depth_scale: metres per stored depth unit (1e-3: millimetres, nerfstudio's default).
    """

    name: str
    image_path: Path
    K: Tensor
    viewmat: Tensor
    width: int
    height: int
    split: Split
    mask_path: Path | None = None
    instance_path: Path | None = None
    downscale: int = 1
    depth_path: Path | None = None
    depth_scale: float = 1e-3

    @property
    def cameras(self) -> Cameras:
        """This view as a batch of one camera."""
        return Cameras(self.viewmat[None], self.K[None], self.width, self.height)

    def load_image(self) -> Tensor:
        """RGB in [0, 1]. [H, W, 3] float32"""
        with Image.open(self.image_path) as img:
            img = img.convert("RGB")
            if img.size != (self.width, self.height):
                img = img.resize((self.width, self.height), Image.Resampling.BOX)
            return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)

    def load_mask(self) -> Tensor | None:
        """The SAM label map, or None. [H, W] int64"""
        return None if self.mask_path is None else load_label_map(self.mask_path, self.width, self.height)

    def load_instances(self) -> Tensor | None:
        """The ground-truth instance map, or None. [H, W] int64"""
        return None if self.instance_path is None else load_label_map(self.instance_path, self.width, self.height)

    def load_depth(self) -> Tensor | None:
        """The ground-truth camera z-depth in metres (0 = unknown), or None. [H, W] float32"""
        if self.depth_path is None:
            return None
        return load_depth_map(self.depth_path, self.depth_scale, self.width, self.height)


def load_depth_map(path: Path, scale: float, width: int, height: int) -> Tensor:
    """An integer depth PNG times `scale`, resized to width x height. [H, W] float32

    Nearest neighbour, because averaging depths across an object's silhouette invents surfaces in between.
    """
    with Image.open(path) as img:
        if img.mode not in ("I;16", "I;16B", "I;16L", "I"):
            raise ValueError(
                f"{path}: depth maps must be single-channel 16- or 32-bit integer PNGs, got mode {img.mode}"
            )
        if img.size != (width, height):
            img = img.resize((width, height), Image.Resampling.NEAREST)
        stored = np.asarray(img).astype(np.float64)
    return torch.from_numpy(stored * scale).float()


@dataclass
class Scene:
    """Views ordered by name (the first training view seeds the memory bank), plus optional SfM points.

    Attributes:
        root: the dataset directory.
        views: all views, sorted by name.
        points: SfM points for initialisation. [P, 3] float32 or None
        point_colors: their colours in [0, 1]. [P, 3] float32 or None
        format: the layout the scene was read from ("colmap", "nerf", "llff", "replica").
    """

    root: Path
    views: list[View]
    format: str
    points: Tensor | None = None
    point_colors: Tensor | None = None

    def split(self, split: Split) -> list[View]:
        return [view for view in self.views if view.split == split]

    def cameras(self, views: list[View]) -> Cameras:
        """The cameras of views that share one image size."""
        sizes = {(v.width, v.height) for v in views}
        if len(sizes) != 1:
            raise ValueError(f"views have different image sizes {sorted(sizes)}; render them one by one")
        (width, height), = sizes
        return Cameras(torch.stack([v.viewmat for v in views]), torch.stack([v.K for v in views]), width, height)

