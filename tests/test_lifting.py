"""Per-Gaussian labels lifted from label maps, and label maps rendered from per-Gaussian labels."""

import numpy as np
import torch

from protosaga_core.cameras import Cameras, intrinsics, look_at
from protosaga_core.gaussians import Gaussians
from protosaga_core.method.lifting import (
    LabelVotes,
    compact_labels,
    drop_fragments,
    fill_from_neighbours,
    labels_from_votes,
    lift_votes,
    render_label_maps,
    transpose_render,
)
from protosaga_core.render import render
from protosaga_core.synthetic import PRESETS, build_objects, objects_to_gaussians, trajectory


def _small_scene(count: int = 10, seed: int = 0) -> tuple[Gaussians, Cameras]:
    generator = torch.Generator().manual_seed(seed)
    means = torch.rand(count, 3, generator=generator) * torch.tensor([1.0, 1.0, 0.5]) - torch.tensor([0.5, 0.5, 0.0])
    gaussians = Gaussians(
        means=means,
        scales=torch.full((count, 3), -2.5) + 0.3 * torch.rand(count, 3, generator=generator),
        quats=torch.randn(count, 4, generator=generator),
        opacities=torch.randn(count, generator=generator),
        sh0=torch.rand(count, 1, 3, generator=generator),
        shN=torch.zeros(count, 0, 3),
        features=torch.zeros(count, 0),
    )
    eye = torch.tensor([[0.2, -0.1, 2.5], [-0.3, 0.2, 2.2]])
    viewmats = look_at(eye, torch.zeros(2, 3), torch.tensor([0.0, 1.0, 0.0]))
    return gaussians, Cameras(viewmats, intrinsics(40.0, 40.0, 16.0, 12.0, count=2), 32, 24)


def test_transpose_render_is_the_adjoint_of_rendering():
    gaussians, cameras = _small_scene()
    # Rendering the identity gives every Gaussian's blending weight at every pixel: w [C, H, W, N].
    weights = render(gaussians, cameras, rgb=False, extras=torch.eye(len(gaussians))).extras
    targets = torch.rand(2, 24, 32, 5, generator=torch.Generator().manual_seed(1))
    expected = torch.einsum("chwn,chwk->nk", weights, targets)
    assert expected.abs().sum() > 1.0  # the Gaussians are seen
    torch.testing.assert_close(transpose_render(gaussians, cameras, targets), expected, rtol=1e-4, atol=1e-5)


def test_compact_labels_maps_ids_to_columns_and_unknown_ids_to_zero():
    maps = torch.tensor([[0, 5, 9], [12, 5, 7]])
    assert compact_labels(maps, torch.tensor([5, 9, 12])).tolist() == [[0, 1, 2], [3, 1, 0]]
    assert compact_labels(maps, torch.tensor([], dtype=torch.int64)).tolist() == [[0, 0, 0], [0, 0, 0]]


def test_labels_from_votes_ignores_unmasked_pixels_and_thresholds_evidence():
    votes = LabelVotes(
        torch.tensor([3, 8]),
        torch.tensor(
            [
                [9.0, 0.2, 0.1],  # mostly unmasked pixels, but its masked votes say 3
                [0.0, 0.3, 0.7],  # 8
                [0.0, 0.01, 0.02],  # too little evidence
                [0.0, 0.5, 0.5],  # tie: the first (smaller) id
            ]
        ),
        torch.tensor([4, 4]),
    )
    assert labels_from_votes(votes, min_evidence=0.05).tolist() == [3, 8, 0, 3]
    assert votes.evidence.tolist() == torch.tensor([0.3, 1.0, 0.03, 1.0]).tolist()


