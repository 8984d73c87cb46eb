"""Edits of the per-Gaussian labels, merging and splitting, with Eq. 17-18 kept exact under them.

Association makes two kinds of mistakes: one object split into two instances, and two objects (or an
object and part of its neighbour) given one. `Merge` fixes the first and `Split` the second. A scene's
labels after its edits are the computed labels with the edits applied in order (`apply_label_edits`),
so an edit moves exactly the Gaussians it names and nothing else.

The prototypes follow without rendering every view at every edit. Eq. 17 is a mean feature over the
pixels of an instance's consistent mask R'_k(t), so each view keeps its prototypes as sums and pixel
counts (`ViewSums`):
- a merge joins the masks of two instances, which never overlap: their sums and counts add up;
- a split gives the new instance the pixels of its source instances' masks where the labels rendered
  after the split show it (`split_region`): those pixels' sums and counts move from their sources to it.
A split therefore renders each training view once, when it is made; a merge renders nothing. Eq. 18
then averages each instance's per-view prototypes over the views that contain it, as for the computed
prototypes. The results equal Eq. 17-18 recomputed from scratch on the edited masks (tests/test_document.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


@dataclass(frozen=True)
class Merge:
    """Instance `absorb` joins instance `keep` and ceases to exist."""

    keep: int
    absorb: int

    def __post_init__(self) -> None:
        if self.keep == self.absorb or self.keep <= 0 or self.absorb <= 0:
            raise ValueError(f"a merge needs two different positive instance ids, got {self.keep} and {self.absorb}")


@dataclass(frozen=True)
class Split:
    """Gaussians leave whatever instance they had and form the new instance `id`.

    Attributes:
        id: the new instance (> 0).
        members: the Gaussians' indices, sorted and unique, as little-endian int64 bytes: immutable and
            cheaply hashable, so edit states holding splits stay hashable snapshots. See `index`.
    """

    id: int
    members: bytes

    @classmethod
    def of(cls, instance_id: int, index: np.ndarray | Sequence[int]) -> "Split":
        """The split of the Gaussians `index` [M] (any order, repeats allowed) into instance `instance_id`."""
        index = np.asarray(index)
        if index.size == 0 or not np.issubdtype(index.dtype, np.integer) or index.ndim != 1:
            raise ValueError(f"a split needs a non-empty list of Gaussian indices, got {index.dtype} {list(index.shape)}")
        if index.min() < 0:
            raise ValueError(f"Gaussian indices are non-negative, got {int(index.min())}")
        if int(instance_id) <= 0:
            raise ValueError(f"the new instance id must be positive, got {instance_id}")
        return cls(int(instance_id), np.unique(index).astype("<i8").tobytes())

    @property
    def index(self) -> np.ndarray:
        """The Gaussians' indices, sorted. [M] int64 (read-only)"""
        return np.frombuffer(self.members, dtype="<i8")

    def __repr__(self) -> str:  # the member bytes would drown any message
        return f"Split(id={self.id}, {len(self.members) // 8} Gaussians)"


LabelEdit = Merge | Split


def apply_label_edits(labels: np.ndarray, edits: Iterable[LabelEdit]) -> np.ndarray:
    """Per-Gaussian labels after `edits`, in order: a relabelled copy (the input is untouched). [N] -> [N]

    Raises:
        ValueError: a split names a Gaussian beyond N.
    """
    labels = np.array(labels, copy=True)
    for edit in edits:
        if isinstance(edit, Merge):
            labels[labels == edit.absorb] = edit.keep
        else:
            index = edit.index
            if len(index) and index[-1] >= len(labels):
                raise ValueError(f"split into instance {edit.id} names Gaussian {int(index[-1])}, but there are {len(labels)}")
            labels[index] = edit.id
    return labels


def instances_after(instances: frozenset[int], edits: Iterable[LabelEdit]) -> frozenset[int]:
    """The instances that exist after `edits`: `instances`, plus those splits made, minus those merged away."""
    current = set(instances)
    for edit in edits:
        if isinstance(edit, Merge):
            current.discard(edit.absorb)
        else:
            current.add(edit.id)
    return frozenset(current)


def new_instance_id(instances: Iterable[int], edits: Iterable[LabelEdit]) -> int:
    """An id for the next split: above every instance and every split in `edits`. It depends on those alone,
    so replaying saved edits gives each split its id again; a split undone leaves its id to the next one
    (an export's record lists a split's Gaussians with its id, so it still says what it held)."""
    ids = [*instances, *(edit.id for edit in edits if isinstance(edit, Split))]
    return max(ids, default=0) + 1


