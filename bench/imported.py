"""Segmenting a scene trained elsewhere against training it here (issue 22):
`python bench/imported.py [--size-gaussians 300000] [--seeds 0,1,2] [--threads 1] [--json PATH]`
(`--quick`: a smoke run of a few minutes).

Part A, time at size. `protosaga synth --preset bench --density-scale S --write-gaussians` (160x120, 80
views; S the smallest scale, to 1 %, giving at least --size-gaussians Gaussians): the Gaussians that render
the dataset's images are written as a plain INRIA PLY, a splat scene "trained elsewhere" that fits the
dataset exactly. Then, each command in a fresh process:
  imported: `protosaga import DATA/gaussians.ply --dataset DATA -o S`, `protosaga run S`
  scratch:  `protosaga run DATA -o T --preset cpu` (training from the dataset's 4,000 points, then the same stages)
Both reuse the dataset's simulated SAM masks (`run` makes masks only for views without one; real SAM would
add the same ~7.6 s a view to both).

Part B, quality over --seeds, on `protosaga synth --preset demo --seed S` scenes (128x96, 48 views):
  joint:    `protosaga run DATA -o JOINT --preset cpu` (Gaussians, features, classifiers together, λ_CE 0.05)
  imported: `protosaga train DATA -o RGB --preset cpu --lambda-ce 0` (the colour loss alone: the geometry an
            RGB-only trainer gives, from the same initial draws and views as the joint training; the feature
            channels are still rendered, so its seconds are the joint training's, not an RGB trainer's),
            RGB/gaussians.ply written again as a plain INRIA PLY, as another trainer saves it (the importer
            would ignore its untrained feat_* columns anyway), then `protosaga import PLAIN --dataset DATA
            -o IMP`, `protosaga features IMP` (its default iterations) and `protosaga run IMP`.
Scores are read from each scene's eval/metrics.json: test-view mIoU / precision / recall of the lifted
labels (the default) and of Eq. 19 (`proto`), the 3D object score of the per-Gaussian labels, the
training-view association score, PSNR.

How it is measured. Each command runs as `python bench/imported.py --child REPORT -- ARGS`, which calls
protosaga's CLI in-process and notes the time and its own peak RSS (ru_maxrss) at every `[protosaga]
<stage>:` line the command prints, so a stage's seconds run from its line to the next one ("startup": the
imports and reading the inputs before the first line), and a stage's peak RSS is the process's peak by its
end. The child is forked by a small shell: Python starts children with vfork, which carries the parent's
peak RSS into the child at exec (bench/viewer.py). "seconds" of a command is its wall time as the parent
sees it, interpreter start included. `--threads` (default 1) goes to every command: on the 2-core
machines two threads spin against any other busy process (bench/RESULTS.md, frozen features).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

# protosaga_core is imported inside the functions that use it: this file also runs each command (--child),
# whose clock starts before torch's import.
ROOT = Path(__file__).resolve().parent.parent
STAGE_PREFIX = "[protosaga] "
SCORES = ("lifted", "proto")
"""Segmentation methods eval scores on the test views."""


# --- the child: one protosaga command, timed -------------------------------------------------------------


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


@dataclass
class Mark:
    """A `[protosaga] <stage>:` line: when it was printed (s since the child started) and the peak RSS then."""

    stage: str
    at: float
    peak_rss_mib: float


class StageClock:
    """The real stdout, passed through, with a Mark for each stage line written to it."""

    def __init__(self, out, start: float):
        self.out, self.start, self.marks, self.pending = out, start, [], ""

    def write(self, text: str) -> int:
        self.out.write(text)
        self.pending += text
        *lines, self.pending = self.pending.split("\n")
        for line in lines:
            if line.startswith(STAGE_PREFIX) and ":" in line:
                stage = line[len(STAGE_PREFIX) : line.index(":")]
                self.marks.append(Mark(stage, time.perf_counter() - self.start, peak_rss_mib()))
        return len(text)

    def __getattr__(self, name: str):  # flush, isatty, fileno, encoding: the real stdout's
        return getattr(self.out, name)


def child_main(report: Path, argv: list[str]) -> int:
    """Run `protosaga ARGV` here, then write its marks, seconds and peak RSS to `report` as JSON."""
    start = time.perf_counter()
    clock = StageClock(sys.stdout, start)
    sys.stdout = clock
    # Imported after the clock starts: torch's import is part of the startup.
    from protosaga_core.cli import main

    code = main(argv)
    sys.stdout = clock.out
    payload = {"code": code, "seconds": time.perf_counter() - start, "peak_rss_mib": peak_rss_mib(),
               "marks": [asdict(m) for m in clock.marks]}
    report.write_text(json.dumps(payload) + "\n")
    return code


# --- the parent: commands, scenes, scores ----------------------------------------------------------------


@dataclass
class Stage:
    """One stage of a command: its seconds and the command's peak RSS by its end."""

    name: str
    seconds: float
    peak_rss_mib: float


