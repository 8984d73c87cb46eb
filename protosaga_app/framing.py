"""Where the viewer's cameras stand: the start view that frames what the training cameras look at beside
the control panel, jumps to a training view that stop behind its frustum, and frustum sizes.

Pure functions of the scene's centres and cameras (numpy), free of viser, so they are tested alone.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import viser.transforms as vtf

from protosaga_core.datasets.scene import View

from .browser_camera import BrowserPose, is_drawable_pose, pose_from_camera

logger = logging.getLogger(__name__)

FRUSTUM_DEPTH = 0.03
"""Largest frustum depth (apex to image plane, as drawn) as a share of the scene's extent, so frustums
look alike in metres or in SfM units; frustums are also kept below half the spacing of neighbouring
cameras, so that from one training camera the next one's thumbnail is a small picture, not a wall in
front of the scene."""
BEHIND_FRUSTUM = 1.2
"""A jump to a training view stands this many frustum depths behind the camera's apex, on its axis, with
its orientation and field of view: outside its frustum, seeing what it saw."""
NEAR_MARGIN = 1.05
"""The browser's near plane is this much beyond the image plane of a frustum seen from BEHIND_FRUSTUM:
the tab that jumped clips the frustum it stands behind (whose photo would otherwise cover the middle of
its view) and sees the scene."""
VISER_BACKGROUND_DISTANCE = 1.0
"""viser draws the server's frames (segmentation, prototypes, PCA) on a plane this far in front of the
browser's camera whatever the scene's units (App.tsx, the background mesh): a near plane beyond it clips
them away, as it did in the SfM units of real captures."""
FARTHEST_NEAR = 0.9 * VISER_BACKGROUND_DISTANCE
"""The browser's near plane stays at most this far; frustums are kept small enough for that."""
OPAQUE = 0.5
"""Gaussians at least this opaque are what the start view frames (faint floaters are not objects)."""
COVISIBLE = 0.5
"""The start view frames the opaque Gaussians seen by at least this share of the cameras that see the
best-seen one: what the capture looks at, not the walls behind it or a distant background."""
FRAMING_SAMPLES = 20_000
"""At most this many opaque centres (evenly strided) decide the framing: percentiles need no more."""
FRAMING_CAMERAS = 64
"""At most this many training cameras (evenly strided) vote on what the capture looks at."""
FRAME_PERCENTILES = (2.0, 98.0)
"""The framed box spans these percentiles of the opaque centres along each axis: a few far splats do not
shrink the objects to a dot."""
FRAME_FILL = 0.9
"""Share of the free part of the canvas (half-angle) the framed objects' sphere fills."""
OVERVIEW_ELEVATION = math.radians(60.0)
"""The start view looks down at the objects from this far above the horizon: steep enough to see over
the near wall of a room (splats of walls hide what is behind them from either side), still in
perspective."""
CONTROL_PANEL_PX = 340
"""Width viser's control panel covers at the right of the canvas: 20 em ('medium') of 16 px, plus margin."""
TYPICAL_CANVAS = (1280, 800)
"""The canvas (width, height) the start view is framed for; a wider canvas only shows more around it."""
DEFAULT_FOV = math.radians(55.0)
"""Vertical field of view of the start view when the scene has no training camera to take it from."""

def scene_extent(centers: np.ndarray) -> float:
    """The scene's size: the 90th percentile of the finite Gaussians' distances to their median (one NaN
    centre would make every size derived from it NaN). [N, 3] -> float"""
    centers = centers[np.isfinite(centers).all(axis=1)]
    if len(centers) == 0:
        return 1.0
    distances = np.linalg.norm(centers - np.median(centers, axis=0), axis=1)
    return max(float(np.percentile(distances, 90)), 1e-6)


def frustum_depth_for(centers: np.ndarray, extent: float) -> float:
    """Frustum depth for training cameras at `centers` [C, 3] in a scene of size `extent`: FRUSTUM_DEPTH of
    it, or half the median spacing of neighbouring cameras if less (cameras at one spot do not count, so
    the depth stays positive), and at most what keeps `near_plane` closer than viser's background plane."""
    depth = min(FRUSTUM_DEPTH * extent, FARTHEST_NEAR / (NEAR_MARGIN * (1.0 + BEHIND_FRUSTUM)))
    if len(centers) > 1:
        distances = np.linalg.norm(centers[:, None] - centers[None], axis=-1)
        np.fill_diagonal(distances, np.inf)
        nearest = distances.min(axis=1)
        nearest = nearest[nearest > 1e-6 * extent]
        if len(nearest):
            depth = min(depth, 0.5 * float(np.median(nearest)))
    return depth


