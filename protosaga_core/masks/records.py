"""Per-image mask proposals and their flattening into one label map per view.

SAM's automatic generator returns overlapping masks; the rest of the pipeline wants one label per pixel.
Which mask wins an overlapped pixel is the flattening rule:

- `score` (Gaga, the default): the mask with the highest predicted IoU wins.
- `large` (DEVA / Gaussian Grouping with `--suppress_small_mask`: "large masks eat small masks"):
  the larger mask wins, so parts disappear into their whole object.
- `small` (DEVA / Gaussian Grouping's other mode, "prefer smaller objects"): the smaller mask wins,
  so parts stay visible on top of their object.

Ties (equal score or area) go to the record that comes first in the input. After painting, a mask that
keeps at most `min_keep` (10 %) of its own area is dropped and its surviving pixels become 0, as in Gaga's
`get_sam_mask`. Survivors get labels 1..L in input order; SAM's records come in non-maximum-suppression
order (descending predicted IoU), so this reproduces Gaga's numbering.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ..io.labelmaps import MAX_LABEL

FlattenRule = Literal["score", "large", "small"]


@dataclass
class MaskRecord:
    """One mask proposal for one image.

    Attributes:
        segmentation: the mask. [H, W] bool
        area: its number of pixels.
        predicted_iou: the generator's own estimate of mask quality in [0, 1] (SAM's IoU head).
        stability_score: robustness of the mask to the binarisation threshold (SAM) or another
            quality proxy in [0, 1] (see the generator that made it).
    """

    segmentation: np.ndarray
    area: int
    predicted_iou: float
    stability_score: float

    def __post_init__(self) -> None:
        if self.segmentation.ndim != 2 or self.segmentation.dtype != np.bool_:
            raise ValueError(
                f"a mask must be a [H, W] bool array, got {self.segmentation.dtype} {list(self.segmentation.shape)}"
            )

    @classmethod
    def from_mask(cls, segmentation: np.ndarray, predicted_iou: float, stability_score: float) -> MaskRecord:
        """A record whose area is counted from the mask. segmentation: [H, W] bool"""
        segmentation = np.asarray(segmentation, dtype=bool)
        return cls(segmentation, int(segmentation.sum()), float(predicted_iou), float(stability_score))

    @classmethod
    def from_sam(cls, record: Mapping[str, Any]) -> MaskRecord:
        """Convert one dict of `SamAutomaticMaskGenerator.generate` (output_mode="binary_mask")."""
        segmentation = record["segmentation"]
        if not isinstance(segmentation, np.ndarray):
            raise ValueError("SAM records must hold binary masks: build the generator with output_mode='binary_mask'")
        return cls(
            segmentation.astype(bool, copy=False),
            int(record["area"]),
            float(record["predicted_iou"]),
            float(record["stability_score"]),
        )


def flatten(
    records: Sequence[MaskRecord],
    rule: FlattenRule = "score",
    min_keep: float = 0.1,
    shape: tuple[int, int] | None = None,
) -> np.ndarray:
    """Paint overlapping masks into one label map (see the module docstring for who wins overlaps).

    Args:
        records: the proposals of one image, all [H, W].
        rule: "score" (highest predicted IoU wins), "large" (larger wins) or "small" (smaller wins).
        min_keep: masks keeping at most this fraction of their area after painting are dropped.
        shape: (H, W), needed only when `records` is empty.

    Returns:
        labels 1..L in input order of the surviving masks, 0 = no mask. [H, W] uint16
    """
    if not records:
        if shape is None:
            raise ValueError("flatten needs the image shape when there are no masks")
        return np.zeros(shape, dtype=np.uint16)
    shapes = {record.segmentation.shape for record in records}
    if len(shapes) != 1:
        raise ValueError(f"masks of one image must share a shape, got {sorted(shapes)}")
    (image_shape,) = shapes
    if shape is not None and tuple(shape) != image_shape:
        raise ValueError(f"masks are {list(image_shape)} but shape {list(shape)} was asked for")

    areas = np.array([record.area for record in records], dtype=np.int64)
    if rule == "score":
        priority = np.array([record.predicted_iou for record in records], dtype=np.float64)
    elif rule == "large":
        priority = areas.astype(np.float64)
    elif rule == "small":
        priority = -areas.astype(np.float64)
    else:
        raise ValueError(f"unknown flattening rule {rule!r}; use 'score', 'large' or 'small'")

    # Painting in ascending priority leaves the winner on top; among equal priorities the earlier record
    # must be painted last to win, hence the descending index as the secondary key.
    index = np.arange(len(records))
    owner = np.full(image_shape, -1, dtype=np.int64)
    for i in np.lexsort((-index, priority)):
        owner[records[i].segmentation] = i

    kept = np.bincount(owner[owner >= 0], minlength=len(records))
    survives = (areas > 0) & (kept > min_keep * areas)
    n_labels = int(survives.sum())
    if n_labels > MAX_LABEL:
        raise ValueError(f"{n_labels} masks survive flattening; a uint16 label map holds at most {MAX_LABEL}")
    lookup = np.zeros(len(records) + 1, dtype=np.uint16)
    lookup[1 + np.flatnonzero(survives)] = np.arange(1, n_labels + 1)
    return lookup[owner + 1]
