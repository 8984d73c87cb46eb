"""Rasterizer speed and memory: `python bench/rasterizer.py [--quick | --cases N,SIZE,CHANNELS ...] [--json PATH]`.

Each case renders one camera of N random Gaussians in its view frustum, sized so the image is covered
about 20 layers deep (a trained scene's depth complexity), and reports the median over repeated runs of
the forward pass (no autograd) and of forward + backward (gradients for means, quats, scales,
opacities and all channels), plus the peak memory: on CPU the growth of the peak resident set over
the scene set-up, each case in a fresh subprocess; on CUDA the allocator's peak.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from protosaga_core.render import RasterSettings, rasterize

DEPTH_COMPLEXITY = 20
GAUSSIAN_COUNTS = (20_000, 100_000)
IMAGE_SIZES = (128, 256, 512)
CHANNEL_COUNTS = (3, 19)


@dataclass
class Record:
    backend: str
    n_gaussians: int
    width: int
    height: int
    channels: int
    fwd_ms: float
    fwd_bwd_ms: float
    peak_mb: float


def bench_scene(num: int, size: int, channels: int, seed: int = 0) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """Activated Gaussian tensors [means, quats, scales, opacities, colors], a viewmat and K."""
    gen = torch.Generator().manual_seed(seed)
    depth = 2 + 2 * torch.rand(num, generator=gen)
    xy = (torch.rand(num, 2, generator=gen) * 2 - 1) * 0.55 * depth[:, None]
    means = torch.cat([xy, depth[:, None]], dim=1)
    sigma_px = math.sqrt(DEPTH_COMPLEXITY * size * size / num / math.pi) / 3
    scales = sigma_px * depth[:, None] / size * torch.exp(0.4 * torch.randn(num, 3, generator=gen))
    quats = torch.randn(num, 4, generator=gen)
    opacities = torch.sigmoid(torch.randn(num, generator=gen))
    colors = torch.rand(num, channels, generator=gen)
    viewmat = torch.eye(4)[None]
    K = torch.tensor([[size, 0.0, size / 2], [0.0, size, size / 2], [0.0, 0.0, 1.0]])[None]
    return [means, quats, scales, opacities, colors], viewmat, K


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_case(backend: str, num: int, size: int, channels: int, repeats: int) -> Record:
    params, viewmat, K = bench_scene(num, size, channels)
    device = "cuda" if backend == "gsplat" else "cpu"
    params = [p.to(device).requires_grad_(True) for p in params]
    viewmat, K = viewmat.to(device), K.to(device)
    settings = RasterSettings()

    def forward():
        return rasterize(*params, viewmat, K, size, size, settings, backend=backend)

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    rss_before = peak_rss_mb()  # after the scene is built: the peak that rendering adds
    forward_times, full_times = [], []
    for _ in range(repeats + 1):  # the first run warms caches and allocators and is dropped
        sync()
        start = time.perf_counter()
        with torch.no_grad():
            forward()
        sync()
        middle = time.perf_counter()
        colors, alphas, _ = forward()
        (colors.sum() + alphas.sum()).backward()
        sync()
        end = time.perf_counter()
        forward_times.append(middle - start)
        full_times.append(end - middle)
        for p in params:
            p.grad = None
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = peak_rss_mb() - rss_before
    return Record(
        backend=backend,
        n_gaussians=num,
        width=size,
        height=size,
        channels=channels,
        fwd_ms=1e3 * statistics.median(forward_times[1:]),
        fwd_bwd_ms=1e3 * statistics.median(full_times[1:]),
        peak_mb=peak,
    )


def run_in_subprocess(args: argparse.Namespace, num: int, size: int, channels: int) -> Record:
    """A fresh process per case, so its peak resident memory is its own."""
    command = [
        sys.executable, __file__, "--case", f"{num},{size},{channels}", "--backend", args.backend,
        "--repeats", str(args.repeats), "--threads", str(args.threads),
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return Record(**json.loads(result.stdout.strip().splitlines()[-1]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="only 20k Gaussians at 128² with 19 channels")
    parser.add_argument("--cases", nargs="+", metavar="N,SIZE,CHANNELS", help="run these cases instead")
    parser.add_argument("--json", type=Path, help="write the records here")
    parser.add_argument("--backend", choices=["torch", "gsplat"], default="torch")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--case", help=argparse.SUPPRESS)  # N,SIZE,CHANNELS: run one case, print JSON
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.case:
        num, size, channels = (int(v) for v in args.case.split(","))
        print(json.dumps(asdict(run_case(args.backend, num, size, channels, args.repeats))))
        return 0

    cases = [(20_000, 128, 19)] if args.quick else [
        (n, s, c) for n in GAUSSIAN_COUNTS for s in IMAGE_SIZES for c in CHANNEL_COUNTS
    ]
    if args.cases:
        cases = [tuple(int(v) for v in case.split(",")) for case in args.cases]
    records = []
    print(f"{'backend':>8} {'N':>8} {'size':>9} {'ch':>3} {'fwd ms':>9} {'fwd+bwd ms':>11} {'peak MB':>8}")
    for num, size, channels in cases:
        record = run_in_subprocess(args, num, size, channels)
        records.append(record)
        print(
            f"{record.backend:>8} {num:>8,} {size:>4}x{size:<4} {channels:>3} "
            f"{record.fwd_ms:>9.1f} {record.fwd_bwd_ms:>11.1f} {record.peak_mb:>8.0f}",
            flush=True,
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps([asdict(r) for r in records], indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
