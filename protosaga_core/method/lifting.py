"""Per-Gaussian instance labels lifted from the consistent masks, and label maps rendered from them.

The paper never says how a Gaussian gets a label for 3D editing (DESIGN §5). Eq. 19 on a Gaussian's own
feature f_i scatters labels, because f_i is only constrained through the blends it takes part in.
Lifting asks what each Gaussian *renders* instead: over all training views, every pixel p of a
consistent mask votes for its label with the blending weight w_i(p) = α_i(p) Π_{j<i} (1 - α_j(p)) of
every Gaussian i it is made of, and a Gaussian takes the instance with the largest total (FlashSplat's
closed-form assignment, for all instances at once). A memory-bank fragment seen in one or two views
collects few votes against the views that label the same Gaussians consistently, so fragments lose
their Gaussians to the real objects.

The votes are the transpose of rendering: rendering channels c gives Ĉ(p) = Σ_i w_i(p) c_i, so the
gradient of Σ_p <g(p), Ĉ(p)> with respect to c_i is Σ_p w_i(p) g(p). One backward pass of the renderer
with g = the one-hot consistent mask yields every Gaussian's votes for every label exactly, on either
backend, without materialising the weights. On the CPU, where the caller passes a cache of the views'
weights (`render.sparse.WeightsCache`, shared by the stages of one run) or the channels need several
passes, the weights are computed once as a sparse matrix instead and the votes are one sparse product Wᵀ g.

2D then follows 3D: rendering the one-hot per-Gaussian labels and taking the argmax per pixel gives
label maps that agree with what isolate, delete and export act on (`render(labels=...)` computes that
argmax without a channel per instance on the CPU).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor

from ..cameras import Cameras
from ..gaussians import Gaussians
from ..memory import release_freed_memory
from ..render import render
from ..render.labels import LabelWeights
from ..render.sparse import ViewWeights, WeightsCache, frozen_weights

CHANNEL_CHUNK = 64
"""Channels transposed at once by the rasterizer: bounds the per-intersection channel memory of scenes
with hundreds of instances (the render is repeated per chunk of channels; on the CPU more channels take
the sparse weights instead)."""
COVERED_WEIGHT = 0.5
"""A rendered label map labels a pixel where the labelled Gaussians' accumulated weight reaches this,
the coverage rule the synthetic GT and the viewer use for opacity."""


@dataclass(frozen=True)
class LabelVotes:
    """Every Gaussian's accumulated blending weight per label over the training views.

    Attributes:
        ids: the instance id of each instance column. [T] int64, sorted, > 0
        weights: column 0 collects pixels no mask covers, column t + 1 instance ids[t]. [N, T + 1]
        views: the training views whose masks hold each instance. [T] int64
    """

    ids: Tensor
    weights: Tensor
    views: Tensor

    @property
    def evidence(self) -> Tensor:
        """Total weight on masked pixels, per Gaussian. [N]"""
        return self.weights[:, 1:].sum(1)


def compact_labels(label_maps: Tensor, ids: Tensor) -> Tensor:
    """Instance ids to column indices: 0 stays 0, ids[t] becomes t + 1, ids not in `ids` become 0. [...]"""
    ids = ids.to(label_maps.device)
    if len(ids) == 0:
        return torch.zeros_like(label_maps)
    position = torch.searchsorted(ids, label_maps).clamp(max=len(ids) - 1)
    return torch.where((label_maps > 0) & (ids[position] == label_maps), position + 1, torch.zeros_like(position))


def transpose_render(gaussians: Gaussians, cameras: Cameras, targets: Tensor, weights: WeightsCache | None = None) -> Tensor:
    """Σ over pixels of each Gaussian's blending weight times the target channels: the adjoint of rendering.

    Args:
        gaussians: geometry to splat (gradients are not taken through it).
        cameras: C cameras.
        targets: per-pixel channels g(p). [C, H, W, K]
        weights: the views' blending weights, read and filled on the CPU (`frozen_weights`). None: the
            rasterizer, unless more than CHANNEL_CHUNK channels make weights for this call alone pay.

    Returns:
        Σ_p w_i(p) g(p) for every Gaussian i, summed over the cameras. [N, K]
    """
    views = _weights_for(gaussians, cameras, targets.shape[-1], weights)
    if views is not None:
        return sum(view.transpose(target.cpu()) for view, target in zip(views, targets)).to(gaussians.device)
    return torch.cat([_rasterized_transpose(gaussians, cameras, block) for block in targets.split(CHANNEL_CHUNK, dim=-1)], dim=-1)


def transpose_labels(
    gaussians: Gaussians, cameras: Cameras, columns: Tensor, num_columns: int, weights: WeightsCache | None = None, out: Tensor | None = None
) -> Tensor:
    """`transpose_render` of the one-hot label columns, without making the one-hot images: each Gaussian's
    blending weight summed per label over the cameras (for one camera, into zeros, the same floats as
    transposing its one-hot image).

    Args:
        columns: per-pixel label columns (`compact_labels`). [C, H, W] int64 in 0..num_columns-1
        out: votes to add to in place, on the Gaussians' device; None: new zeros. Every view's weights are
            added into it directly: [N, L] may be gigabytes (1M Gaussians x 265 labels is 1 GB), and a sum
            per view or per batch beside it would double or triple that. [N, num_columns] float32

    Returns:
        `out`, or the new votes. [N, num_columns]
    """
    out = torch.zeros(len(gaussians), num_columns, device=gaussians.device) if out is None else out
    views = _weights_for(gaussians, cameras, num_columns, weights)
    if views is not None:
        total = out if out.device.type == "cpu" else out.cpu()
        for view, column in zip(views, columns):
            view.transpose_labels(column.cpu(), num_columns, out=total)
        return out if total is out else out.copy_(total)
    for start in range(0, num_columns, CHANNEL_CHUNK):
        block = torch.arange(start, min(start + CHANNEL_CHUNK, num_columns), device=columns.device)
        out[:, start : start + len(block)] += _rasterized_transpose(gaussians, cameras, (columns[..., None] == block).float())
    return out


def _weights_for(gaussians: Gaussians, cameras: Cameras, num_channels: int, weights: WeightsCache | None) -> list[ViewWeights] | None:
    # More channels than one pass takes would repeat the rasterizer per block: the weights pay at once.
    return frozen_weights(gaussians, cameras, weights, "always" if num_channels > CHANNEL_CHUNK else "cache")


def _rasterized_transpose(gaussians: Gaussians, cameras: Cameras, block: Tensor) -> Tensor:
    """`transpose_render` of at most CHANNEL_CHUNK channels by one backward pass of the renderer. [C, H, W, K] -> [N, K]"""
    channels = torch.zeros(len(gaussians), block.shape[-1], device=gaussians.device, requires_grad=True)
    with torch.enable_grad():
        rendered = render(gaussians.detach(), cameras, rgb=False, extras=channels).extras
        (grad,) = torch.autograd.grad((rendered * block.to(rendered)).sum(), channels)
    return grad


def lift_votes(
    gaussians: Gaussians, batches: Iterable[tuple[Cameras, Tensor]], ids: Tensor, weights: WeightsCache | None = None
) -> LabelVotes:
    """Accumulate the consistent masks' votes over views.

    Args:
        gaussians: on the device to render on.
        batches: cameras of one image size with their consistent masks (global ids, 0 = none). [C, H, W]
        ids: the instance ids to vote for, sorted. [T] int64
        weights: the views' blending weights, read and filled (`transpose_render`); None: rasterize.

    Returns:
        The votes of every Gaussian.
    """
    ids = ids.to(torch.int64).cpu()
    votes = torch.zeros(len(gaussians), len(ids) + 1, device=gaussians.device)
    views = torch.zeros(len(ids) + 1, dtype=torch.int64)
    for cameras, masks in batches:
        columns = compact_labels(masks.to(gaussians.device), ids.to(gaussians.device))
        transpose_labels(gaussians, cameras.to(gaussians.device), columns, len(ids) + 1, weights, out=votes)
        for view_columns in columns.cpu():
            views[torch.unique(view_columns)] += 1
        release_freed_memory()  # the batch's temporaries (weights computed for it alone, the rasterizer's)
    return LabelVotes(ids, votes.cpu(), views[1:])


def drop_fragments(votes: LabelVotes, labels: Tensor, opacities: Tensor, min_views: int, min_opacity_share: float) -> Tensor:
    """The instances too weakly supported to be objects, with their votes removed in place (their Gaussians
    then vote for their next instance, or are left to their neighbours by `fill_from_neighbours`).

    A fragment is what few training views hold (fewer than `min_views`: a SAM piece that association
    found again in one or two views, a reflection), or what the Gaussians carrying it make almost nothing
    of (their opacities sum to less than `min_opacity_share` of the scene's: floaters, specks). Users see
    such ids as extra objects; in test views they are the predictions that match nothing.

    Args:
        labels: the labels taken from the votes before (`labels_from_votes`). [N] int64
        opacities: the Gaussians' opacities in 0..1. [N]

    Returns:
        Whether each instance was dropped. [T] bool
    """
    columns = compact_labels(labels, votes.ids)
    mass = torch.zeros(len(votes.ids) + 1, dtype=torch.float64).index_add_(0, columns, opacities.detach().double().cpu())[1:]
    weak = (votes.views < min_views) | (mass < min_opacity_share * float(opacities.double().sum()))
    votes.weights[:, 1:][:, weak] = 0.0
    return weak


def labels_from_votes(votes: LabelVotes, min_evidence: float) -> Tensor:
    """Each Gaussian's instance with the largest vote, 0 where its masked evidence is below `min_evidence`. [N] int64

    Pixels no mask covers (column 0) do not vote against an instance: SAM leaving a region out says
    nothing about which object it belongs to.
    """
    if len(votes.ids) == 0:
        return torch.zeros(votes.weights.shape[0], dtype=torch.int64)
    best_weight, best = votes.weights[:, 1:].max(1)
    return torch.where(best_weight >= min_evidence, votes.ids[best], torch.zeros_like(best))


def fill_from_neighbours(means: Tensor, labels: Tensor, neighbours: int) -> Tensor:
    """Unassigned Gaussians (0) take the majority label of their nearest assigned Gaussians. [N] int64

    Gaussians no training view sees well (object interiors, undersides) would otherwise be left out of
    every isolate and export; in 3D they belong with what surrounds them. Ties go to the smaller id.

    Args:
        means: Gaussian centres. [N, 3]
        labels: lifted labels, 0 = unassigned. [N] int64
        neighbours: how many assigned neighbours vote (0 leaves the labels as they are).
    """
    assigned = labels > 0
    if neighbours <= 0 or assigned.all() or not assigned.any():
        return labels
    from scipy.spatial import cKDTree

    source = means[assigned].detach().cpu().double().numpy()
    query = means[~assigned].detach().cpu().double().numpy()
    k = min(neighbours, len(source))
    _, index = cKDTree(source).query(query, k=k)
    neighbour_labels = labels[assigned][torch.from_numpy(index.reshape(len(query), k))]  # [U, k]
    ids, compact = torch.unique(neighbour_labels, return_inverse=True)
    counts = torch.zeros(len(query), len(ids), dtype=torch.int64).scatter_add_(1, compact, torch.ones_like(compact))
    filled = labels.clone()
    filled[~assigned] = ids[counts.argmax(1)]  # argmax takes the first maximum: the smaller id
    return filled


def labels_from_weights(weights: Tensor, ids: Tensor) -> Tensor:
    """Rendered one-hot weights to ids: the instance with the largest weight, 0 where the labelled
    Gaussians cover less than `COVERED_WEIGHT`. [..., T] -> [...] int64"""
    return covered_labels(LabelWeights.from_weights(weights, ids))


def covered_labels(weights: LabelWeights) -> Tensor:
    """A label map from rendered label weights: each pixel's best label, 0 where the labelled Gaussians
    cover less than `COVERED_WEIGHT`. [...] int64"""
    return torch.where(weights.total >= COVERED_WEIGHT, weights.ids, torch.zeros_like(weights.ids))


def render_label_maps(gaussians: Gaussians, cameras: Cameras, labels: Tensor, ids: Tensor) -> Tensor:
    """Label maps from per-Gaussian labels: at each pixel the instance with the largest rendered weight.

    Args:
        gaussians: on the device to render on.
        cameras: C cameras.
        labels: per-Gaussian instance ids, 0 = unassigned. [N] int64
        ids: every instance id that may appear, sorted. [T] int64

    Returns:
        Instance ids, 0 where the labelled Gaussians cover less than `COVERED_WEIGHT`. [C, H, W] int64
    """
    labels = labels.to(gaussians.device)
    known = torch.isin(labels, ids.to(device=labels.device, dtype=labels.dtype))
    with torch.no_grad():
        out = render(gaussians, cameras, rgb=False, labels=torch.where(known, labels, torch.zeros_like(labels)))
    return covered_labels(out.labels)
