"""Mask quality floors and fallback speed: `python bench/masks.py [--quick] [--json PATH]`.

On `protosaga synth --preset bench` scenes (seeds 0, 1, 2), for each simulated-SAM noise level, scores the
raw per-view masks of the training views against GT with Gaga's protocol (id 0 not counted):
- across views, as the method's association output is scored: raw SAM labels are not associated, so
  this is the "no association" floor that association must beat;
- frame by frame (the protocol run on each view alone, averaged): how good the masks are apart from
  cross-view consistency, the ceiling association can reach from them.
Then times the weight-free fallback generator (flattened, rule `score`) per image at the bench size.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from protosaga_core.datasets import load_scene
from protosaga_core.masks import FallbackMaskGenerator, flatten, simulate_sam_masks
from protosaga_core.metrics import instance_metrics
from protosaga_core.synthetic import synthesize

NOISE = ("low", "default", "high")


@dataclass
class NoiseRecord:
    noise: str
    scenes: int
    views: int
    cross_view_miou: float
    cross_view_precision: float
    cross_view_recall: float
    per_frame_miou: float
    per_frame_precision: float
    per_frame_recall: float


@dataclass
class SpeedRecord:
    method: str
    width: int
    height: int
    images: int
    ms_per_image: float


def score_noise(scenes: list, noise: str) -> NoiseRecord:
    cross, frames = [], []
    views = 0
    for scene in scenes:
        train = scene.split("train")
        gts = [view.load_instances().numpy() for view in train]
        masks = [simulate_sam_masks(gt, view.name, seed=0, noise=noise) for gt, view in zip(gts, train)]
        cross.append(instance_metrics(gts, masks))
        frames += [instance_metrics([gt], [mask]) for gt, mask in zip(gts, masks)]
        views += len(train)

    def mean(results, field):
        return statistics.fmean(getattr(r, field) for r in results)

    return NoiseRecord(
        noise, len(scenes), views,
        mean(cross, "miou"), mean(cross, "precision"), mean(cross, "recall"),
        mean(frames, "miou"), mean(frames, "precision"), mean(frames, "recall"),
    )


def time_fallback(scene, count: int) -> SpeedRecord:
    generator = FallbackMaskGenerator()
    views = scene.split("train")[:count]
    images = [(view.load_image().numpy() * 255).astype(np.uint8) for view in views]
    times = []
    for image in images:
        start = time.perf_counter()
        flatten(generator(image), rule="score", shape=image.shape[:2])
        times.append(time.perf_counter() - start)
    height, width = images[0].shape[:2]
    return SpeedRecord("fallback", width, height, len(images), 1e3 * statistics.median(times))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one scene instead of three")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    seeds = [0] if args.quick else [0, 1, 2]
    with tempfile.TemporaryDirectory() as tmp:
        scenes = [load_scene(synthesize(Path(tmp) / f"bench_{s}", "bench", s, progress=False)) for s in seeds]
        noise_records = [score_noise(scenes, noise) for noise in NOISE]
        speed = time_fallback(scenes[0], 5 if args.quick else 20)
    print("raw simulated SAM masks vs GT, train views, Gaga protocol (id 0 not counted)")
    print(f"{'noise':>8} {'views':>6} | {'cross-view mIoU':>15} {'P':>6} {'R':>6} | {'per-frame mIoU':>14} {'P':>6} {'R':>6}")
    for r in noise_records:
        print(
            f"{r.noise:>8} {r.views:>6} | {r.cross_view_miou:>15.3f} {r.cross_view_precision:>6.3f} "
            f"{r.cross_view_recall:>6.3f} | {r.per_frame_miou:>14.3f} {r.per_frame_precision:>6.3f} {r.per_frame_recall:>6.3f}"
        )
    print(f"fallback generator: {speed.ms_per_image:.0f} ms per {speed.width}x{speed.height} image (median of {speed.images})")
    if args.json:
        payload = {"noise": [asdict(r) for r in noise_records], "speed": [asdict(speed)]}
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
