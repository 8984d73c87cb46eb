"""Features learnt on frozen geometry against jointly trained ones:
`python bench/frozen_features.py [--iterations 100,300,1000] [--seeds 0,1,2] [--joint SCENE] [--json PATH]`.

1. The demo (assets/demo) trained jointly, as `protosaga run assets/demo -o JOINT --preset cpu` does
   (training timed), or `--joint SCENE`, a scene that command made (its training time is then unknown).
2. For each N of --iterations and each seed of --seeds: a copy of that scene whose features are learnt
   again from scratch on its frozen Gaussians (`protosaga features COPY --fresh --iterations N --seed S`,
   timed: reading, the views' blending weights, the iterations, the writes), then `protosaga associate`,
   `prototypes` and `eval --methods proto lifted`, as `protosaga run` would redo them.
`--threads 1` is what bench/RESULTS.md used on a loaded 2-core machine (2 threads spin against other
processes there: ~20x slower per iteration).
3. Each scene is also segmented the paper's way (`--paper`: memory-bank association, whose Eq. 14 reads
   the classifiers, per-Gaussian labels by Eq. 19 on each f_i, Eq. 19 in 2D), in a second copy.

Printed: test-view mIoU / precision / recall of Eq. 19 (`proto`) with the default association, of Eq. 19
with `--paper`, and of the lifted labels (which never read the features: a check that only the features
changed), the final training cross-entropy (mean of the last 50 iterations), and the seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import torch

from protosaga_core.datasets import DatasetConfig
from protosaga_core.evaluate import EvalConfig, evaluate
from protosaga_core.io.atomic import atomic_write_bytes
from protosaga_core.io.scene_dir import SceneDir
from protosaga_core.method.association import associate
from protosaga_core.method.frozen_features import FeatureConfig, train_features
from protosaga_core.method.prototypes import compute_prototypes
from protosaga_core.method.train import PRESETS, train
from protosaga_core.pipeline import RunConfig
from protosaga_core.render.sparse import WeightsCache

DEMO = Path(__file__).resolve().parent.parent / "assets" / "demo"


def segment_and_score(scene: Path, paper: bool) -> dict[str, float]:
    """associate, prototypes and eval as `protosaga run` (with `--paper` or not) chains them; the scores."""
    config = RunConfig(paper=paper).resolved()
    scene_dir = SceneDir(scene)
    weights = WeightsCache()
    associate(scene_dir, config.associate, progress=False, weights=weights)
    compute_prototypes(scene_dir, config.prototypes, progress=False, weights=weights)
    del weights  # freed before eval, as `protosaga run` does
    with contextlib.redirect_stdout(io.StringIO()):  # eval's own table; the bench prints one row
        report = evaluate(scene_dir, replace(EvalConfig(), methods=("proto",) if paper else ("proto", "lifted")), progress=False)
    scores = {}
    for method, metrics in report.segmentation.items():
        name = "paper" if paper else method
        scores.update({f"{name}_miou": metrics.miou, f"{name}_precision": metrics.precision, f"{name}_recall": metrics.recall})
    return scores


def run_case(joint: Path, work: Path, iterations: int | None, seed: int = 0) -> dict:
    """One row: the joint scene's own features (iterations None) or features learnt again for `iterations`
    from the draws of `seed`."""
    row: dict = {"features": "joint" if iterations is None else f"frozen {iterations}", "seed": None if iterations is None else seed}
    copies = [work / f"{row['features'].replace(' ', '_')}_{seed}_{mode}" for mode in ("default", "paper")]
    for copy in copies:
        shutil.copytree(joint, copy)
    if iterations is not None:
        start = time.perf_counter()
        result = train_features(SceneDir(copies[0]), FeatureConfig(iterations=iterations, fresh=True, checkpoint_every=0, seed=seed), progress=False)
        row["seconds"] = time.perf_counter() - start
        tail = result.losses[-50:]
        row["final_ce"] = sum(tail) / len(tail)
        for name in ("gaussians.ply", "classifiers.pt", "scene.json"):
            shutil.copy2(copies[0] / name, copies[1] / name)
    row.update(segment_and_score(copies[0], paper=False))
    row.update(segment_and_score(copies[1], paper=True))
    return row


def train_joint(output: Path) -> float:
    """The demo trained as `protosaga run --preset cpu` trains it; seconds of the training alone."""
    start = time.perf_counter()
    train(DatasetConfig(DEMO), output, PRESETS["cpu"])
    return time.perf_counter() - start


COLUMNS = (
    ("features", "features", 13, ""),
    ("seed", "seed", 4, ""),
    ("seconds", "seconds", 8, ".1f"),
    ("final_ce", "final CE", 8, ".3f"),
    ("proto_miou", "Eq.19 mIoU", 10, ".3f"),
    ("proto_precision", "Eq.19 P", 8, ".3f"),
    ("paper_miou", "paper mIoU", 10, ".3f"),
    ("paper_precision", "paper P", 8, ".3f"),
    ("lifted_miou", "lifted mIoU", 11, ".3f"),
)
"""Row key, header, width, number format."""
HEADER = " ".join(f"{title:>{width}}" for _, title, width, _ in COLUMNS)


def format_row(row: dict) -> str:
    """One line of the table; "-" where a row has no value."""
    cells = []
    for key, _, width, spec in COLUMNS:
        value = row.get(key)
        cells.append(f"{'-' if value is None else format(value, spec):>{width}}")
    return " ".join(cells)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", default="100,300,1000", help="comma-separated iteration counts")
    parser.add_argument("--joint", type=Path, help="a demo scene `protosaga run assets/demo --preset cpu` made (default: train one)")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds of the frozen runs (their initial features and view order)")
    parser.add_argument("--no-joint-row", action="store_true", help="skip scoring the joint scene's own features")
    parser.add_argument("--threads", type=int, help="torch's CPU threads (default: torch's own, every core)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    counts = [int(n) for n in args.iterations.split(",") if n.strip()]
    seeds = [int(n) for n in args.seeds.split(",") if n.strip()]
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="frozen_features_") as tmp:
        work = Path(tmp)
        joint_seconds = None
        joint = args.joint
        if joint is None:
            joint = work / "joint"
            joint_seconds = train_joint(joint)
        load = os.getloadavg()
        rows = []
        print(HEADER, flush=True)
        if not args.no_joint_row:
            rows.append({**run_case(joint, work, None), "seconds": joint_seconds})
            print(format_row(rows[-1]), flush=True)
        for count in counts:
            for seed in seeds:
                rows.append(run_case(joint, work, count, seed))
                print(format_row(rows[-1]), flush=True)
        load_after = os.getloadavg()
    print(f"load average before / after the frozen runs: {load[0]:.2f} / {load_after[0]:.2f} ({os.cpu_count()} cores)")
    if args.json:
        payload = {
            "command": " ".join(sys.argv),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": {"nproc": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__},
            "threads": torch.get_num_threads(),
            "load_average": {"before": load, "after": load_after},
            "joint_scene": str(args.joint) if args.joint else "trained by this run",
            "rows": rows,
        }
        atomic_write_bytes(args.json, (json.dumps(payload, indent=2) + "\n").encode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
