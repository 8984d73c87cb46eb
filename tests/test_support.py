"""The support of a test view's labels by the training views' consistent masks (metrics/support.py)."""

from __future__ import annotations

import torch

from protosaga_core.cameras import intrinsics, look_at
from protosaga_core.metrics.support import LabelledView, SupportCounts, support_counts, surface_points

SIZE = 20


def wall_view(eye: list[float], labels: torch.Tensor) -> LabelledView:
    """A camera looking at the wall z = 0 straight on from `eye` (z < 0), with its exact depth."""
    viewmat = look_at(torch.tensor([eye]), torch.tensor([[eye[0], eye[1], 0.0]]), torch.tensor([0.0, -1.0, 0.0]))[0]
    K = intrinsics(SIZE, SIZE, SIZE / 2, SIZE / 2)[0]
    return LabelledView(labels, torch.full((SIZE, SIZE), -eye[2]), viewmat, K)


def halves(left: int, right: int) -> torch.Tensor:
    labels = torch.full((SIZE, SIZE), left)
    labels[:, SIZE // 2 :] = right
    return labels


def test_surface_points_lie_on_the_wall_where_the_pixels_look():
    view = wall_view([0.0, 0.0, -2.0], halves(1, 2))
    points, labels = surface_points(view)
    assert points.shape == (SIZE * SIZE, 3) and torch.allclose(points[:, 2], torch.zeros(SIZE * SIZE), atol=1e-5)
    assert (points[labels == 1, 0] < 0).all() and (points[labels == 2, 0] > 0).all()  # x to the right in OpenCV axes


def test_labels_the_training_views_hold_are_supported_and_others_are_not():
    train = [wall_view([0.0, 0.0, -2.0], halves(1, 2)), wall_view([0.1, 0.0, -2.2], halves(1, 2))]
    agreeing = support_counts(wall_view([0.05, 0.0, -2.1], halves(1, 2)), train)
    assert agreeing.labelled == SIZE * SIZE and agreeing.unsupported <= 2 * SIZE  # the seam's column may straddle
    fragment = halves(1, 2)
    fragment[5:9, 2:6] = 7  # an id no training view holds there
    counts = support_counts(wall_view([0.05, 0.0, -2.1], fragment), train)
    assert counts.unsupported - agreeing.unsupported == 16 and counts.unseen == 0


def test_points_off_every_training_surface_are_unseen_not_unsupported():
    train = [wall_view([0.0, 0.0, -2.0], halves(1, 2))]
    floating = wall_view([0.0, 0.0, -2.0], halves(1, 2))
    floating = LabelledView(floating.labels, floating.depth * 0.5, floating.viewmat, floating.K)  # in front of the wall
    floating.labels[:, :3] = 0  # unlabelled pixels count nowhere
    counts = support_counts(floating, train)
    assert counts == SupportCounts(labelled=SIZE * (SIZE - 3), unseen=SIZE * (SIZE - 3), unsupported=0)
    assert counts.unseen_share == 1.0 and counts.unsupported_share == 0.0
    assert (counts + counts).labelled == 2 * counts.labelled
