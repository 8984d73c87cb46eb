"""`protosaga run` and `protosaga demo`: every stage in order, reusing the ones already finished."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import tyro

from .association import AssociateConfig, associate
from .cache import cache_dir
from .datasets import DatasetConfig
from .evaluate import EvalConfig, EvalReport, evaluate
from .masks import MasksConfig, generate_masks
from .masks.generate import resolve as resolve_masks
from .prototypes import PrototypesConfig, compute_prototypes
from .scene_dir import SceneDir
from .train import PRESETS, TrainConfig, train

DEMO_DATASET = Path(__file__).resolve().parents[1] / "assets" / "demo"


@dataclass
class RunConfig:
    """Configs of every stage `protosaga run` chains."""

    masks: MasksConfig = field(default_factory=MasksConfig)
    """used only for training views that have no mask yet"""
    train: tyro.conf.OmitArgPrefixes[TrainConfig] = field(default_factory=lambda: PRESETS["cpu"])
    associate: AssociateConfig = field(default_factory=AssociateConfig)
    prototypes: PrototypesConfig = field(default_factory=PrototypesConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    force: bool = False
    """rerun every stage even when its outputs exist"""
    paper: bool = False
    """the paper's exact method: memory-bank association (Eq. 9-16), per-Gaussian labels by Eq. 19 on
    each f_i, segmentation by Eq. 19; overrides the three settings it names"""

    def resolved(self) -> "RunConfig":
        """The configs the stages run with: `paper` applied."""
        if not self.paper:
            return self
        return replace(
            self,
            associate=replace(self.associate, grouping="bank"),
            prototypes=replace(self.prototypes, gaussian_labels="features"),
            eval=replace(self.eval, methods=("proto",)),
        )


def run(dataset: DatasetConfig, output: Path, config: RunConfig, progress: bool = True) -> EvalReport:
    """masks (if missing) -> train -> associate -> prototypes -> eval, into the scene directory `output`."""
    config = config.resolved()
    scene_dir = SceneDir(output)
    scene = dataset.load()
    if any(view.mask_path is None for view in scene.split("train")):
        masks = resolve_masks(config.masks)  # `auto` decided here, so the line says what runs
        detail = f"sam ({masks.model})" if masks.method == "sam" else masks.method
        _stage("masks", f"{detail} masks for the training views")
        generate_masks(scene, masks, progress=progress)
    if config.force or not scene_dir.is_done("train"):
        checkpoint = scene_dir.checkpoints_dir / "last.pt"
        resume = checkpoint.exists() and not config.force
        _stage("train", "resuming from the last checkpoint" if resume else f"{config.train.iterations} iterations")
        train(dataset, output, config.train, resume=resume)
    if config.force or not scene_dir.is_done("associate"):
        how = "view consensus" if config.associate.grouping == "consensus" else f"memory bank, criterion {config.associate.criterion}"
        _stage("associate", how)
        associate(scene_dir, config.associate, progress=progress)
    if config.force or not scene_dir.is_done("prototypes"):
        _stage("prototypes", f"per-view prototypes, their ensemble and {config.prototypes.gaussian_labels} per-Gaussian labels")
        compute_prototypes(scene_dir, config.prototypes, progress=progress)
    _stage("eval", "test-view rendering and segmentation")
    return evaluate(scene_dir, config.eval, progress=progress)


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
    report = run(DatasetConfig(demo_dataset()), output, config)
    return output, report
