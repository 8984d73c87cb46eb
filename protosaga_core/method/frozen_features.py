"""Eq. 1-8 on frozen geometry: learn only the features f_i and the per-view classifiers w_k of a scene
whose Gaussians stay as they are (`protosaga features SCENE`).

With the means, scales, rotations, opacities and SH fixed, the rendered colour, and so L_REC (Eq. 3-4),
is a constant: Eq. 8's gradient with respect to the features and the classifiers is λ_CE times that of
L_CE (Eq. 7) alone, as it already is in joint training. So only the D feature channels are rendered (no
SH, no colour, no SSIM) and the loss is L_CE (`train.classification_loss`, the same code; λ_CE would only
scale the gradient, which Adam normalises away). There is no densification, and no gradient reaches the
geometry. On the CPU each training view's blending weights are computed once (`render.sparse`) and every
later iteration is a sparse product and its transpose; on a GPU gsplat renders the feature channels.

It works on any scene folder with scene.json and gaussians.ply: one `protosaga train` made (its trained
features and classifiers are continued, or `--fresh` starts again), or one whose Gaussians another
trainer made (no feat_* columns: they start fresh). The result replaces gaussians.ply's feat_* columns
(every other column is kept bit for bit) and classifiers.pt, and scene.json records the stage "features"
and forgets the later stages, which `protosaga run` (or the stage commands) then redo. Checkpoints
(`SCENE/checkpoints/features.pt`, every `checkpoint_every` iterations and on Ctrl-C) resume with
`--resume`, bit for bit on a CPU.

`fit_features` is the loop alone, for any targets and classifiers (a view's classifier may be one
tensor shared by every view), on any frozen geometry.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import Tensor
from tqdm import tqdm

from ..device import default_device
from ..gaussians import DEFAULT_FEATURE_DIM, INITIAL_FEATURE_STD, Gaussians
from ..io.atomic import atomic_write_bytes
from ..io.ply import read_ply
from ..io.scene_dir import Classifiers, SceneDir, SceneDirError
from ..io.scene_lock import writes_scene
from ..render.sparse import WeightsCache, geometry_key
from ..stages import frozen_feature_map
from ..threads import rebalance as rebalance_threads
from .train import (
    DeferredInterrupt,
    TrainConfig,
    TrainingView,
    classification_loss,
    draw_view,
    end_of_iteration,
    new_classifiers,
    prepare_views,
    read_checkpoint,
    scene_fingerprint,
)

STAGE = "features"
"""Its name in scene.json's stages (io/scene_dir.py STAGES: after train, before associate)."""
CHECKPOINT = "features.pt"
"""In SCENE/checkpoints/, beside training's last.pt."""
PASSES = 3
"""Default iterations per training view. On the demo (36 views) Eq. 19 scores best after 30-100 iterations
and worse the longer the features train after that, though the loss keeps falling (bench/RESULTS.md);
3 per view (108 there) leaves about 5 % of the views undrawn."""


@dataclass
class FeatureConfig:
    """Feature training on frozen geometry; the rates, τ and the mask handling are training's defaults."""

    iterations: int | None = None
    """iterations, one random training view each; default 3 per training view (bench/frozen_features.py)"""
    fresh: bool = False
    """start from new random features and classifiers even where the scene has trained ones (without it:
    continue from them where they exist for these masks, else start fresh)"""
    feature_dim: int = DEFAULT_FEATURE_DIM
    """D of new features (continuing needs the scene's D)"""
    temperature: float = TrainConfig.temperature
    """τ of Eq. 6"""
    unlabeled_as_class: bool = TrainConfig.unlabeled_as_class
    """treat unlabeled pixels (mask 0) as one more class, as Gaga does, instead of ignoring them"""
    lr_features: float = TrainConfig.lr_features
    lr_classifiers: float = TrainConfig.lr_classifiers
    checkpoint_every: int = 500
    """also save a checkpoint every this many iterations (always on Ctrl-C and at the end; 0: only then)"""
    seed: int = TrainConfig.seed


