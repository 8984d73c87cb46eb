"""Quality per minute on the CPU: `python bench/training.py [--minutes 5] [--statue DIR] [--json PATH]`.

For each scene, the `cpu` preset trained for what fits a wall-clock budget:
1. the preset as shipped (1,500 iterations), timed: iterations per second over the whole run (set-up
   included; the rate falls as densification adds Gaussians), the Gaussians at the end, and the mean PSNR
   of the test views;
2. if that took less than the budget: a training of budget x that rate iterations, the preset otherwise
   unchanged (its densification stops at iteration 900 either way), measured the same way: the quality
   after ~the budget.
Scenes: the demo (assets/demo, made by the project) and, with `--statue DIR`, the real statue (a copy of
../shared/data/statue_colmap with MobileSAM masks from `protosaga masks DIR`; the preset trains it at
250 px, its `max_width` 320 over 1000-px photos).

`--beside-viewer`: iterations per second of a short training (BESIDE_ITERATIONS) on the demo alone, then
beside a viewer-like process that renders 640x480 segmentation frames of the demo scene without pause
(what `protosaga-view` does while someone orbits): once with both fixed at all cores (`--threads`, as
every torch process did before), once with the default shares (protosaga_core/threads.py).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from protosaga_app.browser_camera import camera_from_pose, pose_from_camera
from protosaga_app.live import FeaturePca, render_frame
from protosaga_app.scene import ViewerScene
from protosaga_core import threads
from protosaga_core.datasets import DatasetConfig
from protosaga_core.io.atomic import atomic_write_bytes
from protosaga_core.io.scene_dir import SceneDir
from protosaga_core.method.association import AssociateConfig, associate
from protosaga_core.method.prototypes import PrototypesConfig, compute_prototypes
from protosaga_core.method.train import PRESETS, train
from protosaga_core.metrics.image import psnr
from protosaga_core.render import render

DEMO = Path(__file__).resolve().parent.parent / "assets" / "demo"
BESIDE_ITERATIONS = 300


@dataclass
class BudgetRun:
    """One scene trained for a budget."""

    scene: str
    width: int
    views: int
    iterations: int
    seconds: float
    it_per_s: float
    gaussians: int
    test_views: int
    test_psnr: float


def timed_training(dataset: DatasetConfig, output: Path, iterations: int) -> float:
    """Seconds to train the cpu preset for `iterations` into `output`."""
    config = replace(PRESETS["cpu"], iterations=iterations, checkpoint_every=0)
    start = time.perf_counter()
    train(dataset, output, config)
    return time.perf_counter() - start


def test_psnr(scene_dir: SceneDir) -> tuple[float, int]:
    """Mean PSNR of the clamped renders of the test views, and their number."""
    gaussians = scene_dir.read_gaussians()
    scene = scene_dir.load_dataset()
    views = scene.split("test")
    values = []
    for view in views:
        with torch.no_grad():
            image = render(gaussians, view.cameras).colors[0].clamp(0, 1)
        values.append(psnr(image, view.load_image()))
    return sum(values) / len(values), len(values)


def measured_run(name: str, dataset: DatasetConfig, output: Path, iterations: int) -> BudgetRun:
    """Train `iterations` of the cpu preset into `output`, and measure speed and test PSNR."""
    seconds = timed_training(dataset, output, iterations)
    scene_dir = SceneDir(output)
    value, count = test_psnr(scene_dir)
    view = scene_dir.load_dataset().views[0]
    result = BudgetRun(
        name, view.width, len(scene_dir.read_meta().train_views), iterations, seconds, iterations / seconds,
        len(scene_dir.read_gaussians()), count, value,
    )
    print(f"{name}: {iterations} it in {seconds:.0f} s ({result.it_per_s:.2f} it/s), {result.gaussians:,} Gaussians, "
          f"test PSNR {value:.2f} dB over {count} views", flush=True)
    return result


def budget_runs(name: str, dataset: DatasetConfig, workdir: Path, budget_s: float) -> list[BudgetRun]:
    """The preset as shipped, then (if it was quicker than the budget) as many iterations as fit."""
    shipped = measured_run(name, dataset, workdir / f"{name}-preset", PRESETS["cpu"].iterations)
    iterations = math.floor(shipped.it_per_s * budget_s)
    if iterations <= shipped.iterations:
        return [shipped]
    return [shipped, measured_run(name, dataset, workdir / name, iterations)]


# --- beside the viewer -------------------------------------------------------------------------------


def viewer_load(scene: Path, requested: int | None) -> None:
    """Render 640x480 segmentation frames of a trained scene forever, orbiting, as a viewer process does
    while someone looks around (registers as "view", follows its thread share like the viewer)."""
    threads.configure("view", requested)
    viewed = ViewerScene.load(scene)
    poses = [pose_from_camera(view.viewmat, view.K, view.width, view.height) for view in viewed.training_views()]
    pca = FeaturePca.fit(viewed.gaussians.features)
    labels = torch.from_numpy(viewed.labels)
    for step in range(10**9):
        threads.rebalance()
        camera = camera_from_pose(poses[step % len(poses)], 640, 480)
        render_frame(viewed.gaussians, camera, "segmentation", viewed.prototypes, pca, labels=labels)


def short_training_rate(dataset: DatasetConfig, output: Path, requested: int | None) -> tuple[float, int]:
    """Iterations per second of BESIDE_ITERATIONS iterations (after a probe warmed the caches), and the
    threads the training ended with."""
    threads.configure("train", requested)
    seconds = timed_training(dataset, output, BESIDE_ITERATIONS)
    return BESIDE_ITERATIONS / seconds, torch.get_num_threads()


def beside_viewer(workdir: Path) -> list[dict]:
    dataset = DatasetConfig(DEMO)
    scene = workdir / "viewed"
    timed_training(dataset, scene, BESIDE_ITERATIONS)  # a scene for the viewer to show
    associate(SceneDir(scene), AssociateConfig(), progress=False)
    compute_prototypes(SceneDir(scene), PrototypesConfig(), progress=False)
    cores = threads.available_cores()
    records = []
    for case, train_threads, viewer_threads in (
        ("alone", None, None), (f"beside the viewer, both --threads {cores}", cores, cores), ("beside the viewer, shared", None, None)
    ):
        viewer = None
        if case != "alone":
            command = [sys.executable, __file__, "--viewer-load", str(scene)]
            command += ["--threads", str(viewer_threads)] if viewer_threads else []
            viewer = subprocess.Popen(command)
            time.sleep(15)  # it loads the scene and renders its first frames
        try:
            rate, used = short_training_rate(dataset, workdir / f"beside-{len(records)}", train_threads)
        finally:
            if viewer is not None:
                viewer.terminate()
                viewer.wait()
        records.append({"case": case, "it_per_s": rate, "training_threads_at_end": used})
        print(f"{case}: {rate:.2f} it/s ({used} threads at the end)", flush=True)
    return records


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--statue", type=Path, help="the statue dataset with masks (see the module docstring)")
    parser.add_argument("--skip-demo", action="store_true")
    parser.add_argument("--beside-viewer", action="store_true")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--viewer-load", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.viewer_load:
        viewer_load(args.viewer_load, args.threads)
        return 0
    threads.configure("bench", args.threads)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="protosaga-bench-training-") as folder:
        workdir = Path(folder)
        runs = []
        if not args.skip_demo:
            runs += budget_runs("demo", DatasetConfig(DEMO), workdir, 60 * args.minutes)
        if args.statue:
            runs += budget_runs("statue", DatasetConfig(args.statue), workdir, 60 * args.minutes)
        beside = beside_viewer(workdir) if args.beside_viewer else []
    print(f"\n{'scene':<8} {'px':>5} {'iterations':>10} {'s':>6} {'it/s':>6} {'Gaussians':>10} {'test PSNR':>9}")
    for r in runs:
        print(f"{r.scene:<8} {r.width:>5} {r.iterations:>10} {r.seconds:>6.0f} {r.it_per_s:>6.2f} {r.gaussians:>10,} {r.test_psnr:>9.2f}")
    print(f"\n{torch.get_num_threads()} threads, load avg {load_before:.2f} -> {os.getloadavg()[0]:.2f}")
    if args.json:
        payload = {
            "machine": {"nproc": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__},
            "minutes": args.minutes, "runs": [asdict(r) for r in runs], "beside_viewer": beside,
            "load_average": [load_before, os.getloadavg()[0]],
        }
        atomic_write_bytes(args.json, (json.dumps(payload, indent=2) + "\n").encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
