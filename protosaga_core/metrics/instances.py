"""Instance-segmentation scores of label maps, following Gaga's protocol exactly (DESIGN.md §6), per scene over all test frames:

- G = the GT ids, P = the predicted ids, each the union over all frames.
- IoU[i, j] = mean, over the frames where GT id i appears, of the per-frame IoU
  |gt == i & pred == j| / |gt == i | pred == j|. Frames without GT id i do not enter its mean; a
  prediction id absent from a frame where GT id i appears contributes IoU 0 for that frame.
- Hungarian matching (maximise the summed IoU) on the |G| x max(|G|, |P|) matrix, zero-padded on the
  right when there are fewer predictions than GT ids (an unmatched GT id scores 0).
- mIoU = mean over GT ids of the matched IoU; hits = matched pairs with IoU > 0.5 (strictly);
  precision = hits / |P|; recall = hits / |G|.
- ``include_zero``: with it, id 0 is an ordinary id in G and P (Gaga's setting). Without it (our
  default, see below), 0 is removed from G and P but its pixels still count: GT pixels predicted 0
  are misses (they stay in the GT id's area, hence in every union, and are never intersections),
  and predicted pixels on GT 0 stay in that prediction's area (hence in its unions).

Our default is ``include_zero=False`` everywhere (library and CLI) so that there is one default;
pass ``include_zero=True`` (CLI: ``--include-zero``) to reproduce Gaga's numbers. Every report
states which mode was used.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from ..io.labelmaps import image_size, read_label_map

__all__ = [
    "FrameOverlap",
    "IoUMatrix",
    "InstanceMetrics",
    "frame_overlap",
    "mean_iou_matrix",
    "match_instances",
    "instance_metrics",
    "FolderFrames",
    "pair_folders",
    "size_mismatches",
    "evaluate_folders",
    "resize_nearest",
]

LabelMap = np.ndarray | Tensor


@dataclass(frozen=True)
class FrameOverlap:
    """The per-frame IoU between every GT id and every predicted id present in one frame.

    Attributes:
        gt_ids: the GT ids present, sorted. [g]
        pred_ids: the predicted ids present, sorted. [p]
        iou: iou[a, b] = |gt == gt_ids[a] & pred == pred_ids[b]| / |gt == gt_ids[a] | pred == pred_ids[b]|. [g, p]
    """

    gt_ids: np.ndarray
    pred_ids: np.ndarray
    iou: np.ndarray


@dataclass(frozen=True)
class IoUMatrix:
    """Per-scene IoU between GT ids and predicted ids, averaged over the frames where each GT id appears.

    Attributes:
        gt_ids: G, sorted. [|G|]
        pred_ids: P, sorted. [|P|]
        iou: iou[i, j] = mean over the frames where gt_ids[i] appears of the per-frame IoU. [|G|, |P|]
        frames_per_gt: how many frames each GT id appears in (the denominators). [|G|]
        include_zero: whether id 0 is in G and P.
        num_frames: how many frames were evaluated.
    """

    gt_ids: np.ndarray
    pred_ids: np.ndarray
    iou: np.ndarray
    frames_per_gt: np.ndarray
    include_zero: bool
    num_frames: int


@dataclass(frozen=True)
class InstanceMetrics:
    """Gaga's instance-segmentation metrics for one scene.

    Attributes:
        miou: mean over GT ids of the Hungarian-matched IoU.
        precision: hits / num_pred (0.0 when there are no predicted ids), hits = matches with IoU > 0.5.
        recall: hits / num_gt.
        num_gt: |G|, GT ids evaluated (without 0 unless include_zero).
        num_pred: |P|, predicted ids (without 0 unless include_zero).
        include_zero: whether id 0 counted as an ordinary id (Gaga's setting) or was removed.
        num_frames: frames evaluated.
    """

    miou: float
    precision: float
    recall: float
    num_gt: int
    num_pred: int
    include_zero: bool
    num_frames: int

    def to_json_dict(self) -> dict[str, float | int | bool]:
        """A JSON-serialisable dict: miou, precision, recall, num_gt, num_pred, include_zero, num_frames."""
        return asdict(self)


def _to_numpy_labels(labels: LabelMap, what: str) -> np.ndarray:
    array = labels.detach().cpu().numpy() if isinstance(labels, Tensor) else np.asarray(labels)
    if array.ndim != 2:
        raise ValueError(f"{what}: a label map must be [H, W], got shape {list(array.shape)}")
    if not (np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_):
        raise ValueError(f"{what}: a label map must hold integers, got {array.dtype}")
    return array.astype(np.int64, copy=False)


def resize_nearest(labels: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of [h, w] labels to [height, width], pixel-centre aligned.

    Output pixel x samples input pixel floor((x + 0.5) * w / width) (clamped), the convention of PIL's
    NEAREST resize (used by ``labelmaps.read_map_for_view``) and of torch's "nearest-exact"; done by
    integer indexing so any integer dtype and id survive exactly.
    """
    h, w = labels.shape
    if (h, w) == (height, width):
        return labels
    rows = np.minimum(((np.arange(height) + 0.5) * (h / height)).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * (w / width)).astype(np.int64), w - 1)
    return labels[rows[:, None], cols[None, :]]


