"""Prototype inference (paper Sec. 3.3, Eq. 17-19; DESIGN §5).

- Eq. 17: the prototype of instance t in training view k is the mean rendered feature over the pixels
  its consistent (associated) mask gives it: v_k(t) = mean_{p in R'_k(t)} F̂_k(p).
- Eq. 18: the ensemble prototype is the mean over the K views that contain t: v(t) = 1/K Σ_k v_k(t).
- Eq. 19: a pixel (or a Gaussian, on its own f_i) gets argmax_t τ cos(v(t), F̂(p)).

Id 0 (no mask) is not an instance: it never gets a prototype, so it is never predicted while at least
one prototype exists. The `prototypes` stage writes `prototypes.npz`, the per-Gaussian labels
`labels.npy` and the instance table of scene.json.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from ..datasets.scene import Scene
from ..device import default_device
from ..gaussians import Gaussians
from ..io.atomic import atomic_open
from ..io.bounded import BoundedReadError, load_npz
from ..io.scene_dir import InstanceInfo, SceneDir, SceneDirError
from ..io.scene_lock import writes_scene
from ..palette import instance_color
from ..render.sparse import WeightsCache
from ..stages import DEFAULT_CHUNK_VIEWS, read_consistent_mask, render_features, view_batches
from .classifier import cosine_logits
from .label_edits import ViewSums
from .lifting import drop_fragments, fill_from_neighbours, labels_from_votes, lift_votes

DEFAULT_TEMPERATURE = 10.0
CLASSIFY_CHUNK = 1 << 16
"""Rows classified at once: bounds the [rows, T] similarity matrix (a million Gaussians x hundreds of
instances would not fit otherwise)."""
PROTOTYPE_KEYS = ("ids", "vectors", "num_views")


GaussianLabelRule = Literal["lifted", "features"]


@dataclass
class PrototypesConfig:
    """The prototypes stage (`protosaga prototypes SCENE`): Eq. 17-18 and the per-Gaussian labels."""

    temperature: float = DEFAULT_TEMPERATURE
    """τ of Eq. 19 (it scales the cosine logits; the argmax, hence every label, does not depend on it)"""
    chunk_views: int = DEFAULT_CHUNK_VIEWS
    """training views rendered per batch (views of one image size only); more is faster and uses more memory"""
    gaussian_labels: GaussianLabelRule = "lifted"
    """how a Gaussian gets its instance (the paper is silent): lifted = the consistent-mask label its blending
    weights vote for over the training views (lifting.py); features = Eq. 19 on its own feature f_i"""
    min_evidence: float = 0.05
    """lifted: a Gaussian whose best instance collected less blending weight than this (in pixels, summed
    over the training views) is unassigned"""
    fill_neighbours: int = 8
    """lifted: unassigned Gaussians take the majority label of this many nearest assigned ones (0: stay unassigned)"""
    min_views: int = 5
    """lifted: an instance that the masks of fewer training views hold is a fragment: its Gaussians go to
    their next instance or their neighbours', and it leaves the instance table and Eq. 19 (0: keep all)"""
    min_opacity_share: float = 1e-3
    """lifted: so is an instance whose Gaussians' opacities sum to less than this share of the scene's (0: keep
    all). Both set on bench/quality.py's 3 seeds with simulated and MobileSAM masks (bench/RESULTS.md)"""


