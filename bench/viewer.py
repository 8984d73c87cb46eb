"""Viewer performance targets on the CPU: `python bench/viewer.py [--quick] [--json PATH] [--workdir DIR]`.

Targets (the viewer issue), measured on synthetic trained-scene directories written by `write_scene`
(a closed room: floor, ceiling and four walls plus 18 ellipsoidal objects, 24 instances; Gaussians on
their surfaces as flattened splats a few pixels wide at 480p, SH degree 3; 16-D features = per-instance
unit direction + noise; prototypes = per-instance mean features; labels = Eq. 19 on each Gaussian;
scene.json names a dataset that does not exist, which `ViewerScene.load` tolerates with two warnings,
checked and collected here). Cameras stand inside the room, so every pixel of a frame shows a surface.
2 torch threads; medians and maxima over repeated runs after an untimed warm-up:

1. Click-to-selection feedback <= 150 ms at 100k Gaussians. With a real `viser.ViserServer` on
   127.0.0.1 and a `ViewerApp` (no browser connected: no websocket traffic, no browser redraw), for
   random pixels of 640x480 views:
   a. label-map path (the server modes): `pick_instance` on the current frame's label map, then
      `model.click`, which runs the app's listener synchronously (splat-node recolouring, GUI refresh);
   a+. the same plus the highlighted frame the user sees in the segmentation mode: the kept 640x480
      frame recoloured by `reselect_frame` (no rendering) and sent with its JPEG encoded again and its
      depth PNG reused (encoded when the frame was first shown), as `LiveView.reselect` does;
   b. ray fallback (the browser modes rgb/instances, or a click on background): `pick_along_ray` over
      the visible Gaussians at 640x480, then `model.click` (the recoloured splat nodes are the feedback).
2. A per-pixel segmentation frame <= 1 s at 640x480: `render_view(..., "segmentation", ...)`, the
   function `LiveView` renders with (the visible Gaussians with their per-Gaussian labels, for a scene
   with lifted labels, the default); also the 256x192 frame rendered while the camera moves, and the
   PCA mode.
3. Memory bounded when a 1M-Gaussian scene is opened: in a fresh process, the peak resident set
   (ru_maxrss, cross-checked with VmHWM) after `ViewerScene.load`, the SceneDocument, the ViewerApp
   (default max_splats: all 1M Gaussians go to the splat nodes), the first 256x192 frame and the first
   640x480 frame, against the size of gaussians.ply. Frames and clicks are then timed on that scene too.
The scenes are written under a temporary folder (`--workdir` to choose where; ~300 MB for 1M) and
deleted afterwards. `--quick`: 20k and 100k Gaussians, few repeats (a smoke test, ~1 min).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import math
import os
import platform
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import viser

from protosaga_app.browser_camera import BrowserPose, camera_from_pose, pose_from_camera, render_size
from protosaga_app.document import SceneDocument
from protosaga_app.live import Frame, render_view, reselect_frame
from protosaga_app.live_view import encode_depth, send_background
from protosaga_app.picking import pick_along_ray, pick_instance
from protosaga_app.scene import ViewerScene
from protosaga_app.server import ViewerApp, ViewerOptions
from protosaga_core.cameras import intrinsics, look_at
from protosaga_core.gaussians import Gaussians, num_sh_rest, rgb_to_sh0
from protosaga_core.io.atomic import atomic_write_bytes
from protosaga_core.io.scene_dir import SceneDir, SceneMeta
from protosaga_core.method.prototypes import Prototypes, gaussian_labels, instance_table
from protosaga_core.render.projection import project
from protosaga_core.render.settings import RasterSettings

WIDTH, HEIGHT, MOVING_SIZE = 640, 480, 256
"""The target frame (480p) and the longer side of the frames the viewer renders on the CPU while the
camera moves (`ViewerConfig.live_settings`)."""
FOV = math.radians(60.0)
"""Vertical field of view of the bench cameras."""
ROOM = (5.0, 5.0, 2.5)
"""Room size in metres (x, y centred on 0; z from the floor at 0)."""
NUM_INSTANCES = 24
"""Six room surfaces and 18 objects."""
FEATURE_DIM, SH_DEGREE = 16, 3
FEATURE_NOISE = 0.22
"""Per-channel std of the feature noise around the instance direction (noise norm ~0.9 against a unit
signal): Eq. 19 on the Gaussians gives ~3 % of them another instance than their own, as noisy trained
features do, so instances have stray Gaussians and ragged boundaries."""
SPLAT_SIZE = 0.7
"""Tangent std of a splat as a multiple of its surface's spacing sqrt(area / Gaussians): a point of a
surface lies within 1 sigma of ~1.5 splats (pi * 0.7^2), so surfaces are closed, without holes."""
ROOM_SHARE = 0.5
"""Share of the Gaussians on the room (floor, ceiling, walls); the rest go on the objects, by area."""


# --- the synthetic trained scene ---------------------------------------------------------------------


@dataclass
class Surface:
    """One instance's surface: an axis-aligned box face (a rectangle) or an ellipsoid."""

    kind: str  # "rect" or "ellipsoid"
    center: np.ndarray  # [3]
    size: np.ndarray  # rect: half extents along its two tangent axes [2]; ellipsoid: radii [3]
    axes: tuple[int, int] = (0, 1)  # rect: the world axes it spans
    normal: np.ndarray = field(default_factory=lambda: np.array([0.0, 0.0, 1.0]))  # rect: [3]

    @property
    def area(self) -> float:
        if self.kind == "rect":
            return float(4 * self.size[0] * self.size[1])
        a, b, c = self.size  # Knud Thomsen's approximation of an ellipsoid's area
        p = 1.6075
        return float(4 * math.pi * (((a * b) ** p + (a * c) ** p + (b * c) ** p) / 3) ** (1 / p))

    def sample(self, count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Points on the surface and their unit normals. ([count, 3], [count, 3])"""
        if self.kind == "rect":
            points = np.repeat(self.center[None], count, axis=0)
            for k, axis in enumerate(self.axes):
                points[:, axis] += rng.uniform(-self.size[k], self.size[k], count)
            return points, np.repeat(self.normal[None], count, axis=0)
        # Uniform directions stretched by the radii: denser at the flat ends, fine for a bench.
        unit = rng.normal(size=(count, 3))
        unit /= np.linalg.norm(unit, axis=1, keepdims=True)
        normals = unit / self.size
        normals /= np.linalg.norm(normals, axis=1, keepdims=True)
        return self.center + unit * self.size, normals


def room_surfaces(num_instances: int, rng: np.random.Generator) -> list[Surface]:
    """Floor, ceiling, four walls (normals facing into the room), then objects standing on the floor."""
    hx, hy, height = ROOM[0] / 2, ROOM[1] / 2, ROOM[2]
    room = [
        Surface("rect", np.array([0.0, 0.0, 0.0]), np.array([hx, hy]), (0, 1), np.array([0.0, 0.0, 1.0])),
        Surface("rect", np.array([0.0, 0.0, height]), np.array([hx, hy]), (0, 1), np.array([0.0, 0.0, -1.0])),
        Surface("rect", np.array([-hx, 0.0, height / 2]), np.array([hy, height / 2]), (1, 2), np.array([1.0, 0.0, 0.0])),
        Surface("rect", np.array([hx, 0.0, height / 2]), np.array([hy, height / 2]), (1, 2), np.array([-1.0, 0.0, 0.0])),
        Surface("rect", np.array([0.0, -hy, height / 2]), np.array([hx, height / 2]), (0, 2), np.array([0.0, 1.0, 0.0])),
        Surface("rect", np.array([0.0, hy, height / 2]), np.array([hx, height / 2]), (0, 2), np.array([0.0, -1.0, 0.0])),
    ]
    objects = []
    for _ in range(max(num_instances - len(room), 0)):
        radii = rng.uniform(0.12, 0.5, 3)
        center = np.array([rng.uniform(-hx + 0.6, hx - 0.6), rng.uniform(-hy + 0.6, hy - 0.6), radii[2]])
        objects.append(Surface("ellipsoid", center, radii))
    return (room + objects)[:num_instances]


def allocate(surfaces: list[Surface], num_gaussians: int) -> np.ndarray:
    """Gaussians per surface: ROOM_SHARE on the room surfaces, the rest on the objects, by area. [T]"""
    areas = np.array([s.area for s in surfaces])
    is_room = np.array([s.kind == "rect" for s in surfaces])
    share = np.where(is_room, ROOM_SHARE, 1 - ROOM_SHARE) if is_room.any() and (~is_room).any() else np.ones(len(surfaces))
    weights = share * areas / np.array([areas[is_room == r].sum() for r in is_room])
    counts = np.floor(weights / weights.sum() * num_gaussians).astype(np.int64)
    counts[np.argmax(areas)] += num_gaussians - counts.sum()  # the remainder on the largest surface
    return counts


def quats_onto_normals(normals: np.ndarray) -> np.ndarray:
    """wxyz unit quaternions rotating the local z axis onto each normal. [N, 3] -> [N, 4]"""
    quats = np.stack([1.0 + normals[:, 2], -normals[:, 1], normals[:, 0], np.zeros(len(normals))], axis=1)
    flipped = normals[:, 2] < -0.999  # z -> -z: half a turn about x (the formula above degenerates)
    quats[flipped] = [0.0, 1.0, 0.0, 0.0]
    return quats / np.linalg.norm(quats, axis=1, keepdims=True)


def synthetic_gaussians(num_gaussians: int, num_instances: int, seed: int) -> tuple[Gaussians, np.ndarray]:
    """The Gaussians of the bench room and the instance (1..T) each was generated on. ([N], [N] int64)"""
    rng = np.random.default_rng(seed)
    surfaces = room_surfaces(num_instances, rng)
    counts = allocate(surfaces, num_gaussians)
    points, normals = zip(*(s.sample(int(c), rng) for s, c in zip(surfaces, counts)))
    points, normals = np.concatenate(points), np.concatenate(normals)
    source = np.repeat(np.arange(1, len(surfaces) + 1), counts)
    n = len(points)
    # Each surface's splats sized by its own density, so that sparse walls are closed like dense objects.
    spacing = np.sqrt(np.array([s.area for s in surfaces]) / np.maximum(counts, 1))
    tangent = SPLAT_SIZE * spacing[source - 1]
    # Flattened splats lying on their surface (as trained 3DGS ends up), sizes log-normal.
    log_scales = np.log(tangent)[:, None] + 0.3 * rng.normal(size=(n, 3))
    log_scales[:, 2] = np.log(0.1 * tangent) + 0.3 * rng.normal(size=n)
    points = points + 0.2 * (tangent * rng.normal(size=n))[:, None] * normals  # a little surface thickness
    # Opacities: mostly opaque, a tail of translucent ones (trained scenes are bimodal like this).
    opaque = rng.random(n) < 0.7
    logit_opacities = np.where(opaque, rng.normal(3.0, 1.5, n), rng.normal(-1.5, 1.0, n))
    base_colors = rng.uniform(0.15, 0.9, size=(len(surfaces) + 1, 3))
    colors = np.clip(base_colors[source] + 0.08 * rng.normal(size=(n, 3)), 0.0, 1.0)
    directions = rng.normal(size=(len(surfaces) + 1, FEATURE_DIM))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    features = directions[source] + FEATURE_NOISE * rng.normal(size=(n, FEATURE_DIM))

    def f32(array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))

    gaussians = Gaussians(
        means=f32(points),
        scales=f32(log_scales),
        quats=f32(quats_onto_normals(normals)),
        opacities=f32(logit_opacities),
        sh0=rgb_to_sh0(f32(colors))[:, None, :],
        shN=f32(0.05 * rng.normal(size=(n, num_sh_rest(SH_DEGREE), 3))),
        features=f32(features),
    )
    return gaussians, source


def write_scene(root: Path, num_gaussians: int, num_instances: int, seed: int) -> Path:
    """Write a trained-scene directory (train, associate and prototypes done) with no readable dataset.

    Prototypes are the per-instance mean features of the generated instances (Prototypes(ids, vectors,
    num_views)); the per-Gaussian labels are Eq. 19 against them (with no views to lift labels from),
    recorded as lifted labels, the default rule, so that the viewer renders them as it renders a scene
    made by `protosaga run`.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    gaussians, source = synthetic_gaussians(num_gaussians, num_instances, seed)
    ids = torch.arange(1, num_instances + 1)
    sums = torch.zeros(num_instances + 1, FEATURE_DIM).index_add_(0, torch.from_numpy(source), gaussians.features)
    vectors = sums[1:] / torch.from_numpy(np.bincount(source, minlength=num_instances + 1)[1:]).clamp_min(1)[:, None]
    num_views = torch.from_numpy(np.random.default_rng(seed + 1).integers(5, 60, num_instances))
    prototypes = Prototypes(ids, vectors.float(), num_views)
    labels = gaussian_labels(gaussians.features, prototypes)
    scene_dir = SceneDir(root)
    scene_dir.write_gaussians(gaussians)
    scene_dir.write_labels(labels.numpy())
    prototypes.save(scene_dir.prototypes_path)
    scene_dir.write_meta(
        SceneMeta(
            dataset=str(root / "no-such-dataset"),  # a scene copied without its dataset: the viewer warns
            dataset_format="nerf",
            downscale=1,
            split_rule="auto",
            train_views=[],
            stages=["train", "associate", "prototypes"],
            instances=instance_table(prototypes, labels),
            configs={"prototypes": {"gaussian_labels": "lifted"}},
        )
    )
    return root


def bench_poses(count: int) -> list[BrowserPose]:
    """Browser poses inside the room, each looking across it at the objects and the far wall.

    Inside a closed room every pixel of a view shows a surface, so frames are fully covered (the
    renderer's worst case at a given size).
    """
    poses = []
    for k in range(count):
        angle = 2 * math.pi * (k + 0.125) / count
        eye = torch.tensor([[1.6 * math.cos(angle), 1.6 * math.sin(angle), 1.5]])
        target = torch.tensor([[-2.0 * math.cos(angle), -2.0 * math.sin(angle), 0.6]])
        viewmat = look_at(eye, target, torch.tensor([0.0, 0.0, 1.0]))[0]
        focal = 0.5 * HEIGHT / math.tan(0.5 * FOV)
        poses.append(pose_from_camera(viewmat, intrinsics(focal, focal, WIDTH / 2, HEIGHT / 2)[0], WIDTH, HEIGHT))
    return poses


@dataclass
class SceneStats:
    """How heavy the bench views are for the rasterizer, averaged over the bench poses at 640x480.

    Attributes:
        in_view: share of the Gaussians inside the view frustum.
        radius_px: median projected 3-sigma radius (pixels) of those.
        layers: sum of their 3-sigma ellipse areas over the image area (the depth complexity).
    """

    gaussians: int
    instances: int
    in_view: float
    radius_px: float
    layers: float


def scene_stats(gaussians: Gaussians, num_instances: int, poses: list[BrowserPose]) -> SceneStats:
    """The projection the rasterizer makes (same settings), summarised over the poses."""
    in_view, radius, layers = [], [], []
    with torch.no_grad():
        for pose in poses:
            camera = camera_from_pose(pose, WIDTH, HEIGHT)
            projected = project(
                gaussians.means, gaussians.activated_quats, gaussians.activated_scales, gaussians.activated_opacities,
                camera.viewmats, camera.Ks, WIDTH, HEIGHT, RasterSettings(),
            )
            radii = projected.radii[0].float()
            seen = (radii > 0).all(dim=-1)
            in_view.append(seen.float().mean().item())
            radius.append(radii[seen].max(dim=-1).values.median().item())
            layers.append((math.pi * radii[seen].prod(dim=-1)).sum().item() / (WIDTH * HEIGHT))
    return SceneStats(len(gaussians), num_instances, statistics.mean(in_view), statistics.mean(radius), statistics.mean(layers))


@contextlib.contextmanager
def captured_warnings(name: str) -> Iterator[list[str]]:
    """Collect (and keep off stderr) the warnings of one logger, e.g. the viewer's missing-dataset one."""
    messages: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    logger = logging.getLogger(name)
    handler, propagate = Collect(logging.WARNING), logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield messages
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def load_scene(root: Path) -> tuple[ViewerScene, list[str]]:
    """ViewerScene.load of a bench scene, checking that it tolerated the missing dataset."""
    with captured_warnings("protosaga_app.scene") as warnings:
        scene = ViewerScene.load(root)
    if scene.dataset is not None or not any("dataset" in w for w in warnings):
        raise RuntimeError(f"expected ViewerScene.load to warn about the missing dataset, got {warnings}")
    return scene, warnings


# --- measurements ------------------------------------------------------------------------------------


@dataclass
class Timing:
    """Milliseconds of repeated runs of one operation."""

    name: str
    gaussians: int
    width: int
    height: int
    runs: int
    median_ms: float
    max_ms: float
    detail: dict = field(default_factory=dict)


def timing(name: str, gaussians: int, size: tuple[int, int], times: list[float], **detail) -> Timing:
    return Timing(name, gaussians, *size, len(times), 1e3 * statistics.median(times), 1e3 * max(times), detail)


def timed(function: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


@contextlib.contextmanager
def viser_server() -> Iterator[viser.ViserServer]:
    """A viser server on a free local port; its banner (printed even with verbose=False) kept off stdout."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with contextlib.redirect_stdout(io.StringIO()):
        server = viser.ViserServer(host="127.0.0.1", port=port, verbose=False)
    try:
        yield server
    finally:
        with contextlib.redirect_stdout(io.StringIO()):
            server.stop()


FrameCase = tuple[str, tuple[int, int], int]
"""(mode, (width, height), runs) of one frame measurement."""


def frame_cases(repeats: int) -> list[FrameCase]:
    """Segmentation at 640x480 and at the 256-px moving size, PCA at 640x480."""
    moving = render_size(WIDTH / HEIGHT, MOVING_SIZE)
    return [
        ("segmentation", (WIDTH, HEIGHT), repeats),
        ("segmentation", moving, 2 * repeats),
        ("pca", (WIDTH, HEIGHT), max(repeats // 2, 2)),
    ]


def bench_frames(document: SceneDocument, app: ViewerApp, poses: list[BrowserPose], cases: list[FrameCase]) -> list[Timing]:
    """Each case: one untimed warm-up frame (allocator, the document's caches), then `runs` frames
    cycling through the poses."""
    n = len(document.scene.gaussians)
    records = []
    for mode, size, runs in cases:
        render_view(document, app.pca, poses[0], mode, *size)
        times, covered, on_screen = [], [], []
        for k in range(runs):
            seconds, frame = timed(lambda: render_view(document, app.pca, poses[k % len(poses)], mode, *size))
            times.append(seconds)
            covered.append(float((frame.labels > 0).mean()))
            on_screen.append(len(np.unique(frame.labels[frame.labels > 0])))
        records.append(timing(f"frame {mode}", n, size, times, covered_fraction=min(covered), instances_on_screen=max(on_screen)))
        print(f"  {records[-1].name} {size[0]}x{size[1]}: median {records[-1].median_ms:.0f} ms", flush=True)
    return records


def show(app: ViewerApp, frame: Frame, depth_png: bytes) -> None:
    """Queue a frame as `LiveView._show` does (JPEG colour, its depth PNG encoded once), to every tab."""
    send_background(app.server.scene, frame.image, depth_png)


def click_pixels(count: int, num_poses: int, seed: int) -> list[tuple[int, float, float]]:
    """(pose index, x, y) of random clicks in the 640x480 view."""
    rng = np.random.default_rng(seed)
    return [(int(rng.integers(num_poses)), float(rng.uniform(0, WIDTH)), float(rng.uniform(0, HEIGHT))) for _ in range(count)]


def bench_clicks(
    document: SceneDocument, app: ViewerApp, poses: list[BrowserPose], clicks: int, feedback_frames: int, seed: int
) -> list[Timing]:
    """The label-map path (with and without the next 256-px frame) and the ray fallback."""
    n = len(document.scene.gaussians)
    model = document.model
    pixels = click_pixels(clicks, len(poses), seed)
    records = []

    # (a) Segmentation mode: the live view's 640x480 frame of the tab's camera is there when the user
    # clicks (rendered beforehand, untimed); the click reads it and edits the model.
    app.set_mode("segmentation")
    model.clear_selection()
    frames = [render_view(document, app.pca, pose, "segmentation", WIDTH, HEIGHT) for pose in poses]
    label_maps = [frame.labels for frame in frames]
    depth_pngs = [encode_depth(frame.depth) for frame in frames]  # when the live view first showed them
    pick_times, edit_times, totals, feedback, changed = [], [], [], [], 0
    for k, (pose_index, x, y) in enumerate(pixels):
        before = model.state.selected
        start = time.perf_counter()
        picked = pick_instance(label_maps[pose_index], x, y)
        middle = time.perf_counter()
        model.click(picked)  # runs ViewerApp._on_edit synchronously
        end = time.perf_counter()
        changed += model.state.selected != before
        pick_times.append(middle - start)
        edit_times.append(end - middle)
        totals.append(end - start)
        if k < feedback_frames:  # LiveView.reselect: the kept frame recoloured with the highlight, sent
            selected = model.state.selected
            frame, depth_png = frames[pose_index], depth_pngs[pose_index]
            seconds, _ = timed(lambda: show(app, reselect_frame(frame, selected), depth_png))
            feedback.append(totals[-1] + seconds)
    records.append(timing(
        "click: label map + model.click", n, (WIDTH, HEIGHT), totals,
        pick_median_ms=1e3 * statistics.median(pick_times), edit_median_ms=1e3 * statistics.median(edit_times),
        edit_max_ms=1e3 * max(edit_times), selection_changed=changed, mode="segmentation",
    ))
    records.append(timing(
        "click: label map + click + highlighted frame", n, (WIDTH, HEIGHT), feedback, mode="segmentation",
        note="what the user sees in the segmentation mode: the kept 640x480 frame recoloured (no rendering), its JPEG encoded, its depth PNG reused",
    ))

    # (b) Browser modes: no server frame, the instance along the ray of the clicked pixel.
    app.set_mode("rgb")
    model.clear_selection()
    cameras = [camera_from_pose(pose, WIDTH, HEIGHT) for pose in poses]
    pick_times, edit_times, totals, changed, misses = [], [], [], 0, 0
    for pose_index, x, y in pixels:
        before = model.state.selected
        start = time.perf_counter()
        visible = document.visible()
        picked = pick_along_ray(visible.gaussians, visible.labels, cameras[pose_index], x, y)
        middle = time.perf_counter()
        model.click(picked)
        end = time.perf_counter()
        changed += model.state.selected != before
        misses += picked == 0
        pick_times.append(middle - start)
        edit_times.append(end - middle)
        totals.append(end - start)
    records.append(timing(
        "click: ray fallback + model.click", n, (WIDTH, HEIGHT), totals,
        pick_median_ms=1e3 * statistics.median(pick_times), edit_median_ms=1e3 * statistics.median(edit_times),
        edit_max_ms=1e3 * max(edit_times), selection_changed=changed, picked_nothing=misses, mode="rgb",
    ))
    for record in records:
        print(f"  {record.name}: median {record.median_ms:.0f} ms, max {record.max_ms:.0f} ms", flush=True)
    return records


# --- memory, in a fresh process ----------------------------------------------------------------------


@dataclass
class MemoryStep:
    """Resident memory after one step of opening a scene in a fresh process."""

    step: str
    seconds: float
    peak_rss_mb: float  # ru_maxrss
    hwm_mb: float  # VmHWM, the kernel's peak RSS of this address space: a cross-check of ru_maxrss
    rss_mb: float  # VmRSS, resident now


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def proc_status_mb(key: str) -> float:
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith(key + ":"))
    return int(line.split()[1]) / 1024


def memory_step(name: str, seconds: float) -> MemoryStep:
    return MemoryStep(name, seconds, peak_rss_mb(), proc_status_mb("VmHWM"), proc_status_mb("VmRSS"))


def memory_case(root: Path, runs: int) -> dict:
    """Open the scene as `protosaga-view` does, step by step, up to its first 256-px and 640x480 frames;
    then, memory measured, time `runs` frames of each size and a few clicks of each path on it too."""
    steps = [memory_step("start (imports)", 0.0)]

    def step(name: str, function: Callable[[], object]) -> object:
        seconds, result = timed(function)
        steps.append(memory_step(name, seconds))
        return result

    scene, _ = step("ViewerScene.load", lambda: load_scene(root))
    document = step("SceneDocument", lambda: SceneDocument(scene, torch.device("cpu")))
    poses = bench_poses(8)
    moving = render_size(WIDTH / HEIGHT, MOVING_SIZE)
    with viser_server() as server:
        app = step("ViewerApp (splat nodes, GUI)", lambda: ViewerApp(server, document, ViewerOptions(mode="segmentation")))
        step(f"first {moving[0]}x{moving[1]} frame", lambda: render_view(document, app.pca, poses[0], "segmentation", *moving))
        step(f"first {WIDTH}x{HEIGHT} frame", lambda: render_view(document, app.pca, poses[0], "segmentation", WIDTH, HEIGHT))
        records = []
        if runs:
            cases = [("segmentation", (WIDTH, HEIGHT), runs), ("segmentation", moving, runs)]
            records = bench_frames(document, app, poses, cases)
            # Two views only: each needs a 640x480 label map first, seconds apiece at this size.
            records += bench_clicks(document, app, poses[:2], clicks=2 * runs, feedback_frames=runs, seed=1)
    stats = scene_stats(scene.gaussians, len(scene.instances), poses)  # after the peaks
    return {"steps": [asdict(s) for s in steps], "records": [asdict(r) for r in records], "stats": asdict(stats)}


def run_memory_case(root: Path, runs: int, threads: int) -> dict:
    """`memory_case` in a fresh interpreter, so that its peak resident set is its own.

    Started from a shell that forks it: Python spawns children with vfork, and Linux then carries the
    parent's peak RSS into the child's ru_maxrss at exec; a child forked by the small shell starts clean.
    """
    command = [sys.executable, __file__, "--memory-case", str(root), "--large-runs", str(runs), "--threads", str(threads)]
    # `; exit $?` keeps the shell from exec'ing the command in its own (vfork-inherited) process.
    result = subprocess.run(["/bin/sh", "-c", '"$@"; exit $?', "sh", *command], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"memory case failed ({result.returncode}):\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def bench_small(root: Path, repeats: int, clicks: int) -> tuple[list[Timing], SceneStats, list[str]]:
    """Frames and clicks on the target scene, with a live viser server and ViewerApp."""
    scene, warnings = load_scene(root)
    document = SceneDocument(scene, torch.device("cpu"))
    poses = bench_poses(8)
    stats = scene_stats(scene.gaussians, len(scene.instances), poses)
    with viser_server() as server:
        app = ViewerApp(server, document, ViewerOptions())
        records = bench_frames(document, app, poses, frame_cases(repeats))
        records += bench_clicks(document, app, poses, clicks, feedback_frames=max(clicks // 4, 3), seed=1)
    return records, stats, warnings


# --- main --------------------------------------------------------------------------------------------


def print_table(records: list[Timing], stats: list[SceneStats], memory: dict, ply_mb: float) -> None:
    print(f"\n{'scene':>10} {'instances':>9} {'in view':>7} {'3σ radius px':>12} {'layers':>6}")
    for st in stats:
        print(f"{st.gaussians:>10,} {st.instances:>9} {st.in_view:>7.2f} {st.radius_px:>12.1f} {st.layers:>6.1f}")
    print(f"\n{'measurement':<42} {'N':>9} {'size':>9} {'runs':>4} {'median ms':>9} {'max ms':>8}")
    for r in records:
        print(f"{r.name:<42} {r.gaussians:>9,} {r.width:>4}x{r.height:<4} {r.runs:>4} {r.median_ms:>9.1f} {r.max_ms:>8.1f}")
    n = stats[-1].gaussians
    print(f"\nopening the {n:,}-Gaussian scene in a fresh process "
          f"(gaussians.ply {ply_mb:.0f} MiB = {ply_mb * 2**20 / n:.0f} B/Gaussian)")
    print(f"{'step':<36} {'s':>6} {'peak RSS MiB':>12} {'(VmHWM)':>8} {'RSS MiB':>8} {'peak B/Gaussian':>15}")
    for s in memory["steps"]:
        print(f"{s['step']:<36} {s['seconds']:>6.1f} {s['peak_rss_mb']:>12.0f} {s['hwm_mb']:>8.0f} {s['rss_mb']:>8.0f} "
              f"{s['peak_rss_mb'] * 2**20 / n:>15.0f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20k Gaussians for clicks and frames, 100k for memory, few repeats")
    parser.add_argument("--json", type=Path, help="write the records here")
    parser.add_argument("--workdir", type=Path, help="where to write the scenes (default: the system's temp folder)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7, help="frames per frame measurement")
    parser.add_argument("--clicks", type=int, default=40)
    parser.add_argument("--large-runs", type=int, default=5, help="frames of each size timed on the large scene (0: none)")
    parser.add_argument("--memory-case", type=Path, help=argparse.SUPPRESS)  # SCENE: open it, print JSON
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.memory_case:
        print(json.dumps(memory_case(args.memory_case, args.large_runs)))
        return 0

    small, large = (20_000, 100_000) if args.quick else (100_000, 1_000_000)
    repeats, clicks, large_runs = (3, 10, min(args.large_runs, 2)) if args.quick else (args.repeats, args.clicks, args.large_runs)
    workdir = Path(tempfile.mkdtemp(prefix="protosaga-bench-viewer-", dir=args.workdir))
    started, load_before = time.perf_counter(), os.getloadavg()[0]
    try:
        print(f"writing the {small:,}-Gaussian scene under {workdir}", flush=True)
        seconds, root = timed(lambda: write_scene(workdir / "small", small, NUM_INSTANCES, seed=0))
        print(f"  {seconds:.1f} s", flush=True)
        records, small_stats, warnings = bench_small(root, repeats, clicks)
        shutil.rmtree(root)

        print(f"writing the {large:,}-Gaussian scene", flush=True)
        seconds, root = timed(lambda: write_scene(workdir / "large", large, NUM_INSTANCES, seed=0))
        ply_mb = SceneDir(root).gaussians_path.stat().st_size / 2**20
        print(f"  {seconds:.1f} s, gaussians.ply {ply_mb:.0f} MiB; opening it in a fresh process", flush=True)
        memory = run_memory_case(root, large_runs, args.threads)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    records += [Timing(**r) for r in memory["records"]]
    stats = [small_stats, SceneStats(**memory["stats"])]

    print_table(records, stats, memory, ply_mb)
    total = time.perf_counter() - started
    print(f"\n{torch.get_num_threads()} threads, load avg {load_before:.2f} -> {os.getloadavg()[0]:.2f}, {total:.0f} s in all")
    print("load warnings accepted: " + " | ".join(warnings))
    if args.json:
        payload = {
            "machine": {"nproc": os.cpu_count(), "cpu": cpu_model(), "python": platform.python_version(),
                        "torch": torch.__version__, "viser": viser.__version__, "threads": torch.get_num_threads()},
            "load_average": [load_before, os.getloadavg()[0]],
            "scenes": [asdict(st) for st in stats],
            "records": [asdict(r) for r in records],
            "memory": {**memory, "gaussians": large, "ply_mb": ply_mb},
            "load_warnings": warnings,
            "total_seconds": total,
        }
        atomic_write_bytes(args.json, (json.dumps(payload, indent=2) + "\n").encode())
        print(f"wrote {args.json}")
    return 0


def cpu_model() -> str:
    with contextlib.suppress(OSError, StopIteration):
        with open("/proc/cpuinfo") as cpuinfo:
            return next(line for line in cpuinfo if line.startswith("model name")).split(":", 1)[1].strip()
    return platform.processor()


if __name__ == "__main__":
    sys.exit(main())
