"""The eval stage (`protosaga eval SCENE`): image quality and instance segmentation (paper Sec. 4.1, DESIGN §6).

- PSNR and SSIM of the RGB renders of the test views against their images (renders clamped to [0, 1],
  black background as in training; per-view values averaged).
- Instance mIoU / precision / recall (Gaga's protocol, `metrics.instance_metrics`) of each requested
  `segment` method on the test views that have GT instance maps; predictions are (re)computed into the
  default folder SCENE/segment/<method>/test/ when missing or older than their inputs.
- The same metrics for the consistent masks (`association/`) on the training views with GT (paper Table 3).
- The 3D object score of the per-Gaussian labels (`metrics/objects3d.py`) where the training views have GT
  instance and depth maps (the synthetic datasets write both).

Whether id 0 counts is `include_zero` (default off; Gaga's published numbers count it); every report
states the mode. The report goes to `eval/metrics.json` (atomically) and is printed.
"""

from __future__ import annotations

import json as _json  # aliased: EvalConfig has a field named `json`
from dataclasses import dataclass
from typing import Any

import torch
from tqdm import tqdm

from .datasets.scene import Scene, View
from .device import default_device
from .gaussians import Gaussians
from .io.atomic import atomic_write_bytes
from .io.labelmaps import load_label_map
from .io.scene_dir import FEATURES_HINT, SceneDir
from .io.scene_lock import writes_scene
from .method.baselines import cls_model_path
from .method.segment import Method, SegmentConfig, output_dir, predictions_current, segment
from .metrics.image import psnr, ssim
from .metrics.instances import InstanceMetrics, instance_metrics
from .metrics.objects3d import ObjectMetrics3D, gaussian_gt_objects, object_metrics_3d
from .render import render
from .stages import DEFAULT_CHUNK_VIEWS, read_consistent_mask, view_batches


@dataclass
class EvalConfig:
    """Evaluate a scene (`protosaga eval SCENE [--include-zero] [--methods lifted proto cls kmeans] [--json]`)."""

    include_zero: bool = False
    """count id 0 as an ordinary id (Gaga's setting); off by default, and the report says which"""
    methods: tuple[Method, ...] = ("lifted", "proto")
    """segmentation methods to evaluate on the test views (lifted = rendered per-Gaussian labels, the
    default; proto = the paper's Eq. 19; cls, kmeans = the paper's Table 4 baselines)"""
    json: bool = False
    """print the report as one JSON object instead of a table"""


@dataclass(frozen=True)
class EvalReport:
    """What `evaluate` measured.

    Attributes:
        include_zero: whether id 0 counted as an ordinary id.
        num_test_views: test views rendered for PSNR/SSIM.
        psnr, ssim: means over the test views (None without test views).
        segmentation: per method, instance metrics on the test views with GT (absent without GT).
        association: instance metrics of the consistent masks on the training views with GT, or None.
        objects_3d: the 3D object score of the per-Gaussian labels (metrics/objects3d.py), where training views
            have GT instance and depth maps; else None.
    """

    include_zero: bool
    num_test_views: int
    psnr: float | None
    ssim: float | None
    segmentation: dict[str, InstanceMetrics]
    association: InstanceMetrics | None
    objects_3d: ObjectMetrics3D | None = None

    @property
    def zero_mode(self) -> str:
        if self.include_zero:
            return "id 0 counted as an ordinary id (--include-zero, Gaga's setting)"
        return "id 0 not counted (default; --include-zero counts it, as Gaga does)"

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "include_zero": self.include_zero,
            "zero_mode": self.zero_mode,
            "num_test_views": self.num_test_views,
            "psnr": self.psnr,
            "ssim": self.ssim,
            "segmentation": {method: m.to_json_dict() for method, m in self.segmentation.items()},
            "association": None if self.association is None else self.association.to_json_dict(),
            "objects_3d": None if self.objects_3d is None else self.objects_3d.to_json_dict(),
        }

    def table(self) -> str:
        lines = ["evaluation (Gaga's instance protocol)", f"  {self.zero_mode}"]
        if self.psnr is not None:
            lines.append(f"  test views {self.num_test_views}: PSNR {self.psnr:.3f} dB, SSIM {self.ssim:.4f}")
        rows = [(f"segment {method} (test)", m) for method, m in self.segmentation.items()]
        if self.association is not None:
            rows.append(("association (train)", self.association))
        if rows:
            lines.append(f"  {'':24} {'mIoU':>7} {'prec.':>7} {'recall':>7} {'GT ids':>7} {'pred ids':>8} {'frames':>7}")
            for name, m in rows:
                lines.append(
                    f"  {name:24} {m.miou:7.4f} {m.precision:7.4f} {m.recall:7.4f} {m.num_gt:7d} {m.num_pred:8d} {m.num_frames:7d}"
                )
        else:
            lines.append("  no GT instance maps: no segmentation metrics")
        if self.objects_3d is not None:
            m = self.objects_3d
            lines.append(
                f"  3D objects (per-Gaussian labels, opacity-weighted): mIoU {m.miou:.4f}, precision {m.precision:.4f}, "
                f"recall {m.recall:.4f} ({m.num_gt} GT objects, {m.num_pred} predicted)"
            )
        return "\n".join(lines)