# --- Eq. 17 per view, under edits --------------------------------------------------------------------


@dataclass(frozen=True)
class ViewSums:
    """Eq. 17 of one training view as sums: v_k(t) = sums[t] / counts[t] over the pixels R'_k(t).

    Attributes:
        ids: instance ids present in the view, sorted, without 0. [T] int64
        sums: feature sums over each instance's pixels. [T, D]
        counts: |R'_k(t)|, > 0. [T] int64
    """

    ids: Tensor
    sums: Tensor
    counts: Tensor

    @classmethod
    def of(cls, features: Tensor, mask: Tensor) -> "ViewSums":
        """Sums of the rendered features `features` [H, W, D] over each id of `mask` [H, W] (0: none)."""
        if features.ndim != 3 or mask.shape != features.shape[:2]:
            raise ValueError(f"features must be [H, W, D] and the mask [H, W]; got {list(features.shape)} and {list(mask.shape)}")
        labels = mask.reshape(-1).to(device=features.device, dtype=torch.int64)
        inside = labels > 0
        ids, rows, counts = torch.unique(labels[inside], return_inverse=True, return_counts=True)
        flat = features.reshape(len(labels), features.shape[-1])[inside]  # D may be 0 (an imported scene)
        return cls(ids, flat.new_zeros(len(ids), flat.shape[1]).index_add_(0, rows, flat), counts)

    def prototypes(self) -> tuple[Tensor, Tensor, Tensor]:
        """(ids [T], v_k [T, D], pixel counts [T]), as `prototypes.view_prototypes` returns them."""
        return self.ids, self.sums / self.counts[:, None].to(self.sums.dtype), self.counts

    def merge(self, keep: int, absorb: int) -> "ViewSums":
        """The view after `absorb` joins `keep`: their masks are disjoint, so their sums add up."""
        return self._regrouped(torch.where(self.ids == absorb, torch.full_like(self.ids, keep), self.ids))

    def move(self, moved: "ViewSums", new_id: int) -> "ViewSums":
        """The view after the pixels summed in `moved` (grouped by their instance here) become `new_id`.

        Args:
            moved: sums over the moved pixels of each instance they leave; a subset of each one's pixels.
        """
        if len(moved.ids) == 0:
            return self
        rows = torch.searchsorted(self.ids, moved.ids)
        if (rows >= len(self.ids)).any() or (self.ids[rows.clamp(max=len(self.ids) - 1)] != moved.ids).any():
            raise ValueError(f"moved pixels of instances {moved.ids.tolist()} that the view lacks ({self.ids.tolist()})")
        sums, counts = self.sums.clone(), self.counts.clone()
        sums[rows] -= moved.sums
        counts[rows] -= moved.counts
        ids = torch.cat([self.ids, self.ids.new_tensor([new_id])])
        sums = torch.cat([sums, moved.sums.sum(dim=0, keepdim=True)])
        counts = torch.cat([counts, moved.counts.sum().reshape(1)])
        remaining = counts > 0  # an instance whose every pixel moved is no longer in the view
        return ViewSums(ids[remaining], sums[remaining], counts[remaining])._regrouped(ids[remaining])

    def _regrouped(self, ids: Tensor) -> "ViewSums":
        """Rows relabelled with `ids` [T], rows with one id summed, ids sorted."""
        unique, rows = torch.unique(ids, return_inverse=True)
        sums = self.sums.new_zeros(len(unique), self.sums.shape[1]).index_add_(0, rows, self.sums)
        return ViewSums(unique, sums, self.counts.new_zeros(len(unique)).index_add_(0, rows, self.counts))


def split_region(mask: Tensor, rendered: Tensor, split_id: int, sources: Tensor) -> Tensor:
    """The pixels a split takes in one view: those of its source instances' masks where the labels
    rendered after the split show the new instance. [H, W] bool

    Args:
        mask: the view's consistent mask with the edits before the split applied. [H, W] int64
        rendered: the per-Gaussian labels after the split, rendered (`lifting.render_label_maps`). [H, W] int64
        sources: the instances the split's Gaussians had before it (0 excluded). [S] int64
    """
    return (rendered == split_id) & torch.isin(mask, sources.to(mask.device)) & (mask > 0)
