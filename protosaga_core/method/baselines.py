"""The paper's Table 4 baselines, which `segment --method kmeans|cls` runs in place of Eq. 19.

- `kmeans`: k-means++ over all per-view prototypes v_k(t), L2-normalised first so that Euclidean k-means
  clusters by direction, with as many clusters as there are instance ids in the consistent masks; the
  centres become the prototypes of Eq. 19, each mapped to the id most of its member prototypes carry.
  Clusters left empty are dropped.
- `cls`: Gaga's recipe (`lift.py` of weijielyu/Gaga): a linear classifier (a 1x1 convolution with bias)
  from D features to T + 1 classes — class 0 is "no mask", as Gaga's `num_mask + 1` —, trained jointly
  with the per-Gaussian features (every other attribute frozen) by cross-entropy over all pixels of one
  random training view per iteration, normalised by log(T + 1), plus every 2nd iteration Gaga's 3D
  neighbourhood term (KL divergence between the class distributions of 1000 sampled Gaussians and their
  5 nearest neighbours, self included, weight 2 / (T + 1)); Adam with Gaga's rates (features 2.5e-3,
  classifier 5e-4). Gaga trains 10k iterations on a GPU; the CPU default here is 300 (documented in
  `SegmentConfig`). Since geometry is frozen the neighbours are computed once, over all Gaussians (Gaga
  recomputes them on a random subset when there are more than 300k), and on the CPU each training view's
  blending weights are computed once and kept as a sparse matrix (`render.sparse`). Prediction takes
  the argmax over the instance classes only, so 0 is never predicted (DESIGN §5: label 0 is not an instance). The trained
  classifier and features live in `SCENE/segment/cls/model.pt`; gaussians.ply is never modified.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from ..datasets.scene import Scene
from ..gaussians import Gaussians
from ..io.atomic import atomic_open
from ..io.scene_dir import SceneDir
from ..render.sparse import WeightsCache
from ..stages import frozen_feature_map, read_consistent_mask
from .prototypes import CLASSIFY_CHUNK, Prototypes

REG3D_INTERVAL = 2
"""Gaga's `reg3d_interval`: the 3D neighbourhood term is added every this many iterations."""
REG3D_NEIGHBOURS = 5
"""Gaga's `reg3d_k` (the sampled Gaussian itself is the first of them, as in its top-k over cdist)."""
REG3D_SAMPLE = 1000
"""Gaga's `reg3d_sample_size`: Gaussians sampled per 3D term."""



@dataclass(frozen=True)
class ClsSettings:
    """How the Cls baseline trains (`SegmentConfig`'s cls_* options document each)."""

    iterations: int = 300
    lr_features: float = 2.5e-3
    lr_classifier: float = 5e-4
    reg3d_lambda: float = 2.0
    seed: int = 0


# --- k-means baseline ------------------------------------------------------------------------------


def kmeans(
    points: Tensor, k: int, generator: torch.Generator, restarts: int = 10, max_iterations: int = 300
) -> tuple[Tensor, Tensor]:
    """Euclidean k-means with k-means++ seeding (Arthur & Vassilvitskii), best of `restarts` runs by inertia.

    Args:
        points: [M, D] with M >= k >= 1.
        generator: CPU generator for the seeding draws (the result is deterministic given its state).

    Returns:
        centres [k, D] (an empty cluster keeps its previous centre) and the assignment of each point [M] int64.
    """
    if not 1 <= k <= points.shape[0]:
        raise ValueError(f"k-means needs 1 <= k <= number of points, got k = {k} for {points.shape[0]} points")
    best: tuple[float, Tensor, Tensor] | None = None
    for _ in range(restarts):
        centres = _kmeans_plus_plus(points, k, generator)
        assignment = torch.cdist(points, centres).argmin(1)
        for _ in range(max_iterations):
            counts = torch.bincount(assignment, minlength=k)
            sums = points.new_zeros(k, points.shape[1]).index_add_(0, assignment, points)
            centres = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None].to(sums.dtype), centres)
            updated = torch.cdist(points, centres).argmin(1)
            if torch.equal(updated, assignment):
                break
            assignment = updated
        inertia = float((points - centres[assignment]).square().sum())
        if best is None or inertia < best[0]:
            best = (inertia, centres, assignment)
    return best[1], best[2]


