"""Association (paper Sec. 3.2, Eq. 9-16; DESIGN §4): consistent instance ids for the per-view SAM masks.

Every training view, in name order, goes through the same steps:

1. Eq. 9: the Gaussians of mask t are those whose projected centre falls in a pixel labelled t, in front
   of the camera (depth > `NEAR_PLANE`). There is no occlusion test, so an object's hidden back and
   whatever lies behind it count too; the filters below decide what is kept.
2. The filters, scoped as Gaga's code scopes them: the image is cut into a `num_patches` x `num_patches`
   grid and each (mask, grid cell) group of n Gaussians keeps its best max(int(ratio * n), 1):
   - Eq. 10 (depth): the nearest to the camera, ratio δ_d;
   - Eq. 14-15 (prob): the most probable under the view's classifier, σ_{i,k} = softmax(τ cos(w_k, f_i)),
     ranked by σ_{i,k}(t) for the classifier row of mask t, ratio δ_s;
   - Eq. 16 (both, Proto-SaGa): the union of the two.
3. Eq. 11-13, the memory bank: each mask's filtered set G goes to the bank entry e that maximises the
   overlap score (Eq. 12) if that score reaches δ, else it starts a new entry; masks left with no
   Gaussians get id 0 and start nothing. The first view seeds the bank (Eq. 11) because the bank is
   empty then.

Where this follows Gaga's code (github.com/weijielyu/Gaga, `mask/projector.py`) rather than the paper:
- the grid is `num_patches` cells per image side (cells of ceil(W / 32) x ceil(H / 32) pixels), not cells
  of a fixed pixel size;
- a score equal to δ matches (Gaga starts a new entry only when the score is below δ);
- a matched entry gains only the Gaussians of G that no entry holds yet, while a new entry takes all of G,
  including Gaussians other entries already hold. Entries therefore overlap only where a new entry was
  started over held Gaussians; `MemoryBank` keeps (Gaussian, entry) pairs for that reason;
- `overlap_formula="gaga"` is Gaga's |G ∩ M(e)| / (|G| + |G ∩ M(e)|); "paper" is Eq. 12, |G ∩ M(e)| / |G|.
Where it departs from Gaga's code: empty masks burn no id (Gaga starts an empty entry), raw labels need
not be consecutive, and ids are uint16 (Gaga writes uint8).

Masks are processed in raw-label order as in Gaga, but each view is computed at once: a Gaussian
projects to one pixel, so the masks of one view have disjoint Gaussian sets, and nothing one mask adds to
the bank can change another mask's overlap counts in the same view (a new entry of this view overlaps
none of the others; a matched entry only gains Gaussians of the mask that matched it). With δ > 0 this is
exactly the sequential result.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from ..cameras import NEAR_PLANE, project_to_pixels  # noqa: F401 (NEAR_PLANE: named in the docstring above)
from ..datasets.scene import View
from ..device import default_device
from ..gaussians import Gaussians
from ..io.atomic import atomic_write_bytes, replace_dir, staging_dir
from ..io.labelmaps import MAX_LABEL, save_label_map
from ..io.scene_dir import Classifiers, SceneDir, SceneDirError, read_versioned_json
from ..io.scene_lock import writes_scene
from ..memory import release_freed_memory
from ..render.sparse import WeightsCache
from .classifier import cosine_logits
from .consensus import ConsensusSettings, check_consensus_fits, cluster_masks, mask_membership

ASSOCIATION_FORMAT = "protosaga-association"
ASSOCIATION_VERSION = 1

Criterion = Literal["depth", "prob", "both"]
OverlapFormula = Literal["paper", "gaga"]
Grouping = Literal["bank", "consensus"]


@dataclass
class AssociateConfig:
    """The associate stage (`protosaga associate SCENE`): consistent ids for the training views' masks."""

    grouping: Grouping = "consensus"
    """bank: the memory bank of Eq. 9-16 (the paper; `criterion` and the δ's apply); consensus: cluster
    the masks by a vote of all views on the Gaussians each renders (consensus.py; beyond the paper)"""
    consensus_thresholds: tuple[float, ...] = (0.9, 0.8, 0.7, 0.6)
    """consensus: rates at which clusters merge, strictest first"""
    consensus_min_views: int = 3
    """consensus: views that must observe two clusters before their consensus counts"""
    consensus_min_masks: int = 2
    """consensus: clusters of fewer masks (seen as an instance in fewer views) get id 0"""
    criterion: Criterion = "both"
    """which Gaussians of a mask enter the bank: depth (Eq. 10, Gaga), prob (Eq. 15, semantics only) or
    both (Eq. 16, the union: Proto-SaGa); paper Table 3"""
    depth_ratio: float = 0.2
    """δ_d of Eq. 10: the fraction of each (mask, grid cell) group's Gaussians kept, nearest first"""
    prob_ratio: float = 0.2
    """δ_s of Eq. 15: the fraction of each (mask, grid cell) group's Gaussians kept, most probable first"""
    overlap_threshold: float = 0.1
    """δ: a mask joins its best bank entry when the overlap score is at least this, else starts a new one"""
    overlap_formula: OverlapFormula = "paper"
    """paper: |G ∩ M(e)| / |G| (Eq. 12); gaga: |G ∩ M(e)| / (|G| + |G ∩ M(e)|), as Gaga's code computes it
    (at most 1/2, so the same δ is stricter)"""
    num_patches: int = 32
    """the filters rank Gaussians within each cell of a num_patches x num_patches grid over the image
    (Gaga's code; cells are ceil(width / num_patches) x ceil(height / num_patches) pixels)"""
    temperature: float = 10.0
    """τ of Eq. 14; it changes which Gaussians rank highest, since σ_{i,k}(t) weighs the cosine to class t
    against the cosines to the view's other classes"""

    def __post_init__(self) -> None:
        if self.grouping not in ("bank", "consensus"):
            raise ValueError(f"grouping must be bank or consensus, got {self.grouping!r}")
        self.consensus_thresholds = tuple(float(t) for t in self.consensus_thresholds)
        self.consensus_settings  # validates the consensus parameters
        if self.criterion not in ("depth", "prob", "both"):
            raise ValueError(f"criterion must be depth, prob or both, got {self.criterion!r}")
        if self.overlap_formula not in ("paper", "gaga"):
            raise ValueError(f"overlap_formula must be paper or gaga, got {self.overlap_formula!r}")
        for name in ("depth_ratio", "prob_ratio"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must lie in (0, 1], got {getattr(self, name)}")
        # δ = 0 would let a mask match an entry it shares no Gaussian with.
        if not 0.0 < self.overlap_threshold <= 1.0:
            raise ValueError(f"overlap_threshold must lie in (0, 1], got {self.overlap_threshold}")
        if self.num_patches < 1:
            raise ValueError(f"num_patches must be positive, got {self.num_patches}")
        if self.temperature <= 0.0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")

    @property
    def consensus_settings(self) -> ConsensusSettings:
        return ConsensusSettings(self.consensus_thresholds, self.consensus_min_views, min_masks=self.consensus_min_masks)

    @property
    def uses_depth(self) -> bool:
        return self.criterion in ("depth", "both")

    @property
    def uses_prob(self) -> bool:
        return self.criterion in ("prob", "both")


# --- inputs and results ----------------------------------------------------------------------------


@dataclass(frozen=True)
class AssociationView:
    """One training view as association needs it.

    Attributes:
        viewmat: world-to-camera, OpenCV axes. [4, 4]
        K: intrinsics in pixels. [3, 3]
        raw_mask: the per-view SAM label map, 0 = no mask; it sets the image size. [H, W] int64
        classifier_labels: the raw mask label of each classifier row. [L] int64
        classifier_weights: the view's classifier w_k. [L, D]
        name: the view's name, for error messages.
    """

    viewmat: Tensor
    K: Tensor
    raw_mask: Tensor
    classifier_labels: Tensor
    classifier_weights: Tensor
    name: str = ""

    @property
    def height(self) -> int:
        return self.raw_mask.shape[0]

    @property
    def width(self) -> int:
        return self.raw_mask.shape[1]


@dataclass(frozen=True)
class MaskAssociation:
    """What became of one raw mask.

    Attributes:
        raw: the raw SAM label.
        global_id: its consistent id, 0 when no Gaussian fell in the mask.
        score: the best overlap score against the bank before this view (0 when the bank was empty).
        matched: whether it joined an existing entry (False: it started one, or it is empty).
        num_gaussians: |G|, the Gaussians the filters kept for it.
    """

    raw: int
    global_id: int
    score: float
    matched: bool
    num_gaussians: int


@dataclass(frozen=True)
class ViewAssociation:
    """One view's result.

    Attributes:
        label_map: consistent ids, 0 where the raw mask is 0 or the mask was empty. [H, W] int64
        masks: one record per raw label present in the raw mask, by increasing raw label.
    """

    label_map: Tensor
    masks: list[MaskAssociation]


@dataclass
class MemoryBank:
    """The memory bank M of Eq. 11-13 over N Gaussians; entries are the consistent ids 1..size.

    Attributes:
        owner: the entry that first took each Gaussian, 0 = none yet; matched entries only gain
            Gaussians with owner 0. [N] int64
        member_gaussians: the Gaussian of each (Gaussian, entry) membership pair. [P] int64
        member_entries: the entry of each pair. [P] int64
        size: the number of entries.
    """

    owner: Tensor
    member_gaussians: Tensor
    member_entries: Tensor
    size: int = 0

    @classmethod
    def empty(cls, num_gaussians: int, device: torch.device) -> "MemoryBank":
        none = torch.zeros(0, dtype=torch.int64, device=device)
        return cls(torch.zeros(num_gaussians, dtype=torch.int64, device=device), none, none.clone())

    def entry(self, entry: int) -> Tensor:
        """The Gaussians of one entry, sorted. [|M(e)|] int64"""
        return self.member_gaussians[self.member_entries == entry].sort().values

    def overlap_counts(self, gaussians: Tensor, masks: Tensor, num_masks: int) -> Tensor:
        """|G_t ∩ M(e)| for every mask t and entry e, from disjoint per-mask sets.

        Args:
            gaussians: the Gaussians of all masks, each at most once. [S] int64
            masks: the mask index of each, in 0..num_masks-1. [S] int64
        Returns:
            counts, column e-1 for entry e. [num_masks, size] int64
        """
        mask_of = torch.full_like(self.owner, -1)
        mask_of[gaussians] = masks
        pair_mask = mask_of[self.member_gaussians]
        hit = pair_mask >= 0
        flat = pair_mask[hit] * self.size + self.member_entries[hit] - 1
        return torch.bincount(flat, minlength=num_masks * self.size).view(num_masks, self.size)

    def update(self, gaussians: Tensor, entries: Tensor, starts_entry: Tensor, num_new: int) -> None:
        """Eq. 11 and 13 with Gaga's ownership rule.

        Args:
            gaussians: the kept Gaussians of the view's non-empty masks, each at most once. [S] int64
            entries: the entry each goes to. [S] int64
            starts_entry: whether its mask started that entry (it then takes held Gaussians too). [S] bool
            num_new: how many entries the view started.
        """
        unowned = self.owner[gaussians] == 0
        takes = starts_entry | unowned
        self.member_gaussians = torch.cat([self.member_gaussians, gaussians[takes]])
        self.member_entries = torch.cat([self.member_entries, entries[takes]])
        self.owner[gaussians[unowned]] = entries[unowned]
        self.size += num_new


@dataclass(frozen=True)
class AssociationResult:
    """The association of a sequence of views.

    Attributes:
        views: per view, in the given order.
        num_instances: the number of consistent ids (they are 1..num_instances).
        bank: the final memory bank.
    """

    views: list[ViewAssociation]
    num_instances: int
    bank: MemoryBank


# --- the core --------------------------------------------------------------------------------------


def grid_cells(flat_pixels: Tensor, width: int, height: int, num_patches: int) -> tuple[Tensor, int]:
    """The cell of Gaga's num_patches x num_patches grid each pixel lies in.

    Returns:
        cell index [V] int64, the number of cells.
    """
    cell_w, cell_h = math.ceil(width / num_patches), math.ceil(height / num_patches)
    cells_x, cells_y = math.ceil(width / cell_w), math.ceil(height / cell_h)
    row, col = flat_pixels // width, flat_pixels % width
    return (row // cell_h) * cells_x + col // cell_w, cells_x * cells_y


def keep_best_per_group(groups: Tensor, keys: Tensor, ratio: float) -> Tensor:
    """In each group of n elements, mark the max(int(ratio * n), 1) with the smallest keys.

    Ties go to the lower index. One stable sort by key then one by group puts each group's elements in
    key order; an element's rank is its position minus its group's start.

    Args:
        groups: group of each element. [V] int64
        keys: ranking key, smaller is better. [V]
    Returns:
        [V] bool
    """
    order = torch.sort(keys, stable=True).indices
    order = order[torch.sort(groups[order], stable=True).indices]
    _, counts = torch.unique_consecutive(groups[order], return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(len(order), device=groups.device) - torch.repeat_interleave(starts, counts)
    # float64 so that int(ratio * n) matches Python's (0.2 * 5 is 1.0000000000000002 there).
    quota = (ratio * counts.double()).floor().long().clamp_min(1)
    keep = torch.empty_like(groups, dtype=torch.bool)
    keep[order] = rank < torch.repeat_interleave(quota, counts)
    return keep


def classifier_rows(raw_labels: Tensor, classifier_labels: Tensor, view_name: str) -> Tensor:
    """The classifier row of each raw mask label; an error names a label without one.

    A label without a row means the masks changed after training; the semantic filter has nothing to
    rank by then, so this is an error rather than a silent fall-back to depth.

    Returns:
        [T] int64
    """
    sorted_labels, order = torch.sort(classifier_labels)
    position = torch.searchsorted(sorted_labels, raw_labels).clamp(max=max(len(sorted_labels) - 1, 0))
    found = sorted_labels[position] == raw_labels if len(sorted_labels) else torch.zeros_like(raw_labels, dtype=torch.bool)
    if not bool(found.all()):
        missing = raw_labels[~found].tolist()
        raise ValueError(
            f"view {view_name}: raw mask labels {missing} have no classifier row (classifier labels "
            f"{classifier_labels.tolist()}); were the masks regenerated after training?"
        )
    return order[position]


def class_log_probs(features: Tensor, weights: Tensor, rows: Tensor, temperature: float) -> Tensor:
    """log σ_{i,k}(t) of Eq. 14: each Gaussian's log-probability for its own mask's class.

    Args:
        features: normalised f_i of the Gaussians. [V, D]
        weights: the view's classifier w_k. [L, D]
        rows: the classifier row of each Gaussian's mask. [V] int64
    Returns:
        [V]
    """
    logits = cosine_logits(features, weights, temperature)
    return torch.log_softmax(logits, dim=-1).gather(1, rows[:, None]).squeeze(1)


def overlap_scores(counts: Tensor, sizes: Tensor, formula: OverlapFormula) -> Tensor:
    """Eq. 12 (paper) or Gaga's variant, from |G ∩ M(e)| [T] and |G| [T] (both > 0). [T] float64"""
    counts, sizes = counts.double(), sizes.double()
    return counts / sizes if formula == "paper" else counts / (sizes + counts)


class Associator:
    """The memory bank and the per-view step; feed it the training views in name order.

    Args:
        means: Gaussian centres. [N, 3]
        features: Gaussian embeddings f_i. [N, D]
        config: the association parameters.
    """

    def __init__(self, means: Tensor, features: Tensor, config: AssociateConfig) -> None:
        if means.ndim != 2 or means.shape[1] != 3:
            raise ValueError(f"means must be [N, 3], got {list(means.shape)}")
        if features.ndim != 2 or features.shape[0] != means.shape[0]:
            raise ValueError(f"features must be [N, D] with N = {means.shape[0]}, got {list(features.shape)}")
        self.means = means.detach()
        self.features = F.normalize(features.detach().float(), dim=-1) if config.uses_prob else None
        self.config = config
        self.bank = MemoryBank.empty(means.shape[0], means.device)

    def add_view(self, view: AssociationView) -> ViewAssociation:
        """Associate one view's masks and update the bank."""
        device = self.means.device
        raw_mask = view.raw_mask.to(device)
        if raw_mask.ndim != 2 or bool((raw_mask < 0).any()):
            raise ValueError(f"view {view.name}: the raw mask must be [H, W] with labels >= 0")
        raw_labels = torch.unique(raw_mask)
        raw_labels = raw_labels[raw_labels > 0]
        gaussians, masks = self._filtered_gaussians(view, raw_mask, raw_labels)
        sizes = torch.bincount(masks, minlength=len(raw_labels))
        ids, scores, matched = self._match(gaussians, masks, sizes)
        lookup = torch.zeros(int(raw_mask.max()) + 1, dtype=torch.int64, device=device)
        lookup[raw_labels] = ids
        records = [
            MaskAssociation(int(raw), int(i), float(s), bool(m), int(n))
            for raw, i, s, m, n in zip(raw_labels.tolist(), ids.tolist(), scores.tolist(), matched.tolist(), sizes.tolist())
        ]
        return ViewAssociation(lookup[raw_mask], records)

    def _filtered_gaussians(self, view: AssociationView, raw_mask: Tensor, raw_labels: Tensor) -> tuple[Tensor, Tensor]:
        """Eq. 9, 10, 15, 16: the kept Gaussians [S] and their mask index [S] into raw_labels."""
        config = self.config
        viewmat, K = view.viewmat.to(self.means), view.K.to(self.means)
        index, pixels, depth = project_to_pixels(self.means, viewmat, K, view.width, view.height)
        label = raw_mask.flatten()[pixels]
        in_mask = label > 0
        index, pixels, depth, label = index[in_mask], pixels[in_mask], depth[in_mask], label[in_mask]
        mask = torch.searchsorted(raw_labels, label)
        cell, num_cells = grid_cells(pixels, view.width, view.height, config.num_patches)
        groups = mask * num_cells + cell
        keep = torch.zeros_like(index, dtype=torch.bool)
        if config.uses_depth:
            keep |= keep_best_per_group(groups, depth, config.depth_ratio)
        if config.uses_prob:
            rows = classifier_rows(raw_labels, view.classifier_labels.to(device=raw_labels.device, dtype=torch.int64), view.name)
            weights = view.classifier_weights.to(self.means.device)
            if weights.ndim != 2 or weights.shape != (len(view.classifier_labels), self.features.shape[1]):
                raise ValueError(
                    f"view {view.name}: classifier weights must be [L, D] = "
                    f"[{len(view.classifier_labels)}, {self.features.shape[1]}], got {list(weights.shape)}"
                )
            log_sigma = class_log_probs(self.features[index], weights, rows[mask], config.temperature)
            keep |= keep_best_per_group(groups, -log_sigma, config.prob_ratio)
        return index[keep], mask[keep]

    def _match(self, gaussians: Tensor, masks: Tensor, sizes: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Eq. 11-13 for one view's masks.

        Returns:
            global id [T] int64 (0 for empty masks), best score [T] float64, matched [T] bool.
        """
        bank, num_masks = self.bank, len(sizes)
        nonempty = sizes > 0
        if bank.size:
            counts = bank.overlap_counts(gaussians, masks, num_masks)
            best = counts.argmax(dim=1)  # the first of equal counts: the oldest entry, as in Gaga
            best_count = counts.gather(1, best[:, None]).squeeze(1)
            scores = torch.where(nonempty, overlap_scores(best_count, sizes.clamp_min(1), self.config.overlap_formula), 0.0)
            matched = nonempty & (scores >= self.config.overlap_threshold)
        else:
            best = torch.zeros_like(sizes)
            scores = torch.zeros(num_masks, dtype=torch.float64, device=sizes.device)
            matched = torch.zeros_like(nonempty)
        starts = nonempty & ~matched
        num_new = int(starts.sum())
        if bank.size + num_new > MAX_LABEL:
            raise ValueError(f"association needs more than {MAX_LABEL} instances, more than uint16 label maps hold")
        new_ids = bank.size + torch.cumsum(starts.long(), 0)
        ids = torch.where(matched, best + 1, torch.where(starts, new_ids, 0))
        bank.update(gaussians, ids[masks], starts[masks], num_new)
        return ids, scores, matched


def associate_views(means: Tensor, features: Tensor, views: Iterable[AssociationView], config: AssociateConfig) -> AssociationResult:
    """Eq. 9-16 over `views` in the given order (sort training views by name: the first seeds the bank).

    Args:
        means: Gaussian centres. [N, 3]
        features: Gaussian embeddings f_i. [N, D]
    Everything runs on the device of `means`.
    """
    associator = Associator(means, features, config)
    results = [associator.add_view(view) for view in views]
    return AssociationResult(results, associator.bank.size, associator.bank)


def associate_by_consensus(
    gaussians: Gaussians, views: list[View], settings: ConsensusSettings, progress: bool = True, weights: WeightsCache | None = None
) -> tuple[list[ViewAssociation], int]:
    """Consistent ids by view consensus (consensus.py) for views in name order, and the number of ids.

    Masks no Gaussian renders into, and clusters of fewer than `settings.min_masks` masks, get id 0 and
    burn no id; a mask's score is the consensus rate at
    which its cluster last grew (1 for a cluster of one mask), and `matched` says it shares its id.
    """
    raw_masks = [view.load_mask() for view in views]
    # Refused before lifting every view's masks (minutes of rendering), as cluster_masks would refuse them after.
    folder = str(views[0].mask_path.parent) if views and views[0].mask_path is not None else ""
    check_consensus_fits(sum(len(torch.unique(mask[mask > 0])) for mask in raw_masks), len(views), folder)
    batches = ((view.cameras, mask[None]) for view, mask in zip(tqdm(views, desc="lift masks", unit="view", disable=not progress), raw_masks))
    membership = mask_membership(gaussians, batches, weights=weights)
    cluster, joined_at = cluster_masks(membership, settings)
    release_freed_memory()  # the clustering's temporaries, before the stages that follow in this process
    sizes = np.asarray(membership.members.sum(1)).ravel()
    gaussian_counts = np.diff(membership.members.indptr)
    alive = sizes > 0
    alive &= np.bincount(cluster[alive], minlength=int(cluster.max()) + 1 if len(cluster) else 0)[cluster] >= settings.min_masks
    # Renumber the clusters that hold at least one non-empty mask 1..T, keeping their order.
    used = np.unique(cluster[alive])
    ids = np.zeros(int(cluster.max()) + 1 if len(cluster) else 0, dtype=np.int64)
    ids[used] = np.arange(1, len(used) + 1)
    node_ids = np.where(alive, ids[cluster] if len(cluster) else cluster, 0)
    shared = np.bincount(node_ids, minlength=len(used) + 1)[node_ids] > 1
    results, start = [], 0
    for mask, labels in zip(raw_masks, membership.view_labels):
        count = len(labels)
        lookup = torch.zeros(int(mask.max()) + 1, dtype=torch.int64)
        lookup[labels] = torch.from_numpy(node_ids[start : start + count])
        records = [
            MaskAssociation(int(raw), int(node_ids[start + j]), float(joined_at[start + j]), bool(shared[start + j] and node_ids[start + j] > 0), int(gaussian_counts[start + j]))
            for j, raw in enumerate(labels.tolist())
        ]
        results.append(ViewAssociation(lookup[mask], records))
        start += count
    return results, len(used)


# --- the stage -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ViewRecord:
    """One training view in association.json: its name and what became of each raw mask."""

    name: str
    masks: list[MaskAssociation]


@dataclass(frozen=True)
class AssociationRecord:
    """association.json: what the associate stage wrote besides the label maps.

    Attributes:
        config: the parameters it ran with.
        num_instances: the number of consistent ids (1..num_instances).
        views: the training views in memory-bank order.
    """

    config: AssociateConfig
    num_instances: int
    views: list[ViewRecord] = field(default_factory=list)

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "format": ASSOCIATION_FORMAT,
            "version": ASSOCIATION_VERSION,
            "parameters": asdict(self.config),
            "num_instances": self.num_instances,
            "views": [{"name": view.name, "masks": [_mask_json(m) for m in view.masks]} for view in self.views],
        }


def _mask_json(mask: MaskAssociation) -> dict[str, Any]:
    return {"raw": mask.raw, "global": mask.global_id, "score": mask.score, "matched": mask.matched, "gaussians": mask.num_gaussians}


def training_views(scene_dir: SceneDir, classifiers: Classifiers | None) -> list[View]:
    """The dataset's training views sorted by name, each checked to have a mask and a classifier (None: an
    imported scene's view consensus, which needs none)."""
    scene = scene_dir.load_dataset()
    views = sorted(scene.split("train"), key=lambda view: view.name)
    if not views:
        raise SceneDirError(f"{scene.root}: the dataset has no training views")
    for view in views:
        if classifiers is not None and view.name not in classifiers.view_names:
            raise SceneDirError(f"{scene_dir.classifiers_path}: no classifier for training view {view.name}; retrain the scene")
        if view.mask_path is None:
            raise SceneDirError(f"{scene.root}: training view {view.name} has no mask; run protosaga masks first")
    return views


def association_view(view: View, classifiers: Classifiers) -> AssociationView:
    labels, weights = classifiers.for_view(view.name)
    return AssociationView(view.viewmat, view.K, view.load_mask(), labels, weights, view.name)


@writes_scene("associate")
def associate(scene_dir: SceneDir, config: AssociateConfig, progress: bool = True, weights: WeightsCache | None = None) -> AssociationRecord:
    """The associate stage: consistent masks for every training view of a trained scene.

    Writes `association/<view>.png` (uint16) per training view and `association/association.json`, then
    marks the stage done. Each label map is written as soon as its view is done, so memory holds one; they
    go to a staging folder that replaces `association/` only when all are written, so an interrupted run
    leaves the previous association (and the scene's state) as they were.

    `weights`: view consensus lifts each training view's masks with the views' blending weights read
    from and computed into it, for later stages of the same geometry (the prototypes stage in
    `protosaga run`); None: rasterized. The memory bank renders nothing and leaves it as it is.
    """
    scene_dir.sweep()
    staging = staging_dir(scene_dir.association_dir)
    gaussians = scene_dir.read_gaussians(refined=False).to(default_device())
    if config.grouping == "bank":  # Eq. 14-15 rank by the classifiers' probabilities of the features
        scene_dir.require_features(gaussians, "--grouping bank (the paper's memory bank and its per-view classifiers)")
    # View consensus reads the geometry only: an imported scene has no classifiers to check the views against.
    classifiers = scene_dir.read_classifiers() if config.grouping == "bank" or not scene_dir.is_imported() else None
    views = training_views(scene_dir, classifiers)
    if config.grouping == "consensus":
        results, num_instances = associate_by_consensus(gaussians, views, config.consensus_settings, progress, weights)
    else:
        associator = Associator(gaussians.means, gaussians.features, config)
        results = (associator.add_view(association_view(view, classifiers)) for view in views)
    records = []
    for view, result in zip(tqdm(views, desc="associate", unit="view", disable=not progress), results):
        save_label_map(staging / f"{view.name}.png", result.label_map)
        records.append(ViewRecord(view.name, result.masks))
    if config.grouping == "bank":
        num_instances = associator.bank.size
    record = AssociationRecord(config, num_instances, records)
    staged_json = staging / scene_dir.association_json.name
    atomic_write_bytes(staged_json, (json.dumps(record.to_json_dict(), indent=1) + "\n").encode())
    replace_dir(staging, scene_dir.association_dir)
    scene_dir.mark_done("associate", config)
    return record


def read_association(scene_dir: SceneDir) -> AssociationRecord:
    """Load and validate association.json; errors name the file."""
    path = scene_dir.association_json
    raw = read_versioned_json(path, ASSOCIATION_FORMAT, ASSOCIATION_VERSION, "run protosaga associate first")
    try:
        config = AssociateConfig(**{"grouping": "bank", **raw["parameters"]})  # records before consensus were the bank's
        num_instances = int(raw["num_instances"])
        views = [
            ViewRecord(str(view["name"]), [_mask_record(mask) for mask in view["masks"]])
            for view in raw["views"]
        ]
    except (TypeError, KeyError, ValueError) as error:
        raise SceneDirError(f"{path}: malformed ({error!r})") from error
    for view in views:
        for mask in view.masks:
            if not 0 <= mask.global_id <= num_instances:
                raise SceneDirError(f"{path}: view {view.name} maps raw {mask.raw} to {mask.global_id}, outside 0..{num_instances}")
    return AssociationRecord(config, num_instances, views)


def _mask_record(raw: dict[str, Any]) -> MaskAssociation:
    return MaskAssociation(int(raw["raw"]), int(raw["global"]), float(raw["score"]), bool(raw["matched"]), int(raw["gaussians"]))
