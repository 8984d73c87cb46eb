"""View-consensus association: consistent ids for the per-view masks by clustering them across views.

The memory bank of Eq. 11-13 is greedy and sticky: a mask joins the entry it overlaps most, and the entry
grows by the union (Eq. 13). One view where SAM merged a cup with its saucer, or an object with the floor,
joins them for good, and merges chain through shared neighbours until one id covers half a room
(measured on the synthetic scenes: pairs of objects that SAM separates in 80-95 % of the views end up
under one id). Consensus association decides every merge by a vote of all views instead, as
MaskClustering (Yan et al., CVPR 2024) does with depth-backprojected points, here with Gaussians:

1. Each Gaussian's raw masks in each view are the masks it renders into: lifting each view's raw mask
   (`lifting.transpose_render`) gives every Gaussian its blending weight per raw label, so occluded
   Gaussians have none and partly covered ones count as much as they show. A mask's members are the
   Gaussians that render into it most in its view.
2. A raw mask a (view k, label t) is the set of Gaussians that belong to t in view k, each weighted by its
   weight in t. In another view j, a is *observed* when at least `visible_ratio` of its weight, or
   `visible_weight` in all, is seen there; it is then *contained* in the mask of view j that holds at
   least `contain_ratio` of its seen weight, or *split* when no mask does. Mostly unlabelled in view j
   (SAM said nothing there): no evidence.
3. The consensus of two clusters is the fraction of the views observing both in which one mask contains
   both, each view weighted by the product of the shares of the two clusters it sees: a view that sees
   only the edge of an object, where masks are least reliable, barely counts. Clusters merge when their
   consensus reaches a threshold and at least `min_views` views observe both, and only with their mutual
   best partner in each round (a mask that SAM merged from two objects agrees with both; joining all
   that passes would chain the two objects through it). The threshold steps down from strict to lenient
   (`thresholds`), and after each round the clusters' containments are recomputed from their members,
   so a merge is always backed by the views.
4. Every raw mask takes its cluster's id: ids 1..T ordered by the first training view (in name order)
   that holds one of the cluster's masks, like the bank's entries. A cluster of fewer than `min_masks`
   masks gets 0 instead: no other view confirms it.

A pair that SAM merges in most views still merges (the views agree); a pair merged in a few views does
not, and a mask split in one view rejoins its object because every other view contains both halves.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sparse
import torch
import torch.nn.functional as F
from scipy.sparse.csgraph import connected_components
from torch import Tensor

from ..cameras import Cameras
from ..gaussians import Gaussians
from ..memory import amount, available_memory
from .lifting import compact_labels, transpose_render

SEEN_WEIGHT = 1e-3
"""A Gaussian whose total blending weight in a view is below this is not seen there."""
UNKNOWN = -1
SPLIT = -2
BYTES_PER_MASK_PAIR = 64
"""Peak bytes of `cluster_masks` per pair of masks for its dense [C, C] float64 rates and their temporaries,
besides 16 per (mask, slot) for its [A, S] overlaps (measured: 74.5 x A² in all for S ≈ A)."""


class ConsensusTooLarge(ValueError):
    """More masks than view-consensus association can cluster in this machine's memory."""


def consensus_bytes(num_masks: int, num_slots: int) -> int:
    """About the most memory `cluster_masks` takes for `num_masks` masks and `num_slots` (view, slot) columns."""
    return 16 * num_masks * num_slots + BYTES_PER_MASK_PAIR * num_masks**2


def check_consensus_fits(num_masks: int, num_views: int, where: str = "", available: int | None = None) -> None:
    """Refuse, before any work, a number of masks whose [C, C] arrays (`cluster_masks`) would not fit in memory.

    Args:
        where: what to name first in the message (the masks folder), "" for nothing.
        available: bytes free; default `available_memory()` (no check where it is unknown).

    Raises:
        ConsensusTooLarge: saying how many masks, how much memory they need and what to do instead.
    """
    needed = consensus_bytes(num_masks, num_masks + 2 * num_views)
    available = available_memory() if available is None else available
    if available is None or needed <= available:
        return
    raise ConsensusTooLarge(
        f"{where}{': ' if where else ''}view-consensus association of {num_masks:,} masks over {num_views:,} views "
        f"needs about {amount(needed)} (arrays of masks x masks), more than the {amount(available)} "
        "free here; use fewer training views or masks, or the memory bank (`--grouping bank`; "
        "`--associate.grouping bank` in run)"
    )


