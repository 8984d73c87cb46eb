"""Every stage after training at scale, on frozen synthetic scenes (issue 23):
`python bench/scale.py --gaussians N --views K --masks M --width W --height H
    [--stages association,prototypes,labels,segment,export,viewer] [--json PATH] [--plot PATH]
    [--test-views 4] [--threads T] [--seed 0] [--timeout S] [--workdir DIR]`

N and K take comma lists for a sweep (every N with every K). The issue's sweep (hours on 2 cores, most of
them at 1M and 3M) and its 1080p point, on a quiet machine:
`python bench/scale.py --gaussians 100000,300000,1000000,3000000 --views 200 --masks 100 --width 320 --height 180
--threads 2 --timeout 7200 --workdir DIR --json bench/scale.json --plot bench/scale.png`
`python bench/scale.py --gaussians 1000000 --views 20 --masks 100 --width 1920 --height 1080 --threads 2
--timeout 7200 --workdir DIR --json bench/scale_1080p.json`
Smoke run (~1 min): `python bench/scale.py --gaussians 20000 --views 20 --masks 30 --width 160 --height 90`.
Sizes run by separate invocations (each writing its --json) make one table, JSON and plot with
`python bench/scale.py --merge A.json B.json ... [--json OUT] [--plot OUT]`.
Beside any other busy process, use --threads 1: torch's threads then spin against it (a 0.5-s stage takes 14 s
at 2 threads on 2 shared cores; bench/RESULTS.md, frozen features).

The scene of each size (N, K), built in a fresh process and nothing trained:
- Gaussians: the synthetic room of `protosaga synth --preset bench` (protosaga_core/synthetic.py:
  `build_objects`, `objects_to_gaussians`), its surface density scaled (`scaled_preset`) to give at least N,
  then N of them drawn at random; SH degree 3 with small random coefficients, as trained scenes have.
- Views: K training views and --test-views test views, interleaved on the preset's loop through the room
  (`trajectory`) at W x H.
- Masks, about M per training view: every instance is cut into pieces by a grid of cubes (a piece: the
  instance's Gaussians in one cube), each view's piece map is rendered (the label with the largest blended
  weight per pixel) and written as the dataset's ground-truth instance maps, and `protosaga masks --method
  simulated` (`generate_masks`) turns them into SAM-like masks (merges, drops, splits, jitter, seams:
  masks/simulated.py). The cube size is found first by rendering 8 training views and simulating their
  masks, until they hold M +- 5 % masks on average (at most 6 rounds, on the same surfaces with at most
  100k Gaussians; the mean over all training views is measured and reported).
- The scene: the dataset's Gaussians written as a plain INRIA PLY and imported (`import_scene`, as
  `protosaga import DATA/gaussians.ply --dataset DATA -o SCENE --skip-alignment-check`), then given random
  16-D features and random per-view classifiers (one row per mask), recorded as the "features" stage: the
  memory bank needs them, and every stage then sees a scene with features, as a scene trained here is.
  Feature values change no stage's amount of work.

Each stage is run as `protosaga run` chains them, through the library functions the commands call, each
process forked by a small shell (Python spawns children with vfork, which carries the parent's peak RSS
into the child at exec: bench/viewer.py):
- association bank: `associate(grouping="bank")` (Eq. 9-16), its own process;
- association consensus, prototypes, labels: one process, the stages sharing one blending-weights cache
  (`WeightsCache`, default budget) as `protosaga run` shares it: `associate()` (view consensus, the default),
  `compute_prototypes()` (Eq. 17-18 and the lifted per-Gaussian labels: the stage), then
  `lifted_gaussian_labels()` once more by itself (with reading the Gaussians and dataset): the labels' share
  of the prototypes stage, which includes it. The bank runs first, so a consensus association that fails
  leaves the bank's, and the later stages run on that (their note says so);
- segment: `segment(split="test")` (lifted labels, the default) of the test views;
- export: `export_scene()` of the instance with the most Gaussians (a plain PLY and its record);
- viewer: open (the app's imports, `ViewerScene.load`, `SceneDocument`, `ViewerApp` on a local viser
  server, no browser),
  one segmentation frame at 640x480 from the first test view's pose (`render_view`, as bench/viewer.py),
  one click at its centre (`pick_instance` on the frame's labels, then `model.click`).
--stages picks what is reported; the stages those need run too (marked "prerequisite").

Measured per stage: wall and CPU seconds, and the peak resident set during the stage (VmHWM, reset through
/proc/self/clear_refs when the stage starts: it includes what the process already holds, the interpreter
and torch first; where the reset is refused, the process's ru_maxrss so far, and the JSON says so); the
JSON also has the memory free when the stage started, of which the weights cache takes a share. A stage
that raises (MemoryError, an allocation failure, ConsensusTooLarge: "refused"), that the kernel kills, or
that runs past --timeout (its process killed) is recorded as such, with its seconds to its end and its
process's peak RSS (wait4); the next stages go on in a new process.
"build" is the scene's construction, reported beside the stages. Output: a markdown table on stdout,
--json with every record, the machine and the command, --plot a log-log plot of seconds and peak RSS per
stage against N and against K (needs matplotlib: `pip install -e '.[bench]'`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from protosaga_core.cameras import Cameras
from protosaga_core.datasets import DatasetConfig, load_scene
from protosaga_core.gaussians import Gaussians, num_sh_rest
from protosaga_core.imports.importer import ImportConfig, import_scene
from protosaga_core.io.exports import export_scene, record_path
from protosaga_core.io.labelmaps import MAX_LABEL, save_label_map
from protosaga_core.io.ply import write_ply
from protosaga_core.io.scene_dir import Classifiers, SceneDir
from protosaga_core.io.scene_lock import scene_lock
from protosaga_core.masks import MasksConfig, generate_masks
from protosaga_core.masks.simulated import simulate_sam_masks
from protosaga_core.memory import available_memory
from protosaga_core.method.association import AssociateConfig, associate
from protosaga_core.method.consensus import ConsensusTooLarge
from protosaga_core.method.lifting import covered_labels
from protosaga_core.method.prototypes import Prototypes, PrototypesConfig, compute_prototypes, lifted_gaussian_labels
from protosaga_core.method.segment import SegmentConfig, segment
from protosaga_core.render import RenderOutput, render
from protosaga_core.render.sparse import WeightsCache
from protosaga_core.synthetic import (
    BACKGROUND,
    _save_depth,
    _save_rgb,
    _transforms_json,
    _write_point_cloud,
    build_objects,
    objects_to_gaussians,
    scaled_preset,
    trajectory,
)

ROOT = Path(__file__).resolve().parent.parent
PRESET = "bench"
SH_DEGREE, FEATURE_DIM = 3, 16
VIEWER_SIZE = (640, 480)
"""The viewer's 480p frame, as bench/viewer.py measures it."""
PROBE_VIEWS, CALIBRATION_ROUNDS, MASKS_TOLERANCE = 8, 6, 0.05
CALIBRATION_GAUSSIANS = 100_000
"""The cube size is searched on a scene of at most this many Gaussians (see `build_scene`)."""
SCENE_INFO = "scene_info.json"
SPEC_VERSION = 2
"""Bumped when the scene construction changes, so that --workdir never reuses a scene built otherwise."""

