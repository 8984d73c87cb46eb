"""A camera that frames a point cloud from a given direction, and PNG output for quick looks."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from .cameras import Cameras, intrinsics, look_at
from .io.atomic import atomic_open


def orbit_camera(
    points: Tensor,
    width: int,
    height: int,
    azimuth_deg: float,
    elevation_deg: float,
    distance: float,
    up: tuple[float, float, float],
    fov_deg: float = 60.0,
) -> Cameras:
    """One camera looking at the median of `points` [N, 3] from `distance` robust radii away."""
    points = points.detach().double()
    centre = points.median(dim=0).values
    radius = torch.quantile((points - centre).norm(dim=1), 0.9).clamp_min(1e-6)
    up_vec = torch.nn.functional.normalize(torch.tensor(up, dtype=torch.float64), dim=0)
    # Any unit vector orthogonal to up starts the azimuth sweep.
    seed = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    if abs(float(seed @ up_vec)) > 0.9:
        seed = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    east = torch.nn.functional.normalize(seed - (seed @ up_vec) * up_vec, dim=0)
    north = torch.linalg.cross(up_vec, east)
    az, el = math.radians(azimuth_deg), math.radians(elevation_deg)
    direction = math.cos(el) * (math.cos(az) * east + math.sin(az) * north) + math.sin(el) * up_vec
    eye = centre + distance * radius * direction
    viewmat = look_at(eye[None], centre[None], up_vec)
    focal = 0.5 * width / math.tan(math.radians(fov_deg) / 2)
    K = intrinsics(focal, focal, width / 2, height / 2).double()
    return Cameras(viewmat.float(), K.float(), width, height)


def save_png(path: str | Path, image: Tensor) -> None:
    """Write an RGB image [H, W, 3] in [0, 1] as an 8-bit PNG, atomically."""
    array = (image.detach().clamp(0, 1).cpu().numpy() * 255 + 0.5).astype(np.uint8)
    with atomic_open(path) as handle:
        Image.fromarray(array).save(handle, format="PNG")