@dataclass
class FeatureState:
    """Everything the rest of the loop depends on; a checkpoint is exactly this.

    Attributes:
        features: f_i. [N, D] Parameter
        classifiers: the classifier of each view (one Parameter may serve several views). list of [L_k, D]
        generator: draws the views (CPU).
    """

    iteration: int
    features: torch.nn.Parameter
    classifiers: list[Tensor]
    feature_optimizer: torch.optim.Adam
    classifier_optimizer: torch.optim.Adam
    generator: torch.Generator

    @classmethod
    def start(
        cls, features: Tensor, classifiers: Sequence[Tensor], lr_features: float, lr_classifiers: float, generator: torch.Generator
    ) -> FeatureState:
        """A state at iteration 0 with training's optimizers (features: Adam, eps 1e-15; classifiers: Adam)
        over a copy of `features` and each distinct tensor of `classifiers` (Parameters as they are, other
        tensors copied into new ones)."""
        parameters: dict[int, torch.nn.Parameter] = {}
        for tensor in classifiers:
            parameters.setdefault(id(tensor), tensor if isinstance(tensor, torch.nn.Parameter) else torch.nn.Parameter(tensor.detach().clone()))
        features = torch.nn.Parameter(features.detach().clone())
        return cls(
            0,
            features,
            [parameters[id(t)] for t in classifiers],
            torch.optim.Adam([features], lr=lr_features, eps=1e-15),
            torch.optim.Adam(list(parameters.values()), lr=lr_classifiers),
            generator,
        )


def fit_features(
    geometry: Gaussians,
    views: Sequence[TrainingView],
    state: FeatureState,
    iterations: int,
    temperature: float,
    checkpoint: Path | None = None,
    fingerprint: str = "",
    checkpoint_every: int = 0,
    progress: bool = True,
    weights: WeightsCache | None = None,
    desc: str = "features",
) -> list[float]:
    """Run iterations `state.iteration .. iterations` of L_CE on the frozen `geometry`: each draws a view,
    renders `state.features` with it and steps both optimizers.

    Args:
        geometry: the frozen Gaussians (their own features are ignored), on the training device.
        views: only `cameras` (on that device) and `target` (classifier rows, IGNORE where unlabeled) are read.
        checkpoint: where to save the state every `checkpoint_every` iterations and on Ctrl-C (None: never).
        weights: every view is rendered many times with the same geometry: on the CPU its blending
            weights are computed into this cache on first use and each later render is a sparse product
            (`stages.frozen_feature_map`). None: every iteration rasterizes.
        desc: the progress bar's name.

    Returns:
        each iteration's loss.

    Raises:
        KeyboardInterrupt: on SIGINT or SIGTERM, at the end of the iteration in flight (after saving).
    """
    geometry = geometry.detach()
    losses: list[float] = []
    bar = tqdm(total=iterations, initial=state.iteration, desc=desc, unit="it", dynamic_ncols=True, disable=not progress)
    with DeferredInterrupt() as interrupt:
        while state.iteration < iterations:
            index = draw_view(state.generator, len(views))
            sample = views[index]
            rendered = frozen_feature_map(geometry, sample.cameras, state.features, weights)
            loss = classification_loss(rendered, state.classifiers[index], sample.target, temperature)
            loss.backward()
            for optimizer in (state.feature_optimizer, state.classifier_optimizer):
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            state.iteration += 1
            losses.append(loss.item())
            bar.update(1)
            rebalance_threads()
            if state.iteration % 10 == 0:
                bar.set_postfix(ce=f"{sum(losses[-10:]) / len(losses[-10:]):.4f}")
            if checkpoint is not None:
                end_of_iteration(
                    interrupt, state.iteration, checkpoint_every, lambda: save_checkpoint(checkpoint, state, fingerprint), checkpoint, bar
                )
            elif interrupt.requested:
                bar.close()
                raise KeyboardInterrupt(f"interrupted after iteration {state.iteration}")
    bar.close()
    if checkpoint is not None:
        save_checkpoint(checkpoint, state, fingerprint)
    return losses


# --- checkpoints ----------------------------------------------------------------------------------


def fingerprint_of(views: Sequence[TrainingView], geometry: Gaussians, dim: int) -> str:
    """What a checkpoint was trained on: training's fingerprint of the views and masks, and the geometry."""
    digest = hashlib.sha256(scene_fingerprint(list(views), dim).encode())
    digest.update(geometry_key(geometry).encode())
    return digest.hexdigest()