def near_plane(frustum_depth: float, extent: float) -> float:
    """The browser's near plane: beyond the image plane of a frustum seen from BEHIND_FRUSTUM depths
    behind its apex (see `go_to_view`); a small share of the scene without frustums; always closer than
    viser's background plane."""
    return min(max(NEAR_MARGIN * (1.0 + BEHIND_FRUSTUM) * frustum_depth, 1e-3 * extent), FARTHEST_NEAR)


def training_poses(views: list[View]) -> dict[str, BrowserPose]:
    """Browser poses of the training views by name, leaving out (with a warning) cameras with a NaN pose or
    unusable intrinsics: viser would draw their frustums with NaN vertices."""
    poses = {view.name: pose_from_camera(view.viewmat, view.K, view.width, view.height) for view in views}
    unusable = [name for name, pose in poses.items() if not is_drawable_pose(pose)]
    if unusable:
        logger.warning("no frustum for %d training views with unusable cameras: %s", len(unusable), ", ".join(unusable[:5]))
    return {name: pose for name, pose in poses.items() if name not in unusable}


def framed_objects(centers: np.ndarray, opacities: np.ndarray, views: list[View]) -> tuple[np.ndarray, float] | None:
    """`object_bounds` of what the training cameras look at: the opaque Gaussians (all finite ones when
    fewer than 10 are opaque) seen by at least COVISIBLE times as many cameras as the best-seen one. Walls
    behind the cameras and a distant background are each seen by a few cameras, the objects they circle
    by most; forward-facing captures see everything from every camera. None without a finite centre.

    Args:
        centers: [N, 3]
        opacities: [N, 1] or [N]
        views: the training views with usable cameras.
    """
    finite = np.isfinite(centers).all(axis=1)
    opaque = finite & (opacities.reshape(-1) >= OPAQUE)
    chosen = centers[opaque] if opaque.sum() >= 10 else centers[finite]
    if len(chosen) == 0:
        return None
    chosen = chosen[:: math.ceil(len(chosen) / FRAMING_SAMPLES)]
    cameras = views[:: math.ceil(len(views) / FRAMING_CAMERAS)] if views else []
    if cameras:
        seen = camera_counts(
            chosen,
            np.stack([view.viewmat.double().numpy() for view in cameras]),
            np.stack([view.K.double().numpy() for view in cameras]),
            np.array([(view.width, view.height) for view in cameras], dtype=np.float64),
        )
        if seen.max() > 0:
            chosen = chosen[seen >= COVISIBLE * seen.max()]
    return object_bounds(chosen)


