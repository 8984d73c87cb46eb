"""Joint training of Gaussians, 16-D features and per-view cosine classifiers (paper Sec. 3.1, Eq. 1-8).

Each iteration renders one random training view's colour and feature map. The colour is supervised as in
3DGS, `(1 - λ) L1 + λ (1 - SSIM)`; the features through that view's own classifier
`softmax(τ cos(w_k, F̂_k(p)))` against its (view-inconsistent) SAM mask, weighted by λ_CE. Densification is
gsplat's `DefaultStrategy`.

Checkpoints hold everything the loop's future depends on (parameters, optimizer and strategy state,
classifiers, random generators, CUDA's included), so `resume` continues bit for bit on the CPU. On a GPU it
continues with the same parameters, optimizer state and random draws, but not bit for bit: gsplat's
backward pass adds gradients with atomic operations, whose order (and so the last bits of each sum) varies
from run to run.
"""

from __future__ import annotations

import hashlib
import io
import math
import signal
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from gsplat.strategy import DefaultStrategy
from torch import Tensor
from tqdm import tqdm

from ..cameras import Cameras
from ..datasets import DatasetConfig, Scene, View
from ..device import default_device
from ..gaussians import DEFAULT_FEATURE_DIM, Gaussians
from ..io.atomic import atomic_write_bytes
from ..io.outputs import check_scene_output
from ..io.scene_dir import Classifiers, SceneDir, SceneMeta
from ..io.scene_lock import LOCK_FILE, writes_scene
from ..metrics.image import ssim_loss
from ..render import render
from ..threads import rebalance as rebalance_threads
from .classifier import cosine_logits
from .schedule import cap_gaussians, shrink, warmup_factor

IGNORE = -100
"""Cross-entropy target of pixels without a mask."""


@dataclass
class DensifyConfig:
    """gsplat `DefaultStrategy` schedule (its defaults are the 3DGS paper's)."""

    refine_start_iter: int = 500
    refine_stop_iter: int = 15_000
    refine_every: int = 100
    reset_every: int = 3_000
    grow_grad2d: float = 2e-4
    prune_opa: float = 0.005
    max_gaussians: int | None = None
    """keep at most this many Gaussians, pruning the least opaque beyond it (None: no budget, as in 3DGS)"""


@dataclass
class TrainConfig:
    """Joint training (Eq. 1-8). Defaults are the paper's (`--preset paper`, for a GPU)."""

    iterations: int = 30_000
    """training iterations, one random training view each"""
    max_width: int | None = None
    """downscale images (by an integer factor) until they are at most this wide; None keeps full size"""
    warmup_downscales: int = 0
    """start training at 1/2^k of the resolution, doubling it every --warmup-every iterations (0: full from the start)"""
    warmup_every: int = 3_000
    """iterations between two doublings of the warm-up's resolution"""
    sh_degree: int = 3
    """final spherical-harmonics degree"""
    sh_degree_interval: int = 1_000
    """raise the SH degree in use every this many iterations"""
    feature_dim: int = DEFAULT_FEATURE_DIM
    """D, the size of each Gaussian's segmentation feature f_i"""
    temperature: float = 10.0
    """τ of Eq. 6"""
    lambda_ssim: float = 0.2
    """λ of Eq. 3"""
    lambda_ce: float = 0.05
    """λ_CE of Eq. 8"""
    unlabeled_as_class: bool = False
    """treat unlabeled pixels (mask 0) as one more class, as Gaga does, instead of ignoring them"""
    lr_means: float = 1.6e-4
    """initial position learning rate, times the scene extent; decays exponentially to lr_means_final"""
    lr_means_final: float = 1.6e-6
    lr_scales: float = 5e-3
    lr_quats: float = 1e-3
    lr_opacities: float = 5e-2
    lr_sh0: float = 2.5e-3
    lr_shN: float = 2.5e-3 / 20
    lr_features: float = 2.5e-3
    lr_classifiers: float = 5e-4
    densify: DensifyConfig = field(default_factory=DensifyConfig)
    random_init_points: int = 20_000
    """Gaussians to start from when the dataset has no SfM points"""
    checkpoint_every: int = 5_000
    """also save a checkpoint every this many iterations (always on Ctrl-C and at the end)"""
    seed: int = 0


