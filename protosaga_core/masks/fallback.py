"""Weight-free mask proposals for users without a SAM checkpoint: multi-scale Felzenszwalb segments.

Each Felzenszwalb scale gives a partition of the image; every segment of every scale becomes a
`MaskRecord`, so the proposals overlap across scales like SAM's whole/part masks and the same flattening
resolves them. The quality proxies:

- predicted_iou = cross-scale consistency: the mean, over the other scales, of the best IoU between the
  segment and a segment of that scale. A region that every scale agrees on is a well-defined object (it
  wins overlaps under the default `score` rule); fragments of a fine scale and unions of a coarse one
  score lower.
- stability_score = colour homogeneity: exp(-σ / 0.1), with σ the segment's mean per-channel colour
  standard deviation in [0, 1] units.

The smallest segment is a fixed fraction of the image, so a higher resolution does not just add
fragments. The Gaussian pre-smoothing turns every sharp edge into a 1-2 px band of mixed colours that
Felzenszwalb often keeps as thin segments of its own; they are why objects come out slightly shrunk.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .records import MaskRecord


@dataclass(frozen=True)
class FallbackMaskGenerator:
    """Multi-scale Felzenszwalb proposals.

    Attributes:
        scales: Felzenszwalb `scale` (its k: higher merges more), fine to coarse.
        sigma: Gaussian pre-smoothing in pixels.
        min_size_fraction: smallest segment as a fraction of the image area.
        duplicate_iou: a segment overlapping a segment of an earlier scale at least this much is a
            duplicate and is not emitted again.
    """

    scales: tuple[float, ...] = (100.0, 300.0, 1000.0)
    sigma: float = 0.8
    min_size_fraction: float = 2e-3
    duplicate_iou: float = 0.95

    def __call__(self, image: np.ndarray) -> list[MaskRecord]:
        """Mask proposals for one RGB image. image: [H, W, 3] uint8"""
        try:
            from skimage.segmentation import felzenszwalb
        except ImportError as error:
            raise ImportError("--method fallback needs scikit-image: pip install scikit-image") from error
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"need an RGB uint8 [H, W, 3] image, got {image.dtype} {list(image.shape)}")
        height, width = image.shape[:2]
        area = height * width
        colors = image.reshape(-1, 3).astype(np.float64) / 255.0
        min_size = max(1, round(self.min_size_fraction * area))
        partitions = [felzenszwalb(image, scale=scale, sigma=self.sigma, min_size=min_size) for scale in self.scales]
        counts = [int(p.max()) + 1 for p in partitions]
        sizes = [np.bincount(p.ravel(), minlength=n) for p, n in zip(partitions, counts)]

        # best_iou[i, j][s]: the best IoU of segment s of scale i with any segment of scale j.
        best_iou: dict[tuple[int, int], np.ndarray] = {}
        for i in range(len(partitions)):
            for j in range(i + 1, len(partitions)):
                joint = np.bincount(
                    partitions[i].ravel() * counts[j] + partitions[j].ravel(), minlength=counts[i] * counts[j]
                ).reshape(counts[i], counts[j])
                iou = joint / np.maximum(sizes[i][:, None] + sizes[j][None, :] - joint, 1)
                best_iou[i, j], best_iou[j, i] = iou.max(1), iou.max(0)

        records = []
        for i, partition in enumerate(partitions):
            others = [best_iou[i, j] for j in range(len(partitions)) if j != i]
            consistency = np.mean(others, axis=0) if others else np.ones(counts[i])
            duplicate = np.zeros(counts[i], dtype=bool)
            for j in range(i):
                duplicate |= best_iou[i, j] >= self.duplicate_iou
            homogeneity = np.exp(-_colour_std(partition.ravel(), colors, counts[i], sizes[i]) / 0.1)
            # find_objects numbers labels from 1; the boxes keep building each mask cheap.
            for segment, box in enumerate(ndimage.find_objects(partition + 1)):
                if box is None or duplicate[segment]:
                    continue
                mask = np.zeros((height, width), dtype=bool)
                mask[box] = partition[box] == segment
                records.append(
                    MaskRecord(mask, int(sizes[i][segment]), float(consistency[segment]), float(homogeneity[segment]))
                )
        return records


def _colour_std(segments: np.ndarray, colors: np.ndarray, count: int, sizes: np.ndarray) -> np.ndarray:
    """Mean per-channel colour standard deviation of each segment. segments: [P]; colors: [P, 3] -> [count]"""
    sizes = np.maximum(sizes, 1)
    total = np.zeros(count)
    for channel in range(3):
        values = colors[:, channel]
        mean = np.bincount(segments, values, count) / sizes
        total += np.sqrt(np.maximum(np.bincount(segments, values * values, count) / sizes - mean * mean, 0.0))
    return total / 3.0