def frame_overlap(gt: LabelMap, pred: LabelMap) -> FrameOverlap:
    """Per-frame IoU between all GT ids and all predicted ids of one frame, vectorised.

    Args:
        gt: GT labels. [H, W] integers
        pred: predicted labels, [h, w] integers; resized to [H, W] by nearest neighbour if h, w differ.

    All ids, including 0, are kept here; dropping 0 happens when frames are combined (its pixels must
    still count in the areas, so it cannot be dropped before).
    """
    gt_np = _to_numpy_labels(gt, "gt")
    pred_np = resize_nearest(_to_numpy_labels(pred, "pred"), *gt_np.shape)
    # Ids go up to 65535 and are sparse: remap to dense indices so the joint histogram is only
    # [ids present] x [ids present] entries.
    gt_ids, gt_index = np.unique(gt_np.ravel(), return_inverse=True)
    pred_ids, pred_index = np.unique(pred_np.ravel(), return_inverse=True)
    g, p = len(gt_ids), len(pred_ids)
    # One bincount over the joint index gives the whole intersection matrix.
    inter = np.bincount(gt_index * p + pred_index, minlength=g * p).reshape(g, p)
    gt_area = inter.sum(1)  # row/column sums of the joint histogram are the per-id areas
    pred_area = inter.sum(0)
    union = gt_area[:, None] + pred_area[None, :] - inter  # >= gt_area >= 1: no division by zero
    return FrameOverlap(gt_ids, pred_ids, inter / union)


def mean_iou_matrix(frames: Iterable[FrameOverlap], include_zero: bool = False) -> IoUMatrix:
    """Combine per-frame overlaps into the scene IoU matrix (mean over the frames where each GT id appears).

    Frames are consumed one at a time, so a generator keeps only the small per-frame matrices alive.
    """
    frames = list(frames)
    if not frames:
        raise ValueError("no frames to evaluate")
    all_gt = np.unique(np.concatenate([f.gt_ids for f in frames]))
    all_pred = np.unique(np.concatenate([f.pred_ids for f in frames]))
    iou_sum = np.zeros((len(all_gt), len(all_pred)), dtype=np.float64)
    counts = np.zeros(len(all_gt), dtype=np.int64)
    for f in frames:  # a loop over frames; everything inside is array indexing
        rows = np.searchsorted(all_gt, f.gt_ids)
        cols = np.searchsorted(all_pred, f.pred_ids)
        # rows and cols are unique within a frame, so fancy-index += adds each entry once.
        # Predicted ids absent from this frame add 0, which is their per-frame IoU.
        iou_sum[rows[:, None], cols[None, :]] += f.iou
        counts[rows] += 1
    iou = iou_sum / counts[:, None]  # every id in all_gt appears in >= 1 frame
    if not include_zero:
        # Remove 0 from G and P only now: its pixels already entered the areas (hence the unions).
        keep_gt, keep_pred = all_gt != 0, all_pred != 0
        all_gt, counts, iou = all_gt[keep_gt], counts[keep_gt], iou[keep_gt]
        all_pred, iou = all_pred[keep_pred], iou[:, keep_pred]
    return IoUMatrix(all_gt, all_pred, iou, counts, include_zero, len(frames))


