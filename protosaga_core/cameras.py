"""A batch of pinhole cameras in the OpenCV convention, as gsplat takes them, and projecting centres into one."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

NEAR_PLANE = 0.01
"""Gaussians at or nearer than this camera depth are not seen (Gaga: clip-space z > 0 with znear 0.01)."""


@dataclass(frozen=True)
class Cameras:
    """C pinhole cameras sharing one image size.

    Attributes:
        viewmats: world-to-camera transforms, OpenCV axes (x right, y down, z forward). [C, 4, 4]
        Ks: intrinsics in pixels. [C, 3, 3]
        width: image width in pixels.
        height: image height in pixels.
    """

    viewmats: Tensor
    Ks: Tensor
    width: int
    height: int

    def __post_init__(self) -> None:
        if self.viewmats.ndim != 3 or self.viewmats.shape[1:] != (4, 4):
            raise ValueError(f"viewmats must be [C, 4, 4], got {tuple(self.viewmats.shape)}")
        if self.Ks.shape != (self.viewmats.shape[0], 3, 3):
            raise ValueError(
                f"Ks must be [C, 3, 3] with C = {self.viewmats.shape[0]}, got {tuple(self.Ks.shape)}"
            )
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"image size must be positive, got {self.width}x{self.height}")

    @property
    def num_cameras(self) -> int:
        return self.viewmats.shape[0]

    @property
    def device(self) -> torch.device:
        return self.viewmats.device

    def to(self, device: torch.device | str) -> "Cameras":
        return Cameras(self.viewmats.to(device), self.Ks.to(device), self.width, self.height)

    def __getitem__(self, index: int | slice | Tensor) -> "Cameras":
        """A sub-batch of cameras; an int index keeps the batch dimension."""
        if isinstance(index, int):
            index = slice(index, index + 1)
        return Cameras(self.viewmats[index], self.Ks[index], self.width, self.height)

    @property
    def centers(self) -> Tensor:
        """Camera centres in world coordinates. [C, 3]"""
        rot = self.viewmats[:, :3, :3]
        trans = self.viewmats[:, :3, 3]
        return -(rot.transpose(1, 2) @ trans[:, :, None])[:, :, 0]


def look_at(eye: Tensor, target: Tensor, up: Tensor) -> Tensor:
    """World-to-camera OpenCV matrices for cameras at `eye` looking at `target`.

    Args:
        eye: camera centres. [C, 3]
        target: points looked at. [C, 3]
        up: world up direction (image up is -y in OpenCV). [C, 3] or [3]

    Returns:
        viewmats [C, 4, 4]
    """
    forward = torch.nn.functional.normalize(target - eye, dim=-1)
    right = torch.nn.functional.normalize(torch.linalg.cross(forward, up.expand_as(forward)), dim=-1)
    down = torch.linalg.cross(forward, right)
    rot = torch.stack([right, down, forward], dim=1)  # rows are camera axes in world coords
    viewmats = torch.eye(4, dtype=eye.dtype, device=eye.device).repeat(eye.shape[0], 1, 1)
    viewmats[:, :3, :3] = rot
    viewmats[:, :3, 3] = -(rot @ eye[:, :, None])[:, :, 0]
    return viewmats


def intrinsics(fx: float, fy: float, cx: float, cy: float, count: int = 1) -> Tensor:
    """Pinhole intrinsics repeated for `count` cameras. [count, 3, 3]"""
    K = torch.tensor([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
    return K.repeat(count, 1, 1)


def project_to_pixels(
    means: Tensor, viewmat: Tensor, K: Tensor, width: int, height: int
) -> tuple[Tensor, Tensor, Tensor]:
    """The Gaussians whose centre lands in the image, in front of the camera (depth > NEAR_PLANE).

    A centre at pixel coordinates (u, v) lies in pixel (floor(v), floor(u)) (pixel centres at +0.5, as in
    gsplat); Gaga's round(ndc2Pixel(x)) is round(u - 0.5), the same pixel but for exact ties.

    Args:
        means: centres. [N, 3]
        viewmat: world-to-camera, OpenCV axes. [4, 4]
        K: intrinsics in pixels at width x height. [3, 3]

    Returns:
        indices of the visible Gaussians [V] int64, their flat pixel index row * width + col [V] int64,
        their camera depth [V].
    """
    camera = means @ viewmat[:3, :3].T + viewmat[:3, 3]
    in_front = (camera[:, 2] > NEAR_PLANE).nonzero().squeeze(1)
    camera = camera[in_front]
    pixels = camera @ K.T
    col = torch.floor(pixels[:, 0] / pixels[:, 2])
    row = torch.floor(pixels[:, 1] / pixels[:, 2])
    inside = (col >= 0) & (col < width) & (row >= 0) & (row < height)
    flat = row[inside].long() * width + col[inside].long()
    return in_front[inside], flat, camera[inside, 2]