@writes_scene("eval")
def evaluate(scene_dir: SceneDir, config: EvalConfig = EvalConfig(), progress: bool = True) -> EvalReport:
    """Measure the scene, write `eval/metrics.json`, print the report and mark the stage done. No blending
    weights are shared with it: it renders the test views, each once (`segment`)."""
    scene = scene_dir.load_dataset()
    test_views = scene.split("test")
    gaussians = scene_dir.read_gaussians().to(default_device())
    quality = _image_quality(gaussians, scene, test_views, progress)
    methods = list(dict.fromkeys(config.methods))  # unique, in the given order
    if gaussians.feature_dim == 0 and any(m != "lifted" for m in methods):  # an imported scene
        skipped = [m for m in methods if m != "lifted"]
        methods = [m for m in methods if m == "lifted"]
        print(f"eval: {', '.join(skipped)} skipped: {scene_dir.root} has no per-Gaussian features yet; {FEATURES_HINT}", flush=True)
    del gaussians  # segment loads its own copy; do not hold two

    test_gt = [v for v in test_views if v.instance_path is not None]
    segmentation = {}
    for method in methods:
        if test_gt:
            segmentation[method] = _segmentation_metrics(scene_dir, method, test_views, test_gt, config, progress)

    train_gt = [v for v in scene.split("train") if v.instance_path is not None]
    association = None
    if train_gt and scene_dir.is_done("associate"):
        association = instance_metrics(
            [v.load_instances() for v in train_gt],
            [read_consistent_mask(scene_dir, v) for v in train_gt],
            config.include_zero,
        )

    objects_3d = None
    surface_views = [v for v in scene.split("train") if v.instance_path is not None and v.depth_path is not None]
    if surface_views and scene_dir.is_done("prototypes"):
        objects_3d = gaussian_object_score(scene_dir, surface_views)
    report = EvalReport(config.include_zero, len(test_views), *quality, segmentation, association, objects_3d)
    atomic_write_bytes(scene_dir.eval_dir / "metrics.json", (_json.dumps(report.to_json_dict(), indent=1) + "\n").encode())
    print(_json.dumps(report.to_json_dict()) if config.json else report.table())
    scene_dir.mark_done("eval", config)
    return report


def gaussian_object_score(scene_dir: SceneDir, views: list[View]) -> ObjectMetrics3D:
    """The 3D object score of the scene's per-Gaussian labels against the GT objects their centres lie on
    in `views` (which need GT instance and depth maps), weighted by opacity."""
    gaussians = scene_dir.read_gaussians()
    labels = torch.from_numpy(scene_dir.read_labels(len(gaussians)))
    truth = gaussian_gt_objects(gaussians.means.detach(), views)
    return object_metrics_3d(labels, truth, gaussians.activated_opacities.detach())


def _image_quality(gaussians: Gaussians, scene: Scene, views: list[View], progress: bool) -> tuple[float | None, float | None]:
    """Mean per-view PSNR and SSIM of the clamped RGB renders; (None, None) without views."""
    if not views:
        return None, None
    psnrs, ssims = [], []
    with tqdm(total=len(views), desc="eval renders", unit="view", disable=not progress) as bar:
        for batch in view_batches(views, DEFAULT_CHUNK_VIEWS):
            with torch.no_grad():
                colors = render(gaussians, scene.cameras(batch).to(gaussians.device)).colors.clamp(0, 1).cpu()
            for view, image in zip(batch, colors):
                target = view.load_image()
                psnrs.append(psnr(image, target))
                ssims.append(ssim(image, target))
            bar.update(len(batch))
    return sum(psnrs) / len(psnrs), sum(ssims) / len(ssims)


def _segmentation_metrics(
    scene_dir: SceneDir, method: Method, test_views: list[View], gt_views: list[View], config: EvalConfig, progress: bool
) -> InstanceMetrics:
    """Instance metrics of one method's test predictions, segmenting first when they are missing or stale."""
    segment_config = SegmentConfig(split="test", method=method)
    folder = output_dir(scene_dir, segment_config)
    extra = {
        "lifted": [scene_dir.labels_path],
        "proto": [scene_dir.prototypes_path],
        "cls": [cls_model_path(scene_dir)],
        "kmeans": [],
    }.get(method, [])
    inputs = [scene_dir.gaussians_path, scene_dir.association_dir, *extra]
    if not predictions_current(folder, [v.name for v in test_views], inputs):
        segment(scene_dir, segment_config, progress)
    return instance_metrics(
        [v.load_instances() for v in gt_views],
        [load_label_map(folder / f"{v.name}.png") for v in gt_views],
        config.include_zero,
    )