STAGES = ("association", "prototypes", "labels", "segment", "export", "viewer")
"""The --stages names."""
JOBS: tuple[tuple[str, ...], ...] = (
    ("build",),
    ("association bank",),
    ("association consensus", "prototypes", "labels"),
    ("segment",),
    ("export",),
    ("viewer open", "viewer frame", "viewer click"),
)
"""The steps, grouped by the process they run in, in order."""
STAGE_OF = {
    "association bank": "association", "association consensus": "association", "prototypes": "prototypes",
    "labels": "labels", "segment": "segment", "export": "export",
    "viewer open": "viewer", "viewer frame": "viewer", "viewer click": "viewer",
}
PREREQUISITE = {
    "prototypes": "association consensus", "labels": "prototypes", "segment": "prototypes", "export": "prototypes",
    "viewer open": "prototypes", "viewer frame": "viewer open", "viewer click": "viewer frame",
}
SHARES_WEIGHTS = {"association bank", "association consensus", "prototypes", "labels"}
"""The steps that share one blending-weights cache in their process, as in `protosaga run`."""


# --- records -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Size:
    """One point of the sweep, as asked."""

    gaussians: int
    views: int
    masks: int
    width: int
    height: int

    @property
    def slug(self) -> str:
        return f"N{self.gaussians}_K{self.views}_M{self.masks}_{self.width}x{self.height}"


@dataclass
class SceneInfo:
    """What the built scene holds (masks per view: measured over the training views)."""

    gaussians: int
    train_views: int
    test_views: int
    width: int
    height: int
    instances: int
    pieces: int
    cell_m: float
    density_scale: float
    masks_per_view: float
    masks_min: int
    masks_max: int
    ply_mib: float


@dataclass
class StepRecord:
    """One measured step.

    Attributes:
        seconds, cpu_seconds: wall time; CPU time of the process's threads (user + system), which another busy
            process on the machine inflates less than the wall time.
        status: ok, refused (the product declined: ConsensusTooLarge), oom (MemoryError or a failed
            allocation), failed (another exception), killed (the process died: a signal, e.g. the kernel's
            OOM killer), timeout (past --timeout, killed), skipped (its inputs are missing), reused (--workdir).
        peak_rss_mib: the peak resident set during the step (see `peak_kind`).
        rss_before_mib: the resident set when it started.
        peak_kind: "VmHWM (reset at the step)" or "ru_maxrss (process so far)".
        available_mib: the memory the process could still take when the step started
            (`memory.available_memory`): the blending-weights cache takes a share of it, so the peak RSS of
            association, prototypes and labels follows the machine's free memory, not the scene alone.
        requested: named by --stages (else run as a prerequisite).
    """

    step: str
    status: str
    seconds: float | None = None
    cpu_seconds: float | None = None
    peak_rss_mib: float | None = None
    rss_before_mib: float | None = None
    peak_kind: str = ""
    available_mib: float | None = None
    note: str = ""
    requested: bool = True


@dataclass
class SizeResult:
    size: Size
    scene: SceneInfo | None
    records: list[StepRecord] = field(default_factory=list)


# --- the scene -----------------------------------------------------------------------------------------


