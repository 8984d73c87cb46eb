"""Which instance is under the cursor: from the per-pixel segmentation, or along the ray as a fallback.

Coordinates are image pixels with the origin at the top-left corner: pixel (i, j) covers
[i, i + 1) x [j, j + 1) and its centre is (i + 0.5, j + 0.5), the point the rasterizer samples.
Instance id 0 means "nothing" (unassigned, background, or outside the image).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from protosaga_core.cameras import Cameras, project_to_pixels
from protosaga_core.gaussians import Gaussians
from protosaga_core.render.projection import may_reach_image, project
from protosaga_core.render.settings import ALPHA_THRESHOLD, TRANSMITTANCE_MIN, RasterSettings
from protosaga_core.render.tiles import tile_rectangles

DEFAULT_MIN_FRACTION = 0.01
"""A rectangle selects an instance covering at least this share of its pixels, so that a few stray
boundary pixels of a neighbour do not select it too."""


def pick_instance(label_map: np.ndarray | Tensor, x: float, y: float) -> int:
    """The label of the pixel containing (x, y); 0 outside the image.

    Args:
        label_map: per-pixel instance ids. [H, W] integers
    """
    labels = _as_label_map(label_map)
    column, row = _pixel(x, y)
    height, width = labels.shape
    if not (0 <= column < width and 0 <= row < height):
        return 0
    return int(labels[row, column])


def pick_rectangle(
    label_map: np.ndarray | Tensor,
    x0: float,
    y0: float,
    x1: float,
    y1: float,
    min_fraction: float = DEFAULT_MIN_FRACTION,
) -> set[int]:
    """The instances (never 0) covering at least `min_fraction` of the pixels a rectangle touches.

    The corners may come in any order (a drag in any direction); the part outside the image is ignored.

    Args:
        label_map: per-pixel instance ids. [H, W] integers
    """
    if not 0.0 <= min_fraction <= 1.0:
        raise ValueError(f"min_fraction must lie in [0, 1], got {min_fraction}")
    labels = _as_label_map(label_map)
    height, width = labels.shape
    (c0, r0), (c1, r1) = _pixel(min(x0, x1), min(y0, y1)), _pixel(max(x0, x1), max(y0, y1))
    c0, r0 = max(c0, 0), max(r0, 0)
    c1, r1 = min(c1, width - 1), min(r1, height - 1)
    if c0 > c1 or r0 > r1:
        return set()
    window = labels[r0 : r1 + 1, c0 : c1 + 1]
    ids, counts = np.unique(window, return_counts=True)
    enough = (counts >= min_fraction * window.size) & (ids != 0)
    return {int(i) for i in ids[enough]}


def gaussians_in_rectangle(means: Tensor, camera: Cameras, x0: float, y0: float, x1: float, y1: float) -> Tensor:
    """The Gaussians whose centre, in front of the camera, lies in a pixel the rectangle touches: a box in
    3D (the rectangle's frustum, through every depth), as SuperSplat's rectangle selects.

    Args:
        means: centres. [N, 3]
        camera: exactly one camera.

    Returns:
        Their indices, increasing. [M] int64
    """
    if camera.num_cameras != 1:
        raise ValueError(f"a rectangle needs exactly one camera, got {camera.num_cameras}")
    (c0, r0), (c1, r1) = _pixel(min(x0, x1), min(y0, y1)), _pixel(max(x0, x1), max(y0, y1))
    camera = camera.to(means.device)
    index, flat, _ = project_to_pixels(means, camera.viewmats[0], camera.Ks[0], camera.width, camera.height)
    row, column = flat // camera.width, flat % camera.width
    return index[(column >= c0) & (column <= c1) & (row >= r0) & (row <= r1)]


def contribution_weights(
    gaussians: Gaussians, camera: Cameras, x: float, y: float, settings: RasterSettings = RasterSettings()
) -> Tensor:
    """Each Gaussian's blending weight T_i * alpha_i at the pixel containing (x, y). [N]

    The same arithmetic as the torch rasterizer for that one pixel, vectorised over all N Gaussians:
    EWA projection (`render.projection`), the tiles of `render.tiles` the Gaussian is binned into, alpha
    clamped and thresholded, front-to-back transmittance in depth order, stopping before transmittance
    reaches 1e-4. The weights sum to the pixel's rendered alpha, and `weights @ channels` is its rendered
    value of any per-Gaussian channels. Why not the rasterizer on a 1-pixel camera: its projection clamps
    footprints by the camera's field of view, which a 1-pixel camera narrows, so the weights would differ.

    Args:
        camera: exactly one camera.
    """
    if camera.num_cameras != 1:
        raise ValueError(f"picking needs exactly one camera, got {camera.num_cameras}")
    column, row = _pixel(x, y)
    weights = gaussians.means.new_zeros(len(gaussians))
    if not (0 <= column < camera.width and 0 <= row < camera.height) or len(gaussians) == 0:
        return weights
    with torch.no_grad():
        # A Gaussian reaches the pixel only if the rasterizer bins it into the pixel's tile (in the tiles
        # of the viewer's frames, rendered without gradients). Only those that may reach the tile are
        # projected: the others weigh 0 and leave every transmittance as it is.
        tile_size = settings.tile_size_for("torch", gradients=False)
        tile_x, tile_y = column // tile_size * tile_size, row // tile_size * tile_size
        scales = gaussians.activated_scales.detach()
        near = torch.nonzero(
            may_reach_image(
                gaussians.means.detach(), scales.amax(-1), camera.viewmats[0], camera.Ks[0], camera.width, camera.height,
                settings, window=(tile_x, tile_y, tile_x + tile_size, tile_y + tile_size),
            )
        )[:, 0]
        proj = project(
            gaussians.means.detach()[near],
            gaussians.activated_quats.detach()[near],
            scales[near],
            gaussians.activated_opacities.detach()[near],
            camera.viewmats,
            camera.Ks,
            camera.width,
            camera.height,
            settings,
        )
        means2d, conics, depths, radii = proj.means2d[0], proj.conics[0], proj.depths[0], proj.radii[0]
        opacities = proj.opacities[0]  # scaled by the compensation in antialiased mode
        tile = torch.tensor([column // tile_size, row // tile_size], device=means2d.device)
        lo, hi = tile_rectangles(means2d, radii, tile_size)
        reaches = (radii > 0).all(dim=-1) & ((lo <= tile) & (tile < hi)).all(dim=-1)

        delta = means2d - torch.tensor([column + 0.5, row + 0.5], dtype=means2d.dtype, device=means2d.device)
        dx, dy = delta.unbind(-1)
        a, b, c = conics.unbind(-1)
        sigma = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
        alpha = (opacities * torch.exp(-sigma)).clamp(max=settings.alpha_max)
        alpha = torch.where(reaches & (alpha >= ALPHA_THRESHOLD), alpha, torch.zeros_like(alpha))

        # Stable sort on float32 depths: the rasterizer's order, ties broken by index as its sort does.
        order = torch.sort(depths.float(), stable=True).indices
        sorted_alpha = alpha[order].double()  # float64: a long product of (1 - alpha) stays accurate
        after = torch.cumprod(1.0 - sorted_alpha, dim=0)
        before = torch.cat([after.new_ones(1), after[:-1]])
        sorted_weights = torch.where(after > TRANSMITTANCE_MIN, before * sorted_alpha, torch.zeros_like(after))
        weights[near[order]] = sorted_weights.to(weights.dtype)
    return weights


def pick_along_ray(
    gaussians: Gaussians,
    labels: np.ndarray | Tensor,
    camera: Cameras,
    x: float,
    y: float,
    settings: RasterSettings = RasterSettings(),
) -> int:
    """The instance whose Gaussians contribute most to the pixel containing (x, y); 0 if none does.

    The fallback where the segmentation has no label. Pass only the Gaussians on screen (hidden and
    deleted instances removed) so that nothing invisible is picked. Unassigned Gaussians (label 0) block
    the view like any other but are never picked.

    Args:
        labels: instance id per Gaussian. [N] non-negative integers
        camera: exactly one camera.
    """
    labels = torch.as_tensor(labels).to(device="cpu", dtype=torch.int64)
    if labels.shape != (len(gaussians),):
        raise ValueError(f"labels must have shape [{len(gaussians)}], got {list(labels.shape)}")
    if len(labels) and labels.min() < 0:
        raise ValueError("labels must be non-negative instance ids")
    weights = contribution_weights(gaussians, camera, x, y, settings).cpu().double()
    per_instance = torch.bincount(labels, weights=weights)
    per_instance[:1] = 0.0  # label 0 is not an instance
    if len(per_instance) == 0 or per_instance.max() <= 0:
        return 0
    return int(per_instance.argmax())


def _as_label_map(label_map: np.ndarray | Tensor) -> np.ndarray:
    labels = label_map.detach().cpu().numpy() if isinstance(label_map, Tensor) else np.asarray(label_map)
    if labels.ndim != 2:
        raise ValueError(f"a label map must be [H, W], got shape {list(labels.shape)}")
    return labels


def _pixel(x: float, y: float) -> tuple[int, int]:
    """(column, row) of the pixel containing (x, y)."""
    if not (math.isfinite(x) and math.isfinite(y)):
        raise ValueError(f"pixel coordinates must be finite, got ({x}, {y})")
    return math.floor(x), math.floor(y)