@dataclass
class Step:
    """One protosaga command in a fresh process.

    Attributes:
        name: what it is in the tables; args: protosaga's arguments.
        seconds: wall time of the process (interpreter start and imports included).
        peak_rss_mib: the process's peak resident set (ru_maxrss).
        stages: its `[protosaga]` stages, "startup" first.
    """

    name: str
    args: list[str]
    seconds: float
    peak_rss_mib: float
    stages: list[Stage] = field(default_factory=list)

    def stage_seconds(self, name: str) -> float:
        return sum(s.seconds for s in self.stages if s.name == name)


def to_stages(marks: list[dict], seconds: float, peak: float, command: str) -> list[Stage]:
    """Consecutive marks of one stage merged; each stage lasts until the next begins (the last until the end)."""
    starts = [Mark("startup", 0.0, 0.0)]
    for mark in (Mark(**m) for m in marks):
        if mark.stage != starts[-1].stage:
            starts.append(mark)
    if len(starts) == 1:  # a command without stage lines (train, features): one stage after the startup
        starts[0].stage = command
    ends = [(m.at, m.peak_rss_mib) for m in starts[1:]] + [(seconds, peak)]
    return [Stage(m.stage, end - m.at, end_peak) for m, (end, end_peak) in zip(starts, ends)]


