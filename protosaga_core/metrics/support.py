"""Whether the training views back what a test view shows, for captures without ground truth.

A test pixel's label is supported when some training view sees the same surface point (its rendered depth
there agrees) and that view's consistent mask holds the same instance at it. Background that breaks into
small coloured pieces in a novel view, and floaters that take an object's id, are labelled pixels that no
training view supports: the share of them is what a user sees as fragments. Pixels whose point no training
view sees on its surface are counted apart (unseen): nothing can support or refute them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .objects3d import surface_votes


@dataclass(frozen=True)
class SupportCounts:
    """Test pixels with an instance (id > 0), those no training view sees on its surface, and those seen
    where no training view's consistent mask holds their instance."""

    labelled: int = 0
    unseen: int = 0
    unsupported: int = 0

    def __add__(self, other: "SupportCounts") -> "SupportCounts":
        return SupportCounts(self.labelled + other.labelled, self.unseen + other.unseen, self.unsupported + other.unsupported)

    @property
    def unsupported_share(self) -> float:
        return self.unsupported / max(self.labelled, 1)

    @property
    def unseen_share(self) -> float:
        return self.unseen / max(self.labelled, 1)


@dataclass(frozen=True)
class LabelledView:
    """One view's label map and rendered depth at the same size, and its camera.

    Attributes:
        labels: instance ids, 0 = none. [H, W] int64
        depth: camera z-depth, 0 where nothing opaque was rendered. [H, W]
        viewmat: world-to-camera, OpenCV axes. [4, 4]
        K: intrinsics at the maps' size. [3, 3]
    """

    labels: Tensor
    depth: Tensor
    viewmat: Tensor
    K: Tensor


def surface_points(view: LabelledView) -> tuple[Tensor, Tensor]:
    """The world points of the view's labelled pixels with a depth, at the pixel centres.

    Returns:
        the points [M, 3] and their labels [M] int64.
    """
    height, width = view.labels.shape
    rows, cols = torch.meshgrid(torch.arange(height, device=view.depth.device), torch.arange(width, device=view.depth.device), indexing="ij")
    keep = (view.labels > 0) & (view.depth > 0)
    z = view.depth[keep]
    pixels = torch.stack([cols[keep] + 0.5, rows[keep] + 0.5, torch.ones_like(z)], dim=1).to(z)
    camera = (pixels @ torch.linalg.inv(view.K.to(z)).T) * z[:, None]
    rotation, translation = view.viewmat[:3, :3].to(z), view.viewmat[:3, 3].to(z)
    return (camera - translation) @ rotation, view.labels[keep]


def support_counts(test: LabelledView, train: Sequence[LabelledView], rel_tolerance: float = 0.03) -> SupportCounts:
    """How many of `test`'s labelled pixels the training views see and support (module docstring).

    Args:
        test: the test view's predicted labels and rendered depth.
        train: the training views' consistent masks and rendered depths.
        rel_tolerance: a point at camera depth z is on a training view's surface when it is within
            rel_tolerance * z of the depth rendered there.
    """
    points, labels = surface_points(test)
    seen = torch.zeros(len(points), dtype=torch.bool, device=points.device)
    supported = torch.zeros_like(seen)
    for view in train:
        index, held = surface_votes(points, view.viewmat, view.K, view.labels, view.depth, 0.0, rel_tolerance)
        seen[index] = True
        supported[index[held == labels[index]]] = True
    labelled = int((test.labels > 0).sum())
    unseen = labelled - int(seen.sum())  # labelled pixels without a depth are unseen too
    return SupportCounts(labelled, unseen, int((seen & ~supported).sum()))
