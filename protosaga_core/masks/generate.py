"""The masks stage: one uint16 label map per training view in `<dataset>/masks/<name>.png`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from tqdm import tqdm

from ..datasets.scene import Scene, View
from ..labelmaps import save_label_map
from .fallback import FallbackMaskGenerator
from .records import FlattenRule, MaskRecord, flatten
from .sam import SamMaskGenerator, SamModel
from .simulated import NOISE_LEVELS, NoiseName, simulate_sam_masks

MaskMethod = Literal["sam", "fallback", "simulated"]

LabelSource = Callable[[View], np.ndarray]
"""Makes one view's label map. [H, W] uint16"""


@dataclass
class MasksConfig:
    """Per-view 2D instance masks for the training views (paper Sec. 3.1)."""

    method: MaskMethod = "fallback"
    """`sam`: Segment Anything's automatic masks (needs --checkpoint); `fallback`: multi-scale
    Felzenszwalb segments, no weights needed, much weaker; `simulated`: SAM-like errors applied to the
    dataset's ground-truth instance maps (benchmarks only)."""
    checkpoint: Path | None = None
    """SAM checkpoint file (e.g. sam_vit_h_4b8939.pth), for --method sam."""
    model: SamModel = "vit_h"
    """SAM architecture of the checkpoint."""
    rule: FlattenRule = "score"
    """who wins where proposals overlap: `score` highest predicted IoU (Gaga), `large` larger mask,
    `small` smaller mask (the two DEVA / Gaussian Grouping modes)."""
    noise: NoiseName = "default"
    """error rates of --method simulated."""
    seed: int = 0
    """seed of --method simulated."""
    points_per_side: int = 64
    """SAM prompt grid resolution (Gaga: 64)."""
    pred_iou_thresh: float = 0.7
    """SAM keeps masks whose predicted IoU exceeds this (Gaga: 0.7)."""


def generate_masks(scene: Scene, config: MasksConfig | None = None, progress: bool = True) -> list[Path]:
    """Write `<scene.root>/masks/<name>.png` (uint16, 0 = no mask) for every training view.

    Views whose file already exists are skipped, so an interrupted run resumes; writes are atomic. Each
    training view's `mask_path` is set to its file. Maps have the views' (possibly downscaled) size.

    Returns:
        the mask files of the training views, in view order.
    """
    config = config or MasksConfig()
    _check(config)
    views = scene.split("train")
    paths = [scene.root / "masks" / f"{view.name}.png" for view in views]
    pending = [(view, path) for view, path in zip(views, paths) if not path.exists()]
    if pending:
        source = build_source(config, [view for view, _ in pending])
        done = len(views) - len(pending)
        for view, path in tqdm(pending, "masks", len(views), initial=done, unit="view", disable=not progress):
            labels = source(view)
            if labels.shape != (view.height, view.width):
                raise ValueError(f"{view.name}: mask is {list(labels.shape)}, view is {[view.height, view.width]}")
            save_label_map(path, labels)
    for view, path in zip(views, paths):
        view.mask_path = path
    return paths


def _check(config: MasksConfig) -> None:
    """Configuration errors, raised before any model is loaded or file written."""
    if config.method == "sam" and config.checkpoint is None:
        raise ValueError(
            "--method sam needs --checkpoint PATH (e.g. sam_vit_h_4b8939.pth); without one, use --method fallback"
        )
    if config.method not in ("sam", "fallback", "simulated"):
        raise ValueError(f"unknown mask method {config.method!r}; choose sam, fallback or simulated")
    if config.noise not in NOISE_LEVELS:
        raise ValueError(f"unknown noise level {config.noise!r}; choose {', '.join(NOISE_LEVELS)}")


def build_source(config: MasksConfig, views: Sequence[View]) -> LabelSource:
    """The label-map maker for `config`, checked against the views it will be asked for."""
    if config.method == "simulated":
        lacking = next((view for view in views if view.instance_path is None), None)
        if lacking is not None:
            raise ValueError(f"--method simulated needs ground-truth instance maps; view {lacking.name} has none")
        return lambda view: simulate_sam_masks(view.load_instances().numpy(), view.name, config.seed, config.noise)

    generator: Callable[[np.ndarray], list[MaskRecord]]
    if config.method == "sam":
        generator = SamMaskGenerator(config.checkpoint, config.model, config.points_per_side, config.pred_iou_thresh)
    else:
        generator = FallbackMaskGenerator()

    def source(view: View) -> np.ndarray:
        return flatten(generator(_rgb_uint8(view)), config.rule, shape=(view.height, view.width))

    return source


def _rgb_uint8(view: View) -> np.ndarray:
    """The view's image as mask generators take it. [H, W, 3] uint8 RGB"""
    return (view.load_image() * 255.0).round().clamp(0, 255).byte().numpy()