def surface_gaussians(count: int, seed: int) -> tuple[Gaussians, np.ndarray, float, int]:
    """`count` Gaussians of the bench room (density scaled to give at least that many, then drawn at random),
    SH degree 3, and each one's instance. (Gaussians, [N] int64, density scale, instances)"""
    def build(scale: float) -> tuple[Gaussians, torch.Tensor, int]:
        config, rng = scaled_preset(PRESET, scale), np.random.default_rng(seed)
        objects = build_objects(rng, config)
        gaussians, ids = objects_to_gaussians(objects, config, rng)
        return gaussians, ids, len(objects)

    scale = 1.02 * count / len(build(1.0)[0])  # the count grows with the density, up to rounding per part
    gaussians, ids, instances = build(scale)
    while len(gaussians) < count:
        scale *= 1.05 * count / len(gaussians)
        gaussians, ids, instances = build(scale)
    generator = torch.Generator().manual_seed(seed)
    keep = torch.randperm(len(gaussians), generator=generator)[:count].sort().values
    gaussians = gaussians.select(keep)
    rest = 0.05 * torch.randn(count, num_sh_rest(SH_DEGREE), 3, generator=generator)
    return replace(gaussians, shN=rest), ids[keep].numpy(), scale, instances


def ring(size: Size, test_views: int) -> tuple[Cameras, list[str], list[bool]]:
    """Cameras of K training and `test_views` test views, interleaved on the preset's loop; names; is-test."""
    total = size.views + test_views
    cameras = trajectory(replace(scaled_preset(PRESET), width=size.width, height=size.height, num_views=total))
    tests = {int((j + 0.5) * total / test_views) for j in range(test_views)}
    return cameras, [f"frame_{i:04d}" for i in range(total)], [i in tests for i in range(total)]


def piece_ids(means: np.ndarray, instances: np.ndarray, cell: float) -> np.ndarray:
    """1..P: each instance cut by a grid of `cell`-metre cubes (a piece: its Gaussians in one cube). [N]"""
    cells = np.floor(means / cell).astype(np.int64)  # cubes fixed in the world, whatever the Gaussians
    cells -= cells.min(0)
    dims = cells.max(0) + 1
    key = ((instances * dims[0] + cells[:, 0]) * dims[1] + cells[:, 1]) * dims[2] + cells[:, 2]
    pieces = np.unique(key, return_inverse=True)[1].reshape(-1) + 1
    if pieces.max() > MAX_LABEL:
        raise ValueError(f"{pieces.max():,} pieces: more than a uint16 instance map holds; ask for fewer masks")
    return pieces


@torch.no_grad()
def piece_map(gaussians: Gaussians, camera: Cameras, pieces: torch.Tensor, rgb: bool = False) -> tuple[RenderOutput, torch.Tensor]:
    """One view's render (colour and depth with `rgb`), and each pixel's piece, 0 where less than half
    covered. [H, W] int64"""
    out = render(gaussians, camera, rgb=rgb, labels=pieces, depth="ED" if rgb else "none", backgrounds=torch.tensor(BACKGROUND)[None])
    return out, covered_labels(out.labels)[0]


def calibrate_cell(gaussians: Gaussians, instances: np.ndarray, cameras: Cameras, names: list[str], probes: list[int], target: int, seed: int) -> tuple[float, float]:
    """The cube size whose simulated masks come closest to `target` per view on the probe views: (cell, masks)."""
    means = gaussians.means.numpy()
    cell = float(np.ptp(means, 0).max()) / 4
    best = (cell, -1.0)
    for _ in range(CALIBRATION_ROUNDS):
        pieces = torch.from_numpy(piece_ids(means, instances, cell))
        counts = [
            len(np.unique(simulate_sam_masks(piece_map(gaussians, cameras[i], pieces)[1].numpy(), names[i], seed))) - 1
            for i in probes
        ]
        masks = float(np.mean(counts))
        if best[1] < 0 or abs(math.log(max(masks, 1) / target)) < abs(math.log(max(best[1], 1) / target)):
            best = (cell, masks)
        if abs(masks / target - 1) <= MASKS_TOLERANCE:
            break
        # Pieces in view grow as 1 / cell²; the step is bounded where merges and drops bend that.
        cell *= float(np.clip(math.sqrt(max(masks, 1) / target), 0.25, 4.0))
    return best


def write_dataset(data: Path, gaussians: Gaussians, pieces: np.ndarray, cameras: Cameras, names: list[str], is_test: list[bool], seed: int) -> None:
    """A NeRF-layout dataset as `protosaga synth` writes one, its instance maps the rendered pieces."""
    labels = torch.from_numpy(pieces)
    data.mkdir(parents=True, exist_ok=True)
    for index, name in enumerate(names):
        out, piece_labels = piece_map(gaussians, cameras[index], labels, rgb=True)
        _save_rgb(data / "images" / f"{name}.png", out.colors[0])
        save_label_map(data / "instances" / f"{name}.png", piece_labels)
        _save_depth(data / "depths" / f"{name}.png", out.depths[0, ..., 0], out.alphas[0, ..., 0] >= 0.5)
    for split, wanted in (("train", False), ("test", True)):
        frames = [(name, cameras.viewmats[i]) for i, name in enumerate(names) if is_test[i] == wanted]
        (data / f"transforms_{split}.json").write_text(_transforms_json(frames, cameras))
    _write_point_cloud(data / "points3d.ply", gaussians, np.random.default_rng(seed))
    write_ply(data / "gaussians.ply", gaussians, plain=True)


