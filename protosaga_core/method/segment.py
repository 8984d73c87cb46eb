"""Label maps for any split (`protosaga segment SCENE --split {train,test}`), by Eq. 19 or a Table 4 baseline.

Methods:
- `lifted` (the default; beyond the paper): the per-Gaussian labels of `labels.npy` rendered one-hot, the
  instance with the largest rendered weight at each pixel (`lifting.render_label_maps`), so the 2D label
  maps agree with what isolate, delete and export act on in 3D.
- `proto` (the paper's Eq. 19): argmax of τ·cosine to the ensemble prototypes of `prototypes.npz`.
- `kmeans`, `cls`: the paper's Table 4 baselines (`baselines.py`).

Every method writes one `<stem>.png` uint16 label map per view of the split. The feature methods label
every pixel (0 only when the scene has no instance at all); `lifted` leaves 0 where labelled Gaussians
cover less than half the pixel.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Literal

import torch
import tyro
from torch import Tensor
from tqdm import tqdm

from ..datasets.scene import Scene, Split
from ..device import default_device
from ..gaussians import Gaussians
from ..io.labelmaps import save_label_map
from ..io.outputs import check_output_dir
from ..io.scene_dir import SceneDir
from ..io.scene_lock import is_inside, writes_scene
from ..stages import DEFAULT_CHUNK_VIEWS, render_features, view_batches
from .baselines import ClsSettings, kmeans_prototypes, train_or_load_cls
from .lifting import render_label_maps
from .prototypes import DEFAULT_TEMPERATURE, Prototypes, classify, collect_view_prototypes

Method = Literal["lifted", "proto", "cls", "kmeans"]
METHODS: tuple[Method, ...] = ("lifted", "proto", "cls", "kmeans")
DEFAULT_METHOD: Method = "lifted"


@dataclass
class SegmentConfig:
    """Segment every view of a split (`protosaga segment SCENE --split test [-o DIR] [--method proto]`)."""

    split: Split = "test"
    """which views to segment"""
    output: Annotated[Path | None, tyro.conf.arg(aliases=("-o",))] = None
    """folder for the <stem>.png label maps; default SCENE/segment/<method>/<split>/"""
    overwrite: bool = False
    """write into an --output folder that already holds files"""
    method: Method = DEFAULT_METHOD
    """lifted: render the per-Gaussian labels; proto: Eq. 19 with the ensemble prototypes (the paper);
    cls, kmeans: the paper's Table 4 baselines"""
    chunk_views: int = DEFAULT_CHUNK_VIEWS
    """views rendered per batch"""
    cls_iterations: int = ClsSettings.iterations
    """cls: training iterations, one training view each. Gaga uses 10k on a GPU; 300 keeps the CPU run to
    minutes (each iteration renders a view forward and backward) at the cost of an under-trained classifier"""
    cls_lr_features: float = ClsSettings.lr_features
    """cls: Adam learning rate of the per-Gaussian features (Gaga's feature_lr)"""
    cls_lr_classifier: float = ClsSettings.lr_classifier
    """cls: Adam learning rate of the linear classifier (Gaga's)"""
    cls_reg3d_lambda: float = ClsSettings.reg3d_lambda
    """cls: weight of Gaga's 3D neighbourhood term (0 disables it)"""
    kmeans_restarts: int = 10
    """kmeans: k-means++ initialisations; the run with the lowest inertia wins"""
    kmeans_max_iterations: int = 300
    """kmeans: Lloyd iterations per run at most (runs stop when assignments no longer change)"""
    seed: int = 0
    """seed of the cls initialisation and view order and of the k-means++ draws"""

    def cls_settings(self) -> ClsSettings:
        return ClsSettings(self.cls_iterations, self.cls_lr_features, self.cls_lr_classifier, self.cls_reg3d_lambda, self.seed)


def output_dir(scene_dir: SceneDir, config: SegmentConfig) -> Path:
    """Where `segment` writes: `config.output`, or SCENE/segment/<method>/<split>/."""
    return config.output if config.output is not None else scene_dir.root / "segment" / config.method / config.split


