"""Mask quality floors and mask speed: `python bench/masks.py [--quick] [--sam] [--json PATH]`.

On `protosaga synth --preset bench` scenes (seeds 0, 1, 2), for each simulated-SAM noise level, scores the
raw per-view masks of the training views against GT with Gaga's protocol (id 0 not counted):
- across views, as the method's association output is scored: raw SAM labels are not associated, so
  this is the "no association" floor that association must beat;
- frame by frame (the protocol run on each view alone, averaged): how good the masks are apart from
  cross-view consistency, the ceiling association can reach from them.
Then times the weight-free fallback generator (flattened, rule `score`) per image at the bench size, and
with --sam MobileSAM's automatic masks (the fetched vit_t weights, segment-anything's generator, flattened)
on a real photo (the statue scene) at 160x120, 320x240 and 640x480 for 16 and 32 points per side, with the
growth of the process's peak memory.
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


STATUE_PHOTO = Path(__file__).resolve().parents[2] / "shared" / "data" / "statue_colmap" / "images" / "DSC_5283.jpg"
SAM_SIZES = ((160, 120), (320, 240), (640, 480))
SAM_POINTS = (16, 32)


def time_mobile_sam() -> list[SpeedRecord]:
    """Seconds per photo for MobileSAM at each size and prompt grid (one run each: they take minutes)."""
    import resource

    from PIL import Image

    from protosaga_core.masks.sam import SamMaskGenerator
    from protosaga_core.masks.weights import MOBILE_SAM, cached_weights

    weights = cached_weights(MOBILE_SAM)
    if weights is None:
        raise SystemExit("--sam needs the weights: protosaga weights mobile_sam")
    with Image.open(STATUE_PHOTO) as photo:
        photo = photo.convert("RGB")
        images = {size: np.asarray(photo.resize(size, Image.Resampling.BOX)) for size in SAM_SIZES}
    records = []
    for points in SAM_POINTS:
        generator = SamMaskGenerator(weights, "vit_t", points_per_side=points, device="cpu")
        for (width, height), image in images.items():
            before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            start = time.perf_counter()
            masks = flatten(generator(image), rule="score", shape=image.shape[:2])
            seconds = time.perf_counter() - start
            growth = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
            records.append(SpeedRecord(f"mobile_sam {points}pps", width, height, 1, 1e3 * seconds))
            print(f"mobile_sam {points:>2} points/side {width}x{height}: {seconds:6.1f} s, {int(masks.max())} masks, "
                  f"peak RSS +{growth:.0f} MiB", flush=True)
    return records


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one scene instead of three")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sam", action="store_true", help="also time MobileSAM (needs protosaga weights mobile_sam)")
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
    sam = time_mobile_sam() if args.sam else []
    if args.json:
        payload = {"noise": [asdict(r) for r in noise_records], "speed": [asdict(speed)] + [asdict(r) for r in sam]}
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
