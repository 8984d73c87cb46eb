"""Per-pixel label weights of categorical per-Gaussian labels, without one channel per label.

Rendering a label map the direct way blends one one-hot channel per instance (T channels) and takes the
argmax per pixel. A 4x4 tile of a frame sees only a few instances (three on average at 480p on the
viewer bench, 13 at most), so the torch rasterizer instead adds each Gaussian's blending weights to a
bin of its tile and label, bins numbered by the labels *present in that tile* (`tile_local_labels`) in
id order: the same sums of the same blending weights, and the argmax takes the first maximum, the
smallest id, as the dense argmax does. Exactly the dense result up to the order of float additions
(ties between two labels' weights may then go either way).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class LabelWeights:
    """Per pixel, the label with the largest blended weight.

    Attributes:
        ids: that label, 0 where no labelled Gaussian contributes. [...] int64
        best: its weight Σ_{i with label ids} w_i(p). [...]
        total: the weight of all labelled (> 0) Gaussians. [...]
    """

    ids: Tensor
    best: Tensor
    total: Tensor

    @classmethod
    def from_weights(cls, weights: Tensor, ids: Tensor) -> "LabelWeights":
        """From dense per-label weights (one-hot channels rendered). [..., T], ids [T] sorted"""
        if weights.shape[-1] == 0:
            zeros = weights.new_zeros(weights.shape[:-1])
            return cls(torch.zeros(weights.shape[:-1], dtype=torch.int64, device=weights.device), zeros, zeros)
        best, column = weights.max(-1)
        found = ids.to(device=weights.device, dtype=torch.int64)[column]
        return cls(torch.where(best > 0, found, torch.zeros_like(found)), best, weights.sum(-1))


def one_hot_columns(labels: Tensor) -> tuple[Tensor, Tensor]:
    """One-hot channels of the labels > 0 and the id of each channel. [N] -> ([N, T] float32, [T] int64)"""
    ids, columns = torch.unique(labels, return_inverse=True)
    one_hot = F.one_hot(columns, len(ids)).float()
    keep = ids > 0
    return one_hot[:, keep], ids[keep]


@dataclass(frozen=True)
class TileLabels:
    """Labels renumbered per tile: column l of tile t stands for label `ids[t, l]`.

    Attributes:
        columns: the tile-local column of each intersection's label, -1 for label 0. [I] int64
        ids: the labels present in each tile, ascending, 0-padded. [tiles, L] int64
    """

    columns: Tensor
    ids: Tensor

    @property
    def width(self) -> int:
        return self.ids.shape[1]


def tile_local_labels(isect_labels: Tensor, ids: Tensor, isect_tiles: Tensor, num_tiles: int) -> TileLabels:
    """Renumber each intersection's label among the labels present in its tile.

    Args:
        isect_labels: each intersection's label as an index into `ids`. [I] int64
        ids: the distinct labels, ascending; label 0 is "none". [U] int64
        isect_tiles: global tile of each intersection. [I] int64

    Memory: 5 bytes per tile and label in `ids` (tables of which label each tile has).
    """
    cells = isect_tiles * len(ids) + isect_labels  # (tile, label) flattened
    present = torch.zeros(num_tiles, len(ids), dtype=torch.bool, device=ids.device)
    present.view(-1).index_fill_(0, cells, True)
    present[:, ids == 0] = False
    rank = present.cumsum(1, dtype=torch.int32) - 1  # column of each present label among its tile's labels
    width = int(present.sum(1).max()) if present.numel() else 0
    labelled = (ids > 0).index_select(0, isect_labels)
    columns = torch.where(labelled, rank.view(-1).index_select(0, cells), torch.full_like(isect_labels, -1))
    # Present labels first, in id order: a stable sort of "absent" keeps their ascending order.
    order = torch.sort((~present).to(torch.int8), dim=1, stable=True).indices[:, :width]
    tile_ids = torch.where(present.gather(1, order), ids[order], torch.zeros_like(order))
    return TileLabels(columns, tile_ids)


def tile_label_weights(weights: Tensor, tile_ids: Tensor) -> LabelWeights:
    """Best label per tile pixel from tile-local weights. weights [tiles, L, P], tile_ids [tiles, L] -> [tiles, P]"""
    if weights.shape[1] == 0:
        zeros = weights.new_zeros(weights.shape[0], weights.shape[2])
        return LabelWeights(torch.zeros_like(zeros, dtype=torch.int64), zeros, zeros)
    best, column = weights.max(1)
    found = tile_ids.gather(1, column)
    return LabelWeights(torch.where(best > 0, found, torch.zeros_like(found)), best, weights.sum(1))
