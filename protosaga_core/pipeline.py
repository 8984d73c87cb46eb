"""`protosaga run` and `protosaga demo`: every stage in order, reusing the ones already finished."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import tyro

from .capture import ColmapConfig, is_capture, pose_capture
from .datasets import DatasetConfig, Scene
from .evaluate import EvalConfig, EvalReport, evaluate
from .io.cache import cache_dir
from .io.outputs import check_outside_scenes, check_scene_output, is_trained_scene, real_path
from .io.scene_dir import SceneDir, config_record
from .io.scene_lock import scene_lock, writes_scene
from .masks import MasksConfig, generate_masks
from .masks.generate import resolve as resolve_masks
from .masks.generate import sweep_mask_temporaries
from .method.association import AssociateConfig, associate
from .method.frozen_features import FeatureConfig, train_features
from .method.prototypes import PrototypesConfig, compute_prototypes
from .method.refine import RefineConfig, refine_features, refine_plan
from .method.train import PRESETS, TrainConfig, train
from .render.sparse import WeightsCache

DEMO_DATASET = Path(__file__).resolve().parents[1] / "assets" / "demo"


@dataclass
class RunConfig:
    """Configs of every stage `protosaga run` chains."""

    colmap: ColmapConfig = field(default_factory=ColmapConfig)
    """used only when the dataset is a folder of photos or a video (posed first, as `protosaga colmap` does)"""
    posed_dataset: Path | None = None
    """where photos or a video are posed into; default: SCENE_dataset beside the scene folder"""
    masks: MasksConfig = field(default_factory=MasksConfig)
    """used only for training views that have no mask yet"""
    train: tyro.conf.OmitArgPrefixes[TrainConfig] = field(default_factory=lambda: PRESETS["cpu"])
    associate: AssociateConfig = field(default_factory=AssociateConfig)
    refine: RefineConfig = field(default_factory=RefineConfig)
    prototypes: PrototypesConfig = field(default_factory=PrototypesConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    force: bool = False
    """rerun every stage even when it finished earlier with the same flags (the scene is remade)"""
    paper: bool = False
    """the paper's method as Gaga's code runs it: memory-bank association (Eq. 9-16, ranking the Gaussians
    within each cell of a 32x32 grid; --associate.num-patches 1 ranks them per mask, as Eq. 10 reads),
    per-Gaussian labels by Eq. 19 on each f_i, segmentation by Eq. 19, features as trained (no refine stage);
    overrides the four settings it names"""

    def resolved(self) -> "RunConfig":
        """The configs the stages run with: `paper` applied."""
        if not self.paper:
            return self
        return replace(
            self,
            associate=replace(self.associate, grouping="bank"),
            refine=replace(self.refine, passes=0),
            prototypes=replace(self.prototypes, gaussian_labels="features"),
            eval=replace(self.eval, methods=("proto",)),
        )


@writes_scene("run", scene="output", create=True)
def run(
    dataset: DatasetConfig, output: Path, config: RunConfig, progress: bool = True, timer: StageTimer | None = None
) -> EvalReport:
    """[colmap for photos or a video] -> masks (if missing) -> train -> associate -> refine -> prototypes ->
    eval, into the scene directory `output`.

    A stage finished earlier is reused only when scene.json records the same flags for it (and the scene
    was made from this dataset); otherwise it runs again, and so does every later stage. Each decision is
    printed, and at the end the time each stage took (also kept in `timer`, when given).
    """
    check_scene_output(output)  # before any work: never a scene inside another scene's folders
    if config.posed_dataset is not None:
        check_outside_scenes(config.posed_dataset)
    timer = timer or StageTimer()
    try:
        return run_stages(dataset, output, config, progress, timer)
    finally:
        _stage("times", timer.summary())


def run_stages(dataset: DatasetConfig, output: Path, config: RunConfig, progress: bool, timer: StageTimer) -> EvalReport:
    config = config.resolved()
    if is_capture(dataset.root):
        target = config.posed_dataset or output.with_name(f"{output.name}_dataset")
        _stage("colmap", f"{dataset.root} holds photos without poses: posing them into {target} (protosaga colmap)")
        with timer("colmap"):
            print(pose_capture(dataset.root, target, config.colmap, progress=progress).summary())
        dataset = replace(dataset, root=target, format="colmap")
    scene_dir = SceneDir(output)
    scene = dataset.load()
    if scene_dir.meta_path.exists():
        check_same_dataset(scene_dir, dataset, config.force)
        scene_dir.sweep()
    imported = scene_dir.meta_path.exists() and scene_dir.is_imported()
    if any(view.mask_path is None for view in scene.split("train")):
        masks = resolve_masks(config.masks)  # `auto` decided here, so the line says what runs
        detail = f"sam ({masks.model})" if masks.method == "sam" else masks.method
        mask_scene = masking_scene(dataset, config, scene_dir if imported else None)
        size = f"{mask_scene.views[0].width}x{mask_scene.views[0].height}"
        _stage("masks", f"{detail} masks for the training views, at {size} like training (--masks.max-width)")
        with timer("masks"):
            generate_masks(mask_scene, masks, progress=progress)
    else:
        sweep_mask_temporaries(scene.root)
        _stage("masks", f"every training view has a mask in {scene.root / 'masks'}; reused (delete them to make new ones)")
    rerun = stage_decision(scene_dir, "train", config.train, config.force)
    if imported:  # Gaussians trained elsewhere stay as they are (frozen geometry)
        _stage("train", "none: an imported scene keeps its Gaussians as imported")
        if needs_features(config) and not scene_dir.is_done("features"):
            _stage("features", "not done yet: the settings read features; learnt on the frozen Gaussians (protosaga features)")
            with timer("features"):
                train_features(scene_dir, FeatureConfig(), progress=progress)
    elif rerun is None:
        _stage("train", "done earlier with these flags; reused")
    else:
        checkpoint = scene_dir.checkpoints_dir / "last.pt"
        resume = rerun == NOT_DONE and checkpoint.exists()
        _stage("train", "resuming from the last checkpoint" if resume else f"{rerun}: {config.train.iterations} iterations")
        with timer("train"):
            train(dataset, output, config.train, resume=resume, overwrite=rerun != NOT_DONE)
    associate_and_prototypes(scene_dir, config, progress, timer)
    _stage("eval", "test-view rendering and segmentation")
    with timer("eval"):
        return evaluate(scene_dir, config.eval, progress=progress)


class StageTimer:
    """The wall-clock seconds of each stage that ran, in order, for the summary at the end of `run`."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = time.perf_counter() - start

    def summary(self) -> str:
        if not self.seconds:
            return "no stage ran (all reused)"
        parts = [f"{stage} {format_seconds(seconds)}" for stage, seconds in self.seconds.items()]
        return ", ".join(parts) + f"; {format_seconds(sum(self.seconds.values()))} in all"


