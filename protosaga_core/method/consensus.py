"""View-consensus association: consistent ids for the per-view masks by clustering them across views.

The memory bank of Eq. 11-13 is greedy and sticky: a mask joins the entry it overlaps most, and the entry
grows by the union (Eq. 13). One view where SAM merged a cup with its saucer, or an object with the floor,
joins them for good, and merges chain through shared neighbours until one id covers half a room
(measured on the synthetic scenes: pairs of objects that SAM separates in 80-95 % of the views end up
under one id). Consensus association decides every merge by a vote of all views instead, as
MaskClustering (Yan et al., CVPR 2024) does with depth-backprojected points, here with Gaussians:

1. Each Gaussian's raw masks in each view are the masks it renders into: lifting each view's raw mask
   (`lifting.transpose_labels`) gives every Gaussian its blending weight per raw label, so occluded
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

Memory grows with what is seen, not with Gaussians x views or masks x masks: `placement` holds a Gaussian
only in the views that reach it, the unseen part of a view is derived from its total there (`node_overlaps`),
placement is dropped once the masks' overlaps are known (at 1M Gaussians x 200 views it is the largest
array of the stage), what the lifted views freed is handed back before clustering, the clusters' overlaps
stay sparse, and rates are computed only for the pairs of clusters that some mask contains together (no
other pair can have a rate above 0), a block of clusters at a time. Time grows with those pairs too: a round recomputes the containment and the rates of the clusters it merged only, and keeps
every other pair's rate (`PairRates`); a few hundred rounds, each merging mutual partners, are usual. Each
sum adds the same terms in the same order as dense [C, S] and [C, C] products recomputed every round would,
so that rates and their ties, which pick the partners, do not depend on how the arrays are stored.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sparse
import torch
from torch import Tensor

from ..cameras import Cameras
from ..gaussians import Gaussians
from ..memory import amount, available_memory, release_freed_memory
from ..render.sparse import WeightsCache
from .lifting import compact_labels, transpose_labels

SEEN_WEIGHT = 1e-3
"""A Gaussian whose total blending weight in a view is below this is not seen there."""
UNKNOWN = -1
SPLIT = -2
BYTES_PER_MASK_VIEW = 160
"""Peak bytes of `cluster_masks` per (mask, view): the [C, K] verdicts and shares of `containment` with
their temporaries (measured: 127), and the node overlaps, whose unseen slots fill every view (24)."""
BYTES_PER_PAIR = 128
"""Peak bytes per candidate pair of one block of `consensus_rates` (the co-containment product, its
coordinates, the rates) and of one chunk of `pair_evidence` (the gathered shares)."""
PAIR_BLOCK = 1 << 21
"""At most this many candidate pairs are formed at once, by an upper bound (a pair counted once per mask
containing both); a cluster whose bound alone is larger is a block by itself."""
PAIR_CHUNK = 1 << 20
"""Candidate pairs whose evidence `pair_evidence` sums at once."""
SLOT_BLOCK = 4096
"""(view, slot) columns whose overlaps `node_overlaps` multiplies out at once (~45 views of 90 masks)."""


class ConsensusTooLarge(ValueError):
    """More masks than view-consensus association can cluster in this machine's memory."""


def consensus_bytes(num_masks: int, num_views: int) -> int:
    """About the most memory `cluster_masks` takes for `num_masks` masks over `num_views` views, besides the
    membership itself: arrays of clusters x views, and one block of candidate pairs (at most one per pair of
    masks)."""
    return BYTES_PER_MASK_VIEW * num_masks * num_views + BYTES_PER_PAIR * min(PAIR_BLOCK, num_masks**2)


