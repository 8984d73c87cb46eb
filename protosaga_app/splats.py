"""Gaussians as the browser draws them: viser splat arrays, grouped into one node per instance.

viser's splat renderer takes centres, full 3x3 covariances, view-independent colours and opacities;
the colours are the degree-0 SH term (the browser does not evaluate higher SH bands). One node per
instance (and one for unassigned Gaussians, id 0) makes hide/isolate/delete visibility toggles
(DESIGN §8); colour changes (instance colours, the selection highlight) re-send only the nodes concerned.
Splats the browser cannot draw (a NaN or inf anywhere, a covariance entry beyond float16, the type viser
sends covariances in) are never sent (`drawable`); the server still renders, picks and exports them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from gsplat.cuda._torch_impl import _quat_to_rotmat

from protosaga_core.gaussians import Gaussians, sh0_to_rgb

HIGHLIGHT_RGB = np.array([1.0, 0.85, 0.1], dtype=np.float32)
HIGHLIGHT_MIX = 0.55
"""Share of the highlight colour in a selected splat: enough to stand out on any texture, little enough
that the object stays recognisable."""
DIMMED = 0.3
"""Brightness of the splats that are not selected while something is: the selection stands out, as in
SuperSplat, and the rest stays recognisable around it."""
FLOAT16_MAX = float(np.finfo(np.float16).max)
"""viser sends covariances as float16: a larger entry arrives as inf and makes the splat's footprint NaN."""


@dataclass(frozen=True)
class SplatArrays:
    """What `viser.SceneApi.add_gaussian_splats` takes, for M Gaussians.

    Attributes:
        centers: [M, 3] float32
        covariances: [M, 3, 3] float32
        rgbs: colours in [0, 1]. [M, 3] float32
        opacities: [M, 1] float32
    """

    centers: np.ndarray
    covariances: np.ndarray
    rgbs: np.ndarray
    opacities: np.ndarray

    def __len__(self) -> int:
        return self.centers.shape[0]

    def take(self, index: np.ndarray) -> "SplatArrays":
        """The splats at `index` (integer indices or a boolean mask)."""
        return SplatArrays(self.centers[index], self.covariances[index], self.rgbs[index], self.opacities[index])


def splat_arrays(gaussians: Gaussians) -> SplatArrays:
    """Centres, covariances R S² Rᵀ, DC colours and activated opacities of every Gaussian."""
    with torch.no_grad():
        quats = gaussians.activated_quats.detach().cpu().double()
        scales = gaussians.activated_scales.detach().cpu().double()
        rotations = _quat_to_rotmat(quats)  # the rasterizer's own (render/projection.py)
        scaled = rotations * scales[:, None, :]
        covariances = scaled @ scaled.transpose(1, 2)
        rgbs = sh0_to_rgb(gaussians.sh0.detach().cpu().reshape(-1, 3)).clamp(0.0, 1.0)
        opacities = gaussians.activated_opacities.detach().cpu()[:, None]
    return SplatArrays(
        gaussians.means.detach().cpu().float().numpy(),
        covariances.float().numpy(),
        rgbs.float().numpy(),
        opacities.float().numpy(),
    )


def drawable(splats: SplatArrays) -> np.ndarray:
    """Which splats the browser can draw: every value finite and each covariance entry within float16's
    range. A degenerate Gaussian (NaN centre, overflowing scale) would otherwise reach the browser's sort
    and shader as NaN. [M] bool
    """
    count = len(splats)
    finite = (
        np.isfinite(splats.centers).all(axis=1)
        & np.isfinite(splats.rgbs).all(axis=1)
        & np.isfinite(splats.opacities.reshape(count, -1)).all(axis=1)
    )
    # NaN fails the comparison too, so this also drops non-finite covariances.
    return finite & (np.abs(splats.covariances.reshape(count, 9)) <= FLOAT16_MAX).all(axis=1)


def browser_subset(opacities: np.ndarray, max_splats: int | None, keep: np.ndarray | None = None) -> np.ndarray:
    """Indices of the Gaussians sent to the browser: all, or the `max_splats` most opaque (in index order),
    among those in `keep`.

    The server keeps every Gaussian for rendering, picking and export; this only bounds what a browser
    (software WebGL included) has to sort and draw.

    Args:
        opacities: activated opacities. [N] or [N, 1]
        keep: the Gaussians that may be sent (e.g. `drawable`); None: all. [N] bool
    """
    if max_splats is not None and max_splats < 0:
        raise ValueError(f"max_splats must be non-negative, got {max_splats}")
    candidates = np.arange(opacities.shape[0]) if keep is None else np.flatnonzero(keep)
    if max_splats is None or max_splats >= len(candidates):
        return candidates
    if max_splats == 0:
        return np.zeros(0, dtype=np.int64)
    chosen = opacities.reshape(-1)[candidates]
    most_opaque = np.argpartition(-chosen, max_splats - 1)[:max_splats]
    return np.sort(candidates[most_opaque])


def instance_groups(labels: np.ndarray, index: np.ndarray | None = None) -> dict[int, np.ndarray]:
    """Indices of the Gaussians of each label (0 included when present), optionally among `index` only.

    One stable sort instead of a mask per instance, so it stays O(N log N) with thousands of instances.

    Args:
        labels: per-Gaussian instance ids. [N] non-negative integers
        index: the Gaussians to group (e.g. `browser_subset`). [M] integers
    """
    index = np.arange(len(labels)) if index is None else np.asarray(index)
    chosen = np.asarray(labels)[index]
    order = np.argsort(chosen, kind="stable")
    ids, starts = np.unique(chosen[order], return_index=True)
    return {int(i): index[part] for i, part in zip(ids, np.split(order, starts[1:]))}


def highlighted(rgbs: np.ndarray) -> np.ndarray:
    """Colours of selected splats: mixed towards the highlight colour. [M, 3] -> [M, 3]"""
    return (1.0 - HIGHLIGHT_MIX) * rgbs + HIGHLIGHT_MIX * HIGHLIGHT_RGB


def dimmed(rgbs: np.ndarray) -> np.ndarray:
    """Colours of the splats around a selection: darkened. [M, 3] -> [M, 3]"""
    return DIMMED * np.asarray(rgbs, dtype=np.float32)
