"""Association speed: `python bench/association.py [--json PATH] [--runs 3]`.

Times `associate_views` (Eq. 9-16, the memory bank included) on 60 views x 100k Gaussians for each
criterion, median of `--runs` runs with 2 threads. The scene: Gaussians uniform in a ball of radius 1.5,
cameras on a circle of radius 4 around it (every Gaussian in front of every camera), 160x120 images,
raw masks = the Voronoi cells of 20 random sites per view (about 20 masks, all pixels labelled), D = 16
random features and a random 20-row classifier per view. Target: at most 10 s per criterion on the
project's 2-core CPU machine.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from protosaga_core.cameras import intrinsics, look_at
from protosaga_core.method.association import AssociateConfig, AssociationView, associate_views

NUM_VIEWS, NUM_GAUSSIANS, WIDTH, HEIGHT, MASKS_PER_VIEW, FEATURE_DIM = 60, 100_000, 160, 120, 20, 16


@dataclass
class Record:
    criterion: str
    views: int
    gaussians: int
    width: int
    height: int
    seconds: float
    seconds_per_view: float
    instances: int


def bench_scene(generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, list[AssociationView]]:
    direction = torch.nn.functional.normalize(torch.randn(NUM_GAUSSIANS, 3, generator=generator), dim=1)
    means = 1.5 * torch.rand(NUM_GAUSSIANS, 1, generator=generator) ** (1 / 3) * direction
    features = torch.randn(NUM_GAUSSIANS, FEATURE_DIM, generator=generator)
    angle = torch.arange(NUM_VIEWS) * (2 * math.pi / NUM_VIEWS)
    eye = torch.stack([4 * torch.cos(angle), 4 * torch.sin(angle), torch.full_like(angle, 1.0)], 1)
    viewmats = look_at(eye, torch.zeros_like(eye), torch.tensor([0.0, 0.0, 1.0]))
    K = intrinsics(120.0, 120.0, WIDTH / 2, HEIGHT / 2)[0]
    rows, cols = torch.meshgrid(torch.arange(HEIGHT), torch.arange(WIDTH), indexing="ij")
    pixels = torch.stack([cols.flatten(), rows.flatten()], 1).float()
    views = []
    for k in range(NUM_VIEWS):
        sites = torch.rand(MASKS_PER_VIEW, 2, generator=generator) * torch.tensor([WIDTH, HEIGHT])
        labels = 1 + torch.randperm(3 * MASKS_PER_VIEW, generator=generator)[:MASKS_PER_VIEW]  # not consecutive
        raw_mask = labels[torch.cdist(pixels, sites).argmin(1)].view(HEIGHT, WIDTH)
        weights = torch.randn(MASKS_PER_VIEW, FEATURE_DIM, generator=generator)
        views.append(AssociationView(viewmats[k], K, raw_mask, labels, weights, f"view_{k:02d}"))
    return means, features, views


def time_criterion(criterion: str, means, features, views, runs: int) -> Record:
    config = AssociateConfig(criterion=criterion)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        result = associate_views(means, features, views, config)
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    return Record(criterion, NUM_VIEWS, NUM_GAUSSIANS, WIDTH, HEIGHT, seconds, seconds / NUM_VIEWS, result.num_instances)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the records here")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(2)
    means, features, views = bench_scene(torch.Generator().manual_seed(0))
    load_before = os.getloadavg()[0]
    records = [time_criterion(criterion, means, features, views, args.runs) for criterion in ("depth", "prob", "both")]
    print(f"{NUM_VIEWS} views x {NUM_GAUSSIANS:,} Gaussians, {WIDTH}x{HEIGHT}, {MASKS_PER_VIEW} masks/view, "
          f"median of {args.runs}, {torch.get_num_threads()} threads, load avg {load_before:.2f} -> {os.getloadavg()[0]:.2f}")
    print(f"{'criterion':>9} {'total s':>8} {'ms/view':>8} {'instances':>9}")
    for r in records:
        print(f"{r.criterion:>9} {r.seconds:8.2f} {1000 * r.seconds_per_view:8.1f} {r.instances:9d}")
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in records], indent=1) + "\n")


if __name__ == "__main__":
    main()