def format_seconds(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 60 else f"{int(seconds // 60)} min {seconds % 60:02.0f} s"


def associate_and_prototypes(scene_dir: SceneDir, config: RunConfig, progress: bool,
                             timer: StageTimer | None = None) -> WeightsCache:
    """The associate, refine and prototypes stages of `run`, each unless done earlier with these flags,
    sharing one cache of blending weights: all render the training views of the same frozen geometry, so
    association computes their weights and the later stages reuse them (DESIGN §3). Returns the cache:
    `run` drops it, freeing the weights before evaluation, which renders other views."""
    weights = WeightsCache()
    grouping = config.associate.grouping
    how = "view consensus" if grouping == "consensus" else f"memory bank, criterion {config.associate.criterion}"
    timer = timer or StageTimer()
    run_stage(scene_dir, "associate", config.associate, config.force, how, timer,
              lambda: associate(scene_dir, config.associate, progress=progress, weights=weights))
    run_stage(scene_dir, "refine", config.refine, config.force, refine_plan(scene_dir, config.refine), timer,
              lambda: refine_features(scene_dir, config.refine, progress=progress, weights=weights))
    labels = config.prototypes.gaussian_labels
    run_stage(scene_dir, "prototypes", config.prototypes, config.force,
              f"per-view prototypes, their ensemble and {labels} per-Gaussian labels", timer,
              lambda: compute_prototypes(scene_dir, config.prototypes, progress=progress, weights=weights))
    return weights


NOT_DONE = "not done yet"


def run_stage(scene_dir: SceneDir, stage: str, config: Any, force: bool, plan: str, timer: StageTimer,
              work: Callable[[], Any]) -> None:
    """`work` (the stage), timed, unless it was done earlier with this config; either way, says so and why."""
    rerun = stage_decision(scene_dir, stage, config, force)
    if rerun is None:
        _stage(stage, "done earlier with these flags; reused")
    else:
        _stage(stage, f"{rerun}: {plan}")
        with timer(stage):
            work()


def masking_scene(dataset: DatasetConfig, config: RunConfig, imported: SceneDir | None) -> Scene:
    """The dataset at the size its views are masked: --masks.max-width, else the size training (or the
    import) reads them at: SAM on full-size photos costs several times more, and training would shrink
    its masks anyway."""
    if config.masks.max_width is None and imported is not None:
        return replace(dataset, downscale=imported.read_meta().downscale).load()
    return dataset.load_at_most(config.masks.max_width or config.train.max_width)[0]


def needs_features(config: RunConfig) -> bool:
    """Whether the run's settings read per-Gaussian features (an imported scene has none until `features`)."""
    return config.associate.grouping == "bank" or config.prototypes.gaussian_labels == "features"


def dataset_of_scene(root: Path) -> DatasetConfig:
    """The dataset an imported scene records (`protosaga run SCENE` runs it on its own dataset)."""
    if not is_trained_scene(real_path(root)):
        raise ValueError(
            f"{root}: is no scene (no protosaga scene.json); give the scene folder to write with -o SCENE, or a scene "
            "made by protosaga import as the only argument"
        )
    scene_dir = SceneDir(root)
    if not scene_dir.is_imported():  # its training flags are not on this command line: it would train again
        raise ValueError(
            f"{root}: `protosaga run SCENE` runs a scene made by protosaga import; for a scene trained here give its "
            "dataset and the flags it was trained with: protosaga run DATASET -o SCENE ..."
        )
    meta = scene_dir.read_meta()
    return DatasetConfig(Path(meta.dataset), meta.dataset_format, 1, meta.split_rule)


def stage_decision(scene_dir: SceneDir, stage: str, config: Any, force: bool) -> str | None:
    """Why `stage` must run, or None when its finished outputs were made with the same config."""
    if force:
        return "--force"
    if not scene_dir.is_done(stage):
        return NOT_DONE
    recorded = scene_dir.read_meta().configs.get(stage)
    changes = config_changes(recorded, config_record(config))
    return f"flags changed since it ran ({changes})" if changes else None


def config_changes(old: Any, new: Any, prefix: str = "") -> str:
    """The first few differences between two recorded configs, as `name old -> new`; "" when equal."""
    if isinstance(old, dict) and isinstance(new, dict):
        parts = [config_changes(old.get(k), new.get(k), f"{prefix}{k}.") for k in sorted(set(old) | set(new))]
        parts = [p for p in parts if p]
        return ", ".join(parts[:3]) + (", ..." if len(parts) > 3 else "")
    return "" if old == new else f"{prefix.rstrip('.')} {old} -> {new}"


def check_same_dataset(scene_dir: SceneDir, dataset: DatasetConfig, force: bool) -> None:
    """A scene is continued only from the dataset it was made from (with --force it is remade)."""
    meta = scene_dir.read_meta()
    given = Path(dataset.root).resolve()
    if force or Path(meta.dataset) == given and meta.split_rule == dataset.split:
        return
    raise ValueError(
        f"{scene_dir.root}: was made from {meta.dataset} (split {meta.split_rule}), not {given} (split "
        f"{dataset.split}); choose a new -o folder, or add --force to remake every stage from {given}"
    )


def demo_dataset() -> Path:
    """The bundled demo dataset, or the same scene generated into the cache where it is not shipped."""
    if (DEMO_DATASET / "transforms_train.json").exists():
        return DEMO_DATASET
    from .synthetic import synthesize

    generated = cache_dir() / "demo-dataset"
    if not (generated / "transforms_train.json").exists():
        synthesize(generated, "demo", seed=0)
    return generated


def _stage(name: str, detail: str) -> None:
    print(f"[protosaga] {name}: {detail}", flush=True)


def run_demo(output: Path | None, config: RunConfig) -> tuple[Path, EvalReport]:
    """The whole method on the demo scene; returns the scene directory and the evaluation."""
    output = output or cache_dir() / "demo"
    with scene_lock(output, "demo", create=True):  # the lock names `demo`, not the `run` it calls
        report = run(DatasetConfig(demo_dataset()), output, config)
    return output, report
