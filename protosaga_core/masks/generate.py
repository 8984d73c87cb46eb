"""The masks stage: one uint16 label map per training view in `<dataset>/masks/<name>.png`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from tqdm import tqdm

from ..datasets.scene import Scene, View
from ..io.atomic import remove_stale_temporaries
from ..io.labelmaps import MAX_MASK_IDS, save_label_map
from .fallback import FallbackMaskGenerator
from .records import FlattenRule, MaskRecord, flatten
from .sam import SamMaskGenerator, SamModel
from .simulated import NOISE_LEVELS, NoiseName, simulate_sam_masks
from .weights import MOBILE_SAM, cached_weights

MaskMethod = Literal["auto", "sam", "fallback", "simulated"]
MASK_TEMPORARIES = ".*.png.*.tmp"
"""What `save_label_map` (through `atomic_open`) names a label map while writing it: `.<stem>.png.<random>.tmp`."""


def default_points_per_side(model: SamModel, cuda: bool) -> int:
    """SAM's prompt grid: Gaga's 64 for the ViTs; for MobileSAM 32 on a GPU and 16 on a CPU, where the mask
    decoder's cost grows with the prompts: on 2 cores 16 per side take ~8 s a view, 32 ~30 s, 64 ~120 s,
    for per-frame mIoU 0.55 / 0.62 / 0.64 on rendered views with GT (bench/masks.py --sam)."""
    if model != "vit_t":
        return 64
    return 32 if cuda else 16


LabelSource = Callable[[View], np.ndarray]
"""Makes one view's label map. [H, W] uint16"""


@dataclass
class MasksConfig:
    """Per-view 2D instance masks for the training views (paper Sec. 3.1)."""

    method: MaskMethod = "auto"
    """`auto`: MobileSAM when its weights were fetched (`protosaga weights mobile_sam`), else the
    fallback; `sam`: Segment Anything's automatic masks (--checkpoint, or the fetched MobileSAM weights
    for --model vit_t); `fallback`: multi-scale Felzenszwalb segments, no weights needed, much weaker;
    `simulated`: SAM-like errors applied to the dataset's ground-truth instance maps (benchmarks only)."""
    checkpoint: Path | None = None
    """SAM checkpoint file (e.g. sam_vit_h_4b8939.pth), for --method sam; vit_t defaults to the fetched one."""
    model: SamModel = "vit_t"
    """SAM architecture of the checkpoint (vit_t = MobileSAM)."""
    rule: FlattenRule = "score"
    """who wins where proposals overlap: `score` highest predicted IoU (Gaga), `large` larger mask,
    `small` smaller mask (the two DEVA / Gaussian Grouping modes)."""
    noise: NoiseName = "default"
    """error rates of --method simulated."""
    seed: int = 0
    """seed of --method simulated."""
    points_per_side: int | None = None
    """SAM prompt grid resolution; default 64 for vit_h/l/b (Gaga), for vit_t 32 on a GPU and 16 on a CPU."""
    pred_iou_thresh: float = 0.7
    """SAM keeps masks whose predicted IoU exceeds this (Gaga: 0.7)."""
    max_width: int | None = None
    """make the masks on the views shrunk (by an integer factor) to at most this wide; `protosaga run` takes
    training's --max-width when this is not given (training reads masks as wide as its views or wider)"""


def generate_masks(scene: Scene, config: MasksConfig | None = None, progress: bool = True) -> list[Path]:
    """Write `<scene.root>/masks/<name>.png` (uint16, 0 = no mask) for every training view.

    Views whose file already exists are skipped, so an interrupted run resumes; writes are atomic. Each
    training view's `mask_path` is set to its file. Maps have the views' (possibly downscaled) size.

    Returns:
        the mask files of the training views, in view order.
    """
    config = resolve(config or MasksConfig())
    views = scene.split("train")
    sweep_mask_temporaries(scene.root)
    paths = [scene.root / "masks" / f"{view.name}.png" for view in views]
    pending = [(view, path) for view, path in zip(views, paths) if not path.exists()]
    if pending:
        source = build_source(config, [view for view, _ in pending])
        done = len(views) - len(pending)
        for view, path in tqdm(pending, "masks", len(views), initial=done, unit="view", disable=not progress):
            labels = source(view)
            if labels.shape != (view.height, view.width):
                raise ValueError(f"{view.name}: mask is {list(labels.shape)}, view is {[view.height, view.width]}")
            count = len(np.unique(labels[labels > 0]))
            if count > MAX_MASK_IDS:  # every later stage would refuse the file (View.load_mask)
                raise ValueError(
                    f"{view.image_path}: {config.method} gave {count:,} masks, more than the {MAX_MASK_IDS:,} a view may "
                    "hold; use fewer prompts (--points-per-side) or a higher --pred-iou-thresh"
                )
            save_label_map(path, labels)
    for view, path in zip(views, paths):
        view.mask_path = path
    return paths


def sweep_mask_temporaries(dataset: Path) -> list[Path]:
    """Remove the label maps a killed masks stage was writing in `dataset/masks/` (`atomic_open`'s temporaries
    older than `STALE_AFTER_S`), and only those: the folder is the user's. Returns the removed."""
    return remove_stale_temporaries(dataset / "masks", pattern=MASK_TEMPORARIES)


def resolve(config: MasksConfig) -> MasksConfig:
    """The config with `auto`, the default checkpoint and the prompt grid decided; configuration errors
    are raised here, before any model is loaded or file written."""
    if config.method not in ("auto", "sam", "fallback", "simulated"):
        raise ValueError(f"unknown mask method {config.method!r}; choose auto, sam, fallback or simulated")
    if config.noise not in NOISE_LEVELS:
        raise ValueError(f"unknown noise level {config.noise!r}; choose {', '.join(NOISE_LEVELS)}")
    if config.method == "auto":
        fetched = cached_weights(MOBILE_SAM)
        if fetched is None:
            print(
                "protosaga masks: no SAM weights, using the Felzenszwalb fallback (much weaker object masks); "
                "run `protosaga weights mobile_sam` once to use MobileSAM",
                flush=True,
            )
            return replace(config, method="fallback")
        config = replace(config, method="sam", model="vit_t", checkpoint=fetched)
    if config.method == "sam" and config.checkpoint is None:
        if config.model != "vit_t":
            raise ValueError(f"--method sam --model {config.model} needs --checkpoint PATH (e.g. sam_vit_h_4b8939.pth)")
        fetched = cached_weights(MOBILE_SAM)
        if fetched is None:
            raise ValueError("--model vit_t needs MobileSAM's weights: run `protosaga weights mobile_sam` once")
        config = replace(config, checkpoint=fetched)
    if config.points_per_side is None:
        config = replace(config, points_per_side=default_points_per_side(config.model, torch.cuda.is_available()))
    return config


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