def test_drop_fragments_hands_the_gaussians_of_weak_instances_to_their_next_instance():
    votes = LabelVotes(
        torch.tensor([3, 5, 8]),
        torch.tensor(
            [
                [0.0, 2.0, 0.0, 0.0],  # 3: a real object
                [0.0, 1.0, 0.0, 0.0],
                [0.0, 0.4, 0.9, 0.0],  # 5, seen in 2 views only: goes to its next instance, 3
                [0.0, 0.0, 0.0, 3.0],  # 8: enough views, but nearly transparent Gaussians
                [0.0, 0.0, 0.1, 0.0],  # only 5: nothing left, unassigned
            ]
        ),
        torch.tensor([9, 2, 6]),
    )
    labels = labels_from_votes(votes, min_evidence=0.05)
    opacities = torch.tensor([0.9, 0.8, 0.7, 0.001, 0.5])
    assert drop_fragments(votes, labels, opacities, min_views=3, min_opacity_share=0.01).tolist() == [False, True, True]
    assert labels_from_votes(votes, min_evidence=0.05).tolist() == [3, 3, 3, 0, 0]
    unchanged = LabelVotes(votes.ids, torch.rand(5, 4), votes.views)
    before = unchanged.weights.clone()
    assert not drop_fragments(unchanged, labels_from_votes(unchanged, 0.05), opacities, min_views=0, min_opacity_share=0.0).any()
    assert torch.equal(unchanged.weights, before)


def test_fill_from_neighbours_takes_the_majority_of_assigned_neighbours():
    means = torch.tensor([[0.0, 0, 0], [0.1, 0, 0], [0.2, 0, 0], [5.0, 0, 0], [5.1, 0, 0], [0.05, 0, 0], [5.05, 0, 0]])
    labels = torch.tensor([4, 4, 9, 7, 7, 0, 0])
    filled = fill_from_neighbours(means, labels, neighbours=2)
    assert filled.tolist() == [4, 4, 9, 7, 7, 4, 7]
    assert fill_from_neighbours(means, labels, neighbours=0).tolist() == labels.tolist()
    assert fill_from_neighbours(means, torch.zeros(7, dtype=torch.int64), neighbours=3).tolist() == [0] * 7


def test_lifting_ground_truth_maps_recovers_the_objects_and_renders_them_back():
    """On a synthetic room rendered from its own labelled Gaussians, lifting the GT maps gives back the GT
    label of (almost) every Gaussian that the views see, and rendering those labels gives back the maps."""
    config = PRESETS["demo"]
    objects = build_objects(np.random.default_rng(0), config)
    gaussians, truth = objects_to_gaussians(objects, config, np.random.default_rng(0))
    cameras = trajectory(config)
    views = Cameras(cameras.viewmats[::6], cameras.Ks[::6], cameras.width, cameras.height)
    ids = torch.arange(1, int(truth.max()) + 1)
    gt_maps = render_label_maps(gaussians, views, truth, ids)
    votes = lift_votes(gaussians, [(views, gt_maps)], ids)
    assert votes.views.tolist() == [int((gt_maps == i).flatten(1).any(1).sum()) for i in ids.tolist()]
    labels = labels_from_votes(votes, min_evidence=0.05)
    seen = labels > 0
    assert seen.float().mean() > 0.3
    assert (labels[seen] == truth[seen]).float().mean() > 0.97
    agreement = (render_label_maps(gaussians, views, labels, ids) == gt_maps)[gt_maps > 0].float().mean()
    assert agreement > 0.97


def test_render_label_maps_leaves_unassigned_and_empty_pixels_at_zero():
    gaussians, cameras = _small_scene()
    nothing = render_label_maps(gaussians, cameras, torch.zeros(len(gaussians), dtype=torch.int64), torch.tensor([1]))
    assert nothing.shape == (2, 24, 32) and not nothing.any()
    no_ids = render_label_maps(gaussians, cameras, torch.ones(len(gaussians), dtype=torch.int64), torch.tensor([], dtype=torch.int64))
    assert not no_ids.any()
    all_one = render_label_maps(gaussians, cameras, torch.ones(len(gaussians), dtype=torch.int64), torch.tensor([1]))
    alphas = render(gaussians, cameras, rgb=False, extras=torch.ones(len(gaussians), 1)).alphas[..., 0]
    assert torch.equal(all_one == 1, alphas >= 0.5)