@dataclass
class RandomFeatures:
    """scene.json's record of the "features" stage here: random values, not learnt."""

    feature_dim: int
    seed: int
    random: bool = True


def add_random_features(scene_dir: SceneDir, num_gaussians: int, seed: int) -> list[int]:
    """Random features f_i and one random classifier row per mask of each training view, recorded as the
    features stage (what `protosaga features` writes); returns each training view's mask count."""
    generator = torch.Generator().manual_seed(seed + 1)
    views = sorted(scene_dir.load_dataset().split("train"), key=lambda view: view.name)
    labels = [torch.unique(mask[mask > 0]) for mask in (view.load_mask() for view in views)]
    weights = [torch.randn(len(ids), FEATURE_DIM, generator=generator) for ids in labels]
    with scene_lock(scene_dir.root, "bench/scale.py"):
        scene_dir.write_features(torch.randn(num_gaussians, FEATURE_DIM, generator=generator))
        scene_dir.write_classifiers(Classifiers([view.name for view in views], labels, weights))
        scene_dir.mark_done("features", RandomFeatures(FEATURE_DIM, seed))
    return [len(ids) for ids in labels]


def build_scene(folder: Path, size: Size, test_views: int, seed: int) -> SceneInfo:
    """DATA (the dataset) and SCENE (imported, with features) under `folder`."""
    data, scene = folder / "data", folder / "scene"
    cameras, names, is_test = ring(size, test_views)
    train = [i for i, test in enumerate(is_test) if not test]
    probes = [train[int(j * len(train) / PROBE_VIEWS)] for j in range(min(PROBE_VIEWS, len(train)))]
    # The cubes are found on the same surfaces with fewer Gaussians (the same objects: their draws come
    # first from the seed), which render the same piece maps at a fraction of the cost.
    few, few_instances, _, _ = surface_gaussians(min(size.gaussians, CALIBRATION_GAUSSIANS), seed)
    cell, _ = calibrate_cell(few, few_instances, cameras, names, probes, size.masks, seed)
    del few, few_instances
    gaussians, instances, scale, num_instances = surface_gaussians(size.gaussians, seed)
    pieces = piece_ids(gaussians.means.numpy(), instances, cell)
    write_dataset(data, gaussians, pieces, cameras, names, is_test, seed)
    generate_masks(load_scene(data), MasksConfig(method="simulated", seed=seed), progress=False)
    import_scene(data / "gaussians.ply", DatasetConfig(data), scene, ImportConfig(skip_alignment_check=True))
    counts = add_random_features(SceneDir(scene), size.gaussians, seed)
    return SceneInfo(
        size.gaussians, size.views, test_views, size.width, size.height, num_instances, int(pieces.max()), cell, scale,
        float(np.mean(counts)), min(counts), max(counts), SceneDir(scene).gaussians_path.stat().st_size / 2**20,
    )


# --- the steps (in the child processes) ----------------------------------------------------------------


class Skipped(Exception):
    """A step whose inputs are missing (an earlier stage failed)."""


def run_weights() -> dict[str, object]:
    """The keyword arguments that share the training views' blending weights between association and the
    prototypes stage as `protosaga run` does (`pipeline.associate_and_prototypes`: one `WeightsCache` of the
    default budget, a share of the memory free when it is made, handed to each stage)."""
    return {"weights": WeightsCache()}


@dataclass
class Context:
    """What the steps of one child process share."""

    job: dict
    scene_dir: SceneDir
    stack: contextlib.ExitStack
    shared: dict[str, object] = field(default_factory=dict)
    viewer: dict[str, object] = field(default_factory=dict)

    def require(self, stage: str) -> None:
        if not self.scene_dir.is_done(stage):
            raise Skipped(f"the scene has no finished {stage} stage")


def step_build(ctx: Context) -> str:
    folder, size = Path(ctx.job["folder"]), Size(**ctx.job["size"])
    info = build_scene(folder, size, ctx.job["test_views"], ctx.job["seed"])
    spec = scene_spec(size, ctx.job["test_views"], ctx.job["seed"])
    (folder / SCENE_INFO).write_text(json.dumps({"spec": spec, "info": asdict(info)}, indent=1) + "\n")
    return f"{info.masks_per_view:.0f} masks/view ({info.masks_min}-{info.masks_max}), {info.pieces:,} pieces of {info.cell_m * 100:.0f} cm"


def step_association(grouping: str) -> Callable[[Context], str]:
    def run(ctx: Context) -> str:
        record = associate(ctx.scene_dir, AssociateConfig(grouping=grouping), progress=False, **ctx.shared)
        return f"{record.num_instances:,} instances"

    return run


def step_prototypes(ctx: Context) -> str:
    ctx.require("associate")
    grouping = ctx.scene_dir.read_meta().configs["associate"]["grouping"]
    prototypes = compute_prototypes(ctx.scene_dir, PrototypesConfig(), progress=False, **ctx.shared)
    return f"{len(prototypes):,} prototypes, on the {grouping} association; lifted labels included"


