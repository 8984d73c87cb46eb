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
from ..io.labelmaps import DEPTH_MODES, LABEL_MODES, check_label_range, check_mask_ids, decoded_image, read_map_for_view

Split = Literal["train", "test"]

IMAGE_MODES_8BIT = ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "RGBa", "CMYK", "YCbCr", "HSV")
"""Pillow modes of 8-bit images (greyscale, palette, colour, with or without alpha): converted to RGB / 255."""
IMAGE_MODES_16BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")
"""Pillow modes of 16-bit greyscale images (`I`: as older Pillows read 16-bit PNGs, values 0..65535): / 65535."""
UNSUPPORTED_IMAGE = (
    "images must be 8-bit (greyscale, palette, RGB or RGBA, with or without alpha) or 16-bit (greyscale, or colour "
    "PNG read at 8 bits); convert it to an 8- or 16-bit PNG"
)


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
        full_width, full_height: the size of the original image the view was shrunk from (its camera's
            calibrated size); None: the view's own size. Maps of that size (or of it shrunk evenly to no less
            than the view) are brought to the view's size on load; other sizes are refused.
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
    full_width: int | None = None
    full_height: int | None = None

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) after downscaling."""
        return self.width, self.height

    @property
    def full_size(self) -> tuple[int, int]:
        """(width, height) of the original image the view was shrunk from; the view's own when not known."""
        return (self.full_width or self.width, self.full_height or self.height)

    @property
    def cameras(self) -> Cameras:
        """This view as a batch of one camera."""
        return Cameras(self.viewmat[None], self.K[None], self.width, self.height)

    def load_image(self) -> Tensor:
        """RGB in [0, 1]. [H, W, 3] float32

        8-bit images (IMAGE_MODES_8BIT) are converted to RGB (alpha dropped) and divided by 255; 16-bit
        greyscale (IMAGE_MODES_16BIT) is divided by 65535 and repeated over the three channels. Pillow reads
        16-bit colour PNGs as 8-bit RGB itself.

        Raises:
            ValueError: naming the file, when it cannot be decoded (not an image, truncated), or its mode is
                neither (32-bit float, LAB, 32-bit integers beyond 16 bits).
        """
        with decoded_image(self.image_path, "image") as img:
            if img.mode in IMAGE_MODES_16BIT:
                return self._grey16(img)
            if img.mode not in IMAGE_MODES_8BIT:
                raise ValueError(f"{self.image_path}: {UNSUPPORTED_IMAGE} (got mode {img.mode})")
            rgb = img.convert("RGB")
            if rgb.size != self.size:
                rgb = rgb.resize(self.size, Image.Resampling.BOX)
            return torch.from_numpy(np.asarray(rgb, dtype=np.float32) / 255.0)

    def _grey16(self, img: Image.Image) -> Tensor:
        """A 16-bit greyscale image scaled to [0, 1], box-filtered to the view's size, as RGB. [H, W, 3]"""
        grey = np.asarray(img)
        if grey.size and (int(grey.min()) < 0 or int(grey.max()) > 65535):  # mode I: 32-bit integers
            raise ValueError(
                f"{self.image_path}: {UNSUPPORTED_IMAGE} (got 32-bit integers {int(grey.min())}..{int(grey.max())})"
            )
        plane = Image.fromarray(grey.astype(np.float32) / 65535.0)
        if plane.size != self.size:
            plane = plane.resize(self.size, Image.Resampling.BOX)
        value = np.clip(np.asarray(plane, dtype=np.float32), 0.0, 1.0)
        return torch.from_numpy(np.repeat(value[:, :, None], 3, axis=2))

    def load_mask(self) -> Tensor | None:
        """The SAM label map, or None. [H, W] int64"""
        if self.mask_path is None:
            return None
        labels = self._load_labels(self.mask_path, "label map")
        check_mask_ids(labels.numpy(), self.mask_path)  # before training and association take them as classes
        return labels

    def load_instances(self) -> Tensor | None:
        """The ground-truth instance map, or None. [H, W] int64"""
        if self.instance_path is None:
            return None
        return self._load_labels(self.instance_path, "instance map")

    def load_depth(self) -> Tensor | None:
        """The ground-truth camera z-depth in metres (0 = unknown), or None. [H, W] float32"""
        if self.depth_path is None:
            return None
        return load_depth_map(self.depth_path, self.depth_scale, self.size, self.full_size, self.image_path)

    def _load_labels(self, path: Path, kind: str) -> Tensor:
        """A label map of this view at its size (see `read_map_for_view` for the sizes accepted). [H, W] int64"""
        labels = read_map_for_view(path, kind, LABEL_MODES, self.size, self.full_size, self.image_path)
        check_label_range(labels, path, kind)
        return torch.from_numpy(labels.astype(np.int64))


def load_depth_map(
    path: Path, scale: float, view: tuple[int, int], full: tuple[int, int], image_path: Path | None = None
) -> Tensor:
    """An integer depth PNG times `scale`, at the view's (width, height). [H, W] float32

    Nearest neighbour, because averaging depths across an object's silhouette invents surfaces in between.
    Depth sensors are often coarser than the camera, so an evenly shrunk map smaller than the view is accepted
    too; another aspect ratio is refused (see `labelmaps.map_size_problem`).
    """
    stored = read_map_for_view(path, "depth map", DEPTH_MODES, view, full, image_path, coarser=True)
    return torch.from_numpy(stored.astype(np.float64) * scale).float()


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