@dataclass(frozen=True)
class Prototypes:
    """Instance prototypes: the classifier of Eq. 19.

    Attributes:
        ids: instance id of each prototype (> 0). [T] int64
        vectors: the prototypes v(t). [T, D] float32
        num_views: training views each prototype was averaged over (Eq. 18's K). [T] int64

    The ensemble (Eq. 18) has one prototype per id; the k-means baseline may map several centres to one
    id, so ids are not required to be unique here.
    """

    ids: Tensor
    vectors: Tensor
    num_views: Tensor

    def __post_init__(self) -> None:
        count = self.ids.shape[0] if self.ids.ndim == 1 else -1
        if count < 0 or self.vectors.ndim != 2 or self.vectors.shape[0] != count or self.num_views.shape != (count,):
            raise ValueError(
                f"Prototypes need ids [T], vectors [T, D], num_views [T]; got {list(self.ids.shape)}, "
                f"{list(self.vectors.shape)}, {list(self.num_views.shape)}"
            )

    def __len__(self) -> int:
        return self.ids.shape[0]

    @property
    def feature_dim(self) -> int:
        return self.vectors.shape[1]

    def only(self, ids: Iterable[int]) -> "Prototypes":
        """The prototypes of the given instance ids only (Eq. 19 then never answers another id)."""
        keep = torch.isin(self.ids, torch.tensor(sorted(ids), dtype=self.ids.dtype, device=self.ids.device))
        return Prototypes(self.ids[keep], self.vectors[keep], self.num_views[keep])

    def save(self, path: str | os.PathLike) -> None:
        """Write `prototypes.npz` atomically (keys ids, vectors, num_views)."""
        with atomic_open(path) as handle:
            np.savez(
                handle,
                ids=self.ids.detach().cpu().numpy().astype(np.int64),
                vectors=self.vectors.detach().cpu().numpy().astype(np.float32),
                num_views=self.num_views.detach().cpu().numpy().astype(np.int64),
            )

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Prototypes":
        """Read and validate a `prototypes.npz`; every problem raises SceneDirError naming the file."""
        path = os.fspath(path)
        if not os.path.exists(path):
            raise SceneDirError(f"{path}: missing; run protosaga prototypes first")
        try:
            arrays = load_npz(path)
        except BoundedReadError as error:  # a member announcing more than the file holds, before allocating it
            raise SceneDirError(f"{error}; run protosaga prototypes again") from error
        except (OSError, ValueError, EOFError) as error:  # not a zip / not an npz / pickled content
            raise SceneDirError(f"{path}: not a prototypes file ({error})") from error
        missing = [key for key in PROTOTYPE_KEYS if key not in arrays]
        if missing:
            raise SceneDirError(f"{path}: missing arrays {missing} (expected {list(PROTOTYPE_KEYS)})")
        ids, vectors, num_views = (arrays[key] for key in PROTOTYPE_KEYS)
        count = len(ids) if ids.ndim == 1 else -1
        if count < 0 or vectors.ndim != 2 or vectors.shape[0] != count or num_views.shape != (count,):
            raise SceneDirError(
                f"{path}: expected ids [T], vectors [T, D], num_views [T]; got {list(ids.shape)}, "
                f"{list(vectors.shape)}, {list(num_views.shape)}"
            )
        if not (np.issubdtype(ids.dtype, np.integer) and np.issubdtype(num_views.dtype, np.integer)):
            raise SceneDirError(f"{path}: ids and num_views must be integers, got {ids.dtype} and {num_views.dtype}")
        if not np.issubdtype(vectors.dtype, np.floating) or not np.isfinite(vectors).all():
            raise SceneDirError(f"{path}: vectors must be finite floats")
        if count and (ids.min() <= 0 or len(np.unique(ids)) != count):
            raise SceneDirError(f"{path}: ids must be unique and positive (0 is not an instance)")
        return cls(
            torch.from_numpy(ids.astype(np.int64)),
            torch.from_numpy(vectors.astype(np.float32)),
            torch.from_numpy(num_views.astype(np.int64)),
        )


# --- Eq. 17-19 -------------------------------------------------------------------------------------