def check_consensus_fits(num_masks: int, num_views: int, where: str = "", available: int | None = None) -> None:
    """Refuse, before any work, a number of masks whose arrays (`cluster_masks`) would not fit in memory.

    It estimates what the masks and views alone fix (`consensus_bytes`): the [C, K] arrays and one block of
    candidate pairs. What lifting adds is known only after it: the membership's entries (each Gaussian in
    each view that reaches it) and the pairs with a rate above 0 (`PairRates`, ~50 bytes each: a
    few hundred per mask: the masks of other views over the same surface, both ways).

    Args:
        where: what to name first in the message (the masks folder), "" for nothing.
        available: bytes free; default `available_memory()` (no check where it is unknown).

    Raises:
        ConsensusTooLarge: saying how many masks, how much memory they need and what to do instead.
    """
    needed = consensus_bytes(num_masks, num_views)
    available = available_memory() if available is None else available
    if available is None or needed <= available:
        return
    raise ConsensusTooLarge(
        f"{where}{': ' if where else ''}view-consensus association of {num_masks:,} masks over {num_views:,} views "
        f"needs about {amount(needed)} (arrays of masks x views), more than the {amount(available)} "
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
    """The raw masks of all views as weighted Gaussian sets, and how much of each lies in each view.

    Each view has slots: 0 unseen, 1 unlabelled, 2 + t its mask t. A Gaussian's shares of its peak weight
    (its largest total weight in any view) in a view's slots sum to 1: what it does not show there is unseen.
    A mask's overlap with a slot sums its members' weights times their shares there (`node_overlaps`).

    Attributes:
        view_labels: per view, the raw labels present (> 0), sorted. each [L_k] int64
        node_view: the view of each mask node (nodes are the views' masks in view order). [A] int64
        node_raw: its raw label. [A] int64
        members: mask nodes x Gaussians, the weight each Gaussian renders into the mask. sparse CSR [A, N]
        overlaps: mask nodes x (view, slot), each node's weight in each slot, its unseen slots included
            (`node_overlaps`). float64 sparse CSR [A, S]
        slot_view: the view of each slot column. [S] int64
        slot_node: the mask node of each slot column, -1 for unseen and unlabelled slots. [S] int64
    """

    view_labels: list[Tensor]
    node_view: np.ndarray
    node_raw: np.ndarray
    members: sparse.csr_matrix
    overlaps: sparse.csr_matrix
    slot_view: np.ndarray
    slot_node: np.ndarray

    @property
    def num_nodes(self) -> int:
        return len(self.node_view)

    @property
    def num_views(self) -> int:
        return len(self.view_labels)


def mask_membership(gaussians: Gaussians, views: Iterable[tuple[Cameras, Tensor]], weights: WeightsCache | None = None) -> MaskMembership:
    """Lift every view's raw mask: each Gaussian's weight per raw label in every view.

    A Gaussian belongs to the mask it renders into most in a view (with that weight). Where it lies in a
    view is soft: its weight per label there over its largest total weight in any view, the rest unseen,
    so a Gaussian behind an object, which still adds a little to that object's pixels, counts for little
    there instead of wholly for the object.

    Args:
        gaussians: on the device to render on.
        views: one camera each with its raw mask (0 = no mask). [1, H, W] int64
        weights: the views' blending weights, read and filled (`lifting.transpose_labels`); None: rasterize.
    """
    num_gaussians = len(gaussians)
    gaussian_index = np.arange(num_gaussians)
    view_labels: list[Tensor] = []
    node_view, node_raw, slot_view, slot_node = [], [], [], []
    member_blocks, place_blocks = [], []
    peak = np.zeros(num_gaussians, dtype=np.float32)
    nodes = 0
    for view, (cameras, raw_mask) in enumerate(views):
        labels = torch.unique(raw_mask)
        labels = labels[labels > 0].cpu()
        columns = compact_labels(raw_mask.to(gaussians.device), labels.to(gaussians.device))
        votes = transpose_labels(gaussians, cameras.to(gaussians.device), columns, len(labels) + 1, weights).cpu()
        best_weight, best = votes.max(1)  # column 0: unlabelled pixels
        in_mask = ((best > 0) & (best_weight >= SEEN_WEIGHT)).numpy()
        member_blocks.append(
            sparse.csr_matrix(
                (best_weight.numpy()[in_mask], (best.numpy()[in_mask] - 1, gaussian_index[in_mask])), shape=(len(labels), num_gaussians)
            )
        )
        totals = votes.sum(1).numpy()
        peak = np.maximum(peak, totals)
        place_blocks.append(view_placement(votes, totals))
        del votes, best_weight, best, totals
        release_freed_memory()  # a view's temporaries (~0.4 GB at 1M Gaussians) would stay resident, scattered
        view_labels.append(labels)
        node_view += [view] * len(labels)
        node_raw += labels.tolist()
        slot_view += [view] * (len(labels) + 2)
        slot_node += [-1, -1] + list(range(nodes, nodes + len(labels)))
        nodes += len(labels)
    peak = np.maximum(peak, SEEN_WEIGHT)
    for block in place_blocks:  # shares of the peak, known once every view is lifted
        np.divide(block.data, peak[block.indices], out=block.data)
    members = stack_blocks(member_blocks, (nodes, num_gaussians))
    placement = stack_blocks(place_blocks, (num_gaussians, len(slot_view)))
    slot_node = np.asarray(slot_node)
    overlaps = node_overlaps(members, placement, slot_node)
    del placement
    release_freed_memory()
    return MaskMembership(view_labels, np.asarray(node_view), np.asarray(node_raw), members, overlaps, np.asarray(slot_view), slot_node)


def view_placement(votes: Tensor, totals: np.ndarray) -> sparse.csc_matrix:
    """One view's columns of placement, before the division by the peaks: each Gaussian's total weight in
    slot 0 where it has any, its votes of at least SEEN_WEIGHT in slots 1 (unlabelled) and 2 + t (mask t).

    Placement is Gaussians x (view, slot), only where a view reaches the Gaussian: in the unlabelled and mask
    slots its weight there over its peak; in slot 0 (not its unseen share) its total weight in the view over
    its peak, lesser votes included, from which `node_overlaps` derives the unseen share of a mask's members.

    Args:
        votes: each Gaussian's weight per column, 0 unlabelled, 1 + t mask t. [N, L + 1] float32
        totals: their sums. [N] float32

    Returns:
        rows in Gaussian order within each column. float32 sparse CSC [N, L + 2]
    """
    rows, cols = torch.nonzero(votes >= SEEN_WEIGHT, as_tuple=True)
    reached = np.flatnonzero(totals > 0)
    return sparse.csc_matrix(
        (
            np.concatenate([totals[reached], votes[rows, cols].numpy()]),
            (np.concatenate([reached, rows.numpy()]), np.concatenate([np.zeros(len(reached), dtype=np.int64), 1 + cols.numpy()])),
        ),
        shape=(len(totals), votes.shape[1] + 1),
    )


def stack_blocks(blocks: list[sparse.csr_matrix] | list[sparse.csc_matrix], shape: tuple[int, int]) -> sparse.csr_matrix | sparse.csc_matrix:
    """Blocks of consecutive rows (CSR) or columns (CSC) as one matrix of `shape`, as `sparse.vstack` or
    `hstack` would, but taking each block out of `blocks` once copied: the views' blocks and the whole are
    never all held at once."""
    kind = type(blocks[0])
    nnz = sum(block.nnz for block in blocks)
    index_dtype = np.int32 if max(nnz, *shape) < np.iinfo(np.int32).max else np.int64
    data, indices = np.empty(nnz, dtype=blocks[0].dtype), np.empty(nnz, dtype=index_dtype)
    counts, start = [], 0
    while blocks:
        block = blocks.pop(0)
        data[start : start + block.nnz], indices[start : start + block.nnz] = block.data, block.indices
        counts.append(np.diff(block.indptr))
        start += block.nnz
    indptr = np.concatenate([[0], np.cumsum(np.concatenate(counts))]).astype(index_dtype)
    return kind((data, indices, indptr), shape=shape)


def node_overlaps(members: sparse.csr_matrix, placement: sparse.csc_matrix, slot_node: np.ndarray) -> sparse.csr_matrix:
    """Each mask node's weight in each (view, slot) column, its unseen slots included.

    The unlabelled and mask slots are `members @ placement`, summed in float32 over the Gaussians in index
    order. A node's unseen weight in view k, Σ_g m(g) (1 - total(g, k) / peak(g)), is its member weight less
    its slot-0 product Σ_g m(g) total(g, k) / peak(g) (total ≤ peak), both summed the same way: where view k
    reaches none of its Gaussians it is exactly the weight, and where they all peak in view k exactly 0, as
    summing the unseen shares gives; elsewhere the two agree to float32 rounding of the weight.

    Args:
        members: `MaskMembership.members`. [A, N]
        placement: the views' `view_placement` columns side by side, divided by the peaks. float32 CSC [N, S]
        slot_node: `MaskMembership.slot_node`. [S]

    Returns:
        float64 sparse CSR [A, S]
    """
    unseen_slot = np.flatnonzero(slot_node == -1)[0::2]
    num_nodes, num_slots = members.shape[0], len(slot_node)
    if num_slots == 0:
        return sparse.csr_matrix((num_nodes, 0))
    is_unseen = np.zeros(num_slots, dtype=bool)
    is_unseen[unseen_slot] = True
    weight = members @ np.ones(members.shape[1], dtype=members.dtype)  # [A]
    alive = np.flatnonzero(weight)  # a node no Gaussian renders into has no weight to leave unseen
    alive_weight = weight[alive].astype(np.float64)
    # Transposed, [S, A]: the CSC placement's transpose is CSR as it is, and only the smaller members are
    # converted; each entry still sums its Gaussians in index order. A block of slots at a time: the whole
    # product with its copies, beside the placement, was the association's peak at 1M Gaussians (+1.4 GB).
    by_slot, by_gaussian = sparse.csr_matrix(placement.T), sparse.csr_matrix(members.T)
    seen_parts, unseen_parts = [], []
    for start in range(0, num_slots, SLOT_BLOCK):
        product = by_slot[start : start + SLOT_BLOCK] @ by_gaussian  # [s, A]
        block_unseen = np.flatnonzero(is_unseen[start : start + SLOT_BLOCK])
        unseen = alive_weight - product[block_unseen][:, alive].toarray()  # [k, A']
        views, nodes = np.nonzero(unseen)
        unseen_parts.append((unseen[views, nodes], alive[nodes].astype(np.int32), (start + block_unseen[views]).astype(np.int32)))
        product = product.tocoo()
        keep = ~is_unseen[start + product.row]
        seen_parts.append((product.data[keep].astype(np.float64), product.col[keep].astype(np.int32), (start + product.row[keep]).astype(np.int32)))
    # The members' transposed copy goes before the parts are joined, the other peak of this function.
    del by_slot, by_gaussian
    release_freed_memory()
    values, rows, cols = (np.concatenate(parts) for parts in zip(*seen_parts, *unseen_parts))
    del seen_parts, unseen_parts
    return sparse.csr_matrix((values, (rows, cols)), shape=(num_nodes, num_slots))


def containment(overlap: sparse.csr_matrix, membership: MaskMembership, settings: ConsensusSettings) -> tuple[np.ndarray, np.ndarray]:
    """Where each cluster lies in each view, and how much of it the view sees.

    Args:
        overlap: each cluster's weight in each (view, slot) column (`node_overlaps` summed). sparse [C, S]

    Returns:
        a containing mask node, UNKNOWN or SPLIT [C, K] int64; the seen share of its weight [C, K] float64
    """
    num_clusters, num_views = overlap.shape[0], membership.num_views
    slot_view, slot_node = membership.slot_view, membership.slot_node
    overlap = overlap.sorted_indices()
    view_of_slot = sparse.csr_matrix((np.ones(len(slot_view)), (np.arange(len(slot_view)), slot_view)), shape=(len(slot_view), num_views))
    # Summed slot by slot in column order (unseen, unlabelled, masks), the order a dense [C, S] product takes.
    per_view_total = (overlap @ view_of_slot).toarray()  # [C, K]
    entries = overlap.tocoo()
    rows, cols, values = entries.row, entries.col, entries.data
    non_mask = np.flatnonzero(slot_node == -1)
    unseen, unlabelled = np.zeros((num_clusters, num_views)), np.zeros((num_clusters, num_views))
    for share, slots in ((unseen, non_mask[0::2]), (unlabelled, non_mask[1::2])):
        pick = np.isin(cols, slots)
        share[rows[pick], slot_view[cols[pick]]] = values[pick]
    masked = slot_node[cols] >= 0
    best_slot, best_share = best_masks(rows[masked], slot_view[cols[masked]], cols[masked], values[masked], (num_clusters, num_views))
    best_node = np.where(best_slot >= 0, slot_node[best_slot], UNKNOWN)
    seen = per_view_total - unseen
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


def best_masks(rows: np.ndarray, views: np.ndarray, slots: np.ndarray, values: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Each cluster's largest mask entry in each view: the first slot among equal ones, as `argmax` takes.

    Args:
        rows, views, slots, values: the clusters' nonzero mask-slot entries in the order of a sorted CSR
            (a view's slots are consecutive columns, so each cluster's entries in a view are a run). each [E]
        shape: clusters and views (C, K).

    Returns:
        the slot, -1 where the cluster has no mask entry in the view [C, K] int64; its value [C, K] float64
    """
    starts = np.flatnonzero((np.diff(rows, prepend=-1) != 0) | (np.diff(views, prepend=-1) != 0))
    share, slot = run_maxima(starts, values, slots)
    best_slot, best_share = np.full(shape, -1, dtype=np.int64), np.zeros(shape)
    best_slot[rows[starts], views[starts]] = slot
    best_share[rows[starts], views[starts]] = share
    return best_slot, best_share


def run_maxima(starts: np.ndarray, values: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The largest value of each run of entries, and the smallest key among the entries holding it (`argmax`
    over a dense row picks the first of equal maxima).

    Args:
        starts: where each run begins, ascending, the first at 0. [G]
        values, keys: the entries. each [E]

    Returns:
        the maxima [G], their keys [G]
    """
    run = np.repeat(np.arange(len(starts)), np.diff(starts, append=len(values)))  # [E]
    maxima = np.maximum.reduceat(values, starts)
    key = np.where(values == maxima[run], keys, np.iinfo(keys.dtype).max)
    return maxima, np.minimum.reduceat(key, starts)


def consensus_rates(
    where: np.ndarray, visibility: np.ndarray, num_nodes: int, min_views: int, rows: np.ndarray | None = None
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The consensus rate of each pair of clusters that a mask contains together, a block of clusters at a time.

    The rate of a and b is Σ_j v_a(j) v_b(j) over the views containing both in one mask, over the same sum
    over the views observing both, if at least `min_views` views observe both. A pair that no mask contains
    together has rate 0, so only the pairs of the sparse co-containment product are evaluated. Each rate
    sums its terms in the same order whichever clusters are evaluated with it, and in the same order for
    (a, b) as for (b, a): a rate is the same number in every round that leaves both clusters as they were.

    Args:
        where: `containment`'s verdicts (UNKNOWN in the rows of no cluster). [C, K]
        visibility: the seen share of each cluster per view. [C, K]
        rows: the clusters a whose pairs are wanted, ascending; None: all. [R] int64

    Yields:
        for every pair of a block's clusters a and any other cluster b with a rate above 0: a (ascending),
        b and the rate, each [P]. Each cluster is in one block, with all its pairs.
    """
    num_clusters = where.shape[0]
    rows = np.arange(num_clusters) if rows is None else rows
    holder, views = np.nonzero(where >= 0)
    contained = sparse.csr_matrix((visibility[holder, views], (holder, where[holder, views])), shape=(num_clusters, num_nodes))
    holders = contained.T.tocsr()  # [A, C]: the clusters each mask contains
    weighted = np.ascontiguousarray(np.where(where != UNKNOWN, visibility, 0.0).T)  # [K, C]
    # A cluster's pairs are at most the clusters of the masks containing it, counted once per mask.
    bound = np.bincount(holder, weights=np.diff(holders.indptr)[where[holder, views]], minlength=num_clusters)[rows]
    for start, stop in row_blocks(bound, PAIR_BLOCK):
        together = (contained[rows[start:stop]] @ holders).tocoo()
        a, b, together = rows[start + together.row], together.col.astype(np.int64), together.data
        pairs = a != b
        a, b, together = a[pairs], b[pairs], together[pairs]
        rate = np.zeros(len(a))
        for chunk in range(0, len(a), PAIR_CHUNK):
            part = slice(chunk, chunk + PAIR_CHUNK)
            both, views_both = pair_evidence(weighted, a[part], b[part])
            with np.errstate(invalid="ignore", divide="ignore"):
                rate[part] = np.where((views_both >= min_views) & (both > 0), together[part] / np.where(both > 0, both, 1.0), 0.0)
        positive = rate > 0
        yield a[positive], b[positive], rate[positive]


def pair_evidence(weighted: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Σ_j v_a(j) v_b(j) over the views observing both clusters of each pair, and the number of those views.

    Summed view by view in view order, as the product of the [C, K] shares with their transpose sums them:
    equal rates, which decide between partners, stay equal.

    Args:
        weighted: each cluster's seen share in the views observing it, 0 elsewhere. [K, C]
        a, b: the pairs. [P] int64

    Returns:
        the sums [P] float64, the view counts [P] int64
    """
    both, views_both = np.zeros(len(a)), np.zeros(len(a), dtype=np.int64)
    for shares in weighted:
        product = shares[a] * shares[b]
        both += product
        views_both += product > 0  # an observed cluster's seen share is above 0
    return both, views_both


def row_blocks(cost: np.ndarray, budget: float) -> list[tuple[int, int]]:
    """Consecutive rows in blocks whose costs sum to at most `budget`; a row costing more is a block alone.

    Args:
        cost: each row's cost. [R]

    Returns:
        (start, stop) of each block, covering 0..R.
    """
    ends = np.cumsum(cost)
    blocks, start = [], 0
    while start < len(cost):
        before = ends[start - 1] if start else 0.0
        stop = max(int(np.searchsorted(ends, before + budget, side="right")), start + 1)
        blocks.append((start, stop))
        start = stop
    return blocks


class PairRates:
    """Every pair of clusters with a consensus rate above 0, both ways, and each cluster's best partner.

    A round of merges changes the rates of the merged clusters' pairs only: the others are kept, and only
    the rows that lost or gained a pair look for their best partner again, so a round costs what its merges
    touch (and a pass over the pairs), not the square of the clusters.

    Attributes:
        a, b, rate: the pairs, each once as (a, b) and once as (b, a). each [P]
        partner: each cluster's highest-rate partner, the lowest b among equal best rates (as `argmax` over a
            dense row takes it), itself where no rate is above 0. [C] int64
        best: its rate, 0 there. [C] float64
    """

    def __init__(self, count: int) -> None:
        self.a, self.b = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        self.rate = np.zeros(0)
        self.partner, self.best = np.arange(count), np.zeros(count)

    def replace(self, touched: np.ndarray, rates: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> None:
        """Drop every pair of the `touched` clusters and add the fresh pairs of those still there.

        Args:
            touched: the clusters merged or gone. [T] int64
            rates: blocks of (a, b, rate > 0) of every pair of each touched cluster still there
                (`consensus_rates` over those rows).
        """
        is_touched = np.zeros(len(self.partner), dtype=bool)
        is_touched[touched] = True
        dropped = is_touched[self.a] | is_touched[self.b]
        rows = [touched, self.a[dropped]]
        parts = [(self.a[~dropped], self.b[~dropped], self.rate[~dropped])]
        for a, b, rate in rates:
            # A pair of two touched clusters is in both of their fresh rows already.
            mirrored = ~is_touched[b]
            parts += [(a, b, rate), (b[mirrored], a[mirrored], rate[mirrored])]
            rows.append(b)
        self.a, self.b, self.rate = (np.concatenate(column) for column in zip(*parts))
        self._find_partners(np.unique(np.concatenate(rows)))

    def _find_partners(self, rows: np.ndarray) -> None:
        is_row = np.zeros(len(self.partner), dtype=bool)
        is_row[rows] = True
        self.partner[rows], self.best[rows] = rows, 0.0
        pick = np.flatnonzero(is_row[self.a])
        pick = pick[np.argsort(self.a[pick], kind="stable")]
        a = self.a[pick]
        if len(a):
            starts = np.flatnonzero(np.diff(a, prepend=-1))
            self.best[a[starts]], self.partner[a[starts]] = run_maxima(starts, self.rate[pick], self.b[pick])


def cluster_masks(membership: MaskMembership, settings: ConsensusSettings = ConsensusSettings()) -> tuple[np.ndarray, np.ndarray]:
    """Cluster the mask nodes by view consensus.

    A cluster is named by its lowest node while merging: merges then never reorder the clusters, so the
    lowest partner among equal rates is the one that renumbering the clusters every round would pick.

    Returns:
        cluster of each node, 0..C-1 in order of the first view holding one of its nodes. [A] int64
        the consensus rate at which each node's cluster last grew (1 for clusters of one node). [A] float64
    """
    num_nodes = membership.num_nodes
    check_consensus_fits(num_nodes, membership.num_views)
    node_overlap = membership.overlaps  # [A, S]
    ids = np.arange(num_nodes)
    cluster = ids.copy()
    joined_at = np.ones(num_nodes)
    # A capture of a few views cannot show a pair in many: ask for at most half of them.
    min_views = max(1, min(settings.min_views, membership.num_views // 2))

    def contained(clusters: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`containment` of the clusters (ascending ids) from their nodes' overlaps, summed in node order."""
        nodes = np.flatnonzero(np.isin(cluster, clusters))
        assign = sparse.csr_matrix((np.ones(len(nodes)), (np.searchsorted(clusters, cluster[nodes]), nodes)), shape=(len(clusters), num_nodes))
        return containment(assign @ node_overlap, membership, settings)

    where, visibility = contained(ids)  # [C, K], a row per id; UNKNOWN in the rows of ids merged away
    pairs = PairRates(num_nodes)
    pairs.replace(ids, consensus_rates(where, visibility, num_nodes, min_views))
    for threshold in settings.thresholds:
        while True:
            # Only mutual best partners merge in a round: a mask that SAM merged from two objects agrees
            # with both, and joining everything connected would chain the two objects through it.
            partner = pairs.partner
            merged = np.flatnonzero((partner[partner] == ids) & (partner > ids) & (pairs.best >= threshold))
            if not len(merged):
                break
            gone = partner[merged]
            touched = np.concatenate([merged, gone])
            joined_at[np.isin(cluster, touched)] = threshold
            rename = ids.copy()
            rename[gone] = merged
            cluster = rename[cluster]
            where[gone], visibility[gone] = UNKNOWN, 0.0
            where[merged], visibility[merged] = contained(merged)
            pairs.replace(touched, consensus_rates(where, visibility, num_nodes, min_views, rows=merged))
    _, cluster = np.unique(cluster, return_inverse=True)
    first_view = np.full(int(cluster.max()) + 1 if num_nodes else 0, np.iinfo(np.int64).max)
    np.minimum.at(first_view, cluster, membership.node_view)
    order = np.lexsort((np.arange(len(first_view)), first_view))
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return rank[cluster], joined_at