def _kmeans_plus_plus(points: Tensor, k: int, generator: torch.Generator) -> Tensor:
    """k-means++ seeding: each next centre is drawn with probability proportional to D(x)². [k, D]"""
    chosen = [int(torch.randint(points.shape[0], (1,), generator=generator))]
    nearest = (points - points[chosen[0]]).square().sum(1)  # squared distance to the nearest centre so far
    for _ in range(1, k):
        # All points on a centre already (duplicates): any point is as good as another.
        weights = nearest if float(nearest.sum()) > 0 else torch.ones_like(nearest)
        index = int(torch.multinomial(weights.cpu().double(), 1, generator=generator))
        chosen.append(index)
        nearest = torch.minimum(nearest, (points - points[index]).square().sum(1))
    return points[chosen].clone()


def kmeans_prototypes(
    view_ids: Sequence[Tensor],
    view_vectors: Sequence[Tensor],
    seed: int = 0,
    restarts: int = 10,
    max_iterations: int = 300,
) -> Prototypes:
    """The k-means baseline's classifier: cluster all per-view prototypes into as many clusters as ids.

    Args:
        view_ids, view_vectors: per-view prototypes (Eq. 17), as `collect_view_prototypes` gives them.

    Returns:
        Prototypes whose vectors are the cluster centres and whose ids are each cluster's majority id
        (ties go to the smaller id); num_views counts the member prototypes. Empty clusters are dropped.
    """
    ids = torch.cat([i.to(torch.int64) for i in view_ids]).cpu()
    points = F.normalize(torch.cat(list(view_vectors)).float().cpu(), dim=-1)
    distinct, member_id = torch.unique(ids, return_inverse=True)
    if len(distinct) == 0:
        return Prototypes(ids, points, ids.clone())
    generator = torch.Generator().manual_seed(seed)
    centres, assignment = kmeans(points, len(distinct), generator, restarts, max_iterations)
    votes = torch.bincount(assignment * len(distinct) + member_id, minlength=len(distinct) ** 2).reshape(len(distinct), -1)
    members = votes.sum(1)
    keep = members > 0
    return Prototypes(distinct[votes.argmax(1)][keep], centres[keep], members[keep])


# --- classifier baseline (Gaga) --------------------------------------------------------------------


@dataclass(frozen=True)
class ClsModel:
    """Gaga's linear classifier and the per-Gaussian features trained with it.

    Attributes:
        class_ids: the id of each class; class_ids[0] = 0 ("no mask"), then the instance ids. [C] int64
        weight: [C, D]
        bias: [C]
        features: the trained f_i. [N, D]
    """

    class_ids: Tensor
    weight: Tensor
    bias: Tensor
    features: Tensor

    def logits(self, features: Tensor) -> Tensor:
        """[M, D] -> [M, C]"""
        return features @ self.weight.to(features).T + self.bias.to(features)

    def predict(self, features: Tensor) -> Tensor:
        """The most likely instance class, never the "no mask" class. [..., D] -> ids [...] int64 (0 without instances)"""
        shape = features.shape[:-1]
        if len(self.class_ids) < 2:
            return torch.zeros(shape, dtype=torch.int64, device=features.device)
        flat = features.reshape(-1, features.shape[-1])
        best = torch.cat([self.logits(rows)[:, 1:].argmax(-1) for rows in flat.split(CLASSIFY_CHUNK)])
        return self.class_ids[1:].to(flat.device)[best].reshape(shape)


def cls_model_path(scene_dir: SceneDir) -> Path:
    return scene_dir.root / "segment" / "cls" / "model.pt"


def _cls_key(settings: ClsSettings, num_gaussians: int) -> dict[str, float | int]:
    """What a saved model was trained with; a model is reused only when this matches."""
    return {**asdict(settings), "num_gaussians": num_gaussians}


def train_or_load_cls(
    scene_dir: SceneDir, gaussians: Gaussians, scene: Scene, settings: ClsSettings, progress: bool = True
) -> ClsModel:
    """The saved model when it was trained with this config after the Gaussians and masks last changed,
    else a newly trained (and saved) one, its training views' blending weights kept in a cache of its own
    (`WeightsCache()`, freed on return)."""
    path = cls_model_path(scene_dir)
    key = _cls_key(settings, len(gaussians))
    inputs = (scene_dir.gaussians_path, scene_dir.association_dir)
    if path.is_file() and all(path.stat().st_mtime_ns >= p.stat().st_mtime_ns for p in inputs if p.exists()):
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
            if saved["key"] == key:
                return ClsModel(saved["class_ids"], saved["weight"], saved["bias"], saved["features"])
        except Exception:  # noqa: BLE001 - a stale or damaged cache is simply retrained and overwritten
            pass
    model = train_cls(scene_dir, gaussians, scene, settings, progress, WeightsCache())
    payload = {"key": key, **{name: getattr(model, name).cpu() for name in ("class_ids", "weight", "bias", "features")}}
    with atomic_open(path) as handle:
        torch.save(payload, handle)
    return model