PRESETS: dict[str, TrainConfig] = {
    "paper": TrainConfig(),
    # Fewer iterations at reduced resolution for a 2-core CPU; the method itself is unchanged.
    "cpu": TrainConfig(
        iterations=1_500,
        max_width=320,
        # A quarter, then half the resolution for the first 500 iterations (schedule.py): the SfM start is
        # coarse then anyway, and those iterations cost a fraction.
        warmup_downscales=2,
        warmup_every=250,
        sh_degree_interval=300,
        # Small images give large screen-space gradients: a higher growth threshold keeps the model
        # near 20k Gaussians instead of 100k, and no opacity reset fits such a short schedule. The budget
        # bounds an iteration's cost where a dense SfM start or a detailed capture would grow past it.
        densify=DensifyConfig(
            refine_start_iter=150,
            refine_stop_iter=900,
            refine_every=50,
            reset_every=100_000,
            grow_grad2d=8e-4,
            max_gaussians=25_000,
        ),
        checkpoint_every=500,
    ),
}
Preset = Literal["paper", "cpu"]


@dataclass(frozen=True)
class TrainingView:
    """One training view in memory.

    Attributes:
        view: the dataset view.
        image: RGB. [H, W, 3]
        target: classifier row of each pixel, IGNORE where unlabeled. [H, W] int64
        labels: raw mask label of each classifier row (kept on the CPU: only files read them). [L] int64
        cameras: the view's camera, on the training device.
    """

    view: View
    image: Tensor
    target: Tensor
    labels: Tensor
    cameras: Cameras

    def to(self, device: torch.device) -> "TrainingView":
        return TrainingView(self.view, self.image.to(device), self.target.to(device), self.labels, self.cameras.to(device))

    def shrunk(self, factor: int) -> "TrainingView":
        """This view `factor` times smaller (see `schedule.shrink`); itself at 1."""
        if factor == 1:
            return self
        image, target, cameras = shrink(self.image, self.target, self.cameras, factor)
        return TrainingView(self.view, image, target, self.labels, cameras)


def prepare_views(scene: Scene, unlabeled_as_class: bool) -> list[TrainingView]:
    """Load every training view's image and mask, mapping raw mask labels to classifier rows."""
    prepared = []
    for view in scene.split("train"):
        mask = view.load_mask()
        if mask is None:
            raise FileNotFoundError(
                f"{scene.root / 'masks' / (view.name + '.png')}: no mask for training view {view.name}; "
                "run `protosaga masks` first"
            )
        labels = torch.unique(mask) if unlabeled_as_class else torch.unique(mask[mask > 0])
        rows = torch.searchsorted(labels, mask).clamp(max=max(len(labels) - 1, 0))
        labelled = mask >= 0 if unlabeled_as_class else mask > 0
        target = torch.where(labelled, rows, torch.full_like(rows, IGNORE))
        prepared.append(TrainingView(view, view.load_image(), target, labels, view.cameras))
    if not prepared:
        raise ValueError(f"{scene.root}: the dataset has no training views")
    return prepared


def camera_centres(views: list[View]) -> Tensor:
    """World positions of the views' cameras. [V, 3]"""
    return torch.cat([view.cameras.centers for view in views])


def scene_extent(scene: Scene) -> float:
    """3DGS's scene scale: 1.1 x the largest camera distance from the cameras' mean centre."""
    centres = camera_centres(scene.split("train"))
    return 1.1 * float((centres - centres.mean(0)).norm(dim=1).max().clamp_min(1e-3))


def initial_gaussians(scene: Scene, config: TrainConfig, generator: torch.Generator) -> Gaussians:
    """From the SfM points when there are any (a random subset of --max-gaussians of them when there
    are more: the budget would otherwise drop those that happen to sort first), else random points around
    the cameras."""
    budget = config.densify.max_gaussians
    if scene.points is not None and len(scene.points) >= 4:
        points, colors = scene.points.float(), scene.point_colors.float()
        if budget is not None and len(points) > budget:
            keep = torch.randperm(len(points), generator=generator)[:budget]
            points, colors = points[keep], colors[keep]
        return Gaussians.from_points(points, colors, config.sh_degree, config.feature_dim, generator=generator)
    centres = camera_centres(scene.split("train"))
    extent = scene_extent(scene)
    lower = (centres.min(0).values - extent).tolist()
    upper = (centres.max(0).values + extent).tolist()
    count = config.random_init_points if budget is None else min(config.random_init_points, budget)
    return Gaussians.random_box(count, lower, upper, config.sh_degree, config.feature_dim, generator=generator)