def view_prototypes(features: Tensor, consistent_mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Eq. 17 for one view: the mean rendered feature over each instance's pixels.

    Args:
        features: rendered features F̂_k. [H, W, D]
        consistent_mask: associated global ids, 0 = none. [H, W] integers

    Returns:
        ids: the ids present, sorted, without 0. [T_k] int64
        prototypes: v_k(t) for each id. [T_k, D]
        pixel_counts: |R'_k(t)|. [T_k] int64
    """
    return ViewSums.of(features, consistent_mask).prototypes()


def ensemble_prototypes(view_ids: Sequence[Tensor], view_vectors: Sequence[Tensor]) -> Prototypes:
    """Eq. 18: average each instance's per-view prototypes over the views that contain it.

    Args:
        view_ids: for each view, its ids (unique within the view, > 0). each [T_k] int64
        view_vectors: for each view, v_k(t) in the same order. each [T_k, D]

    Returns:
        One prototype per id seen in any view, ids sorted; num_views = views containing the id.
    """
    if not view_ids or len(view_ids) != len(view_vectors):
        raise ValueError(f"need one vectors tensor per ids tensor and at least one view, got {len(view_ids)} and {len(view_vectors)}")
    all_ids = torch.cat([ids.to(torch.int64) for ids in view_ids])
    all_vectors = torch.cat(list(view_vectors))
    ids, rows, num_views = torch.unique(all_ids, return_inverse=True, return_counts=True)
    sums = all_vectors.new_zeros(len(ids), all_vectors.shape[1]).index_add_(0, rows, all_vectors)
    return Prototypes(ids, (sums / num_views[:, None].to(sums.dtype)).float(), num_views)


def classify(features: Tensor, prototypes: Prototypes, temperature: float = DEFAULT_TEMPERATURE) -> Tensor:
    """Eq. 19: the id of the prototype with the largest τ·cosine.

    Args:
        features: rendered features F̂(p) or per-Gaussian f_i. [..., D]

    Returns:
        Instance ids, never 0 while at least one prototype exists (all 0 otherwise). [...] int64.
        Ties (e.g. a zero feature) go to the first prototype.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive (a negative one would flip the argmax), got {temperature}")
    if features.shape[-1] != prototypes.feature_dim:
        raise ValueError(f"features have {features.shape[-1]} channels but the prototypes {prototypes.feature_dim}")
    shape = features.shape[:-1]
    if len(prototypes) == 0:
        return torch.zeros(shape, dtype=torch.int64, device=features.device)
    flat = features.reshape(-1, features.shape[-1])
    vectors = prototypes.vectors.to(device=flat.device, dtype=flat.dtype)
    best = torch.cat([cosine_logits(rows, vectors, temperature).argmax(-1) for rows in flat.split(CLASSIFY_CHUNK)])
    return prototypes.ids.to(flat.device)[best].reshape(shape)


def gaussian_labels(features: Tensor, prototypes: Prototypes, temperature: float = DEFAULT_TEMPERATURE) -> Tensor:
    """Per-Gaussian instance ids: Eq. 19 applied to each f_i (DESIGN §5). [N, D] -> [N] int64"""
    if features.ndim != 2:
        raise ValueError(f"Gaussian features must be [N, D], got {list(features.shape)}")
    return classify(features, prototypes, temperature)


def collect_view_prototypes(
    scene_dir: SceneDir,
    gaussians: Gaussians,
    scene: Scene,
    chunk_views: int = DEFAULT_CHUNK_VIEWS,
    progress: bool = True,
    weights: WeightsCache | None = None,
) -> list[tuple[Tensor, Tensor, Tensor]]:
    """Eq. 17 for every training view: (ids [T_k], v_k [T_k, D], pixel counts [T_k]) per view, in view order.
    Views whose blending weights `weights` holds are rendered from them (`render_features`)."""
    views = scene.split("train")
    if not views:
        raise SceneDirError(f"{scene.root}: the dataset has no training views")
    masks = {view.name: read_consistent_mask(scene_dir, view) for view in views}  # fail before rendering
    return [
        view_prototypes(features, masks[view.name])
        for view, features in render_features(gaussians, scene, views, chunk_views, progress, "prototypes", weights)
    ]


# --- the instance table ----------------------------------------------------------------------------

def instance_table(prototypes: Prototypes, labels: Tensor) -> list[InstanceInfo]:
    """One row per prototype: colour, Gaussians labelled with it (labels [N] int64), views it was seen in."""
    ids = prototypes.ids.to(torch.int64)
    top = int(max(ids.max().item() if len(ids) else 0, labels.max().item() if len(labels) else 0))
    per_id = torch.bincount(labels.to(torch.int64).cpu(), minlength=top + 1)
    return [
        InstanceInfo(int(i), instance_color(int(i)), int(per_id[i]), int(k), f"instance {int(i)}")
        for i, k in zip(ids.tolist(), prototypes.num_views.tolist())
    ]


# --- the stage -------------------------------------------------------------------------------------


def lifted_gaussian_labels(
    scene_dir: SceneDir,
    gaussians: Gaussians,
    scene: Scene,
    ids: Tensor,
    config: PrototypesConfig = PrototypesConfig(),
    progress: bool = True,
    weights: WeightsCache | None = None,
) -> Tensor:
    """Per-Gaussian labels lifted from the consistent masks of the training views (lifting.py), with the
    views' blending weights read from and computed into `weights` (None: rasterized). [N] int64"""
    views = scene.split("train")
    batches = (
        (scene.cameras(batch), torch.stack([read_consistent_mask(scene_dir, view) for view in batch]))
        for batch in tqdm(list(view_batches(views, config.chunk_views)), desc="lifting labels", unit="batch", disable=not progress)
    )
    votes = lift_votes(gaussians, batches, ids, weights)
    labels = labels_from_votes(votes, config.min_evidence)
    if drop_fragments(votes, labels, gaussians.activated_opacities.detach(), config.min_views, config.min_opacity_share).any():
        labels = labels_from_votes(votes, config.min_evidence)
    return fill_from_neighbours(gaussians.means.detach().cpu(), labels, config.fill_neighbours)


@writes_scene("prototypes")
def compute_prototypes(
    scene_dir: SceneDir, config: PrototypesConfig = PrototypesConfig(), progress: bool = True, weights: WeightsCache | None = None
) -> Prototypes:
    """The prototypes stage: render every training view's features, Eq. 17-18, per-Gaussian labels.

    Writes `prototypes.npz`, `labels.npy`, the instance table of scene.json, and marks the stage done.
    `weights`: the training views' blending weights of the scene's geometry (association leaves them
    there in `protosaga run`): the features are rendered from the views it holds, and the lifted labels
    read and fill it. None: every view is rasterized.
    """
    if config.gaussian_labels not in ("lifted", "features"):
        raise ValueError(f"unknown gaussian_labels rule {config.gaussian_labels!r}; expected 'lifted' or 'features'")
    scene_dir.sweep()
    gaussians = scene_dir.read_gaussians().to(default_device())
    if config.gaussian_labels == "features":
        scene_dir.require_features(gaussians, "--gaussian-labels features (Eq. 19 on each Gaussian's feature)")
    # Without features (an imported scene) the prototypes are empty vectors [T, 0]: their ids and view counts
    # (the instance table) still come from the consistent masks, and the lifted labels need no features.
    scene = scene_dir.load_dataset()
    per_view = collect_view_prototypes(scene_dir, gaussians, scene, config.chunk_views, progress, weights)
    prototypes = ensemble_prototypes([p[0] for p in per_view], [p[1] for p in per_view])
    if config.gaussian_labels == "lifted":
        labels = lifted_gaussian_labels(scene_dir, gaussians, scene, prototypes.ids, config, progress, weights)
        prototypes = prototypes.only(torch.unique(labels[labels > 0]).tolist())  # fragments carry no Gaussian
    else:
        labels = gaussian_labels(gaussians.features.detach(), prototypes, config.temperature).cpu()
    # everything computed before the first write: an interrupt leaves the old outputs and state
    prototypes.save(scene_dir.prototypes_path)
    scene_dir.write_labels(labels.numpy())
    meta = scene_dir.read_meta()
    meta.instances = instance_table(prototypes, labels)
    scene_dir.mark_done("prototypes", config, meta)
    return prototypes
