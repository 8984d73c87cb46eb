"""View-consensus association on a synthetic room with SAM-like errors injected into exact masks."""

import numpy as np
import pytest
import torch

from protosaga_core.cameras import Cameras
from protosaga_core.method.association import AssociateConfig
from protosaga_core.method.consensus import ConsensusSettings, cluster_masks, mask_membership
from protosaga_core.method.lifting import render_label_maps
from protosaga_core.synthetic import PRESETS, build_objects, objects_to_gaussians, trajectory

NUM_VIEWS = 20
VISIBLE = 50
"""Masks of fewer pixels may find too few views observing them with others to join their object; the
stage then drops them as clusters of one mask."""


@pytest.fixture(scope="module")
def room():
    """The demo room's own Gaussians, ten views along its path and their exact instance maps."""
    config = PRESETS["demo"]
    objects = build_objects(np.random.default_rng(0), config)
    gaussians, truth = objects_to_gaussians(objects, config, np.random.default_rng(0))
    path = trajectory(config)
    step = path.num_cameras // NUM_VIEWS
    views = [Cameras(path.viewmats[i : i + 1], path.Ks[i : i + 1], path.width, path.height) for i in range(0, step * NUM_VIEWS, step)]
    ids = torch.arange(1, int(truth.max()) + 1)
    maps = [render_label_maps(gaussians, view, truth, ids) for view in views]
    return gaussians, views, maps


def _touching_pair(maps) -> tuple[int, int]:
    """Two GT instances that share a boundary in the first view (a floor and an object on it)."""
    first = maps[0][0]
    right = torch.stack([first[:, :-1].flatten(), first[:, 1:].flatten()], 1)
    pairs = right[(right[:, 0] != right[:, 1]) & (right > 0).all(1)]
    counts = {}
    for a, b in pairs.tolist():
        key = (min(a, b), max(a, b))
        counts[key] = counts.get(key, 0) + 1
    return max(counts, key=counts.get)


def _shuffled(label_map: torch.Tensor, seed: int) -> torch.Tensor:
    """Per-view raw labels: a fresh permutation, as every SAM run numbers its masks anew."""
    permutation = torch.randperm(int(label_map.max()) + 1, generator=torch.Generator().manual_seed(seed)) + 1
    permutation[0] = 0
    return permutation[label_map]


def _clusters_by_truth(gaussians, views, raw_maps, truth_maps, settings=ConsensusSettings()):
    membership = mask_membership(gaussians, zip(views, raw_maps))
    cluster, _ = cluster_masks(membership, settings)
    # The GT id under most of each mask's pixels; -1 for masks too small to judge.
    truth_of_node = []
    for raw, truth, labels in zip(raw_maps, truth_maps, membership.view_labels):
        for label in labels.tolist():
            values, counts = torch.unique(truth[raw == label], return_counts=True)
            truth_of_node.append(int(values[counts.argmax()]) if counts.sum() >= VISIBLE else -1)
    return membership, cluster, np.asarray(truth_of_node)


def test_exact_masks_cluster_into_exactly_the_objects(room):
    gaussians, views, maps = room
    raw = [_shuffled(m, seed) for seed, m in enumerate(maps)]
    _, cluster, truth = _clusters_by_truth(gaussians, views, raw, maps)
    judged = truth >= 0
    assert judged.mean() > 0.7
    for gt in np.unique(truth[judged]):
        assert len(np.unique(cluster[truth == gt])) == 1, f"GT {gt} split over clusters"
    assert len(np.unique(cluster[judged])) == len(np.unique(truth[judged]))


def test_a_merge_in_one_view_does_not_join_two_objects(room):
    gaussians, views, maps = room
    a, b = _touching_pair(maps)
    merged = maps[0].clone()
    merged[merged == b] = a  # SAM merged the pair in the first view only
    raw = [_shuffled(m, seed) for seed, m in enumerate([merged] + maps[1:])]
    membership, cluster, truth = _clusters_by_truth(gaussians, views, raw, [merged] + maps[1:])
    later = membership.node_view > 0
    assert set(cluster[later & (truth == a)]).isdisjoint(cluster[later & (truth == b)])


def test_a_split_in_one_view_rejoins_its_object(room):
    gaussians, views, maps = room
    split_view = maps[3].clone()
    present, counts = torch.unique(split_view[split_view > 0], return_counts=True)
    target = int(present[counts.argmax()])  # the largest object in that view
    pixels = torch.nonzero(split_view == target)  # [P, 3]: camera, row, column
    half = pixels[:, 2] < pixels[:, 2].float().median()
    fragment = max(int(m.max()) for m in maps) + 1
    split_view[tuple(pixels[half].T)] = fragment
    raw_maps = maps[:3] + [split_view] + maps[4:]
    raw = [_shuffled(m, seed) for seed, m in enumerate(raw_maps)]
    membership, cluster, truth = _clusters_by_truth(gaussians, views, raw, raw_maps)
    truth[truth == fragment] = target
    assert len(np.unique(cluster[truth == target])) == 1


def test_settings_are_validated():
    with pytest.raises(ValueError, match="thresholds"):
        ConsensusSettings(thresholds=(0.9, 1.5))
    with pytest.raises(ValueError, match="contain_ratio"):
        ConsensusSettings(contain_ratio=0.5)
    with pytest.raises(ValueError, match="grouping"):
        AssociateConfig(grouping="magic")
    assert AssociateConfig(consensus_thresholds=[0.9, 0.8]).consensus_thresholds == (0.9, 0.8)