def step_labels(ctx: Context) -> str:
    ctx.require("prototypes")
    scene_dir = ctx.scene_dir
    gaussians, scene = scene_dir.read_gaussians(), scene_dir.load_dataset()
    ids = Prototypes.load(scene_dir.prototypes_path).ids
    labels = lifted_gaussian_labels(scene_dir, gaussians, scene, ids, PrototypesConfig(), progress=False, **ctx.shared)
    return f"lifted_gaussian_labels alone (reads included): {float((labels > 0).float().mean()):.0%} labelled"


def step_segment(ctx: Context) -> str:
    ctx.require("prototypes")
    out = segment(ctx.scene_dir, SegmentConfig(split="test"), progress=False)
    return f"{len(list(out.glob('*.png')))} test views (lifted)"


def step_export(ctx: Context) -> str:
    ctx.require("prototypes")
    largest = max(ctx.scene_dir.read_meta().instances, key=lambda row: row.num_gaussians)
    path, record = export_scene(ctx.scene_dir, (largest.id,))
    path.unlink()  # the scene keeps no pile of exports across --workdir reruns
    record_path(path).unlink()
    return f"instance {largest.id} (the largest): {record.gaussians:,} Gaussians"


def step_viewer_open(ctx: Context) -> str:
    ctx.require("prototypes")
    # bench/viewer.py, beside this file: its local viser server with the banner kept off stdout.
    from viewer import viser_server

    from protosaga_app.document import SceneDocument
    from protosaga_app.scene import ViewerScene
    from protosaga_app.server import ViewerApp, ViewerOptions

    scene = ViewerScene.load(ctx.scene_dir.root)
    document = SceneDocument(scene, torch.device("cpu"))
    server = ctx.stack.enter_context(viser_server())
    app = ViewerApp(server, document, ViewerOptions(mode="segmentation"))
    ctx.viewer.update(scene=scene, document=document, app=app)
    return f"{len(scene.instances):,} instances, {len(scene.training_views())} training cameras"


def step_viewer_frame(ctx: Context) -> str:
    if "app" not in ctx.viewer:
        raise Skipped("the viewer did not open")
    from protosaga_app.browser_camera import pose_from_camera
    from protosaga_app.live import render_view

    view = min(ctx.viewer["scene"].dataset.split("test"), key=lambda v: v.name)
    pose = pose_from_camera(view.viewmat, view.K, view.width, view.height)
    frame = render_view(ctx.viewer["document"], ctx.viewer["app"].pca, pose, "segmentation", *VIEWER_SIZE)
    ctx.viewer["frame"] = frame
    return f"{VIEWER_SIZE[0]}x{VIEWER_SIZE[1]} from {view.name}: {len(np.unique(frame.labels[frame.labels > 0]))} instances on screen"


def step_viewer_click(ctx: Context) -> str:
    if "frame" not in ctx.viewer:
        raise Skipped("no viewer frame")
    from protosaga_app.picking import pick_instance

    picked = pick_instance(ctx.viewer["frame"].labels, VIEWER_SIZE[0] / 2, VIEWER_SIZE[1] / 2)
    ctx.viewer["document"].model.click(picked)  # runs the app's listener: splat nodes recoloured, panels refreshed
    return f"picked instance {picked} at the centre"


STEPS: dict[str, Callable[[Context], str]] = {
    "build": step_build,
    "association bank": step_association("bank"),
    "association consensus": step_association("consensus"),
    "prototypes": step_prototypes,
    "labels": step_labels,
    "segment": step_segment,
    "export": step_export,
    "viewer open": step_viewer_open,
    "viewer frame": step_viewer_frame,
    "viewer click": step_viewer_click,
}


# --- measuring in the child ----------------------------------------------------------------------------


def status_mib(key: str) -> float:
    with open("/proc/self/status") as status:
        return int(next(line for line in status if line.startswith(key + ":")).split()[1]) / 1024


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def reset_peak() -> bool:
    """Reset this process's VmHWM to its current RSS (Linux >= 4.0); False where that is refused."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def failure(error: BaseException) -> tuple[str, str]:
    """(status, note) of a step that raised."""
    message = f"{type(error).__name__}: {error}".splitlines()[0][:300]
    if isinstance(error, Skipped):
        return "skipped", str(error)
    if isinstance(error, ConsensusTooLarge):
        return "refused", message
    # torch's CPU allocator raises RuntimeError ("DefaultCPUAllocator: can't allocate memory").
    if isinstance(error, MemoryError) or "can't allocate memory" in str(error) or "not enough memory" in str(error):
        return "oom", message
    return "failed", message


def measure(name: str, ctx: Context) -> StepRecord:
    """Run one step: its seconds and the peak RSS it reached."""
    resettable = reset_peak()
    before, available = status_mib("VmRSS"), available_memory()
    start, cpu_start = time.perf_counter(), cpu_seconds()
    try:
        status, note = "ok", STEPS[name](ctx)
    except Exception as error:  # noqa: BLE001 (every failure is a result here; the next steps go on)
        status, note = failure(error)
    seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu_start
    if resettable:
        peak, kind = status_mib("VmHWM"), "VmHWM (reset at the step)"
    else:
        peak, kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "ru_maxrss (process so far)"
    free = None if available is None else available / 2**20
    return StepRecord(name, status, seconds, cpu, peak, before, kind, free, note)


def child_main(job_path: Path) -> int:
    """Run the job's steps in order, appending a "start" line before each and its record after to the report."""
    job = json.loads(job_path.read_text())
    torch.set_num_threads(job["threads"])
    report = Path(job["report"])
    with contextlib.ExitStack() as stack, report.open("a") as out:
        ctx = Context(job, SceneDir(job["scene"]), stack)
        if SHARES_WEIGHTS & set(job["steps"]):
            ctx.shared = run_weights()
        for name in job["steps"]:
            out.write(json.dumps({"start": name, "at": time.time()}) + "\n")
            out.flush()
            out.write(json.dumps({"record": asdict(measure(name, ctx))}) + "\n")
            out.flush()
    return 0