def camera_counts(points: np.ndarray, viewmats: np.ndarray, Ks: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """How many of C cameras see each of N points: in front of the camera and inside its image.

    Args:
        points: [N, 3]
        viewmats: world-to-camera, OpenCV axes. [C, 4, 4]
        Ks: intrinsics in pixels. [C, 3, 3]
        sizes: (width, height) in pixels. [C, 2]

    Returns:
        [N] int
    """
    local = np.einsum("cij,nj->cni", viewmats[:, :3, :3], points) + viewmats[:, None, :3, 3]  # [C, N, 3]
    depth = local[..., 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        u = Ks[:, None, 0, 0] * local[..., 0] / depth + Ks[:, None, 0, 2]
        v = Ks[:, None, 1, 1] * local[..., 1] / depth + Ks[:, None, 1, 2]
    inside = (depth > 0) & (u >= 0) & (u < sizes[:, None, 0]) & (v >= 0) & (v < sizes[:, None, 1])
    return inside.sum(axis=0)


def object_bounds(centers: np.ndarray) -> tuple[np.ndarray, float]:
    """Centre [3] and radius of the sphere around the box spanning FRAME_PERCENTILES of finite `centers`
    [N >= 1, 3] along each axis."""
    low, high = np.percentile(centers, FRAME_PERCENTILES, axis=0)
    return 0.5 * (low + high), max(0.5 * float(np.linalg.norm(high - low)), 1e-6)


def scene_up(rotations: np.ndarray) -> np.ndarray:
    """The scene's up direction: the mean of the training cameras' up axes (-y in OpenCV's axes), whose
    tilts towards the objects cancel around a ring of cameras; +z if they cancel out. [C, 3, 3] -> [3]"""
    up = -rotations[:, :, 1].sum(axis=0)
    norm = float(np.linalg.norm(up))
    return up / norm if norm > 1e-6 * max(len(rotations), 1) else np.array([0.0, 0.0, 1.0])


def overview_pose(
    centre: np.ndarray, radius: float, up: np.ndarray, towards: np.ndarray, fov: float, aspect: float, panel_share: float
) -> tuple[np.ndarray, np.ndarray]:
    """Position [3] and look-at point [3] of a browser camera that frames a sphere (`centre` [3], `radius`)
    in the part of the canvas a panel covering the right `panel_share` (< 0.5) of its width leaves free.

    The camera stands on the side of `towards` [3] (e.g. a training camera's direction from the centre),
    OVERVIEW_ELEVATION above the centre's horizon (`up` [3], unit), and far enough that the sphere's image
    stays within FRAME_FILL of the free part's half-width and of the canvas' half-height (`fov`: vertical,
    `aspect`: canvas width / height). The browser keeps its horizon level (its x axis is perpendicular to
    `up`), so the look-at point is chosen by turning right and pitching down until the centre is seen in
    the middle of the free part, at the canvas' mid-height; the bounds below are exact for that pose.
    """
    horizontal = towards - float(towards @ up) * up
    if np.linalg.norm(horizontal) < 1e-9 * max(float(np.linalg.norm(towards)), 1.0):  # straight above
        horizontal = np.cross(up, np.eye(3)[int(np.argmin(np.abs(up)))])
    horizontal = horizontal / np.linalg.norm(horizontal)
    tan_half = math.tan(0.5 * fov)
    # In tangent units (x/z on the image plane) the free part spans [-aspect·tan_half, (1 - 2·share)·
    # aspect·tan_half]: its middle is at -offset, its half-width `half`.
    offset, half = panel_share * aspect * tan_half, (1.0 - panel_share) * aspect * tan_half
    theta = math.atan(offset)  # the centre's angle left of the axis
    # The sphere's angular radius may reach the free part's left edge from theta and its right edge from
    # -theta; vertically, a sphere centred at mid-height spans r / sqrt(z^2 - r^2) with z = d·cos(theta).
    alpha = min(math.atan(offset + FRAME_FILL * half) - theta, math.atan(FRAME_FILL * half - offset) + theta)
    vertical = FRAME_FILL * tan_half
    distance = max(radius / math.sin(alpha), radius * math.sqrt(1.0 + 1.0 / vertical**2) / math.cos(theta))
    elevation = OVERVIEW_ELEVATION
    position = centre + distance * (math.cos(elevation) * horizontal + math.sin(elevation) * up)
    # Pitch phi and yaw psi (right of the centre's bearing) that show the centre at (-offset, 0).
    sin_pitch = min(math.sin(elevation) * math.sqrt(1.0 + offset * offset), 0.99)
    cos_pitch = math.sqrt(1.0 - sin_pitch * sin_pitch)
    yaw = math.atan2(offset, cos_pitch)
    bearing, right = -horizontal, np.cross(-horizontal, up)
    heading = math.cos(yaw) * bearing + math.sin(yaw) * right
    forward = cos_pitch * heading - sin_pitch * up
    # The look-at point (viser's orbit centre) is as deep as the centre.
    return position, position + forward * distance / math.sqrt(1.0 + offset * offset)


def behind_frustum(pose: BrowserPose, depth: float) -> np.ndarray:
    """Where a tab stands to look through a training camera (`pose`) past its frustum of this `depth`: on
    its axis, BEHIND_FRUSTUM depths behind the apex. [3]"""
    forward = vtf.SO3(np.asarray(pose.wxyz, dtype=np.float64)).as_matrix()[:, 2]
    return np.asarray(pose.position, dtype=np.float64) - BEHIND_FRUSTUM * depth * forward
