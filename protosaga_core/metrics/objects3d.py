"""A 3D object score: how well per-Gaussian labels carve a scene into its real objects.

Isolating, deleting or exporting an object hands the user a set of Gaussians, not a rendered mask. The 2D
protocol (instances.py, Gaga's) scores label maps rendered from test cameras, where Gaussians labelled wrongly
can hide behind correct ones; once the object is isolated they show: a chunk of the table missing from the
exported table, a piece of the wall floating next to the exported vase. This module scores the Gaussians
themselves.

Ground truth per Gaussian (`gaussian_gt_objects`): the GT object whose surface its centre lies on, read off the
GT instance and depth maps of the views. In each view a centre in front of the camera, inside the image and
within a depth tolerance of the GT surface at its pixel votes for the GT id there (0 included: it lies on an
unlabelled surface); the id with most votes wins, ties to the smaller id. A centre no view sees on a surface
(floaters, insides, hidden backs) gets `UNKNOWN` (-1): nothing says what it belongs to, so the score ignores it,
as ScanNet's benchmark ignores unannotated points. On CPU-trained scenes that is about half the opacity mass.

Score (`object_metrics_3d`), Gaga's matching over Gaussians instead of pixels:
- Gaussians whose GT is UNKNOWN are left out. G = GT ids > 0 and P = predicted ids > 0, each with positive
  total weight. 0 = unassigned, not an object, but its Gaussians still count: a predicted object's union includes the GT-0 Gaussians it claims (a labelled
  floater costs), and a GT object's union includes its Gaussians predicted 0 (they are missed).
- IoU(g, p) = weight of the Gaussians in both / weight of the Gaussians in either. The weights are the
  activated opacities in practice, so that near-transparent fuzz, which barely shows in any render or export,
  counts little, while an opaque floater counts as much as an opaque piece of the object.
- One-to-one Hungarian matching maximising the summed IoU on the |G| x max(|G|, |P|) zero-padded matrix;
  mIoU = mean over G of the matched IoU (0 when unmatched); hits = matched pairs with IoU > threshold
  (strictly); precision = hits / |P| (0 without predictions); recall = hits / |G|.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..cameras import project_to_pixels
from ..datasets.scene import View
from .instances import hungarian_match, match_scores

__all__ = [
    "UNKNOWN",
    "ObjectMetrics3D",
    "gaussian_gt_objects",
    "majority_vote",
    "merge_votes",
    "object_iou_matrix",
    "object_metrics_3d",
    "surface_votes",
]

ID_STRIDE = 2**32
UNKNOWN = -1
"""GT of a Gaussian that no view sees on a surface: ignored by the score."""
"""Votes are keyed gaussian * ID_STRIDE + id in one int64: label maps hold at most 32-bit ids."""


# --------------------------------------------------------------------------------------------------
# Ground truth per Gaussian
# --------------------------------------------------------------------------------------------------


def surface_votes(
    means: Tensor,
    viewmat: Tensor,
    K: Tensor,
    instances: Tensor,
    depth: Tensor,
    abs_tolerance: float,
    rel_tolerance: float,
) -> tuple[Tensor, Tensor]:
    """The Gaussians whose centre lies on the GT surface of one view, and the GT id there.

    Args:
        means: centres. [N, 3]
        viewmat: world-to-camera, OpenCV axes. [4, 4]
        K: intrinsics in pixels at the maps' size. [3, 3]
        instances: GT ids. [H, W] int64
        depth: GT camera z-depth in metres, 0 = unknown. [H, W]
        abs_tolerance, rel_tolerance: a centre at camera depth z is on the surface when
            |z - GT depth| <= max(abs_tolerance, rel_tolerance * z).

    Returns:
        indices of the voting Gaussians [V] int64, the GT id each votes for [V] int64.
    """
    height, width = instances.shape
    index, flat, z = project_to_pixels(means, viewmat.to(means), K.to(means), width, height)
    surface = depth.to(means).flatten()[flat]
    tolerance = (rel_tolerance * z).clamp_min(abs_tolerance)
    on_surface = (surface > 0) & ((z - surface).abs() <= tolerance)
    return index[on_surface], instances.to(means.device).flatten()[flat[on_surface]]


def merge_votes(keys: Tensor, counts: Tensor) -> tuple[Tensor, Tensor]:
    """Sum the counts of equal keys.

    Args:
        keys: gaussian * ID_STRIDE + id. [M] int64
        counts: votes per key. [M] int64

    Returns:
        the distinct keys, sorted [U] int64, and their summed counts [U] int64.
    """
    unique, inverse = torch.unique(keys, return_inverse=True)
    return unique, torch.zeros_like(unique).index_add_(0, inverse, counts)


def majority_vote(keys: Tensor, counts: Tensor, num_gaussians: int) -> Tensor:
    """Each Gaussian's most voted id, ties to the smaller id; UNKNOWN without votes.

    Args:
        keys: distinct gaussian * ID_STRIDE + id. [U] int64
        counts: their votes, >= 1. [U] int64

    Returns:
        [num_gaussians] int64
    """
    gaussian, label = keys // ID_STRIDE, keys % ID_STRIDE
    best = torch.zeros(num_gaussians, dtype=torch.int64, device=keys.device)
    best.scatter_reduce_(0, gaussian, counts, "amax")
    winner = counts == best[gaussian]
    smallest = torch.full_like(best, ID_STRIDE).scatter_reduce_(0, gaussian[winner], label[winner], "amin")
    return torch.where(best > 0, smallest, UNKNOWN)


def gaussian_gt_objects(
    means: Tensor, views: Sequence[View], abs_tolerance: float = 0.05, rel_tolerance: float = 0.02
) -> Tensor:
    """The GT object each Gaussian centre lies on, by majority over the views with GT instances and depth.

    Views lacking either map are skipped. The default tolerances accept a centre within 5 cm of the GT surface,
    or 2 % of its depth when farther than 2.5 m: a trained Gaussian's centre sits a few centimetres off the
    surface it models, GT depth blends across silhouettes and is stored in millimetres, and depth error grows
    with distance; much wider and a centre in front of a wall starts voting for the wall.

    Args:
        means: Gaussian centres, on any device. [N, 3]
        views: the views to read GT from; their maps are loaded one view at a time.
        abs_tolerance: metres.
        rel_tolerance: fraction of the centre's camera depth.

    Returns:
        GT id per Gaussian: 0 when its surface is unlabelled, UNKNOWN when no view sees its centre on a
        surface. [N] int64

    Raises:
        ValueError: bad shapes or tolerances, no view with both maps, or ids outside 0..2^32-1 (naming the file).
    """
    if means.ndim != 2 or means.shape[1] != 3 or not means.is_floating_point():
        raise ValueError(f"means must be floating point [N, 3], got {means.dtype} {list(means.shape)}")
    if abs_tolerance < 0 or rel_tolerance < 0:
        raise ValueError(f"tolerances must be >= 0, got abs {abs_tolerance}, rel {rel_tolerance}")
    num_gaussians = means.shape[0]
    keys = torch.zeros(0, dtype=torch.int64, device=means.device)
    counts = torch.zeros_like(keys)
    used = 0
    for view in views:  # a loop over views; everything inside is vectorised over Gaussians and pixels
        if view.instance_path is None or view.depth_path is None:
            continue
        instances, depth = view.load_instances(), view.load_depth()
        if instances.numel() and (instances.min() < 0 or instances.max() >= ID_STRIDE):
            raise ValueError(f"{view.instance_path}: GT ids must lie in 0..{ID_STRIDE - 1}")
        gaussian, label = surface_votes(means, view.viewmat, view.K, instances, depth, abs_tolerance, rel_tolerance)
        # Merging after every view keeps memory at the distinct (Gaussian, id) pairs, not all votes of all views.
        keys, counts = merge_votes(torch.cat([keys, gaussian * ID_STRIDE + label]),
                                   torch.cat([counts, torch.ones_like(gaussian)]))
        used += 1
    if used == 0:
        raise ValueError(f"none of the {len(views)} views has both a GT instance map and a GT depth map")
    return majority_vote(keys, counts, num_gaussians)


# --------------------------------------------------------------------------------------------------
# The score
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ObjectMetrics3D:
    """The 3D object score of one scene (see the module docstring).

    Attributes:
        miou: mean over GT objects of the Hungarian-matched IoU.
        precision: hits / num_pred (0.0 without predicted objects); hits = matches with IoU > iou_threshold.
        recall: hits / num_gt.
        num_gt: GT objects (ids > 0 with positive weight).
        num_pred: predicted objects (ids > 0 with positive weight).
        iou_threshold: the IoU a match must exceed to be a hit.
        gt_ids: the GT objects, sorted. [num_gt]
        matched_ids: the predicted id matched to each GT object, 0 when none overlaps it. [num_gt]
        ious: the matched IoU of each GT object. [num_gt]
    """

    miou: float
    precision: float
    recall: float
    num_gt: int
    num_pred: int
    iou_threshold: float
    gt_ids: tuple[int, ...]
    matched_ids: tuple[int, ...]
    ious: tuple[float, ...]

    def to_json_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict of every field; the per-object tuples become lists."""
        return {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()}