def hungarian_match(iou: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one matching maximising the summed IoU on the zero-padded |G| x max(|G|, |P|) matrix.

    Args:
        iou: GT x predicted IoU. [G, P]

    Returns:
        each GT row's matched IoU [G] (0 when it got a padding column) and its column [G] (>= P for padding).
    """
    num_gt, num_pred = iou.shape
    padded = np.zeros((num_gt, max(num_gt, num_pred)), dtype=np.float64)
    padded[:, :num_pred] = iou
    rows, cols = linear_sum_assignment(padded, maximize=True)
    return padded[rows, cols], cols  # rows come back as 0..G-1: every GT row is assigned


def match_scores(matched: np.ndarray, num_pred: int, threshold: float = 0.5) -> tuple[float, float, float]:
    """mIoU, precision and recall of matched IoUs (one per GT object, 0 where none matched; [G]): a hit is
    an IoU above `threshold`, so padding columns (IoU 0) never are."""
    hits = int((matched > threshold).sum())
    return float(matched.mean()), hits / num_pred if num_pred else 0.0, hits / len(matched)


def match_instances(matrix: IoUMatrix) -> InstanceMetrics:
    """Hungarian matching on the zero-padded |G| x max(|G|, |P|) matrix and Gaga's mIoU, precision, recall."""
    num_gt, num_pred = len(matrix.gt_ids), len(matrix.pred_ids)
    if num_gt == 0:
        mode = "with" if matrix.include_zero else "without"
        raise ValueError(f"no ground-truth ids to evaluate ({mode} id 0): mIoU and recall are undefined")
    miou, precision, recall = match_scores(hungarian_match(matrix.iou)[0], num_pred)
    return InstanceMetrics(
        miou=miou,
        precision=precision,
        recall=recall,
        num_gt=num_gt,
        num_pred=num_pred,
        include_zero=matrix.include_zero,
        num_frames=matrix.num_frames,
    )


def instance_metrics(
    gt_maps: Sequence[LabelMap], pred_maps: Sequence[LabelMap], include_zero: bool = False
) -> InstanceMetrics:
    """Gaga's instance metrics for one scene (see the module docstring for the exact protocol).

    Args:
        gt_maps: GT label maps, one per frame. each [H_k, W_k] integers
        pred_maps: predicted label maps paired with gt_maps by position; each is resized to its GT's
            size by nearest neighbour when the sizes differ. each [h_k, w_k] integers
        include_zero: count id 0 as an ordinary id (Gaga's setting) instead of removing it from G and P.
    """
    if len(gt_maps) != len(pred_maps):
        raise ValueError(f"got {len(gt_maps)} GT maps but {len(pred_maps)} predicted maps")
    frames = (frame_overlap(gt, pred) for gt, pred in zip(gt_maps, pred_maps))
    return match_instances(mean_iou_matrix(frames, include_zero))


@dataclass(frozen=True)
class FolderFrames:
    """The label maps of a GT folder and a prediction folder, paired by stem.

    Attributes:
        pairs: (GT file, prediction file) of every GT frame that has a prediction, sorted by name.
        missing: GT files without a prediction, sorted.
        orphans: prediction files without a GT file, sorted.
    """

    pairs: list[tuple[Path, Path]]
    missing: list[Path]
    orphans: list[Path]


def pair_folders(gt_dir: Path, pred_dir: Path) -> FolderFrames:
    """Pair `gt_dir/<stem>.png` with `pred_dir/<stem>.png` by file name; nothing is read."""
    gt_files = {path.name: path for path in sorted(gt_dir.glob("*.png"))}
    pred_files = {path.name: path for path in sorted(pred_dir.glob("*.png"))}
    return FolderFrames(
        pairs=[(gt, pred_files[name]) for name, gt in gt_files.items() if name in pred_files],
        missing=[gt for name, gt in gt_files.items() if name not in pred_files],
        orphans=[pred for name, pred in pred_files.items() if name not in gt_files],
    )


def size_mismatches(pairs: Sequence[tuple[Path, Path]]) -> list[str]:
    """One line per prediction whose size differs from its GT's, read from the PNG headers only.

    Raises:
        ValueError: a file that is not a readable PNG, naming it.
    """
    lines = []
    for gt, pred in pairs:
        (gt_w, gt_h), (pred_w, pred_h) = image_size(gt, "GT label map"), image_size(pred, "prediction")
        if (gt_w, gt_h) != (pred_w, pred_h):
            lines.append(f"{pred}: {pred_w}x{pred_h} prediction for a {gt_w}x{gt_h} GT label map ({gt})")
    return lines


def _names(paths: Sequence[Path], limit: int = 5) -> str:
    """'a.png, b.png, ... (+3 more)'"""
    shown = ", ".join(path.name for path in paths[:limit])
    return shown + (f", ... (+{len(paths) - limit} more)" if len(paths) > limit else "")


def evaluate_folders(
    gt_dir: str | os.PathLike,
    pred_dir: str | os.PathLike,
    include_zero: bool = False,
    allow_missing: bool = False,
) -> InstanceMetrics:
    """Gaga's instance metrics between two folders of ``<stem>.png`` label maps (uint8/uint16 PNGs).

    The GT files define the frames: each needs a prediction with the same name and the same size (predictions
    are never resized). Scoring only the frames that happen to have predictions would inflate the result, so a
    missing prediction is an error unless ``allow_missing``, which scores the predicted frames and prints (to
    stderr) how many of the GT frames that is. Everything is checked from the file names and PNG headers
    before any pixels are read; frames are then read one at a time, so memory holds only the per-frame
    overlap matrices.

    Raises:
        FileNotFoundError: a folder does not exist, or a prediction has no GT file (both paths named).
        ValueError: a folder holds no PNG files; GT frames without a prediction (how many, which), unless
            ``allow_missing``; predictions of another size than their GT (files and sizes); a file that is
            not a readable PNG or is truncated (named).
    """
    gt_dir, pred_dir = Path(gt_dir), Path(pred_dir)
    for folder, what in ((gt_dir, "GT"), (pred_dir, "prediction")):
        if not folder.is_dir():
            raise FileNotFoundError(f"{what} folder {folder} does not exist")
    frames = pair_folders(gt_dir, pred_dir)
    if not frames.pairs and not frames.orphans:
        raise ValueError(f"prediction folder {pred_dir} holds no .png label maps")
    if frames.orphans:
        orphan, count = frames.orphans[0], len(frames.orphans)
        others = f" ({count} predictions have no GT: {_names(frames.orphans)})" if count > 1 else ""
        raise FileNotFoundError(f"no GT label map {gt_dir / orphan.name} for prediction {orphan}{others}")
    total = len(frames.pairs) + len(frames.missing)
    if frames.missing and not allow_missing:
        raise ValueError(
            f"{len(frames.missing)} of {total} GT frames in {gt_dir} have no prediction in {pred_dir}: "
            f"{_names(frames.missing)}; scoring only the {len(frames.pairs)} predicted frames would overstate "
            "the metrics: predict every GT frame, or pass --allow-missing to score those frames only"
        )
    mismatched = size_mismatches(frames.pairs)
    if mismatched:
        count = f"; {len(mismatched)} of {len(frames.pairs)} predictions have another size" if len(mismatched) > 1 else ""
        raise ValueError(f"{mismatched[0]}; predictions must have their GT's size (they are not resized){count}")
    if frames.missing:
        print(
            f"protosaga metrics: warning: scored {len(frames.pairs)} of {total} GT frames; "
            f"{len(frames.missing)} have no prediction in {pred_dir} ({_names(frames.missing)}) and were skipped "
            "(--allow-missing)",
            file=sys.stderr,
            flush=True,
        )
    overlaps = (frame_overlap(read_label_map(gt), read_label_map(pred)) for gt, pred in frames.pairs)
    return match_instances(mean_iou_matrix(overlaps, include_zero))