def save_checkpoint(path: Path, state: FeatureState, fingerprint: str) -> None:
    distinct = list({id(c): c for c in state.classifiers}.values())
    payload = {
        "fingerprint": fingerprint,
        "iteration": state.iteration,
        "features": state.features.detach(),
        "classifiers": [c.detach() for c in distinct],
        "classifier_of_view": [next(i for i, c in enumerate(distinct) if c is t) for t in state.classifiers],
        "feature_optimizer": state.feature_optimizer.state_dict(),
        "classifier_optimizer": state.classifier_optimizer.state_dict(),
        "generator": state.generator.get_state(),
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: Path, config: FeatureConfig, fingerprint: str, device: torch.device) -> FeatureState:
    """The state a checkpoint holds, on `device` (whichever device wrote it)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no checkpoint to resume from; run without --resume")
    payload = read_checkpoint(
        path,
        fingerprint,
        "other Gaussians, training views, masks or feature width, so it cannot resume this scene; run without "
        "--resume to start again",
    )
    distinct = [torch.nn.Parameter(t.to(device)) for t in payload["classifiers"]]
    generator = torch.Generator()
    generator.set_state(payload["generator"])
    state = FeatureState.start(
        payload["features"].to(device), [distinct[i] for i in payload["classifier_of_view"]], config.lr_features, config.lr_classifiers, generator
    )
    state.iteration = payload["iteration"]
    state.feature_optimizer.load_state_dict(payload["feature_optimizer"])
    state.classifier_optimizer.load_state_dict(payload["classifier_optimizer"])
    return state


# --- the stage ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FeatureResult:
    """What `train_features` did.

    Attributes:
        start: how the features started ("resumed at iteration k", "continued from ...", "new: <why>").
        losses: the loss of each iteration run now.
        gaussians: N.
    """

    scene_dir: SceneDir
    start: str
    losses: list[float]
    gaussians: int


def check_config(config: FeatureConfig) -> None:
    problems = [
        f"--iterations must be at least 1, got {config.iterations}" if config.iterations is not None and config.iterations < 1 else "",
        f"--feature-dim must be at least 1, got {config.feature_dim}" if config.feature_dim < 1 else "",
        f"--checkpoint-every must be 0 (off) or positive, got {config.checkpoint_every}" if config.checkpoint_every < 0 else "",
    ]
    problems = [p for p in problems if p]
    if problems:
        raise ValueError("; ".join(problems))


def read_frozen_scene(scene_dir: SceneDir) -> Gaussians:
    """The scene's Gaussians, with or without features; a clear error where there is no scene."""
    root = scene_dir.root
    hint = "`protosaga features` learns the features of an existing scene (made by protosaga train or protosaga import)"
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such scene folder; {hint}")
    if not scene_dir.meta_path.is_file():
        raise SceneDirError(f"{scene_dir.meta_path}: missing, so {root} is not a scene; {hint}")
    if not scene_dir.gaussians_path.is_file():
        raise SceneDirError(f"{scene_dir.gaussians_path}: missing; {hint}")
    return read_ply(scene_dir.gaussians_path).gaussians


def initial_state(
    scene_dir: SceneDir, geometry: Gaussians, views: list[TrainingView], config: FeatureConfig, device: torch.device
) -> tuple[FeatureState, str]:
    """The scene's features and classifiers where it has them for these masks (unless `fresh`), else new
    ones (features from N(0, 0.01²), classifiers from N(0, 1), as training starts); and which, in words."""
    generator = torch.Generator().manual_seed(config.seed)
    why = _why_fresh(scene_dir, geometry, views, config)
    if why is None:
        saved = scene_dir.read_classifiers()
        state = FeatureState.start(
            geometry.features.to(device), [w.to(device) for w in saved.weights], config.lr_features, config.lr_classifiers, generator
        )
        return state, "continued from the scene's features and classifiers (--fresh starts again)"
    features = torch.randn(len(geometry), config.feature_dim, generator=generator) * INITIAL_FEATURE_STD
    classifiers = new_classifiers(views, config.feature_dim, generator, device)
    return FeatureState.start(features.to(device), classifiers, config.lr_features, config.lr_classifiers, generator), f"new ({why})"


