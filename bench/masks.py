"""Mask quality floors and mask speed: `python bench/masks.py [--quick] [--sam] [--json PATH]`.

On `protosaga synth --preset bench` scenes (seeds 0, 1, 2), for each simulated-SAM noise level, scores the
raw per-view masks of the training views against GT with Gaga's protocol (id 0 not counted):
- across views, as the method's association output is scored: raw SAM labels are not associated, so
  this is the "no association" floor that association must beat;
- frame by frame (the protocol run on each view alone, averaged): how good the masks are apart from
  cross-view consistency, the ceiling association can reach from them.
Then times the weight-free fallback generator (flattened, rule `score`) per image at the bench size. With
--sam, MobileSAM (the fetched vit_t weights):
- on a real photo (the statue scene) at 160x120, 320x240 and 640x480 for 16 and 32 points per side:
  seconds for segment-anything's own automatic mask generator and for ours (same model, same settings;
  prompts decoded by protosaga_core/masks/sam_decoder.py), how many of upstream's masks ours reproduces,
  and the growth of the process's peak memory;
- on the first --sam-views training views of bench scene 0, for 16, 32 and 64 points per side: seconds
  per view and the per-frame quality of the flattened masks against GT, beside the simulated noise rows.
Run it alone on the machine; the THP_MEM_ALLOC_ENABLE the `protosaga` command sets is set here too.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")  # as the protosaga command does (protosaga_core/cli.py)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from protosaga_core.datasets import load_scene
from protosaga_core.masks import FallbackMaskGenerator, flatten, simulate_sam_masks
from protosaga_core.metrics.instances import instance_metrics
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
QUALITY_POINTS = (16, 32, 64)


@dataclass
class SamSpeedRecord:
    points_per_side: int
    width: int
    height: int
    upstream_s: float
    ours_s: float
    upstream_masks: int
    ours_masks: int
    matched: int
    """upstream masks that ours reproduces (IoU > 0.99, predicted IoU within 1e-3)"""
    ours_peak_rss_growth_mib: float


@dataclass
class SamQualityRecord:
    points_per_side: int
    views: int
    seconds_per_view: float
    per_frame_miou: float
    per_frame_precision: float
    per_frame_recall: float
    masks_per_view: float


def _mobile_sam():
    from protosaga_core.masks.sam import load_sam
    from protosaga_core.masks.weights import MOBILE_SAM, cached_weights

    weights = cached_weights(MOBILE_SAM)
    if weights is None:
        raise SystemExit("--sam needs the weights: protosaga weights mobile_sam")
    return load_sam(weights, "vit_t").eval()


def _matched(upstream: list[dict], ours: list) -> int:
    """How many upstream records have a twin among ours."""
    count = 0
    for record in upstream:
        mask = record["segmentation"]
        for candidate in ours:
            union = (mask | candidate.segmentation).sum()
            if union and (mask & candidate.segmentation).sum() / union > 0.99 and abs(
                candidate.predicted_iou - record["predicted_iou"]
            ) < 1e-3:
                count += 1
                break
    return count


def compare_mobile_sam_with_upstream() -> list[SamSpeedRecord]:
    """Seconds per photo for segment-anything's own generator and ours (same model and settings; ours
    decodes prompts with sam_decoder.py) at each size and prompt grid, and how many masks agree."""
    import resource

    from PIL import Image
    from segment_anything import SamAutomaticMaskGenerator

    from protosaga_core.masks.sam import SamMaskGenerator

    sam = _mobile_sam()
    with Image.open(STATUE_PHOTO) as photo:
        photo = photo.convert("RGB")
        images = {size: np.asarray(photo.resize(size, Image.Resampling.BOX)) for size in SAM_SIZES}
    records = []
    for points in SAM_POINTS:
        upstream = SamAutomaticMaskGenerator(sam, points_per_side=points, pred_iou_thresh=0.7, output_mode="binary_mask")
        ours = SamMaskGenerator.from_model(sam, points_per_side=points, device="cpu")
        warm = images[SAM_SIZES[0]][:32, :32]  # first calls pay one-time kernel set-up
        ours(warm), upstream.generate(warm)
        for (width, height), image in images.items():
            before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            start = time.perf_counter()
            got = ours(image)
            ours_s = time.perf_counter() - start
            growth = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
            start = time.perf_counter()
            expected = upstream.generate(image)
            upstream_s = time.perf_counter() - start
            record = SamSpeedRecord(points, width, height, upstream_s, ours_s, len(expected), len(got),
                                    _matched(expected, got), growth)
            records.append(record)
            print(f"mobile_sam {points:>2} points/side {width}x{height}: upstream {upstream_s:6.1f} s, ours "
                  f"{ours_s:5.1f} s; masks {len(expected)} / {len(got)}, {record.matched} identical; "
                  f"ours peak RSS +{growth:.0f} MiB", flush=True)
    return records


def mobile_sam_quality(scene, count: int) -> list[SamQualityRecord]:
    """MobileSAM's masks on rendered bench views against their GT instance maps, per prompt grid."""
    from protosaga_core.masks.sam import SamMaskGenerator

    sam = _mobile_sam()
    views = scene.split("train")[:count]
    images = [(view.load_image().numpy() * 255).round().astype(np.uint8) for view in views]
    gts = [view.load_instances().numpy() for view in views]
    records = []
    for points in QUALITY_POINTS:
        generator = SamMaskGenerator.from_model(sam, points_per_side=points, device="cpu")
        start = time.perf_counter()
        masks = [flatten(generator(image), rule="score", shape=image.shape[:2]) for image in images]
        seconds = (time.perf_counter() - start) / len(images)
        frames = [instance_metrics([gt], [mask]) for gt, mask in zip(gts, masks)]
        record = SamQualityRecord(
            points, len(images), seconds,
            statistics.fmean(f.miou for f in frames), statistics.fmean(f.precision for f in frames),
            statistics.fmean(f.recall for f in frames), statistics.fmean(float(m.max()) for m in masks),
        )
        records.append(record)
        print(f"mobile_sam {points:>2} points/side on {len(images)} bench views: {seconds:5.1f} s/view, per-frame "
              f"mIoU {record.per_frame_miou:.3f} P {record.per_frame_precision:.3f} R {record.per_frame_recall:.3f}, "
              f"{record.masks_per_view:.1f} masks/view", flush=True)
    return records


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one scene instead of three")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sam", action="store_true",
                        help="also MobileSAM: speed against upstream, quality per prompt grid (protosaga weights mobile_sam)")
    parser.add_argument("--sam-views", type=int, default=6, help="bench views for MobileSAM's quality per prompt grid")
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
    sam_speed, sam_quality = [], []
    if args.sam:
        sam_speed = compare_mobile_sam_with_upstream()
        with tempfile.TemporaryDirectory() as tmp:
            sam_quality = mobile_sam_quality(load_scene(synthesize(Path(tmp) / "bench_0", "bench", 0, progress=False)),
                                             args.sam_views)
    if args.json:
        payload = {"noise": [asdict(r) for r in noise_records], "speed": [asdict(speed)],
                   "mobile_sam_speed": [asdict(r) for r in sam_speed],
                   "mobile_sam_quality": [asdict(r) for r in sam_quality]}
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