def run_step(name: str, args: list[str | Path], threads: int, log_dir: Path) -> Step:
    """`protosaga ARGS --threads N` in a fresh process forked by a shell (see the module docstring)."""
    args = [str(a) for a in args] + ["--threads", str(threads)]
    slug = "".join(c if c.isalnum() else "_" for c in name)
    report, log = log_dir / f"{slug}.json", log_dir / f"{slug}.log"
    command = [sys.executable, __file__, "--child", str(report), "--", *args]
    # This checkout's protosaga, whichever copy is installed.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    print(f"  {name}: protosaga {' '.join(args)}", file=sys.stderr, flush=True)
    start = time.perf_counter()
    with log.open("w") as out:
        # `; exit $?` keeps the shell from exec'ing the command in its own (vfork-inherited) process.
        shell = ["/bin/sh", "-c", '"$@"; exit $?', "sh", *command]
        done = subprocess.run(shell, check=False, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{name} failed (exit {done.returncode}); the end of {log}:\n{log.read_text()[-3000:]}")
    result = json.loads(report.read_text())
    stages = to_stages(result["marks"], result["seconds"], result["peak_rss_mib"], args[0])
    return Step(name, args, seconds, result["peak_rss_mib"], stages)


def gaussian_count(ply: Path) -> int:
    from protosaga_core.io.source_ply import inspect_source_ply

    return inspect_source_ply(ply).count


def density_scale_for(size: int, preset: str, seed: int) -> float:
    """The smallest density scale (to 1 %) at which the preset's scene of `seed` holds at least `size` Gaussians."""
    from protosaga_core.synthetic import build_objects, objects_to_gaussians, scaled_preset

    def count(scale: float) -> int:
        config, rng = scaled_preset(preset, scale), np.random.default_rng(seed)
        return len(objects_to_gaussians(build_objects(rng, config), config, rng)[0])

    scale = size / count(1.0)  # the count grows in proportion to the density, up to rounding per part
    while count(scale) < size:
        scale *= 1.01
    return scale


@dataclass
class Scores:
    """What eval/metrics.json says of a scene, as flat numbers (None where eval measured nothing)."""

    gaussians: int
    psnr: float | None
    association_miou: float | None
    objects_3d: dict[str, float] | None
    segmentation: dict[str, dict[str, float]]  # method -> miou, precision, recall


def headline(metrics: dict) -> dict[str, float]:
    return {key: metrics[key] for key in ("miou", "precision", "recall", "num_pred", "num_gt")}


def read_scores(scene: Path) -> Scores:
    metrics = json.loads((scene / "eval" / "metrics.json").read_text())
    return Scores(
        gaussians=gaussian_count(scene / "gaussians.ply"),
        psnr=metrics["psnr"],
        association_miou=metrics["association"]["miou"] if metrics["association"] else None,
        objects_3d=headline(metrics["objects_3d"]) if metrics["objects_3d"] else None,
        segmentation={method: headline(m) for method, m in metrics["segmentation"].items()},
    )


# --- part A: time at size --------------------------------------------------------------------------------


@dataclass
class PartA:
    size_asked: int
    density_scale: float
    source_gaussians: int
    synth_seconds: float
    imported: list[Step]
    scratch: list[Step]
    imported_scores: Scores
    scratch_scores: Scores


def part_a(work: Path, size: int, threads: int, train_args: list[str]) -> PartA:
    from protosaga_core.synthetic import synthesize

    print(f"part A: a bench scene of at least {size:,} Gaussians", file=sys.stderr, flush=True)
    scale = density_scale_for(size, "bench", seed=0)
    start = time.perf_counter()
    data = synthesize(work / "bench_data", "bench", seed=0, progress=False, density_scale=scale, write_gaussians=True)
    synth_seconds = time.perf_counter() - start
    logs = work / "logs"
    scene, scratch_scene = work / "A_imported", work / "A_scratch"
    imported = [
        run_step("A import", ["import", data / "gaussians.ply", "--dataset", data, "-o", scene], threads, logs),
        run_step("A run imported", ["run", scene], threads, logs),
    ]
    scratch_args = ["run", data, "-o", scratch_scene, "--preset", "cpu", *train_args]
    scratch = [run_step("A run from scratch", scratch_args, threads, logs)]
    return PartA(size, scale, gaussian_count(data / "gaussians.ply"), synth_seconds, imported, scratch,
                 read_scores(scene), read_scores(scratch_scene))


# --- part B: quality over seeds --------------------------------------------------------------------------


@dataclass
class PartBSeed:
    seed: int
    joint: list[Step]
    imported: list[Step]
    plain_copy_seconds: float
    joint_scores: Scores
    imported_scores: Scores


def plain_copy(source: Path, target: Path) -> float:
    """`source` written again with the INRIA columns only, as another trainer would have saved it; seconds."""
    from protosaga_core.io.ply import read_ply, write_ply

    start = time.perf_counter()
    write_ply(target, read_ply(source).gaussians, plain=True)
    return time.perf_counter() - start


def part_b_seed(work: Path, seed: int, threads: int, train_args: list[str]) -> PartBSeed:
    from protosaga_core.synthetic import synthesize

    print(f"part B: seed {seed}", file=sys.stderr, flush=True)
    data = synthesize(work / f"B{seed}_data", "demo", seed=seed, progress=False)
    logs = work / "logs"
    joint_dir, rgb, imported = work / f"B{seed}_joint", work / f"B{seed}_rgb", work / f"B{seed}_imported"
    joint = [run_step(f"B{seed} joint run", ["run", data, "-o", joint_dir, "--preset", "cpu", *train_args], threads, logs)]
    rgb_args = ["train", data, "-o", rgb, "--preset", "cpu", "--lambda-ce", "0", *train_args]
    steps = [run_step(f"B{seed} rgb-only train", rgb_args, threads, logs)]
    plain = work / f"B{seed}_rgb_plain.ply"
    copy_seconds = plain_copy(rgb / "gaussians.ply", plain)
    steps += [
        run_step(f"B{seed} import", ["import", plain, "--dataset", data, "-o", imported], threads, logs),
        run_step(f"B{seed} features", ["features", imported], threads, logs),
        run_step(f"B{seed} run imported", ["run", imported], threads, logs),
    ]
    return PartBSeed(seed, joint, steps, copy_seconds, read_scores(joint_dir), read_scores(imported))


# --- tables ----------------------------------------------------------------------------------------------


def fmt(value: float | None, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def step_rows(label: str, steps: list[Step]) -> list[str]:
    """One row per stage of each command, then the path's total."""
    rows = []
    for step in steps:
        command = step.args[0]
        for stage in step.stages:
            rows.append(f"| {label} | `{command}`: {stage.name} | {stage.seconds:.1f} | {stage.peak_rss_mib:,.0f} |")
        rows.append(f"| {label} | **`{command}` wall** | **{step.seconds:.1f}** | **{step.peak_rss_mib:,.0f}** |")
    to_labels = sum(s.seconds for s in steps) - sum(s.stage_seconds("eval") for s in steps)
    rows.append(f"| {label} | **to labels** (wall, less eval) | **{to_labels:.1f}** | |")
    total, peak = sum(s.seconds for s in steps), max(s.peak_rss_mib for s in steps)
    rows.append(f"| {label} | **total** | **{total:.1f}** | **{peak:,.0f}** |")
    return rows


def score_cells(scores: Scores) -> list[str]:
    cells = [f"{scores.gaussians:,}", fmt(scores.psnr, ".2f")]
    for method in SCORES:
        m = scores.segmentation.get(method)
        cells.append("-" if m is None else f"{m['miou']:.3f} / {m['precision']:.3f} / {m['recall']:.3f}")
    o = scores.objects_3d
    cells.append("-" if o is None else f"{o['miou']:.3f} / {o['precision']:.3f} / {o['recall']:.3f}")
    cells.append(fmt(scores.association_miou))
    return cells


SCORE_HEADER = ("Gaussians", "PSNR", "lifted mIoU / P / R", "Eq. 19 mIoU / P / R", "3D mIoU / P / R", "assoc. mIoU")


def print_part_a(a: PartA) -> None:
    print(f"\n## Part A: {a.source_gaussians:,} Gaussians imported (bench preset, density x{a.density_scale:.3f}; "
          f"synthesized in {a.synth_seconds:.0f} s) against training from scratch\n")
    print("| path | step | seconds | peak RSS MiB |\n|---|---|---|---|")
    for row in step_rows("imported", a.imported) + step_rows("scratch", a.scratch):
        print(row)
    print("\n| path | " + " | ".join(SCORE_HEADER) + " |\n|---|" + "---|" * len(SCORE_HEADER))
    print("| imported (the generating Gaussians) | " + " | ".join(score_cells(a.imported_scores)) + " |")
    print("| scratch | " + " | ".join(score_cells(a.scratch_scores)) + " |")


def spread(values: list[float], spec: str = ".3f") -> str:
    """mean (min-max)."""
    if len(values) == 1:
        return format(values[0], spec)
    return f"{statistics.fmean(values):{spec}} ({min(values):{spec}} to {max(values):{spec}})"


def summary_values(scores: list[Scores]) -> dict[str, list[float]]:
    """Each headline number of the seeds' scores, in seed order."""
    values: dict[str, list[float]] = {}
    for s in scores:
        for method in SCORES:
            if method in s.segmentation:
                for key in ("miou", "precision", "recall"):
                    values.setdefault(f"{method} {key}", []).append(s.segmentation[method][key])
        if s.objects_3d:
            for key in ("miou", "precision", "recall"):
                values.setdefault(f"3D {key}", []).append(s.objects_3d[key])
        if s.association_miou is not None:
            values.setdefault("assoc. miou", []).append(s.association_miou)
        if s.psnr is not None:
            values.setdefault("psnr", []).append(s.psnr)
        values.setdefault("gaussians", []).append(float(s.gaussians))
    return values


def print_part_b(seeds: list[PartBSeed]) -> None:
    print("\n## Part B: joint training against RGB-only geometry imported + features on it (demo preset)\n")
    print("| seed | path | " + " | ".join(SCORE_HEADER) + " |\n|---|---|" + "---|" * len(SCORE_HEADER))
    for s in seeds:
        print(f"| {s.seed} | joint | " + " | ".join(score_cells(s.joint_scores)) + " |")
        print(f"| {s.seed} | imported | " + " | ".join(score_cells(s.imported_scores)) + " |")
    joint, imported = summary_values([s.joint_scores for s in seeds]), summary_values([s.imported_scores for s in seeds])
    print(f"\nMean (range) over seeds {', '.join(str(s.seed) for s in seeds)}:\n")
    print("| measure | joint | imported | imported - joint |\n|---|---|---|---|")
    for key in joint:
        if key in imported:
            diffs = [b - a for a, b in zip(joint[key], imported[key])]
            spec = {"gaussians": ",.0f", "psnr": ".2f"}.get(key, ".3f")
            print(f"| {key} | {spread(joint[key], spec)} | {spread(imported[key], spec)} | {spread(diffs, spec)} |")
    print("\nSeconds per step (wall, per command; in brackets the stage inside it):\n")
    print("| seed | joint: run (train) | RGB-only train | plain copy | import | features | run imported | imported total |")
    print("|---|---|---|---|---|---|---|---|")
    for s in seeds:
        run = s.joint[0]
        train, imp, feat, run_imp = s.imported
        total = sum(x.seconds for x in s.imported) + s.plain_copy_seconds
        print(f"| {s.seed} | {run.seconds:.1f} ({run.stage_seconds('train'):.1f}) | {train.seconds:.1f} "
              f"| {s.plain_copy_seconds:.1f} | {imp.seconds:.1f} | {feat.seconds:.1f} | {run_imp.seconds:.1f} | {total:.1f} |")


# --- main ------------------------------------------------------------------------------------------------


def cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), platform.processor())