def _why_fresh(scene_dir: SceneDir, geometry: Gaussians, views: list[TrainingView], config: FeatureConfig) -> str | None:
    """Why new features start, or None when the scene's are continued."""
    if config.fresh:
        return "--fresh"
    if geometry.feature_dim == 0:
        return "the scene's Gaussians have no features"
    if not scene_dir.classifiers_path.is_file():  # e.g. feat_* columns of another trainer's
        return f"the scene has no {scene_dir.classifiers_path.name}"
    if geometry.feature_dim != config.feature_dim:
        raise ValueError(
            f"{scene_dir.gaussians_path}: has {geometry.feature_dim}-D features; --feature-dim {config.feature_dim} "
            "needs --fresh (the scene's features are then replaced)"
        )
    saved = scene_dir.read_classifiers()
    same = saved.view_names == [v.view.name for v in views] and all(
        torch.equal(old, v.labels) and w.shape == (len(v.labels), config.feature_dim) for old, w, v in zip(saved.labels, saved.weights, views)
    )
    return None if same else f"{scene_dir.classifiers_path.name} was trained on other masks"


@writes_scene(STAGE)
def train_features(
    scene_dir: SceneDir,
    config: FeatureConfig,
    resume: bool = False,
    device: torch.device | None = None,
    progress: bool = True,
    weights: WeightsCache | None = None,
) -> FeatureResult:
    """Learn the features and per-view classifiers of `scene_dir` on its frozen Gaussians (see the module
    docstring), and write them into the scene.

    Args:
        resume: continue from SCENE/checkpoints/features.pt (written for the same Gaussians, views and masks).
        device: where to train; default `default_device()`.
        weights: the training views' blending weights, read and filled (`fit_features`); None: a cache of
            its own, sized for this machine and freed on return (`WeightsCache(0)` rasterizes every iteration).

    Raises:
        FileNotFoundError, SceneDirError: no scene there, or no gaussians.ply.
    """
    device = device or default_device()
    check_config(config)
    geometry = read_frozen_scene(scene_dir)
    scene_dir.sweep()
    meta = scene_dir.read_meta()
    views = prepare_views(scene_dir.load_dataset(), config.unlabeled_as_class)
    names = [v.view.name for v in views]
    if names != meta.train_views:
        raise SceneDirError(
            f"{scene_dir.meta_path}: lists other training views than its dataset {meta.dataset} now has "
            f"({len(meta.train_views)} vs {len(names)}); the scene cannot be matched to its masks"
        )
    fingerprint = fingerprint_of(views, geometry, config.feature_dim)
    iterations = PASSES * len(views) if config.iterations is None else config.iterations
    checkpoint = scene_dir.checkpoints_dir / CHECKPOINT
    if resume:
        state = load_checkpoint(checkpoint, config, fingerprint, device)
        start = f"resumed at iteration {state.iteration}"
    else:
        state, start = initial_state(scene_dir, geometry, views, config, device)
    if progress:
        note = f"; starting over ({checkpoint} is replaced; --resume continues from it)" if checkpoint.exists() and not resume else ""
        print(f"[protosaga] features: {start}; {iterations} iterations on {len(geometry):,} frozen Gaussians{note}", flush=True)
    losses = fit_features(
        geometry.to(device),
        [v.to(device) for v in views],
        state,
        iterations,
        config.temperature,
        checkpoint,
        fingerprint,
        config.checkpoint_every,
        progress,
        WeightsCache() if weights is None else weights,
    )
    # The writes go together: a Ctrl-C or SIGTERM among them waits until scene.json records them. Until then
    # scene.json no longer claims the stages made from the old features.
    with DeferredInterrupt():
        scene_dir.forget_from(STAGE)
        scene_dir.write_features(state.features.detach())
        scene_dir.write_classifiers(Classifiers(names, [v.labels for v in views], [c.detach() for c in state.classifiers]))
        scene_dir.mark_done(STAGE, replace(config, iterations=iterations))  # the count it ran to
    return FeatureResult(scene_dir, start, losses, len(geometry))