# --- the parent ----------------------------------------------------------------------------------------


def scene_spec(size: Size, test_views: int, seed: int) -> dict:
    return {**asdict(size), "test_views": test_views, "seed": seed, "version": SPEC_VERSION}


def reusable_scene(folder: Path, spec: dict) -> SceneInfo | None:
    """The SceneInfo of a scene built earlier under `folder` (--workdir) with the same spec."""
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        saved = json.loads((folder / SCENE_INFO).read_text())
        if saved["spec"] == spec:
            return SceneInfo(**saved["info"])
    return None


@dataclass(frozen=True)
class Exit:
    """How a child process ended: its exit status (None: killed past --timeout), its peak RSS (wait4's
    ru_maxrss: the largest of the shell's and the interpreter's), and when (time.time())."""

    code: int | None
    peak_rss_mib: float
    at: float


def spawn(job: dict, log: Path, timeout: float) -> Exit:
    """The job in a fresh interpreter forked by a shell."""
    job_path = Path(job["report"]).with_suffix(".job.json")
    job_path.write_text(json.dumps(job) + "\n")
    command = [sys.executable, str(Path(__file__).resolve()), "--child", str(job_path)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    deadline = time.monotonic() + timeout
    with log.open("a") as out:
        # `; exit $?` keeps the shell from exec'ing the command in its own (vfork-inherited) process.
        process = subprocess.Popen(["/bin/sh", "-c", '"$@"; exit $?', "sh", *command], cwd=ROOT, env=env,
                                   stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        # wait4 rather than Popen.wait: the rusage of a process that died tells its peak RSS.
        code, pid = None, 0
        try:
            while True:
                pid, status, usage = os.wait4(process.pid, os.WNOHANG)
                if pid:
                    code = os.waitstatus_to_exitcode(status)
                    break
                if time.monotonic() > deadline:
                    break
                time.sleep(0.2)
        finally:  # past the deadline, or this bench interrupted: its own session goes with it
            if not pid:
                os.killpg(process.pid, signal.SIGKILL)  # the shell and the interpreter it forked
                _, status, usage = os.wait4(process.pid, 0)
            process.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
    return Exit(code, usage.ru_maxrss / 1024, time.time())


def died(code: int | None, timeout: float) -> tuple[str, str]:
    if code is None:
        return "timeout", f"past --timeout {timeout:.0f} s; its process was killed"
    if code > 128:  # the shell reports a child killed by signal s as 128 + s
        try:
            name = signal.Signals(code - 128).name
        except ValueError:
            name = f"signal {code - 128}"
        hint = " (the kernel's OOM killer, most likely)" if code - 128 == signal.SIGKILL else ""
        return "killed", f"the process died of {name}{hint}"
    return "failed", f"the process exited with status {code}"


def run_job(steps: list[str], job: dict, folder: Path, timeout: float) -> list[StepRecord]:
    """The steps in fresh processes: one, or a new one after each step that took its process down (that
    step's seconds then run to its death, and its peak RSS is the whole process's)."""
    records: list[StepRecord] = []
    pending = list(steps)
    log = folder / "logs" / f"{'_'.join(steps[0].split())}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    while pending:
        report = folder / "logs" / f"{'_'.join(pending[0].split())}.report.jsonl"
        report.unlink(missing_ok=True)
        end = spawn({**job, "steps": pending, "report": str(report)}, log, timeout)
        lines = [json.loads(line) for line in report.read_text().splitlines()] if report.exists() else []
        done = [StepRecord(**line["record"]) for line in lines if "record" in line]
        started = [line for line in lines if "start" in line]
        records += done
        if end.code == 0 and len(done) == len(pending):
            break
        status, note = died(end.code, timeout)
        if len(started) > len(done):  # the step it was in
            records.append(StepRecord(started[-1]["start"], status, end.at - started[-1]["at"],
                                      peak_rss_mib=end.peak_rss_mib, peak_kind="ru_maxrss of the process (wait4)", note=note))
        else:  # it died before its first step: the interpreter or an import
            tail = log.read_text()[-400:].strip().splitlines()[-1:] if log.exists() else []
            records += [StepRecord(name, status, note=f"{note}; {' '.join(tail)}") for name in pending[len(done):]]
            break
        pending = pending[len(started):]
    return records


def needed_steps(stages: list[str]) -> tuple[list[str], set[str]]:
    """Every step to run, in order, and those --stages asked for (the rest are prerequisites)."""
    requested = {step for step, stage in STAGE_OF.items() if stage in stages}
    needed = set(requested)
    for step in list(requested):
        while step in PREREQUISITE:
            step = PREREQUISITE[step]
            needed.add(step)
    return [step for job in JOBS[1:] for step in job if step in needed], requested


def bench_size(size: Size, args: argparse.Namespace, root: Path) -> SizeResult:
    folder = root / size.slug
    spec = scene_spec(size, args.test_views, args.seed)
    job = {"folder": str(folder), "scene": str(folder / "scene"), "size": asdict(size), "test_views": args.test_views,
           "seed": args.seed, "threads": args.threads}
    info = reusable_scene(folder, spec)
    if info is not None:
        records = [StepRecord("build", "reused", note=f"built earlier under {folder}")]
    else:
        shutil.rmtree(folder, ignore_errors=True)
        records = run_job(["build"], job, folder, args.timeout)
        info = reusable_scene(folder, spec)
    progress(size, records[-1])
    steps, requested = needed_steps(args.stages)
    for group in JOBS[1:]:
        chosen = [step for step in group if step in steps]
        if not chosen:
            continue
        if info is None:
            new = [StepRecord(step, "skipped", note="no scene: the build failed") for step in chosen]
        else:
            new = run_job(chosen, job, folder, args.timeout)
        for record in new:
            record.requested = record.step in requested
            progress(size, record)
        records += new
    return SizeResult(size, info, records)


def progress(size: Size, record: StepRecord) -> None:
    seconds = "" if record.seconds is None else f" {record.seconds:.1f} s"
    peak = "" if record.peak_rss_mib is None else f", peak {record.peak_rss_mib:,.0f} MiB"
    print(f"  {size.gaussians:,} x {size.views} views: {record.step}: {record.status}{seconds}{peak}  {record.note}",
          file=sys.stderr, flush=True)


# --- output --------------------------------------------------------------------------------------------


def table(results: list[SizeResult]) -> str:
    rows = ["| Gaussians | views | masks/view | size | stage | seconds | CPU s | peak RSS MiB | status | note |",
            "|---:|---:|---:|---|---|---:|---:|---:|---|---|"]
    for result in results:
        size, info = result.size, result.scene
        masks = f"{info.masks_per_view:.0f}" if info else f"({size.masks})"
        for r in result.records:
            seconds = "-" if r.seconds is None else f"{r.seconds:.1f}"
            cpu = "-" if r.cpu_seconds is None else f"{r.cpu_seconds:.1f}"
            peak = "-" if r.peak_rss_mib is None else f"{r.peak_rss_mib:,.0f}"
            note = r.note if r.requested else f"prerequisite; {r.note}"
            rows.append(f"| {size.gaussians:,} | {size.views} | {masks} | {size.width}x{size.height} | {r.step} | "
                        f"{seconds} | {cpu} | {peak} | {r.status} | {note.replace('|', '/')} |")
    return "\n".join(rows)


def plot(results: list[SizeResult], path: Path) -> str:
    """Seconds and peak RSS of each step against N (one line per step and K) and against K (per step and N),
    log-log; a panel whose axis holds one value is left empty. Returns what happened, for the log."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "no plot: matplotlib is not installed (pip install -e '.[bench]')"
    points = [(r.size, rec) for r in results for rec in r.records if rec.status == "ok" and rec.step != "build"]
    axes_of = {"N (Gaussians)": lambda s: s.gaussians, "K (training views)": lambda s: s.views}
    if all(len({key(size) for size, _ in points}) < 2 for key in axes_of.values()):
        return "no plot: every size has the same N and K"
    figure, axes = plt.subplots(2, 2, figsize=(13, 9))
    for column, (label, key) in enumerate(axes_of.items()):
        other = axes_of["K (training views)" if column == 0 else "N (Gaussians)"]
        for row, (measure_name, value) in enumerate((("seconds", "seconds"), ("peak RSS MiB", "peak_rss_mib"))):
            axis = axes[row][column]
            series: dict[tuple[str, int], list[tuple[int, float]]] = {}
            for size, record in points:
                series.setdefault((record.step, other(size)), []).append((key(size), getattr(record, value)))
            for (step, fixed), xy in sorted(series.items()):
                if len({x for x, _ in xy}) > 1:
                    xs, ys = zip(*sorted(xy))
                    axis.plot(xs, ys, marker="o", label=f"{step} ({'K' if column == 0 else 'N'}={fixed:,})")
            axis.set(xlabel=label, ylabel=measure_name)
            if not axis.lines:
                axis.text(0.5, 0.5, "one value only", transform=axis.transAxes, ha="center")
                continue
            axis.set(xscale="log", yscale="log")
            axis.grid(True, which="both", alpha=0.3)
            axis.legend(fontsize=6)
    figure.suptitle(f"bench/scale.py: {results[0].size.width}x{results[0].size.height}")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    return f"wrote {path}"


def cpu_model() -> str:
    with contextlib.suppress(OSError, StopIteration), open("/proc/cpuinfo") as cpuinfo:
        return next(line for line in cpuinfo if line.startswith("model name")).split(":", 1)[1].strip()
    return platform.processor()


def machine(threads: int) -> dict:
    meminfo = Path("/proc/meminfo").read_text().splitlines() if Path("/proc/meminfo").exists() else []
    total = next((int(line.split()[1]) / 2**20 for line in meminfo if line.startswith("MemTotal:")), None)
    def git(*args: str) -> str:  # read-only: which code was measured
        return subprocess.run(["git", *args], check=False, cwd=ROOT, capture_output=True, text=True).stdout

    commit, modified = git("rev-parse", "HEAD").strip(), git("status", "--porcelain", "--untracked-files=no")
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "memory_gib": total, "python": platform.python_version(),
            "torch": torch.__version__, "threads": threads, "git": commit, "git_modified_files": len(modified.splitlines())}


# --- main ----------------------------------------------------------------------------------------------


def counts(text: str) -> list[int]:
    values = [int(part.replace("_", "")) for part in text.split(",") if part.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers separated by commas, got {text!r}")
    return values


def stage_list(text: str) -> list[str]:
    stages = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [s for s in stages if s not in STAGES]
    if unknown or not stages:
        raise argparse.ArgumentTypeError(f"unknown stages {unknown}; choose from {','.join(STAGES)}")
    return stages


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[1:]))
    parser.add_argument("--gaussians", type=counts, required=True, help="N, or a comma list of N for a sweep (e.g. 100000,300000,1000000,3000000)")
    parser.add_argument("--views", type=counts, required=True, help="K training views, or a comma list for a sweep (every N with every K)")
    parser.add_argument("--masks", type=int, required=True, help="about this many masks per training view (calibrated; the table gives the mean)")
    parser.add_argument("--width", type=int, required=True)
    parser.add_argument("--height", type=int, required=True)
    parser.add_argument("--stages", type=stage_list, default=list(STAGES), help=f"comma list of {','.join(STAGES)} (default: all)")
    parser.add_argument("--json", type=Path, help="write every record, the machine and the command here")
    parser.add_argument("--plot", type=Path, help="write the log-log plot here (PNG; needs matplotlib)")
    parser.add_argument("--test-views", type=int, default=4, help="test views, segmented by the segment stage (default 4)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(),
                        help="torch threads in every process (default: the cores; 1 beside another busy process)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds a process may run before it is killed (default 3600)")
    parser.add_argument("--workdir", type=Path, help="keep the datasets, scenes and logs here, and reuse a scene built here with the same sizes "
                                                    "(default: a temporary folder, each size deleted when done)")
    args = parser.parse_args()
    if min(args.width, args.height) < 16 or args.masks < 1 or args.test_views < 1:
        parser.error("--width and --height must be at least 16, --masks and --test-views at least 1")
    return args


def size_result(payload: dict) -> SizeResult:
    """A SizeResult as `--json` wrote it."""
    scene = payload["scene"]
    return SizeResult(Size(**payload["size"]), None if scene is None else SceneInfo(**scene), [StepRecord(**r) for r in payload["records"]])


def merge_main(argv: list[str]) -> int:
    """`--merge A.json B.json ... [--json OUT] [--plot OUT]`: one table, JSON and plot of sizes run by
    separate invocations (e.g. one size a run, the largest first, so that each finished size is kept)."""
    parser = argparse.ArgumentParser(prog="bench/scale.py --merge")
    parser.add_argument("inputs", type=Path, nargs="+")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--plot", type=Path)
    args = parser.parse_args(argv)
    runs = [json.loads(path.read_text()) for path in args.inputs]
    results = sorted((size_result(size) for run in runs for size in run["sizes"]), key=lambda r: (r.size.views, r.size.gaussians))
    print(table(results))
    print(plot(results, args.plot) if args.plot else "no plot asked (--plot PATH)")
    if args.json:
        args.json.write_text(json.dumps({"merged": [str(path) for path in args.inputs], "runs": runs}, indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        return child_main(Path(sys.argv[2]))
    if len(sys.argv) > 1 and sys.argv[1] == "--merge":
        return merge_main(sys.argv[2:])
    args = parse_args()
    # A SIGTERM (e.g. `timeout`) unwinds like Ctrl-C, so that the running stage's process is killed too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    torch.set_num_threads(args.threads)
    started, load_before = time.perf_counter(), os.getloadavg()
    date = datetime.now(timezone.utc).isoformat(timespec="seconds")
    sizes = [Size(n, k, args.masks, args.width, args.height) for n in args.gaussians for k in args.views]
    results = []
    with tempfile.TemporaryDirectory(prefix="bench_scale_") as tmp:
        root = args.workdir or Path(tmp)
        for size in sizes:
            print(f"{size.gaussians:,} Gaussians x {size.views} views x ~{size.masks} masks at {size.width}x{size.height}",
                  file=sys.stderr, flush=True)
            results.append(bench_size(size, args, root))
            if args.workdir is None:
                shutil.rmtree(root / size.slug, ignore_errors=True)
    total = time.perf_counter() - started
    print(table(results))
    print(f"\n{args.threads} thread(s); load average {load_before[0]:.2f} -> {os.getloadavg()[0]:.2f}; {total:.0f} s in all")
    plotted = plot(results, args.plot) if args.plot else "no plot asked (--plot PATH)"
    print(plotted)
    if args.json:
        payload = {
            "command": shlex.join([Path(sys.executable).name, *sys.argv]),
            "date": date,
            "machine": machine(args.threads),
            "load_average": {"before": load_before, "after": os.getloadavg()},
            "total_seconds": total,
            "plot": plotted,
            "sizes": [asdict(result) for result in results],
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