def machine() -> dict:
    import torch

    return {"cpu": cpu_model(), "nproc": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__}


def main() -> int:
    if len(sys.argv) > 3 and sys.argv[1] == "--child" and sys.argv[3] == "--":
        return child_main(Path(sys.argv[2]), sys.argv[4:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gaussians", type=int, default=300_000,
                        help="part A: at least this many imported Gaussians (0: skip part A)")
    parser.add_argument("--seeds", default="0,1,2", help="part B: comma-separated demo scenes (empty: skip part B)")
    parser.add_argument("--iterations", type=int,
                        help="iterations of every training (default: the cpu preset's 1,500)")
    parser.add_argument("--threads", type=int, default=1, help="torch's CPU threads in every command")
    parser.add_argument("--quick", action="store_true", help="smoke run: 20k Gaussians, seed 0, 100 training iterations")
    parser.add_argument("--workdir", type=Path,
                        help="a new folder to keep the datasets, scenes and logs in (default: a temporary one)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.quick:
        args.size_gaussians, args.seeds, args.iterations = 20_000, "0", args.iterations or 100
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    import torch

    torch.set_num_threads(args.threads)  # this process synthesizes the datasets
    train_args = [] if args.iterations is None else ["--iterations", str(args.iterations)]

    with tempfile.TemporaryDirectory(prefix="bench_imported_") as tmp:
        work = args.workdir or Path(tmp)
        (work / "logs").mkdir(parents=True, exist_ok=True)
        load_before = os.getloadavg()
        a = part_a(work, args.size_gaussians, args.threads, train_args) if args.size_gaussians > 0 else None
        b = [part_b_seed(work, seed, args.threads, train_args) for seed in seeds]
        load_after = os.getloadavg()
    if a:
        print_part_a(a)
    if b:
        print_part_b(b)
    print(f"\n{args.threads} thread(s); load average before / after: {load_before[0]:.2f} / {load_after[0]:.2f} "
          f"({os.cpu_count()} cores)")
    if args.json:
        payload = {
            "command": " ".join(sys.argv),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": machine(),
            "threads": args.threads,
            "iterations": args.iterations,
            "load_average": {"before": load_before, "after": load_after},
            "part_a": asdict(a) if a else None,
            "part_b": [asdict(s) for s in b],
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