def train_cls(
    scene_dir: SceneDir,
    gaussians: Gaussians,
    scene: Scene,
    settings: ClsSettings,
    progress: bool = True,
    weights: WeightsCache | None = None,
) -> ClsModel:
    """Train Gaga's classifier jointly with the features on the consistent masks (see the module docstring).

    Every view is rendered about iterations / views times with the geometry frozen: on the CPU its
    blending weights are computed into `weights` once and each render (and its backward) is a sparse
    product. None: every iteration rasterizes."""
    device = gaussians.device
    views = scene.split("train")
    masks = [read_consistent_mask(scene_dir, view).to(device) for view in views]
    class_ids = torch.unique(torch.cat([torch.zeros(1, dtype=torch.int64, device=device)] + [m.unique() for m in masks]))
    targets = [torch.searchsorted(class_ids, mask).reshape(-1) for mask in masks]
    num_classes, dim = len(class_ids), gaussians.feature_dim
    generator = torch.Generator().manual_seed(settings.seed)
    # PyTorch's default Conv2d/Linear initialisation (uniform, bound 1/sqrt(fan_in)), drawn from our generator.
    bound = 1.0 / math.sqrt(dim)
    weight = torch.nn.Parameter(((torch.rand(num_classes, dim, generator=generator) * 2 - 1) * bound).to(device))
    bias = torch.nn.Parameter(((torch.rand(num_classes, generator=generator) * 2 - 1) * bound).to(device))
    features = torch.nn.Parameter(gaussians.features.detach().clone())
    if num_classes < 2 or settings.iterations <= 0:
        return ClsModel(class_ids, weight.detach(), bias.detach(), features.detach())
    frozen = gaussians.detach()
    feature_optimizer = torch.optim.Adam([features], lr=settings.lr_features, eps=1e-15)
    classifier_optimizer = torch.optim.Adam([weight, bias], lr=settings.lr_classifier)
    neighbours = _neighbours(frozen.means, REG3D_NEIGHBOURS) if settings.reg3d_lambda > 0 else None
    order: list[int] = []
    for iteration in tqdm(range(1, settings.iterations + 1), desc="train cls", disable=not progress):
        if not order:  # Gaga's viewpoint stack: every view once per epoch, in random order
            order = torch.randperm(len(views), generator=generator).tolist()
        index = order.pop()
        rendered = frozen_feature_map(frozen, views[index].cameras.to(device), features, weights)
        logits = rendered.reshape(-1, dim) @ weight.T + bias
        loss = F.cross_entropy(logits, targets[index]) / math.log(num_classes)
        if neighbours is not None and iteration % REG3D_INTERVAL == 0:
            loss = loss + settings.reg3d_lambda * _neighbourhood_kl(features, weight, bias, neighbours, generator)
        feature_optimizer.zero_grad(set_to_none=True)
        classifier_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        feature_optimizer.step()
        classifier_optimizer.step()
    return ClsModel(class_ids, weight.detach(), bias.detach(), features.detach())


def _neighbours(means: Tensor, k: int) -> Tensor:
    """Indices of each Gaussian's k nearest Gaussians, itself first. [N, k] int64"""
    from scipy.spatial import cKDTree

    xyz = means.detach().cpu().double().numpy()
    _, index = cKDTree(xyz).query(xyz, k=min(k, len(xyz)))
    return torch.from_numpy(index.reshape(len(xyz), -1)).to(device=means.device, dtype=torch.int64)


def _neighbourhood_kl(features: Tensor, weight: Tensor, bias: Tensor, neighbours: Tensor, generator: torch.Generator) -> Tensor:
    """Gaga's `loss_cls_3d` without λ: mean KL(p_i || p_j) over sampled Gaussians i and their neighbours j,
    divided by the number of classes."""
    sample = torch.randperm(neighbours.shape[0], generator=generator)[:REG3D_SAMPLE].to(neighbours.device)
    probs = torch.softmax(features[sample] @ weight.T + bias, dim=-1)  # [S, C]
    neighbour_probs = torch.softmax(features[neighbours[sample]] @ weight.T + bias, dim=-1)  # [S, k, C]
    log_ratio = torch.log(probs[:, None] + 1e-10) - torch.log(neighbour_probs + 1e-10)
    return (probs[:, None] * log_ratio).sum(-1).mean() / weight.shape[0]


