"""View-consensus association on a synthetic room with SAM-like errors injected into exact masks, and the
sparse association against the dense one it replaced.

`dense_membership`, `dense_containment`, `dense_rates` and `dense_cluster_masks` below are a verbatim copy
of the dense algorithm (its [N, K] unseen shares, [A, S] overlaps and [C, C] rates), kept here as the
reference that consensus.py must reproduce exactly: the same clusters and the same `joined_at`. This file is
the one place such a copy is allowed.
"""

import math
from dataclasses import dataclass

import numpy as np
import pytest
import scipy.sparse as sparse
import torch
import torch.nn.functional as F
from scipy.sparse.csgraph import connected_components

from protosaga_core.cameras import Cameras, intrinsics, look_at
from protosaga_core.gaussians import Gaussians
from protosaga_core.io.scene_dir import SceneDir
from protosaga_core.method import consensus
from protosaga_core.method.association import AssociateConfig
from protosaga_core.method.consensus import SEEN_WEIGHT, SPLIT, UNKNOWN, ConsensusSettings, cluster_masks, mask_membership
from protosaga_core.method.lifting import compact_labels, render_label_maps, transpose_render
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


# --- the dense reference: the algorithm before sparse overlaps (copied, see the module docstring) ----------------


@dataclass(frozen=True)
class DenseMembership:
    """As MaskMembership was: placement [N, S] holds every Gaussian's unseen share in every view's slot 0."""

    view_labels: list
    node_view: np.ndarray
    node_raw: np.ndarray
    members: sparse.csr_matrix
    placement: sparse.csr_matrix
    slot_view: np.ndarray
    slot_node: np.ndarray

    @property
    def num_nodes(self) -> int:
        return len(self.node_view)

    @property
    def num_views(self) -> int:
        return len(self.view_labels)


def dense_membership(gaussians, views) -> DenseMembership:
    num_gaussians = len(gaussians)
    gaussian_index = np.arange(num_gaussians)
    view_labels = []
    node_view, node_raw, slot_view, slot_node = [], [], [], []
    member_rows, member_cols, member_weights = [], [], []
    place_rows, place_cols, place_weights, view_totals = [], [], [], []
    nodes = slots = 0
    for view, (cameras, raw_mask) in enumerate(views):
        labels = torch.unique(raw_mask)
        labels = labels[labels > 0].cpu()
        columns = compact_labels(raw_mask.to(gaussians.device), labels.to(gaussians.device))
        votes = transpose_render(gaussians, cameras.to(gaussians.device), F.one_hot(columns, len(labels) + 1).float()).cpu()
        best_weight, best = votes.max(1)
        in_mask = ((best > 0) & (best_weight >= SEEN_WEIGHT)).numpy()
        member_rows.append(nodes + best.numpy()[in_mask] - 1)
        member_cols.append(gaussian_index[in_mask])
        member_weights.append(best_weight.numpy()[in_mask])
        rows, cols = torch.nonzero(votes >= SEEN_WEIGHT, as_tuple=True)
        place_rows.append(rows.numpy())
        place_cols.append(slots + 1 + cols.numpy())
        place_weights.append(votes[rows, cols].numpy())
        view_totals.append(votes.sum(1).numpy())
        view_labels.append(labels)
        node_view += [view] * len(labels)
        node_raw += labels.tolist()
        slot_view += [view] * (len(labels) + 2)
        slot_node += [-1, -1] + list(range(nodes, nodes + len(labels)))
        nodes += len(labels)
        slots += len(labels) + 2
    members = sparse.csr_matrix(
        (np.concatenate(member_weights), (np.concatenate(member_rows), np.concatenate(member_cols))), shape=(nodes, num_gaussians)
    )
    totals = np.stack(view_totals, axis=1)
    peak = np.maximum(totals.max(1), SEEN_WEIGHT)
    unseen_slots = np.asarray([i for i, node in enumerate(slot_node) if node == -1][0::2])
    unseen = np.clip(1.0 - totals / peak[:, None], 0.0, 1.0)
    rows = np.concatenate(place_rows + [np.repeat(gaussian_index, len(unseen_slots))])
    cols = np.concatenate(place_cols + [np.tile(unseen_slots, num_gaussians)])
    weights = np.concatenate([w / peak[r] for w, r in zip(place_weights, place_rows)] + [unseen.reshape(-1)])
    placement = sparse.csr_matrix((weights, (rows, cols)), shape=(num_gaussians, slots))
    return DenseMembership(view_labels, np.asarray(node_view), np.asarray(node_raw), members, placement, np.asarray(slot_view), np.asarray(slot_node))


