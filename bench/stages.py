"""Frozen-geometry stages, rasterizing vs cached sparse blending weights (issue 13, DESIGN §3):
`python bench/stages.py [--scene DIR] [--runs 2] [--cls-iterations 100] [--json bench/stages.json]`.

On a trained demo scene (`--scene`, or one trained into a temporary folder the way the tests' fixture does:
`protosaga run` on assets/demo with 300 iterations), one thread, each stage as the pipeline calls it:

- association: `consensus.mask_membership`, each training view's raw masks lifted (`transpose_render`);
- prototypes: `collect_view_prototypes`, each training view's features rendered (Eq. 17);
- lifted labels: `lifted_gaussian_labels`, the consistent masks' votes (`lift_votes`);
- cls: `train_cls`, the Cls baseline's training (one view rendered forward and backward per iteration).

Columns: `old` rasterizes (a `WeightsCache(0)` keeps no weights; what each stage does when run by
itself, as `protosaga associate` or `protosaga prototypes`); `alone` gives the stage a `WeightsCache()` of
its own, computing every weight it uses; `in run` is its time with one cache passed along association ->
prototypes -> lifted labels, as `protosaga run` chains them (later stages find the training views'
weights cached). Extra rows: the prototypes stage (features, then labels, in one block)
and all three. Times are the minimum over `--runs`; the old and new outputs are compared. Memory: the
training views' weights (nonzeros, MB).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from protosaga_core.cli import main as cli_main
from protosaga_core.io.scene_dir import SceneDir
from protosaga_core.method.baselines import ClsSettings, train_cls
from protosaga_core.method.consensus import cluster_masks, mask_membership
from protosaga_core.method.prototypes import collect_view_prototypes, ensemble_prototypes, lifted_gaussian_labels
from protosaga_core.render.sparse import WeightsCache

DEMO = Path(__file__).resolve().parents[1] / "assets" / "demo"
QUICK_TRAINING = ["--preset", "cpu", "--iterations", "300", "--sh-degree", "0", "--masks.method", "simulated"]


@dataclass
class Record:
    stage: str
    old_s: float
    alone_s: float | None
    in_run_s: float | None
    note: str

    def row(self) -> str:
        def cell(value: float | None, digits: int) -> str:
            return f"{value:9.{digits}f}" if value is not None else f"{'-':>9}"

        speedups = [self.old_s / t if t is not None else None for t in (self.alone_s, self.in_run_s)]
        return f"{self.stage:<17}{cell(self.old_s, 3)}{cell(self.alone_s, 3)}{cell(self.in_run_s, 3)}{cell(speedups[0], 1)}{cell(speedups[1], 1)}  {self.note}"


def train_scene(root: Path) -> Path:
    """The tests' `trained_scene_readonly`: the demo dataset, 300 iterations."""
    shutil.copytree(DEMO, root / "data")
    assert cli_main(["run", str(root / "data"), "-o", str(root / "scene"), *QUICK_TRAINING]) == 0
    return root / "scene"


def timed(fn: Callable[[WeightsCache], object], runs: int, budget: int | None) -> tuple[float, object]:
    """Minimum wall time of `fn` over `runs`, each given a fresh `WeightsCache(budget)` (None: the default
    budget), and its last result."""
    best, result = float("inf"), None
    for _ in range(runs):
        start = time.perf_counter()
        result = fn(WeightsCache(budget))
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scene", type=Path, help="a trained scene directory (default: train one into a temporary folder)")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--cls-iterations", type=int, default=100)
    parser.add_argument("--json", type=Path, help="also write the records here")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        scene_path = args.scene or train_scene(Path(tmp))
        records, memory = run_bench(SceneDir(scene_path), args.runs, args.cls_iterations)
    print(f"{'stage':<17}{'old s':>9}{'alone s':>9}{'in run s':>9}{'x alone':>9}{'x in run':>9}  outputs")
    for record in records:
        print(record.row())
    print(
        f"weights of {memory['views']} training views ({memory['width']}x{memory['height']}, {memory['gaussians']} Gaussians): "
        f"{memory['nnz']} nonzeros ({memory['nnz_per_pixel']:.1f} per pixel), {memory['mb']:.1f} MB, "
        f"{memory['mb_per_view']:.2f} MB per view"
    )
    if args.json:
        args.json.write_text(json.dumps({"stages": [asdict(r) for r in records], "memory": memory}, indent=1) + "\n")


