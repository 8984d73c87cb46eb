"""Prototype-consistency refinement (`protosaga refine SCENE`): features that carry the associated objects,
so that prototype inference (Eq. 17-19) reads them.

Training (Eq. 6-7) fits each view's rendered features to that view's own classifier w_k over its raw SAM
masks: nothing makes one object's features agree from view to view, which Eq. 18's ensemble assumes, and
Eq. 19 on them paints noise (issue 24: 0.15 IoU on real photos where the lifted labels score 0.93). After
association every training view's consistent mask gives one object one id. Here, on the frozen geometry,
the features learn against those masks with one τ·cos classifier shared by every view, whose rows start
as the instances' prototypes (Eq. 17-18 on training's features): Eq. 6-7 with the K per-view classifiers
replaced by one over the instances (`frozen_features.fit_features`, the same loop as `protosaga
features`). The prototypes stage then runs Eq. 17-19 unchanged on the refined features.

The refined features go to refined_features.npy; gaussians.ply keeps training's, which the stages before
this one read and every refinement starts from, so a rerun never refines refined features.
`RefineConfig(passes=0)` (the paper, `--paper`) refines nothing and removes the file.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..datasets.scene import View
from ..device import default_device
from ..io.scene_dir import FEATURES_HINT, SceneDir
from ..io.scene_lock import writes_scene
from ..render.sparse import WeightsCache
from ..stages import read_consistent_mask
from .frozen_features import FeatureState, fit_features
from .prototypes import Prototypes, collect_view_prototypes, ensemble_prototypes
from .train import IGNORE, DeferredInterrupt, TrainConfig, TrainingView

STAGE = "refine"


@dataclass
class RefineConfig:
    """The refine stage: features learn the consistent masks against one shared prototype classifier."""

    passes: int = 10
    """iterations per training view, one random view each (0: no refinement, the paper's features)"""
    max_iterations: int = 600
    """at most this many iterations in all: 10 passes over 60 views; a 200-view capture gets 3 passes, which
    give most of the gain on bench/quality.py's scenes, where at 1M Gaussians an iteration takes ~1.3 s on
    2 cores (bench/RESULTS.md)"""
    temperature: float = TrainConfig.temperature
    """τ of the shared τ·cos classifier (Eq. 6's)"""
    lr_features: float = TrainConfig.lr_features
    lr_classifier: float = TrainConfig.lr_classifiers
    seed: int = 0


@dataclass(frozen=True)
class RefineResult:
    """What `refine_features` did.

    Attributes:
        instances: rows of the shared classifier (the associated instances).
        losses: each iteration's loss (empty with passes 0).
    """

    instances: int
    losses: list[float]


def instance_targets(consistent_mask: Tensor, ids: Tensor) -> Tensor:
    """The shared classifier's row of each pixel: the index of its id in `ids`, IGNORE where the mask is 0
    or names an id not in `ids`. [H, W], ids [T] sorted -> [H, W] int64"""
    rows = torch.searchsorted(ids, consistent_mask).clamp_(max=max(len(ids) - 1, 0))
    known = (consistent_mask > 0) & (ids[rows] == consistent_mask) if len(ids) else torch.zeros_like(rows, dtype=torch.bool)
    return torch.where(known, rows, torch.full_like(rows, IGNORE))


def check_config(config: RefineConfig) -> None:
    problems = [
        f"--passes must be 0 (no refinement) or positive, got {config.passes}" if config.passes < 0 else "",
        f"--max-iterations must be positive, got {config.max_iterations}" if config.max_iterations < 1 else "",
        f"--temperature must be positive, got {config.temperature}" if config.temperature <= 0 else "",
    ]
    problems = [p for p in problems if p]
    if problems:
        raise ValueError("; ".join(problems))


def refine_plan(scene_dir: SceneDir, config: RefineConfig) -> str:
    """What `refine_features` will do to the scene, in words."""
    if config.passes == 0:
        return "none (--refine.passes 0): the prototypes read the features as trained"
    if scene_dir.is_imported() and not scene_dir.is_done("features"):
        return f"none: the imported scene has no features yet ({FEATURES_HINT})"
    return f"features against the consistent masks, {config.passes} iterations per training view (at most {config.max_iterations})"


@writes_scene(STAGE)
def refine_features(
    scene_dir: SceneDir, config: RefineConfig = RefineConfig(), progress: bool = True, weights: WeightsCache | None = None
) -> RefineResult:
    """The refine stage (see the module docstring): writes refined_features.npy and marks the stage done.
    A scene without features (imported, before `protosaga features`) is left as it is (`refine_plan`).

    Args:
        weights: the training views' blending weights of the scene's geometry (association leaves them in
            `protosaga run`), read and filled; None: a cache of its own, freed on return.
    """
    check_config(config)
    scene_dir.sweep()
    gaussians = scene_dir.read_gaussians(refined=False).to(default_device())
    scene = scene_dir.load_dataset()
    views = scene.split("train")
    masks = [read_consistent_mask(scene_dir, view) for view in views]  # fail before rendering
    weights = WeightsCache() if weights is None else weights
    losses: list[float] = []
    refined, instances = None, 0
    if config.passes > 0 and gaussians.feature_dim > 0:
        per_view = collect_view_prototypes(scene_dir, gaussians, scene, progress=progress, weights=weights)
        prototypes = ensemble_prototypes([p[0] for p in per_view], [p[1] for p in per_view])
        instances = len(prototypes)
        state = FeatureState.start(
            gaussians.features,
            [torch.nn.Parameter(prototypes.vectors.clone().to(gaussians.device))] * len(views),
            config.lr_features,
            config.lr_classifier,
            torch.Generator().manual_seed(config.seed),
        )
        samples = [_sample(view, masks[i], prototypes, gaussians.device) for i, view in enumerate(views)]
        masks.clear()  # the targets replace them
        iterations = min(config.passes * len(views), config.max_iterations)
        losses = fit_features(
            gaussians.detach(), samples, state, iterations, config.temperature, progress=progress, weights=weights, desc=STAGE
        )
        refined = state.features.detach()
    with DeferredInterrupt():  # the file and scene.json change together
        scene_dir.forget_from(STAGE)
        scene_dir.write_refined_features(refined)
        scene_dir.mark_done(STAGE, config)
    return RefineResult(instances, losses)


def _sample(view: View, consistent_mask: Tensor, prototypes: Prototypes, device: torch.device) -> TrainingView:
    """A training view for `fit_features`, which reads only its camera and target (no image is loaded)."""
    target = instance_targets(consistent_mask, prototypes.ids)
    return TrainingView(view, torch.empty(0), target.to(device), prototypes.ids, view.cameras.to(device))