def dense_containment(overlap, membership, settings):
    num_clusters, num_views = overlap.shape[0], membership.num_views
    slot_view, slot_node = membership.slot_view, membership.slot_node
    view_of_slot = sparse.csr_matrix((np.ones(len(slot_view)), (np.arange(len(slot_view)), slot_view)), shape=(len(slot_view), num_views))
    per_view_total = np.asarray(view_of_slot.T @ overlap.T).T
    unseen = overlap[:, slot_node == -1][:, 0::2]
    unlabelled = overlap[:, slot_node == -1][:, 1::2]
    seen = per_view_total - unseen
    masked = np.where(slot_node >= 0)[0]
    best_share = np.zeros((num_clusters, num_views))
    best_node = np.full((num_clusters, num_views), UNKNOWN, dtype=np.int64)
    for view in range(num_views):
        cols = masked[slot_view[masked] == view]
        if len(cols) == 0:
            continue
        block = overlap[:, cols]
        arg = block.argmax(1)
        best_share[:, view] = block[np.arange(num_clusters), arg]
        best_node[:, view] = slot_node[cols][arg]
    with np.errstate(invalid="ignore", divide="ignore"):
        observed = (seen >= settings.visible_ratio * per_view_total) | (seen >= settings.visible_weight)
        observed &= seen > 0
        labelled = seen - unlabelled
        informative = labelled >= 0.5 * seen
        contained = best_share >= settings.contain_ratio * np.maximum(labelled, 1e-12)
        visibility = np.where(per_view_total > 0, seen / per_view_total, 0.0)
    result = np.full((num_clusters, num_views), UNKNOWN, dtype=np.int64)
    evidence = observed & informative
    result[evidence] = SPLIT
    result[evidence & contained] = best_node[evidence & contained]
    return result, visibility


def dense_rates(where, visibility, num_nodes):
    num_clusters = where.shape[0]
    rows, views = np.nonzero(where >= 0)
    contained = sparse.csr_matrix((visibility[rows, views], (rows, where[rows, views])), shape=(num_clusters, num_nodes))
    together = (contained @ contained.T).toarray()
    observed = where != UNKNOWN
    weighted = sparse.csr_matrix(np.where(observed, visibility, 0.0))
    both = (weighted @ weighted.T).toarray()
    counted = sparse.csr_matrix(observed.astype(np.float64))
    return together, both, (counted @ counted.T).toarray()