@dataclass(frozen=True)
class ConsensusSettings:
    """How masks are clustered across views.

    Attributes:
        thresholds: consensus rates at which clusters merge, applied from the first (strictest) to the last.
        min_views: views that must observe both clusters before their consensus counts (at most half the
            views, for captures of a few views).
        visible_ratio: share of a cluster's weight that must be seen in a view for it to be observed there...
        visible_weight: ...or this much weight (about pixels of its masks): a floor or a wall that the views
            see part by part is rarely 15 % visible in one view once its masks have joined.
        contain_ratio: share of its seen weight one mask must hold to contain it.
        min_masks: clusters of fewer masks are dropped (id 0): a mask no other view confirms is as likely
            a SAM fragment as an object, and the lifted labels give its Gaussians to what the views agree on.
    """

    thresholds: tuple[float, ...] = (0.9, 0.8, 0.7, 0.6)
    min_views: int = 3
    visible_ratio: float = 0.15
    visible_weight: float = 10.0
    contain_ratio: float = 0.6
    min_masks: int = 2

    def __post_init__(self) -> None:
        if not self.thresholds or any(not 0.0 < t <= 1.0 for t in self.thresholds):
            raise ValueError(f"consensus thresholds must lie in (0, 1], got {self.thresholds}")
        if self.min_masks < 1:
            raise ValueError(f"min_masks must be at least 1, got {self.min_masks}")
        if self.min_views < 1:
            raise ValueError(f"min_views must be at least 1, got {self.min_views}")
        for name in ("visible_ratio", "contain_ratio"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must lie in (0, 1], got {getattr(self, name)}")
        if self.contain_ratio <= 0.5:
            raise ValueError(f"contain_ratio must exceed 0.5 so that one mask at most contains a cluster, got {self.contain_ratio}")


@dataclass(frozen=True)
class MaskMembership:
    """The raw masks of all views as weighted Gaussian sets, and where each Gaussian lies in each view.

    Attributes:
        view_labels: per view, the raw labels present (> 0), sorted. each [L_k] int64
        node_view: the view of each mask node (nodes are the views' masks in view order). [A] int64
        node_raw: its raw label. [A] int64
        members: mask nodes x Gaussians, the weight each Gaussian renders into the mask. sparse [A, N]
        placement: Gaussians x (view, slot), the share of each Gaussian's peak weight there; slot 0 unseen,
            1 unlabelled, 2 + t mask t; each view's slots of a Gaussian sum to 1. sparse [N, S]
        slot_view: the view of each slot column. [S] int64
        slot_node: the mask node of each slot column, -1 for unseen and unlabelled slots. [S] int64
    """

    view_labels: list[Tensor]
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


def mask_membership(gaussians: Gaussians, views: Iterable[tuple[Cameras, Tensor]]) -> MaskMembership:
    """Lift every view's raw mask: each Gaussian's weight per raw label in every view.

    A Gaussian belongs to the mask it renders into most in a view (with that weight). Where it lies in a
    view is soft: its weight per label there over its largest total weight in any view, the rest unseen,
    so a Gaussian behind an object, which still adds a little to that object's pixels, counts for little
    there instead of wholly for the object.

    Args:
        gaussians: on the device to render on.
        views: one camera each with its raw mask (0 = no mask). [1, H, W] int64
    """
    num_gaussians = len(gaussians)
    gaussian_index = np.arange(num_gaussians)
    view_labels: list[Tensor] = []
    node_view, node_raw, slot_view, slot_node = [], [], [], []
    member_rows, member_cols, member_weights = [], [], []
    place_rows, place_cols, place_weights, view_totals = [], [], [], []
    nodes = slots = 0
    for view, (cameras, raw_mask) in enumerate(views):
        labels = torch.unique(raw_mask)
        labels = labels[labels > 0].cpu()
        columns = compact_labels(raw_mask.to(gaussians.device), labels.to(gaussians.device))
        votes = transpose_render(gaussians, cameras.to(gaussians.device), F.one_hot(columns, len(labels) + 1).float()).cpu()
        best_weight, best = votes.max(1)  # column 0: unlabelled pixels
        in_mask = ((best > 0) & (best_weight >= SEEN_WEIGHT)).numpy()
        member_rows.append(nodes + best.numpy()[in_mask] - 1)
        member_cols.append(gaussian_index[in_mask])
        member_weights.append(best_weight.numpy()[in_mask])
        rows, cols = torch.nonzero(votes >= SEEN_WEIGHT, as_tuple=True)
        place_rows.append(rows.numpy())
        place_cols.append(slots + 1 + cols.numpy())  # slot 1 unlabelled, 2 + t mask t
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
    totals = np.stack(view_totals, axis=1)  # [N, K]
    peak = np.maximum(totals.max(1), SEEN_WEIGHT)
    unseen_slots = np.asarray([i for i, node in enumerate(slot_node) if node == -1][0::2])  # each view's slot 0
    unseen = np.clip(1.0 - totals / peak[:, None], 0.0, 1.0)
    rows = np.concatenate(place_rows + [np.repeat(gaussian_index, len(unseen_slots))])
    cols = np.concatenate(place_cols + [np.tile(unseen_slots, num_gaussians)])
    weights = np.concatenate([w / peak[r] for w, r in zip(place_weights, place_rows)] + [unseen.reshape(-1)])
    placement = sparse.csr_matrix((weights, (rows, cols)), shape=(num_gaussians, slots))
    return MaskMembership(view_labels, np.asarray(node_view), np.asarray(node_raw), members, placement, np.asarray(slot_view), np.asarray(slot_node))


def containment(overlap: np.ndarray, membership: MaskMembership, settings: ConsensusSettings) -> tuple[np.ndarray, np.ndarray]:
    """Where each cluster lies in each view, and how much of it the view sees.

    Args:
        overlap: each cluster's weight in each (view, slot) column. [C, S]

    Returns:
        a containing mask node, UNKNOWN or SPLIT [C, K] int64; the seen share of its weight [C, K] float64
    """
    num_clusters, num_views = overlap.shape[0], membership.num_views
    slot_view, slot_node = membership.slot_view, membership.slot_node
    view_of_slot = sparse.csr_matrix((np.ones(len(slot_view)), (np.arange(len(slot_view)), slot_view)), shape=(len(slot_view), num_views))
    per_view_total = np.asarray(view_of_slot.T @ overlap.T).T  # [C, K]
    unseen = overlap[:, slot_node == -1][:, 0::2]  # the first of each view's two non-mask slots
    unlabelled = overlap[:, slot_node == -1][:, 1::2]
    seen = per_view_total - unseen
    masked = np.where(slot_node >= 0)[0]
    best_share = np.zeros((num_clusters, num_views))
    best_node = np.full((num_clusters, num_views), UNKNOWN, dtype=np.int64)
    # A view's masks are consecutive columns: a running maximum per view, vectorised over clusters.
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


def consensus_rates(where: np.ndarray, visibility: np.ndarray, num_nodes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairwise evidence, each view weighted by how much of both clusters it sees.

    Args:
        where: `containment`'s verdicts. [C, K]
        visibility: the seen share of each cluster per view. [C, K]

    Returns:
        Σ_j v_a(j) v_b(j) over the views containing a and b in one mask [C, C], the same sum over the
        views observing both [C, C], and the number of views observing both [C, C].
    """
    num_clusters = where.shape[0]
    rows, views = np.nonzero(where >= 0)
    contained = sparse.csr_matrix((visibility[rows, views], (rows, where[rows, views])), shape=(num_clusters, num_nodes))
    together = (contained @ contained.T).toarray()
    observed = where != UNKNOWN
    weighted = sparse.csr_matrix(np.where(observed, visibility, 0.0))
    both = (weighted @ weighted.T).toarray()
    counted = sparse.csr_matrix(observed.astype(np.float64))
    return together, both, (counted @ counted.T).toarray()


def cluster_masks(membership: MaskMembership, settings: ConsensusSettings = ConsensusSettings()) -> tuple[np.ndarray, np.ndarray]:
    """Cluster the mask nodes by view consensus.

    Returns:
        cluster of each node, 0..C-1 in order of the first view holding one of its nodes. [A] int64
        the consensus rate at which each node's cluster last grew (1 for clusters of one node). [A] float64
    """
    num_nodes = membership.num_nodes
    check_consensus_fits(num_nodes, membership.num_views)
    node_overlap = (membership.members @ membership.placement).toarray()  # [A, S]
    cluster = np.arange(num_nodes)
    joined_at = np.ones(num_nodes)
    # A capture of a few views cannot show a pair in many: ask for at most half of them.
    min_views = max(1, min(settings.min_views, membership.num_views // 2))
    for threshold in settings.thresholds:
        while True:
            count = int(cluster.max()) + 1 if num_nodes else 0
            assign = sparse.csr_matrix((np.ones(num_nodes), (cluster, np.arange(num_nodes))), shape=(count, num_nodes))
            where, visibility = containment(assign @ node_overlap, membership, settings)
            together, both, views_both = consensus_rates(where, visibility, num_nodes)
            with np.errstate(invalid="ignore", divide="ignore"):
                rate = np.where((views_both >= min_views) & (both > 0), together / np.where(both > 0, both, 1.0), 0.0)
            np.fill_diagonal(rate, 0.0)
            # Only mutual best partners merge in a round: a mask that SAM merged from two objects agrees
            # with both, and joining everything connected would chain the two objects through it.
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
