"""The one-command check of the CUDA path, for the first machine with a GPU: `bash bench/gpu_check.sh`.

Steps, each timed and recorded as PASS or FAIL with the tail of its output:
1. `protosaga doctor --compile-gsplat`: gsplat's kernels load (compiling them takes minutes the first
   time; that step is timed apart and not counted in the budget).
2. The CUDA tests: gsplat against the torch rasterizer on the GPU (tests/test_cuda.py), training on CUDA
   interrupted and resumed (tests/test_train.py), the backend choice (tests/test_device.py).
3. `protosaga demo --no-view --preset cpu --backend gsplat` on the GPU, and the same on the CPU
   (CUDA_VISIBLE_DEVICES empty), so time and quality (PSNR, mIoU, precision) sit side by side.
4. `protosaga segment` of the test views, and 640x480 viewer segmentation frames (`render_view`, as the
   viewer's LiveView renders them), on both devices.
It writes one JSON (default bench/gpu_check.json) and prints a table whose first line says on what device
it ran. `--rehearse-on-cpu` runs every step on the CPU to check the script itself: its report says, on
every line, that it checked nothing about CUDA.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
CUDA_TESTS = ["tests/test_cuda.py", "tests/test_device.py", "tests/test_train.py::test_training_on_cuda_resumes_and_writes_a_cpu_readable_scene"]
FRAME_SIZE = (640, 480)
FRAMES = 10


@dataclass
class Step:
    """One step of the check.

    Attributes:
        name: what ran, e.g. "demo on cuda".
        passed: it exited 0 (and for tests: no failure).
        seconds: wall time.
        detail: the last lines of its output, or the numbers it produced.
    """

    name: str
    passed: bool
    seconds: float
    detail: str | dict = ""


@dataclass
class Report:
    device: str
    rehearsal: bool
    torch: str
    gsplat: str
    python: str
    date: str
    steps: list[Step] = field(default_factory=list)


def run_step(name: str, command: list[str], env: dict[str, str] | None = None, timeout: float = 1200) -> Step:
    start = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=ROOT, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=timeout)
        passed, output = done.returncode == 0, done.stdout + done.stderr
    except subprocess.TimeoutExpired as expired:
        partial = expired.stdout.decode(errors="replace") if isinstance(expired.stdout, bytes) else expired.stdout or ""
        passed, output = False, f"{partial}\ntimed out after {timeout:.0f} s"
    tail = "\n".join(output.strip().splitlines()[-15:])
    return Step(name, passed, round(time.perf_counter() - start, 2), tail)


def demo_metrics(scene: Path) -> dict:
    """The demo's test-view PSNR and lifted-label scores, from the metrics its eval wrote."""
    metrics = json.loads((scene / "eval" / "metrics.json").read_text())
    lifted = metrics["segmentation"]["lifted"]
    return {
        "psnr": round(metrics["psnr"], 2),
        "miou": round(lifted["miou"], 3),
        "precision": round(lifted["precision"], 3),
        "recall": round(lifted["recall"], 3),
        "metrics": str(scene / "eval" / "metrics.json"),
    }


def frame_times(scene: Path, device: str) -> Step:
    """Median and max of FRAMES 640x480 segmentation frames, after one untimed frame, as the viewer renders them."""
    code = f"""
import json, statistics, time, torch
from protosaga_app.document import SceneDocument
from protosaga_app.framing import training_poses
from protosaga_app.live import FeaturePca, render_view
from protosaga_app.scene import ViewerScene
scene = ViewerScene.load({str(scene)!r})
document = SceneDocument(scene, torch.device({device!r}))
pca = FeaturePca.fit(scene.gaussians.features)
poses = list(training_poses(scene.training_views()).values())[:{FRAMES + 1}]
times = []
for pose in poses:
    start = time.perf_counter()
    render_view(document, pca, pose, "segmentation", {FRAME_SIZE[0]}, {FRAME_SIZE[1]})
    if {device!r} == "cuda":
        torch.cuda.synchronize()
    times.append(1000 * (time.perf_counter() - start))
print(json.dumps({{"median_ms": statistics.median(times[1:]), "max_ms": max(times[1:]), "frames": len(times) - 1}}))
"""
    step = run_step(f"viewer frames on {device}", [sys.executable, "-c", code], _device_env(device))
    if step.passed:
        step.detail = json.loads(step.detail.splitlines()[-1])
    return step


def _device_env(device: str) -> dict[str, str]:
    return {} if device == "cuda" else {"CUDA_VISIBLE_DEVICES": ""}


def check(workdir: Path, rehearsal: bool) -> Report:
    import gsplat

    devices = ["cpu"] if rehearsal else ["cuda", "cpu"]
    report = Report(
        device=torch.cuda.get_device_name(0) if not rehearsal else "CPU rehearsal: nothing here checks CUDA",
        rehearsal=rehearsal,
        torch=torch.__version__,
        gsplat=gsplat.__version__,
        python=platform.python_version(),
        date=time.strftime("%Y-%m-%d %H:%M"),
    )
    protosaga = [sys.executable, "-m", "protosaga_app.command"]
    report.steps.append(run_step("doctor --compile-gsplat (untimed budget)", [*protosaga, "doctor", "--compile-gsplat"], timeout=1800))
    report.steps.append(run_step("CUDA tests", [sys.executable, "-m", "pytest", "-q", "-rs", *CUDA_TESTS]))
    for device in devices:
        scene = workdir / f"demo_{device}"
        backend = "gsplat" if device == "cuda" else "torch"
        demo = run_step(
            f"demo on {device} ({backend})",
            [*protosaga, "demo", "--no-view", "--preset", "cpu", "--output", str(scene), "--backend", backend],
            _device_env(device),
        )
        if demo.passed:
            demo.detail = demo_metrics(scene)
        report.steps.append(demo)
        report.steps.append(
            run_step(
                f"segment test views on {device}",
                [*protosaga, "segment", str(scene), "--split", "test", "-o", str(workdir / f"segment_{device}"), "--backend", backend],
                _device_env(device),
            )
        )
        report.steps.append(frame_times(scene, device))
    return report


def table(report: Report) -> str:
    lines = [f"device: {report.device} | torch {report.torch} | gsplat {report.gsplat} | {report.date}"]
    for step in report.steps:
        verdict = "PASS" if step.passed else "FAIL"
        if report.rehearsal:
            verdict += " (CPU rehearsal)"
        detail = step.detail if isinstance(step.detail, str) else json.dumps(step.detail)[:160]
        lines.append(f"{verdict:22s} {step.name:42s} {step.seconds:8.1f} s   {detail.splitlines()[-1] if detail else ''}")
    failed = [s.name for s in report.steps if not s.passed]
    lines.append(f"{len(report.steps) - len(failed)} passed, {len(failed)} failed" + (f": {', '.join(failed)}" if failed else ""))
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "gpu_check.json")
    parser.add_argument("--workdir", type=Path, default=None, help="where the demo scenes go (default: a temporary folder)")
    parser.add_argument("--rehearse-on-cpu", action="store_true", help="run every step on the CPU to check this script")
    args = parser.parse_args()
    if not args.rehearse_on_cpu and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; --rehearse-on-cpu checks the script itself on the CPU", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="protosaga-gpu-check-") as scratch:
        report = check(args.workdir or Path(scratch), args.rehearse_on_cpu)
    args.json.write_text(json.dumps(asdict(report), indent=2))
    print(table(report))
    print(f"wrote {args.json}")
    return 0 if all(step.passed for step in report.steps) else 1


if __name__ == "__main__":
    raise SystemExit(main())
