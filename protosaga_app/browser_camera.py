"""The browser's camera as a render camera, and a training camera as a browser pose.

viser reports its camera as a camera-to-world rotation (wxyz) and position with OpenCV axes (x right,
y down, z forward; the same axes as our viewmats), a vertical field of view in radians and an aspect
ratio. The server renders that view at a size of its choosing (reduced on the CPU), so the intrinsics
are rebuilt for that size from the field of view; the principal point is the image centre, as in the
browser's projection.

It also states how viser draws a camera frustum (`frustum_depth`): the server places tabs relative to
the frustums it draws, so it must know where their image planes are.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import viser.transforms as vtf

from protosaga_core.cameras import Cameras, intrinsics


@dataclass(frozen=True)
class BrowserPose:
    """A camera as viser states it.

    Attributes:
        wxyz: camera-to-world rotation. [4]
        position: camera centre in world coordinates. [3]
        fov: vertical field of view in radians.
        aspect: width / height.
    """

    wxyz: np.ndarray
    position: np.ndarray
    fov: float
    aspect: float


def render_size(aspect: float, max_side: int) -> tuple[int, int]:
    """(width, height) of an image with this aspect ratio whose longer side is `max_side` pixels."""
    if not (aspect > 0 and math.isfinite(aspect)) or max_side < 1:
        raise ValueError(f"need a positive aspect and size, got aspect {aspect} and max_side {max_side}")
    if aspect >= 1.0:
        return max_side, max(1, round(max_side / aspect))
    return max(1, round(max_side * aspect)), max_side


def camera_from_pose(pose: BrowserPose, width: int, height: int) -> Cameras:
    """The render camera of a browser pose at `width` x `height` pixels (one camera, float32, CPU)."""
    if not 0.0 < pose.fov < math.pi:
        raise ValueError(f"vertical field of view must lie in (0, pi), got {pose.fov}")
    camera_to_world = np.eye(4)
    camera_to_world[:3, :3] = vtf.SO3(np.asarray(pose.wxyz, dtype=np.float64)).as_matrix()
    camera_to_world[:3, 3] = np.asarray(pose.position, dtype=np.float64)
    viewmat = torch.from_numpy(np.linalg.inv(camera_to_world)).float()[None]
    focal = 0.5 * height / math.tan(0.5 * pose.fov)
    # Square pixels: the browser stretches nothing, so fx = fy whatever the render size.
    return Cameras(viewmat, intrinsics(focal, focal, 0.5 * width, 0.5 * height), width, height)


def pose_from_camera(viewmat: torch.Tensor, K: torch.Tensor, width: int, height: int) -> BrowserPose:
    """The browser pose that looks through a training camera (its vertical field of view and aspect).

    A broken camera (singular or non-finite viewmat, focal length not positive) gives NaN fields rather
    than an exception: `is_drawable_pose` tells such poses apart.

    Args:
        viewmat: world-to-camera. [4, 4]
        K: intrinsics in pixels. [3, 3]
    """
    world_to_camera = viewmat.detach().cpu().double().numpy()
    try:
        camera_to_world = np.linalg.inv(world_to_camera) if np.isfinite(world_to_camera).all() else np.full((4, 4), np.nan)
    except np.linalg.LinAlgError:
        camera_to_world = np.full((4, 4), np.nan)
    rotation = camera_to_world[:3, :3]
    wxyz = vtf.SO3.from_matrix(rotation).wxyz if np.isfinite(rotation).all() else np.full(4, np.nan)
    focal = float(K[1, 1])
    fov = 2.0 * math.atan(0.5 * height / focal) if focal > 0 and math.isfinite(focal) else math.nan
    aspect = width / height if height > 0 else math.nan
    return BrowserPose(wxyz, camera_to_world[:3, 3].copy(), fov, aspect)


def is_drawable_pose(pose: BrowserPose) -> bool:
    """Whether viser can draw and fly to this pose: finite rotation and position, a vertical field of
    view in (0, pi) and a positive finite aspect (a camera with broken intrinsics has neither)."""
    return bool(
        np.isfinite(pose.wxyz).all()
        and np.linalg.norm(pose.wxyz) > 0
        and np.isfinite(pose.position).all()
        and 0.0 < pose.fov < math.pi
        and 0.0 < pose.aspect < math.inf
    )


def frustum_depth(fov: float, aspect: float, scale: float) -> float:
    """Apex-to-image-plane distance of the frustum viser draws for `add_camera_frustum(fov, aspect,
    scale=scale)`.

    viser's client normalises the pyramid to unit volume (x, y, z = tan(fov/2)·aspect, tan(fov/2), 1,
    divided by cbrt(x·y·z / 3)) before applying `scale`, so the depth is not `scale` itself: 2.0× it at
    a 55° field of view and 4:3, more for narrower ones.
    """
    half_height = math.tan(0.5 * fov)
    return scale / (half_height * half_height * aspect / 3.0) ** (1.0 / 3.0)


def frustum_scale(fov: float, aspect: float, depth: float) -> float:
    """The `scale` that makes viser draw a frustum of this apex-to-image-plane `depth` (inverse of
    `frustum_depth`)."""
    return depth / frustum_depth(fov, aspect, 1.0)
