"""Segmentation quality in 2D and 3D, the paper's method against each option: `python bench/quality.py`.

For each `protosaga synth --preset bench` scene (seeds 0, 1, 2 by default; simulated SAM masks at the
`--noise` level, GT instance and depth maps), trains once with the cpu preset, then for every association
variant (the paper's memory bank with the depth / prob / both criteria, and view-consensus association)
measures, with Gaga's protocol (id 0 not counted):
- train-view association mIoU / precision / recall (paper Table 3 analog);
- test-view segmentation by Eq. 19 on rendered features (`proto`, the paper), by the rendered lifted
  per-Gaussian labels (`lifted`), and for the paper's association and the default one also the Table 4
  baselines (`cls`, `kmeans`);
- the 3D object score (metrics3d.py) of the per-Gaussian labels: lifted, and for the paper's association
  also Eq. 19 on each Gaussian's own feature (`features`, what the project shipped first);
- PSNR on the test views and the minutes each part took.
The paper's method is the row `bank-both` with `proto` in 2D and `features` in 3D.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from protosaga_core.association import AssociateConfig, associate
from protosaga_core.datasets import DatasetConfig
from protosaga_core.evaluate import EvalConfig, evaluate, gaussian_object_score
from protosaga_core.labelmaps import load_label_map
from protosaga_core.metrics import instance_metrics
from protosaga_core.prototypes import PrototypesConfig, compute_prototypes, read_consistent_mask
from protosaga_core.segment import SegmentConfig, segment
from protosaga_core.synthetic import synthesize
from protosaga_core.train import PRESETS, train

PAPER = "bank-both"
DEFAULT = "consensus"
ASSOCIATIONS: dict[str, AssociateConfig] = {
    "bank-depth": AssociateConfig(grouping="bank", criterion="depth"),
    "bank-prob": AssociateConfig(grouping="bank", criterion="prob"),
    PAPER: AssociateConfig(grouping="bank", criterion="both"),
    DEFAULT: AssociateConfig(),
    "consensus-strict": AssociateConfig(consensus_thresholds=(0.9, 0.8, 0.7)),
    "consensus-lenient": AssociateConfig(consensus_thresholds=(0.9, 0.8, 0.7, 0.6, 0.5)),
    "consensus-keep1": AssociateConfig(consensus_min_masks=1),
}
BASELINES = ("cls", "kmeans")


@dataclass
class SceneResult:
    seed: int
    psnr: float
    association: dict[str, dict[str, float]] = field(default_factory=dict)  # variant -> metrics
    segmentation: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)  # variant -> method -> metrics
    objects_3d: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)  # variant -> label rule -> metrics
    minutes: dict[str, float] = field(default_factory=dict)


def _metrics(m) -> dict[str, float]:
    return {"miou": m.miou, "precision": m.precision, "recall": m.recall, "num_pred": m.num_pred, "num_gt": m.num_gt}


def _segment_metrics(scene_dir, method: str, test_views, test_gt) -> dict[str, float]:
    folder = segment(scene_dir, SegmentConfig(split="test", method=method), progress=False)
    return _metrics(instance_metrics(test_gt, [load_label_map(folder / f"{v.name}.png") for v in test_views]))


def run_scene(root: Path, seed: int, noise: str, iterations: int | None, variants: list[str]) -> SceneResult:
    start = time.perf_counter()
    dataset = DatasetConfig(synthesize(root / "data", "bench", seed, noise=noise, progress=False))
    config = PRESETS["cpu"] if iterations is None else replace(PRESETS["cpu"], iterations=iterations)
    with contextlib.redirect_stderr(io.StringIO()):  # the training progress bar
        scene_dir = train(dataset, root / "scene", config)
    trained = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        psnr = evaluate(scene_dir, EvalConfig(methods=()), progress=False).psnr
    result = SceneResult(seed, psnr, minutes={"train": (trained - start) / 60})

    scene = scene_dir.load_dataset()
    train_views, test_views = scene.split("train"), scene.split("test")
    train_gt = [v.load_instances() for v in train_views]
    test_gt = [v.load_instances() for v in test_views]
    for name in variants:
        associate_config = ASSOCIATIONS[name]
        began = time.perf_counter()
        associate(scene_dir, associate_config, progress=False)
        result.association[name] = _metrics(instance_metrics(train_gt, [read_consistent_mask(scene_dir, v) for v in train_views]))
        result.minutes[f"associate {name}"] = (time.perf_counter() - began) / 60
        rules = ("features", "lifted") if name == PAPER else ("lifted",)
        result.objects_3d[name] = {}
        for rule in rules:  # lifted last: the lifted segmentation renders its labels
            compute_prototypes(scene_dir, PrototypesConfig(gaussian_labels=rule), progress=False)
            result.objects_3d[name][rule] = _metrics(gaussian_object_score(scene_dir, train_views))
        methods = ("proto", "lifted") + (BASELINES if name in (PAPER, DEFAULT) else ())
        result.segmentation[name] = {m: _segment_metrics(scene_dir, m, test_views, test_gt) for m in methods}
        result.minutes[f"evaluate {name}"] = (time.perf_counter() - began) / 60
        print(f"  seed {seed} {name}: {json.dumps(result.segmentation[name]['lifted'])}", file=sys.stderr, flush=True)
    result.minutes["total"] = (time.perf_counter() - start) / 60
    return result


def _row(name: str, values: list[dict[str, float]]) -> str:
    cells = " | ".join(f"{v['miou']:.3f} {v['precision']:.3f} {v['recall']:.3f}" for v in values)
    mean = {k: statistics.fmean(v[k] for v in values) for k in ("miou", "precision", "recall")}
    return f"{name:>28} | {cells} | {mean['miou']:.3f} {mean['precision']:.3f} {mean['recall']:.3f}"


def print_tables(results: list[SceneResult], variants: list[str]) -> None:
    header = f"{'':>28} | " + " | ".join(f"seed {r.seed}: I     P     R  " for r in results) + " | mean: I     P     R"
    print("Association: consistent masks on the training views (mIoU, precision, recall; id 0 not counted)")
    print(header)
    for name in variants:
        print(_row(name, [r.association[name] for r in results]))
    print("\nSegmentation of the test views (method on association)")
    print(header)
    for name in variants:
        for method in results[0].segmentation[name]:
            print(_row(f"{method} on {name}", [r.segmentation[name][method] for r in results]))
    print("\n3D objects: per-Gaussian labels against the GT objects (opacity-weighted, unknown GT ignored)")
    print(header)
    for name in variants:
        for rule in results[0].objects_3d[name]:
            print(_row(f"{rule} on {name}", [r.objects_3d[name][rule] for r in results]))
    print("\nPSNR on the test views and minutes (quiet machine)")
    for r in results:
        parts = ", ".join(f"{k} {v:.1f}" for k, v in r.minutes.items() if not k.startswith("evaluate"))
        print(f"  seed {r.seed}: PSNR {r.psnr:.2f} dB; minutes: {parts}")
    print(f"  mean PSNR {statistics.fmean(r.psnr for r in results):.2f} dB")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--noise", default="default", choices=("low", "default", "high"))
    parser.add_argument("--iterations", type=int, help="override the cpu preset's training iterations")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--associations", nargs="+", choices=list(ASSOCIATIONS), default=list(ASSOCIATIONS),
                        help="association variants to measure (default: all)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            results.append(run_scene(Path(tmp) / f"seed{seed}", seed, args.noise, args.iterations, args.associations))
            print(f"seed {seed} done in {results[-1].minutes['total']:.1f} min", file=sys.stderr, flush=True)
    print_tables(results, args.associations)
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