# --- the training state ----------------------------------------------------------------------------


@dataclass
class TrainState:
    """Everything the rest of the run depends on; a checkpoint is exactly this."""

    iteration: int
    params: torch.nn.ParameterDict
    optimizers: dict[str, torch.optim.Adam]
    classifiers: list[Tensor]
    classifier_optimizer: torch.optim.Adam
    strategy_state: dict
    view_generator: torch.Generator


def new_state(gaussians: Gaussians, views: list[TrainingView], config: TrainConfig, extent: float) -> TrainState:
    """A fresh state on the device of `gaussians` (the draws come from CPU generators, so a seed trains
    from the same start on every device)."""
    params = gaussians.as_parameter_dict()
    generator = torch.Generator().manual_seed(config.seed)
    classifiers = new_classifiers(views, config.feature_dim, generator, gaussians.device)
    return TrainState(
        iteration=0,
        params=params,
        optimizers=_optimizers(params, config, extent),
        classifiers=classifiers,
        classifier_optimizer=torch.optim.Adam(classifiers, lr=config.lr_classifiers),
        strategy_state=_strategy(config).initialize_state(scene_scale=extent),
        view_generator=generator,
    )


def new_classifiers(views: list[TrainingView], dim: int, generator: torch.Generator, device: torch.device) -> list[Tensor]:
    """Fresh per-view classifiers w_k (Eq. 6), one row per mask label (at least one), drawn from N(0, 1)
    on the CPU generator in view order. list of [L_k, D] Parameters on `device`"""
    return [torch.nn.Parameter(torch.randn(max(len(v.labels), 1), dim, generator=generator).to(device)) for v in views]


def draw_view(generator: torch.Generator, count: int) -> int:
    """The training view of the next iteration, uniformly at random."""
    return int(torch.randint(count, (1,), generator=generator))


def _optimizers(params: torch.nn.ParameterDict, config: TrainConfig, extent: float) -> dict[str, torch.optim.Adam]:
    """One Adam per parameter, the layout DefaultStrategy edits in place."""
    rates = {
        "means": config.lr_means * extent,
        "scales": config.lr_scales,
        "quats": config.lr_quats,
        "opacities": config.lr_opacities,
        "sh0": config.lr_sh0,
        "shN": config.lr_shN,
        "features": config.lr_features,
    }
    return {name: torch.optim.Adam([params[name]], lr=rates[name], eps=1e-15) for name in params}


def _strategy(config: TrainConfig) -> DefaultStrategy:
    d = config.densify
    return DefaultStrategy(
        prune_opa=d.prune_opa,
        grow_grad2d=d.grow_grad2d,
        refine_start_iter=d.refine_start_iter,
        refine_stop_iter=d.refine_stop_iter,
        refine_every=d.refine_every,
        reset_every=d.reset_every,
        verbose=False,
    )


def scene_fingerprint(views: list[TrainingView], width: int) -> str:
    """What a checkpoint was trained on: the training views' names and sizes, their masks (classifier
    rows and per-pixel targets) and the feature width; a checkpoint resumes only the same."""
    digest = hashlib.sha256(f"features {width}".encode())
    for sample in views:
        digest.update(f"{sample.view.name} {sample.view.width}x{sample.view.height} {len(sample.labels)}".encode())
        digest.update(sample.labels.numpy().tobytes())
        digest.update(sample.target.numpy().tobytes())
    return digest.hexdigest()


