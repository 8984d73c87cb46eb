"""Ablations of the paper's Tables 3 and 4 on synthetic scenes: `python bench/ablation.py [--json PATH]`.

For each `protosaga synth --preset bench` scene (seeds 0, 1, 2 by default; simulated SAM masks at the
default noise), trains with the cpu preset, then reports, with Gaga's protocol (id 0 not counted):
- Table 3 analog: the associated masks on the training views for association by depth (Gaga), by
  classifier probability, and by both (Proto-SaGa);
- Table 4 analog: test-view segmentation by a trained classifier (cls), k-means over prototypes, and the
  prototype ensemble (proto), all on the `both` association;
- PSNR on the test views of training with λ_CE = 0.05 versus λ_CE = 0 (segmentation loss off).
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
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from protosaga_core.association import AssociateConfig, associate
from protosaga_core.datasets import DatasetConfig
from protosaga_core.evaluate import EvalConfig, evaluate
from protosaga_core.labelmaps import load_label_map
from protosaga_core.metrics import instance_metrics
from protosaga_core.prototypes import PrototypesConfig, compute_prototypes
from protosaga_core.synthetic import synthesize
from protosaga_core.train import PRESETS, train

CRITERIA = ("depth", "prob", "both")
METHODS = ("cls", "kmeans", "proto")


@dataclass
class SceneResult:
    seed: int
    association: dict[str, dict[str, float]]  # criterion -> miou/precision/recall/num_pred
    segmentation: dict[str, dict[str, float]]  # method -> miou/precision/recall/num_pred
    psnr_ce: float
    psnr_no_ce: float
    seconds: float


def _metrics(m) -> dict[str, float]:
    return {"miou": m.miou, "precision": m.precision, "recall": m.recall, "num_pred": m.num_pred, "num_gt": m.num_gt}


def run_scene(root: Path, seed: int, iterations: int | None) -> SceneResult:
    start = time.perf_counter()
    dataset = DatasetConfig(synthesize(root / "data", "bench", seed, progress=False))
    config = PRESETS["cpu"] if iterations is None else replace(PRESETS["cpu"], iterations=iterations)
    scene_dir = train(dataset, root / "scene", config)
    no_ce = train(dataset, root / "scene_no_ce", replace(config, lambda_ce=0.0))

    scene = scene_dir.load_dataset()
    train_views = scene.split("train")
    gts = [v.load_instances() for v in train_views]
    association = {}
    for criterion in CRITERIA:  # `both` last: prototypes and segmentation use it
        associate(scene_dir, AssociateConfig(criterion=criterion), progress=False)
        predicted = [load_label_map(scene_dir.association_dir / f"{v.name}.png") for v in train_views]
        association[criterion] = _metrics(instance_metrics(gts, predicted))
    compute_prototypes(scene_dir, PrototypesConfig(), progress=False)
    with contextlib.redirect_stdout(io.StringIO()):
        report = evaluate(scene_dir, EvalConfig(methods=METHODS), progress=False)
        plain = evaluate(no_ce, EvalConfig(methods=()), progress=False) if no_ce.is_done("train") else None
    return SceneResult(
        seed=seed,
        association=association,
        segmentation={method: _metrics(m) for method, m in report.segmentation.items()},
        psnr_ce=report.psnr,
        psnr_no_ce=plain.psnr,
        seconds=time.perf_counter() - start,
    )


def print_tables(results: list[SceneResult]) -> None:
    def row(name: str, values: list[dict[str, float]]) -> str:
        cells = " | ".join(f"{v['miou']:.3f} {v['precision']:.3f} {v['recall']:.3f}" for v in values)
        mean = {k: statistics.fmean(v[k] for v in values) for k in ("miou", "precision", "recall")}
        return f"{name:>8} | {cells} | {mean['miou']:.3f} {mean['precision']:.3f} {mean['recall']:.3f}"

    seeds = " | ".join(f"seed {r.seed}: I     P     R  " for r in results)
    print("Table 3 analog: associated masks on training views (mIoU, precision, recall; id 0 not counted)")
    print(f"{'':>8} | {seeds} | mean: I     P     R")
    for criterion in CRITERIA:
        print(row(criterion, [r.association[criterion] for r in results]))
    print("\nTable 4 analog: segmentation of test views from the `both` association")
    print(f"{'':>8} | {seeds} | mean: I     P     R")
    for method in METHODS:
        print(row(method, [r.segmentation[method] for r in results]))
    print("\nPSNR on test views (dB)")
    for r in results:
        print(f"  seed {r.seed}: λ_CE=0.05 {r.psnr_ce:.2f}   λ_CE=0 {r.psnr_no_ce:.2f}   ({r.seconds / 60:.1f} min)")
    print(
        f"  mean:   λ_CE=0.05 {statistics.fmean(r.psnr_ce for r in results):.2f}   "
        f"λ_CE=0 {statistics.fmean(r.psnr_no_ce for r in results):.2f}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--iterations", type=int, help="override the cpu preset's training iterations")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            results.append(run_scene(Path(tmp) / f"seed{seed}", seed, args.iterations))
            print(f"seed {seed} done in {results[-1].seconds / 60:.1f} min", file=sys.stderr, flush=True)
    print_tables(results)
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