def dense_cluster_masks(membership, settings=ConsensusSettings()):
    num_nodes = membership.num_nodes
    node_overlap = (membership.members @ membership.placement).toarray()
    cluster = np.arange(num_nodes)
    joined_at = np.ones(num_nodes)
    min_views = max(1, min(settings.min_views, membership.num_views // 2))
    for threshold in settings.thresholds:
        while True:
            count = int(cluster.max()) + 1 if num_nodes else 0
            assign = sparse.csr_matrix((np.ones(num_nodes), (cluster, np.arange(num_nodes))), shape=(count, num_nodes))
            where, visibility = dense_containment(assign @ node_overlap, membership, settings)
            together, both, views_both = dense_rates(where, visibility, num_nodes)
            with np.errstate(invalid="ignore", divide="ignore"):
                rate = np.where((views_both >= min_views) & (both > 0), together / np.where(both > 0, both, 1.0), 0.0)
            np.fill_diagonal(rate, 0.0)
            partner = rate.argmax(1)
            mutual = (partner[partner] == np.arange(count)) & (rate[np.arange(count), partner] >= threshold)
            if not mutual.any():
                break
            pairs = np.flatnonzero(mutual)
            edges = sparse.csr_matrix((np.ones(len(pairs)), (pairs, partner[pairs])), shape=(count, count))
            _, component = connected_components(edges, directed=False)
            grew = np.bincount(component, minlength=count)[component[cluster]] > 1
            joined_at[grew] = threshold
            cluster = component[cluster]
    first_view = np.full(int(cluster.max()) + 1 if num_nodes else 0, np.iinfo(np.int64).max)
    np.minimum.at(first_view, cluster, membership.node_view)
    order = np.lexsort((np.arange(len(first_view)), first_view))
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return rank[cluster], joined_at


# --- the sparse association against it ----------------------------------------------------------------------------

WIDTH, HEIGHT = 48, 36


def random_case(seed: int) -> tuple[Gaussians, list[tuple[Cameras, torch.Tensor]]]:
    """Gaussians in a ball seen by cameras on a circle, some far above where no camera sees them. Objects are
    the 3D Voronoi cells of 3-20 sites; each view's raw mask is their rendered map, renumbered, where SAM
    merged two objects or split one along 2D Voronoi cells in some views. One view has no masks at all, and
    one holds random 2D Voronoi cells, one of them unlabelled."""
    generator = torch.Generator().manual_seed(seed)
    count = 300 + 50 * seed
    direction = F.normalize(torch.randn(count, 3, generator=generator), dim=1)
    means = 1.2 * torch.rand(count, 1, generator=generator) ** (1 / 3) * direction
    means[: count // 20] += torch.tensor([0.0, 0.0, 60.0])  # above every camera's view
    gaussians = Gaussians(
        means=means,
        scales=torch.full((count, 3), -2.5) + 0.8 * torch.rand(count, 3, generator=generator),
        quats=torch.randn(count, 4, generator=generator),
        opacities=2 * torch.randn(count, generator=generator),
        sh0=torch.rand(count, 1, 3, generator=generator),
        shN=torch.zeros(count, 0, 3),
        features=torch.zeros(count, 1),
    )
    sites = 2 * torch.rand(int(torch.randint(3, 21, (1,), generator=generator)), 3, generator=generator) - 1
    objects = 1 + torch.cdist(means, sites).argmin(1)
    num_views = 6 + seed % 7
    angle = torch.arange(num_views) * (2 * math.pi / num_views) + seed
    eye = torch.stack([4 * torch.cos(angle), 4 * torch.sin(angle), 0.8 * torch.sin(3 * angle)], 1)
    cameras = Cameras(look_at(eye, torch.zeros_like(eye), torch.tensor([0.0, 0.0, 1.0])), intrinsics(50.0, 50.0, WIDTH / 2, HEIGHT / 2, count=num_views), WIDTH, HEIGHT)
    maps = render_label_maps(gaussians, cameras, objects, torch.arange(1, len(sites) + 1))
    rows, cols = torch.meshgrid(torch.arange(HEIGHT), torch.arange(WIDTH), indexing="ij")
    pixels = torch.stack([cols.flatten(), rows.flatten()], 1).float()

    def voronoi(cells: int) -> torch.Tensor:
        return torch.cdist(pixels, torch.rand(cells, 2, generator=generator) * torch.tensor([WIDTH, HEIGHT])).argmin(1).view(HEIGHT, WIDTH)

    views = []
    for k, exact in enumerate(maps):
        numbering = torch.cat([torch.zeros(1, dtype=torch.int64), 1 + torch.randperm(200, generator=generator)[: len(sites)]])
        mask = numbering[exact]
        present = torch.unique(mask[mask > 0])
        error = float(torch.rand(1, generator=generator))
        if error < 0.3 and len(present) > 1:  # SAM merged two objects
            mask[mask == present[0]] = present[1]
        elif error < 0.6 and len(present) > 0:  # SAM split one along 2D cells
            mask = torch.where(mask == present[-1], 200 + voronoi(2), mask)
        if k == 1:
            mask = torch.zeros_like(mask)
        if k == 2:
            mask = 1 + voronoi(int(torch.randint(3, 21, (1,), generator=generator)))
            mask[mask == mask[HEIGHT // 2, WIDTH // 2]] = 0
        views.append((cameras[k], mask[None]))
    return gaussians, views


@pytest.mark.parametrize("seed", range(12))
def test_sparse_association_is_the_dense_one(seed, monkeypatch):
    gaussians, views = random_case(seed)
    monkeypatch.setattr(consensus, "SLOT_BLOCK", 5 + seed)  # node overlaps multiplied out in many blocks
    settings = ConsensusSettings(min_views=2) if seed % 2 else ConsensusSettings()
    membership, reference = mask_membership(gaussians, views), dense_membership(gaussians, views)
    assert (membership.members != reference.members).nnz == 0
    unseen_slots = np.flatnonzero(reference.slot_node == -1)[0::2]
    seen = np.ones(reference.placement.shape[1], dtype=bool)
    seen[unseen_slots] = False
    expected_overlaps = (reference.members @ reference.placement).toarray()
    overlaps = membership.overlaps.toarray()
    assert np.array_equal(overlaps[:, seen], expected_overlaps[:, seen])
    # The unseen share is the weight less the seen total: float32 rounding of the weight apart.
    np.testing.assert_allclose(overlaps[:, ~seen], expected_overlaps[:, ~seen], rtol=1e-5, atol=1e-4)
    cluster, joined_at = cluster_masks(membership, settings)
    expected, expected_joined = dense_cluster_masks(reference, settings)
    assert np.array_equal(cluster, expected) and np.array_equal(joined_at, expected_joined)
    assert cluster.max() < len(cluster) - 1  # some masks did join


def test_sparse_association_is_the_dense_one_on_the_trained_scene(trained_scene_readonly):
    scene_dir = SceneDir(trained_scene_readonly)
    gaussians = scene_dir.read_gaussians()
    views = [(view.cameras, view.load_mask()[None]) for view in scene_dir.load_dataset().split("train")]
    cluster, joined_at = cluster_masks(mask_membership(gaussians, views))
    expected, expected_joined = dense_cluster_masks(dense_membership(gaussians, views))
    assert np.array_equal(cluster, expected) and np.array_equal(joined_at, expected_joined)
    assert cluster.max() < len(cluster) - 1
