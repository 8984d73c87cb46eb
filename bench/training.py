"""Quality per minute on the CPU: `python bench/training.py [--minutes 5] [--statue DIR] [--json PATH]`.

For each scene, the `cpu` preset trained for what fits a wall-clock budget:
1. a probe of PROBE_ITERATIONS iterations gives the rate at the start (set-up included, so it errs low);
2. a training of budget x rate iterations, the preset otherwise unchanged (its densification stops at
   iteration 900 either way), timed: iterations per second over the whole run, and the Gaussians at the end;
3. the test views rendered: mean PSNR (the quality after ~the budget).
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
from protosaga_core.association import AssociateConfig, associate
from protosaga_core.atomic import atomic_write_bytes
from protosaga_core.datasets import DatasetConfig
from protosaga_core.metrics import psnr
from protosaga_core.prototypes import PrototypesConfig, compute_prototypes
from protosaga_core.render import render
from protosaga_core.scene_dir import SceneDir
from protosaga_core.train import PRESETS, train

DEMO = Path(__file__).resolve().parent.parent / "assets" / "demo"
PROBE_ITERATIONS = 100
BESIDE_ITERATIONS = 300


@dataclass
class BudgetRun:
    """One scene trained for a budget."""

    scene: str
    width: int
    views: int
    probe_it_per_s: float
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


def budget_run(name: str, dataset: DatasetConfig, workdir: Path, budget_s: float) -> BudgetRun:
    probe_s = timed_training(dataset, workdir / f"{name}-probe", PROBE_ITERATIONS)
    rate = PROBE_ITERATIONS / probe_s
    iterations = max(PROBE_ITERATIONS, math.floor(rate * budget_s))
    print(f"{name}: probe {rate:.2f} it/s -> {iterations} iterations for {budget_s:.0f} s", flush=True)
    seconds = timed_training(dataset, workdir / name, iterations)
    scene_dir = SceneDir(workdir / name)
    value, count = test_psnr(scene_dir)
    view = scene_dir.load_dataset().views[0]
    result = BudgetRun(
        name, view.width, len(scene_dir.read_meta().train_views), rate, iterations, seconds, iterations / seconds,
        len(scene_dir.read_gaussians()), count, value,
    )
    print(f"  {result.iterations} it in {seconds:.0f} s ({result.it_per_s:.2f} it/s), {result.gaussians:,} Gaussians, "
          f"test PSNR {value:.2f} dB over {count} views", flush=True)
    return result


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
            runs.append(budget_run("demo", DatasetConfig(DEMO), workdir, 60 * args.minutes))
        if args.statue:
            runs.append(budget_run("statue", DatasetConfig(args.statue), workdir, 60 * args.minutes))
        beside = beside_viewer(workdir) if args.beside_viewer else []
    print(f"\n{'scene':<8} {'px':>5} {'iterations':>10} {'s':>6} {'it/s':>6} {'probe it/s':>10} {'Gaussians':>10} {'test PSNR':>9}")
    for r in runs:
        print(f"{r.scene:<8} {r.width:>5} {r.iterations:>10} {r.seconds:>6.0f} {r.it_per_s:>6.2f} {r.probe_it_per_s:>10.2f} "
              f"{r.gaussians:>10,} {r.test_psnr:>9.2f}")
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