def run_bench(scene_dir: SceneDir, runs: int, cls_iterations: int) -> tuple[list[Record], dict]:
    gaussians = scene_dir.read_gaussians()
    scene = scene_dir.load_dataset()
    views = scene.split("train")
    raw_masks = [view.load_mask() for view in views]

    def association(weights):
        return mask_membership(gaussians, ((view.cameras, mask[None]) for view, mask in zip(views, raw_masks)), weights=weights)

    def prototypes(weights):
        return collect_view_prototypes(scene_dir, gaussians, scene, progress=False, weights=weights)

    def labels(weights):
        return lifted_gaussian_labels(scene_dir, gaussians, scene, ids, progress=False, weights=weights)

    def cls(weights):
        return train_cls(scene_dir, gaussians, scene, ClsSettings(iterations=cls_iterations), progress=False, weights=weights)

    per_view = collect_view_prototypes(scene_dir, gaussians, scene, progress=False)
    ids = ensemble_prototypes([p[0] for p in per_view], [p[1] for p in per_view]).ids
    stages = {"association": association, "prototypes": prototypes, "lifted labels": labels}
    old = {name: timed(fn, runs, 0) for name, fn in stages.items()}
    alone = {name: timed(fn, runs, None) for name, fn in stages.items()}
    # The prototypes stage renders features, then lifts labels, from the same training views.
    both = timed(lambda weights: (prototypes(weights), labels(weights)), runs, None)[0]
    in_run = {name: float("inf") for name in stages}
    for _ in range(runs):
        cache = WeightsCache()
        for name, fn in stages.items():
            start = time.perf_counter()
            fn(cache)
            in_run[name] = min(in_run[name], time.perf_counter() - start)
        memory = weights_memory(cache, gaussians, views[0])
    cls_old, cls_new = timed(cls, 1, 0), timed(cls, 1, None)

    records = [Record(name, old[name][0], alone[name][0], in_run[name], compare(name, old[name][1], alone[name][1])) for name in stages]
    records.append(Record("prototypes stage", old["prototypes"][0] + old["lifted labels"][0], both, in_run["prototypes"] + in_run["lifted labels"], "features + labels"))
    records.append(Record("all three", sum(old[n][0] for n in stages), None, sum(in_run.values()), "as protosaga run chains them"))
    records.append(Record(f"cls ({cls_iterations} it)", cls_old[0], cls_new[0], None, compare("cls", cls_old[1], cls_new[1])))
    return records, memory


def weights_memory(cache: WeightsCache, gaussians, view) -> dict:
    """What the cache holds after the three stages: every training view's weights."""
    mb = cache.used_bytes / 2**20
    return {
        "views": len(cache),
        "width": view.width,
        "height": view.height,
        "gaussians": len(gaussians),
        "nnz": cache.nnz,
        "nnz_per_pixel": cache.nnz / (len(cache) * view.width * view.height),
        "mb": mb,
        "mb_per_view": mb / len(cache),
        "hits": cache.hits,
        "misses": cache.misses,
    }


def compare(stage: str, old, new) -> str:
    """How the old and new outputs differ (float rounding only is the goal)."""
    if stage == "association":
        members = abs(old.members - new.members).max() / abs(old.members).max()
        same = np.array_equal(cluster_masks(old)[0], cluster_masks(new)[0])
        return f"membership max rel. diff {members:.1e}, same clusters {same}"
    if stage == "prototypes":
        same_ids = all(torch.equal(a[0], b[0]) and torch.equal(a[2], b[2]) for a, b in zip(old, new))
        diff = max(float((a[1] - b[1]).abs().max()) for a, b in zip(old, new) if len(a[1]))
        return f"same ids and pixel counts {same_ids}, max prototype diff {diff:.1e}"
    if stage == "lifted labels":
        return f"labels differ on {int((old != new).sum())} of {len(old)} Gaussians"
    return f"features max diff {float((old.features - new.features).abs().max()):.1e}"


if __name__ == "__main__":
    main()