def save_checkpoint(path: Path, state: TrainState, fingerprint: str) -> None:
    payload = {
        "fingerprint": fingerprint,
        "iteration": state.iteration,
        "params": {name: p.detach() for name, p in state.params.items()},
        "optimizers": {name: opt.state_dict() for name, opt in state.optimizers.items()},
        "classifiers": [c.detach() for c in state.classifiers],
        "classifier_optimizer": state.classifier_optimizer.state_dict(),
        "strategy_state": state.strategy_state,
        "view_generator": state.view_generator.get_state(),
        "torch_rng": torch.get_rng_state(),
        # Densification on a GPU (DefaultStrategy's splits) draws from CUDA's generators.
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def read_checkpoint(path: Path, fingerprint: str, mismatch: str) -> dict:
    """A checkpoint's payload, read onto the CPU, if it was written for `fingerprint`; else ValueError saying
    it was written for `mismatch`."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a truncated or foreign file raises many different types
        raise ValueError(f"{path}: not a readable checkpoint ({error})") from error
    if not isinstance(payload, dict) or payload.get("fingerprint") != fingerprint:
        raise ValueError(f"{path}: this checkpoint was written for {mismatch}")
    return payload


def load_checkpoint(path: Path, config: TrainConfig, extent: float, fingerprint: str, device: torch.device) -> TrainState:
    """The state a checkpoint holds, on `device` (whichever device wrote it).

    Everything is read onto the CPU first: generator states must stay CPU byte tensors, and the tensors
    that train move to `device` explicitly (the optimizers' state follows its parameters).
    """
    payload = read_checkpoint(
        path,
        fingerprint,
        "other training views or masks (or by an older protosaga), so it cannot resume this dataset; train into "
        "a new -o folder, or add --overwrite instead of --resume to start this scene again from scratch",
    )
    params = torch.nn.ParameterDict({n: torch.nn.Parameter(t.to(device)) for n, t in payload["params"].items()})
    optimizers = _optimizers(params, config, extent)
    for name, optimizer in optimizers.items():
        optimizer.load_state_dict(payload["optimizers"][name])
    classifiers = [torch.nn.Parameter(t.to(device)) for t in payload["classifiers"]]
    classifier_optimizer = torch.optim.Adam(classifiers, lr=config.lr_classifiers)
    classifier_optimizer.load_state_dict(payload["classifier_optimizer"])
    strategy_state = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in payload["strategy_state"].items()}
    generator = torch.Generator()
    generator.set_state(payload["view_generator"])
    torch.set_rng_state(payload["torch_rng"])
    _restore_cuda_rng(payload.get("cuda_rng", []), device)
    return TrainState(
        payload["iteration"], params, optimizers, classifiers, classifier_optimizer, strategy_state, generator
    )


def _restore_cuda_rng(states: list[Tensor], device: torch.device) -> None:
    """CUDA's generators as saved, where the same GPUs train again (a CPU resume draws nothing from them)."""
    if device.type == "cuda" and len(states) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states)


# --- the loop ----------------------------------------------------------------------------------------


def training_loss(
    params: torch.nn.ParameterDict,
    classifier: Tensor,
    sample: TrainingView,
    sh_degree: int,
    config: TrainConfig,
) -> tuple[Tensor, Tensor, dict]:
    """Eq. 8 for one view. Returns the loss, the rendered RGB [H, W, 3] and gsplat's info."""
    out = render(Gaussians.from_tensors(params), sample.cameras, sh_degree=sh_degree, extras=params["features"])
    rgb, features = out.colors[0], out.extras[0]
    reconstruction = (1 - config.lambda_ssim) * (rgb - sample.image).abs().mean()
    reconstruction = reconstruction + config.lambda_ssim * ssim_loss(rgb, sample.image)
    ce = classification_loss(features, classifier, sample.target, config.temperature)
    return reconstruction + config.lambda_ce * ce, rgb, out.info


def classification_loss(features: Tensor, classifier: Tensor, target: Tensor, temperature: float) -> Tensor:
    """Eq. 6-7: the mean cross-entropy of `softmax(τ cos(w_k, F̂_k(p)))` against the mask's classifier row of
    every labelled pixel; 0 (still in the graph) where no pixel is labelled.

    Args:
        features: the rendered feature map F̂_k. [H, W, D]
        classifier: w_k. [L, D]
        target: classifier row of each pixel, IGNORE where unlabeled. [H, W] int64
    """
    logits = cosine_logits(features, classifier, temperature)  # [H, W, L]
    if not (target != IGNORE).any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=IGNORE)