@writes_scene("segment", only_if=lambda scene_dir, config, **_: is_inside(output_dir(scene_dir, config), scene_dir.root))
def segment(scene_dir: SceneDir, config: SegmentConfig = SegmentConfig(), progress: bool = True) -> Path:
    """Write one uint16 `<stem>.png` label map per view of `config.split`; returns the folder.

    Every view is rasterized (each is rendered once: blending weights would not pay); the Cls baseline's
    training keeps its training views' weights in a cache of its own (`train_or_load_cls`)."""
    if config.method not in METHODS:
        raise ValueError(f"unknown method {config.method!r}; expected one of {METHODS}")
    scene = scene_dir.load_dataset()
    views = scene.split(config.split)
    if not views:
        raise ValueError(f"{scene.root}: the dataset has no {config.split} views")
    out = output_dir(scene_dir, config)
    if config.output is not None:
        check_output_dir(out, config.overwrite, free=("segment", "exports"))
    gaussians = scene_dir.read_gaussians().to(default_device())
    if config.method != "lifted":  # Eq. 19 and the Table 4 baselines classify rendered features
        scene_dir.require_features(gaussians, f"--method {config.method}")
    desc = f"segment {config.split} ({config.method})"
    # The folder is made once what the method needs has been read (or trained): a failure leaves none.
    if config.method == "lifted":
        labels = torch.from_numpy(scene_dir.read_labels(len(gaussians)))
        ids = torch.unique(labels[labels > 0])
        out.mkdir(parents=True, exist_ok=True)
        with tqdm(total=len(views), desc=desc, unit="view", disable=not progress) as bar:
            for batch in view_batches(views, config.chunk_views):
                maps = render_label_maps(gaussians, scene.cameras(batch).to(gaussians.device), labels, ids)
                for view, label_map in zip(batch, maps.cpu()):
                    save_label_map(out / f"{view.name}.png", label_map)
                bar.update(len(batch))
        return out
    gaussians, predict = _predictor(scene_dir, gaussians, scene, config, progress)
    out.mkdir(parents=True, exist_ok=True)
    for view, features in render_features(gaussians, scene, views, config.chunk_views, progress, desc):
        save_label_map(out / f"{view.name}.png", predict(features))
    return out


def _predictor(
    scene_dir: SceneDir, gaussians: Gaussians, scene: Scene, config: SegmentConfig, progress: bool
) -> tuple[Gaussians, Callable[[Tensor], Tensor]]:
    """The Gaussians to render (cls renders its own trained features) and features [H, W, D] -> ids [H, W],
    for the methods that classify rendered features."""
    if config.method == "cls":
        model = train_or_load_cls(scene_dir, gaussians, scene, config.cls_settings(), progress)
        return replace(gaussians, features=model.features.to(gaussians.device)), model.predict
    temperature = float(scene_dir.read_meta().configs.get("prototypes", {}).get("temperature", DEFAULT_TEMPERATURE))
    if config.method == "proto":
        prototypes = Prototypes.load(scene_dir.prototypes_path)
    else:
        per_view = collect_view_prototypes(scene_dir, gaussians, scene, config.chunk_views, progress)
        prototypes = kmeans_prototypes(
            [p[0] for p in per_view], [p[1] for p in per_view], config.seed, config.kmeans_restarts, config.kmeans_max_iterations
        )
    return gaussians, lambda features: classify(features, prototypes, temperature)


def predictions_current(folder: Path, stems: Sequence[str], inputs: Sequence[Path]) -> bool:
    """Whether `folder` holds `<stem>.png` for every stem, none older than any existing input path."""
    files = [folder / f"{stem}.png" for stem in stems]
    if not all(f.is_file() for f in files):
        return False
    newest_input = max((os.stat(p).st_mtime_ns for p in inputs if p.exists()), default=0)
    return min(f.stat().st_mtime_ns for f in files) >= newest_input
