"""Gaussians as the browser draws them: viser splat arrays, grouped into one node per instance.

viser's splat renderer takes centres, full 3x3 covariances, view-independent colours and opacities;
the colours are the degree-0 SH term (the browser does not evaluate higher SH bands). One node per
instance (and one for unassigned Gaussians, id 0) makes hide/isolate/delete visibility toggles
(DESIGN §8); colour changes (instance colours, the selection highlight) re-send only the nodes concerned.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from protosaga_core.gaussians import Gaussians, sh0_to_rgb

HIGHLIGHT_RGB = np.array([1.0, 0.85, 0.1], dtype=np.float32)
HIGHLIGHT_MIX = 0.55
"""Share of the highlight colour in a selected splat: enough to stand out on any texture, little enough
that the object stays recognisable."""


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
        w, x, y, z = quats.unbind(-1)
        rotations = torch.stack(
            [
                1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
                2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
                2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
            ],
            dim=-1,
        ).reshape(-1, 3, 3)
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


def browser_subset(opacities: np.ndarray, max_splats: int | None) -> np.ndarray:
    """Indices of the Gaussians sent to the browser: all, or the `max_splats` most opaque (in index order).

    The server keeps every Gaussian for rendering, picking and export; this only bounds what a browser
    (software WebGL included) has to sort and draw.

    Args:
        opacities: activated opacities. [N] or [N, 1]
    """
    count = opacities.shape[0]
    if max_splats is None or max_splats >= count:
        return np.arange(count)
    if max_splats < 0:
        raise ValueError(f"max_splats must be non-negative, got {max_splats}")
    most_opaque = np.argpartition(-opacities.reshape(-1), max_splats - 1)[:max_splats] if max_splats else []
    return np.sort(np.asarray(most_opaque, dtype=np.int64))


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