class DeferredInterrupt:
    """Turns SIGINT/SIGTERM into a flag checked between iterations.

    An interrupt in the middle of an iteration (after the view was drawn, between two optimizer steps)
    would leave a state no uninterrupted run passes through; deferring it to the iteration boundary keeps
    every checkpoint on the uninterrupted trajectory, so resuming is bit for bit.
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "DeferredInterrupt":
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._request)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _request(self, signum, frame) -> None:
        self.requested = True


def end_of_iteration(
    interrupt: DeferredInterrupt, iteration: int, every: int, save: Callable[[], None], checkpoint: Path, bar: tqdm
) -> None:
    """Between two iterations: save and stop when interrupted, save when `every` (0: never) divides
    `iteration`.

    Raises:
        KeyboardInterrupt: after saving, when `interrupt` was requested.
    """
    if interrupt.requested:
        save()
        bar.close()
        raise KeyboardInterrupt(f"interrupted after iteration {iteration}; checkpoint {checkpoint}")
    if every and iteration % every == 0:
        save()


def train_loop(
    state: TrainState, views: list[TrainingView], config: TrainConfig, extent: float, checkpoint: Path, fingerprint: str
) -> TrainState:
    """Run iterations `state.iteration .. config.iterations`, checkpointing periodically and on Ctrl-C.

    Raises:
        KeyboardInterrupt: after saving the checkpoint, when interrupted by SIGINT or SIGTERM.
    """
    strategy = _strategy(config)
    means_decay = (config.lr_means_final / config.lr_means) ** (1 / max(config.iterations, 1))
    shrunk: dict[tuple[int, int], TrainingView] = {}  # the warm-up's views, made once each
    bar = tqdm(total=config.iterations, initial=state.iteration, desc="train", unit="it", dynamic_ncols=True)
    with DeferredInterrupt() as interrupt:
        while state.iteration < config.iterations:
            step = state.iteration
            index = draw_view(state.view_generator, len(views))
            sample = views[index]
            factor = warmup_factor(step, config.warmup_downscales, config.warmup_every, sample.view.width, sample.view.height)
            if factor > 1:
                if (index, factor) not in shrunk:
                    shrunk[index, factor] = sample.shrunk(factor)
                sample = shrunk[index, factor]
            else:
                shrunk.clear()
            sh_degree = min(step // config.sh_degree_interval, config.sh_degree)
            state.optimizers["means"].param_groups[0]["lr"] = config.lr_means * extent * means_decay**step
            loss, rgb, info = training_loss(state.params, state.classifiers[index], sample, sh_degree, config)
            strategy.step_pre_backward(state.params, state.optimizers, state.strategy_state, step, info)
            loss.backward()
            for optimizer in (*state.optimizers.values(), state.classifier_optimizer):
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            strategy.step_post_backward(state.params, state.optimizers, state.strategy_state, step, info, packed=False)
            cap_gaussians(state.params, state.optimizers, state.strategy_state, config.densify.max_gaussians)
            state.iteration += 1
            bar.update(1)
            rebalance_threads()  # a viewer opened or closed beside the training
            if step % 10 == 0:
                mse = F.mse_loss(rgb.detach(), sample.image).item()
                psnr = -10 * math.log10(max(mse, 1e-10))
                bar.set_postfix(loss=f"{loss.item():.4f}", psnr=f"{psnr:.2f}", gaussians=len(state.params["means"]))
            end_of_iteration(
                interrupt, state.iteration, config.checkpoint_every, lambda: save_checkpoint(checkpoint, state, fingerprint), checkpoint, bar
            )
    bar.close()
    save_checkpoint(checkpoint, state, fingerprint)
    return state


def check_config(config: TrainConfig) -> None:
    """Refuse settings that would write an untrained or broken scene, before any work."""
    problems = [
        f"--iterations must be at least 1, got {config.iterations}" if config.iterations < 1 else "",
        f"--feature-dim must be at least 1, got {config.feature_dim}" if config.feature_dim < 1 else "",
        f"--sh-degree must be 0..3, got {config.sh_degree}" if not 0 <= config.sh_degree <= 3 else "",
        f"--max-width must be at least 16, got {config.max_width}" if config.max_width is not None and config.max_width < 16 else "",
        f"--checkpoint-every must be 0 (off) or positive, got {config.checkpoint_every}" if config.checkpoint_every < 0 else "",
        f"--warmup-downscales must be 0 (off) or positive, got {config.warmup_downscales}" if config.warmup_downscales < 0 else "",
        f"--warmup-every must be at least 1, got {config.warmup_every}" if config.warmup_every < 1 else "",
        f"--max-gaussians must be at least 1, got {config.densify.max_gaussians}"
        if config.densify.max_gaussians is not None and config.densify.max_gaussians < 1
        else "",
    ]
    problems = [p for p in problems if p]
    if problems:
        raise ValueError("; ".join(problems))


def check_output(scene_dir: SceneDir, resume: bool, overwrite: bool) -> None:
    """`train` writes a new scene only where there is none, continues one only when told (--resume), and
    replaces one only when told (--overwrite)."""
    root = scene_dir.root
    check_scene_output(root)  # never a scene inside another scene's folders
    if resume and overwrite:
        raise ValueError("--resume continues the scene's training and --overwrite starts it again: choose one")
    if root.exists() and not root.is_dir():
        raise ValueError(f"{root}: exists and is not a folder; -o names the scene folder to write")
    checkpoint = scene_dir.checkpoints_dir / "last.pt"
    if resume:
        if not checkpoint.exists():
            raise FileNotFoundError(f"{checkpoint}: no checkpoint to resume from")
        return
    if overwrite or not root.exists() or not any(p.name != LOCK_FILE for p in root.iterdir()):
        return
    if scene_dir.meta_path.exists() and scene_dir.is_imported():
        raise ValueError(
            f"{root}: holds a scene imported with its Gaussians trained elsewhere (protosaga import); training here would "
            "replace them: choose a new -o folder (or --overwrite), or learn only the features with protosaga features"
        )
    if scene_dir.meta_path.exists() or checkpoint.exists():
        state = "a trained scene" if scene_dir.is_done("train") else "an interrupted training (checkpoints/last.pt)"
        raise ValueError(
            f"{root}: already holds {state}; add --resume to continue its training, or --overwrite to train "
            "it again from scratch (its files are replaced), or choose a new -o folder"
        )
    raise ValueError(f"{root}: exists and holds other files; choose a new or empty -o folder (or --overwrite)")


@writes_scene("train", scene="output", create=True)
def train(
    dataset: DatasetConfig,
    output: Path,
    config: TrainConfig,
    resume: bool = False,
    overwrite: bool = False,
    device: torch.device | None = None,
) -> SceneDir:
    """Train on a dataset into the scene directory `output` (DESIGN §7).

    Args:
        resume: continue from `output/checkpoints/last.pt` (written for the same views and masks).
        overwrite: train from scratch even where `output` already holds a scene; its stages are reset
            when the new training finishes.
        device: where to train; default `default_device()` (CUDA and gsplat when there is a GPU).
    """
    device = device or default_device()
    check_config(config)
    scene_dir = SceneDir(output)
    check_output(scene_dir, resume, overwrite)
    scene, downscale = dataset.load_at_most(config.max_width)
    dataset = replace(dataset, downscale=downscale)
    views = prepare_views(scene, config.unlabeled_as_class)
    fingerprint = scene_fingerprint(views, config.feature_dim)
    views = [view.to(device) for view in views]
    extent = scene_extent(scene)
    checkpoint = scene_dir.checkpoints_dir / "last.pt"
    scene_dir.sweep()
    if resume:
        state = load_checkpoint(checkpoint, config, extent, fingerprint, device)
    else:
        checkpoint.unlink(missing_ok=True)  # --overwrite: a later --resume must not find the old run
        torch.manual_seed(config.seed)
        gaussians = initial_gaussians(scene, config, torch.Generator().manual_seed(config.seed))
        state = new_state(gaussians.to(device), views, config, extent)
    scene_dir.root.mkdir(parents=True, exist_ok=True)
    state = train_loop(state, views, config, extent, checkpoint, fingerprint)

    scene_dir.write_gaussians(Gaussians.from_tensors(state.params).detach())
    scene_dir.write_classifiers(
        Classifiers([v.view.name for v in views], [v.labels for v in views], [c.detach() for c in state.classifiers])
    )
    meta = SceneMeta(
        dataset=str(Path(dataset.root).resolve()),
        dataset_format=scene.format,
        downscale=downscale,
        split_rule=dataset.split,
        train_views=[v.view.name for v in views],
    )
    scene_dir.mark_done("train", config, meta)
    return scene_dir