def object_iou_matrix(pred: Tensor, gt: Tensor, weights: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Weighted IoU between every GT object and every predicted object, vectorised.

    Args:
        pred: predicted id per Gaussian. [N] int
        gt: GT id per Gaussian. [N] int
        weights: weight per Gaussian, >= 0. [N]

    Returns:
        gt_ids [G] and pred_ids [P] (ids > 0 with positive total weight, sorted), iou [G, P] float64.
    """
    # Ids are sparse and large: compact them so the joint histogram is [ids present] x [ids present].
    gt_ids, gt_index = torch.unique(gt, return_inverse=True)
    pred_ids, pred_index = torch.unique(pred, return_inverse=True)
    g, p = len(gt_ids), len(pred_ids)
    inter = torch.bincount(gt_index * p + pred_index, weights=weights.double(), minlength=g * p).reshape(g, p)
    gt_area, pred_area = inter.sum(1), inter.sum(0)  # id 0's Gaussians are still in these areas
    union = gt_area[:, None] + pred_area[None, :] - inter
    iou = inter / union.clamp_min(torch.finfo(torch.float64).tiny)  # union 0 only where inter is 0
    keep_gt, keep_pred = (gt_ids > 0) & (gt_area > 0), (pred_ids > 0) & (pred_area > 0)
    return gt_ids[keep_gt], pred_ids[keep_pred], iou[keep_gt][:, keep_pred]


def object_metrics_3d(pred: Tensor, gt: Tensor, weights: Tensor, iou_threshold: float = 0.5) -> ObjectMetrics3D:
    """The 3D object score between per-Gaussian predicted and GT ids (see the module docstring).

    Args:
        pred: predicted id per Gaussian, 0 = unassigned. [N] int
        gt: GT id per Gaussian (e.g. `gaussian_gt_objects`), 0 = none, UNKNOWN = ignored. [N] int
        weights: weight per Gaussian, >= 0; activated opacities in practice. [N] float
        iou_threshold: a matched pair is a hit when its IoU exceeds this.

    Raises:
        ValueError: mismatched shapes or devices, non-integer or negative ids, negative or non-finite weights, or
            no GT object (mIoU and recall would be undefined).
    """
    _check_inputs(pred, gt, weights)
    known = gt != UNKNOWN
    gt_ids, pred_ids, iou = object_iou_matrix(pred[known], gt[known], weights[known])
    num_gt, num_pred = len(gt_ids), len(pred_ids)
    if num_gt == 0:
        raise ValueError("no GT objects (ids > 0 with positive weight): mIoU and recall are undefined")
    matched, cols = hungarian_match(iou.cpu().numpy())  # one entry per GT object, in gt_ids order
    column_ids = np.zeros(max(num_gt, num_pred), dtype=np.int64)  # padding columns stand for "no prediction": 0
    column_ids[:num_pred] = pred_ids.cpu().numpy()
    matched_ids = np.where(matched > 0, column_ids[cols], 0)
    miou, precision, recall = match_scores(matched, num_pred, iou_threshold)
    return ObjectMetrics3D(
        miou=miou,
        precision=precision,
        recall=recall,
        num_gt=num_gt,
        num_pred=num_pred,
        iou_threshold=iou_threshold,
        gt_ids=tuple(int(i) for i in gt_ids.tolist()),
        matched_ids=tuple(int(i) for i in matched_ids.tolist()),
        ious=tuple(float(v) for v in matched.tolist()),
    )


def _check_inputs(pred: Tensor, gt: Tensor, weights: Tensor) -> None:
    shapes = {name: list(t.shape) for name, t in (("pred", pred), ("gt", gt), ("weights", weights))}
    if pred.ndim != 1 or pred.shape != gt.shape or pred.shape != weights.shape:
        raise ValueError(f"pred, gt and weights must be [N] of one length, got {shapes}")
    if len({pred.device, gt.device, weights.device}) != 1:
        devices = f"{pred.device}, {gt.device}, {weights.device}"
        raise ValueError(f"pred, gt and weights must be on one device, got {devices}")
    for name, ids, lowest in (("pred", pred, 0), ("gt", gt, UNKNOWN)):
        if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
            raise ValueError(f"{name} must hold integer ids, got {ids.dtype}")
        if ids.numel() and ids.min() < lowest:
            raise ValueError(f"{name} ids must be >= {lowest}, got {int(ids.min())}")
    if not weights.is_floating_point():
        raise ValueError(f"weights must be floating point, got {weights.dtype}")
    if weights.numel() and (not torch.isfinite(weights).all() or weights.min() < 0):
        raise ValueError("weights must be finite and >= 0 (activated opacities)")
