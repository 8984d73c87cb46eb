"""Procedural indoor scenes with exact instance ground truth, written as NeRF-layout datasets.

A room (floor, walls), furniture (a table, a cabinet) and 8-20 objects of varied shapes, sizes and
textures — including identical duplicates placed side by side, the case the method claims to separate —
are built directly as flat surface Gaussians, so the project's own renderer produces both the images and
the ground truth: each Gaussian carries its instance id, and the GT map is the argmax of the rendered
one-hot instance channels (the instance with the largest blending weight at each pixel). GT depth is the
same render's expected depth; on oblique surfaces it leans a few cm toward the camera (overlapping splats
composite front to back), as any 3DGS depth does.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image
from plyfile import PlyData, PlyElement
from torch import Tensor
from tqdm import tqdm

from .cameras import Cameras, intrinsics, look_at
from .gaussians import Gaussians, rgb_to_sh0, sh0_to_rgb
from .io.atomic import atomic_open, atomic_write_bytes
from .io.labelmaps import save_label_map
from .io.outputs import check_outside_scenes
from .io.ply import write_ply
from .render import render

Shape = Literal["box", "sphere", "cylinder"]
Pattern = Literal["solid", "stripes", "checker"]
WORLD_UP = (0.0, 0.0, 1.0)
ROOM_HALF = 2.5
ROOM_HEIGHT = 2.4
BACKGROUND = (0.8, 0.85, 0.9)
DEPTH_UNIT = 1e-3  # metres per stored depth step: millimetres, nerfstudio's default


@dataclass(frozen=True)
class SynthPreset:
    """Size of a synthetic dataset.

    Attributes:
        width, height: image size in pixels.
        num_views: poses along the trajectory; every `test_every`-th is a test view.
        min_objects, max_objects: free-standing objects (furniture and duplicates included).
        density: surface Gaussians per m² on the room; objects get `object_density_factor` times more.
    """

    width: int
    height: int
    num_views: int
    test_every: int
    min_objects: int
    max_objects: int
    density: float
    object_density_factor: float = 4.0


PRESETS: dict[str, SynthPreset] = {
    "demo": SynthPreset(width=128, height=96, num_views=48, test_every=4, min_objects=8, max_objects=10, density=220.0),
    "bench": SynthPreset(width=160, height=120, num_views=80, test_every=4, min_objects=14, max_objects=20, density=300.0),
}
MAX_DENSITY_SCALE = 50.0
"""Bounds what a typo can ask for: the bench preset holds ~67k Gaussians at scale 1, ~3.4M at 50; a scale of
thousands would exhaust memory building them."""


@dataclass(frozen=True)
class SceneObject:
    """One instance of the scene; `parts` are primitives (centre, half extents) sharing its id."""

    instance_id: int
    name: str
    shape: Shape
    pattern: Pattern
    colors: tuple[tuple[float, float, float], tuple[float, float, float]]
    parts: tuple[tuple[tuple[float, float, float], tuple[float, float, float]], ...]
    duplicate_of: int | None = None


def synthesize(
    out: Path,
    preset: str = "demo",
    seed: int = 0,
    noise: str = "default",
    progress: bool = True,
    density_scale: float = 1.0,
    write_gaussians: bool = False,
) -> Path:
    """Build, render and write a dataset; returns `out`.

    Writes `transforms_{train,test}.json` (OpenGL camera-to-world, as NeRF datasets do), `images/`,
    `instances/` (GT uint16), `depths/` (GT expected camera z-depth, uint16 millimetres, 0 where the
    render's alpha < 0.5 like the instance maps; named by nerfstudio's per-frame `depth_file_path` and
    `depth_unit_scale_factor` 0.001), `points3d.ply` (noisy surface samples for initialisation),
    `synth.json` (the objects) and `masks/` (simulated SAM masks for the training views).

    Args:
        density_scale: multiplies the preset's surface density, so the scene holds about this many times
            its Gaussians (the same objects, finer splats: the images barely change).
        write_gaussians: also write the Gaussians that render the images as `gaussians.ply` (INRIA layout,
            plain): a splat scene "trained elsewhere" that fits the dataset exactly, to import.
    """
    check_outside_scenes(out)  # a dataset never goes into a trained scene
    config = scaled_preset(preset, density_scale)
    rng = np.random.default_rng(seed)
    objects = build_objects(rng, config)
    gaussians, instance_ids = objects_to_gaussians(objects, config, rng)
    cameras = trajectory(config)
    out.mkdir(parents=True, exist_ok=True)
    names = [f"frame_{index:04d}" for index in range(config.num_views)]
    is_test = [index % config.test_every == config.test_every - 1 for index in range(config.num_views)]
    num_instances = max(o.instance_id for o in objects)
    one_hot = torch.nn.functional.one_hot(instance_ids, num_instances + 1).float()
    background = torch.tensor(BACKGROUND)
    for index in tqdm(range(config.num_views), desc="rendering", disable=not progress):
        with torch.no_grad():
            result = render(gaussians, cameras[index], extras=one_hot, depth="ED", backgrounds=background[None])
        covered = result.alphas[0, ..., 0] >= 0.5
        labels = result.extras[0].argmax(dim=-1)
        labels[~covered] = 0
        _save_rgb(out / "images" / f"{names[index]}.png", result.colors[0])
        save_label_map(out / "instances" / f"{names[index]}.png", labels)
        _save_depth(out / "depths" / f"{names[index]}.png", result.depths[0, ..., 0], covered)
    for split, wanted in (("train", False), ("test", True)):
        frames = [(name, cameras.viewmats[i]) for i, name in enumerate(names) if is_test[i] == wanted]
        atomic_write_bytes(out / f"transforms_{split}.json", _transforms_json(frames, cameras).encode())
    _write_point_cloud(out / "points3d.ply", gaussians, rng)
    if write_gaussians:
        write_ply(out / "gaussians.ply", gaussians, plain=True)
    meta = {"preset": preset, "seed": seed, "density_scale": density_scale, "objects": [asdict(o) for o in objects]}
    atomic_write_bytes(out / "synth.json", (json.dumps(meta, indent=1) + "\n").encode())
    _write_simulated_masks(out, noise, seed, progress)
    return out


def scaled_preset(preset: str, density_scale: float = 1.0) -> SynthPreset:
    """The preset `preset` with its surface density times `density_scale` (in (0, MAX_DENSITY_SCALE])."""
    if not (0 < density_scale <= MAX_DENSITY_SCALE):  # NaN fails too
        raise ValueError(f"--density-scale must be in (0, {MAX_DENSITY_SCALE:g}], got {density_scale}")
    config = PRESETS[preset]
    return replace(config, density=config.density * density_scale)


# --- scene content ---------------------------------------------------------------------------------


def build_objects(rng: np.random.Generator, config: SynthPreset) -> list[SceneObject]:
    """Room, furniture and free-standing objects (with identical duplicates side by side)."""
    h, top = ROOM_HALF, ROOM_HEIGHT
    objects = [
        SceneObject(1, "floor", "box", "checker", ((0.55, 0.42, 0.3), (0.45, 0.33, 0.22)), (((0, 0, -0.01), (h, h, 0.01)),)),
        SceneObject(2, "wall_north", "box", "stripes", ((0.85, 0.82, 0.75), (0.78, 0.75, 0.7)), (((0, h, top / 2), (h, 0.01, top / 2)),)),
        SceneObject(3, "wall_east", "box", "solid", ((0.7, 0.78, 0.85), (0.66, 0.74, 0.8)), (((h, 0, top / 2), (0.01, h, top / 2)),)),
        SceneObject(4, "wall_south", "box", "solid", ((0.86, 0.8, 0.7), (0.8, 0.74, 0.64)), (((0, -h, top / 2), (h, 0.01, top / 2)),)),
        SceneObject(5, "wall_west", "box", "stripes", ((0.75, 0.85, 0.75), (0.7, 0.8, 0.7)), (((-h, 0, top / 2), (0.01, h, top / 2)),)),
    ]
    # Furniture against the walls, outside the area where free objects stand.
    table_top = 0.72
    legs = tuple(((sx * 0.55, 1.65 + sy * 0.3, table_top / 2), (0.03, 0.03, table_top / 2)) for sx in (-1, 1) for sy in (-1, 1))
    objects.append(
        SceneObject(6, "table", "box", "solid", ((0.5, 0.32, 0.2), (0.46, 0.3, 0.18)),
                    (((0, 1.65, table_top), (0.65, 0.4, 0.025)),) + legs)
    )
    objects.append(
        SceneObject(7, "cabinet", "box", "stripes", ((0.3, 0.35, 0.45), (0.25, 0.3, 0.4)), (((1.9, -1.2, 0.5), (0.35, 0.6, 0.5)),))
    )
    count = int(rng.integers(config.min_objects, config.max_objects + 1)) - 2  # furniture counts
    footprints: list[tuple[float, float, float]] = []
    next_id = 8
    while count > 0:
        template = _random_template(rng)
        copies = min(count, int(rng.integers(2, 4))) if rng.random() < 0.35 else 1
        placed = _place_group(rng, template, copies, footprints)
        if placed is None:
            continue
        first_id = next_id
        for centre in placed:
            objects.append(_instantiate(template, next_id, centre, None if next_id == first_id else first_id))
            next_id += 1
        count -= copies
    # A few small objects on the table top.
    for slot in range(int(rng.integers(1, 3))):
        template = _random_template(rng, max_size=0.14)
        centre = (-0.35 + 0.5 * slot, 1.65 + float(rng.uniform(-0.15, 0.15)), table_top + 0.025)
        objects.append(_instantiate(template, next_id, centre, None))
        next_id += 1
    return objects


@dataclass(frozen=True)
class _Template:
    shape: Shape
    pattern: Pattern
    colors: tuple[tuple[float, float, float], tuple[float, float, float]]
    half: tuple[float, float, float]


def _random_template(rng: np.random.Generator, max_size: float = 0.32) -> _Template:
    shape = ("box", "sphere", "cylinder")[int(rng.integers(3))]
    pattern = ("solid", "stripes", "checker")[int(rng.integers(3))]
    hue = rng.random()
    base = _hsv_to_rgb(hue, float(rng.uniform(0.5, 0.9)), float(rng.uniform(0.55, 0.95)))
    other = _hsv_to_rgb((hue + rng.uniform(0.08, 0.5)) % 1, float(rng.uniform(0.3, 0.9)), float(rng.uniform(0.3, 0.9)))
    size = float(rng.uniform(0.08, max_size))
    if shape == "sphere":
        half = (size, size, size)
    elif shape == "cylinder":
        half = (size * 0.7, size * 0.7, float(rng.uniform(0.6, 1.6)) * size)
    else:
        half = (size * float(rng.uniform(0.6, 1.4)), size * float(rng.uniform(0.6, 1.4)), size * float(rng.uniform(0.5, 1.5)))
    return _Template(shape, pattern, (base, other), half)


def _place_group(rng, template: _Template, copies: int, footprints: list) -> list[tuple[float, float, float]] | None:
    """Centres for `copies` touching copies in a row on the floor, or None if it does not fit."""
    radius = math.hypot(template.half[0], template.half[1])
    step = 2 * template.half[0] + 0.01  # almost touching: identical neighbours, a thin gap
    for _ in range(50):
        x, y = rng.uniform(-1.3, 1.3, size=2)
        centres = [(float(x + k * step), float(y), template.half[2]) for k in range(copies)]
        if any(math.hypot(cx, cy) > 1.45 for cx, cy, _ in centres):
            continue
        if all(math.hypot(cx - fx, cy - fy) > radius + fr + 0.05 for cx, cy, _ in centres for fx, fy, fr in footprints):
            footprints.extend((cx, cy, radius) for cx, cy, _ in centres)
            return centres
    return None


def _instantiate(template: _Template, instance_id: int, centre, duplicate_of: int | None) -> SceneObject:
    name = f"{template.shape}_{instance_id}"
    return SceneObject(
        instance_id, name, template.shape, template.pattern, template.colors, ((tuple(centre), template.half),), duplicate_of
    )


def _hsv_to_rgb(h: float, s: float, v: float) -> tuple[float, float, float]:
    import colorsys

    return tuple(float(c) for c in colorsys.hsv_to_rgb(h, s, v))


# --- Gaussians -------------------------------------------------------------------------------------


def objects_to_gaussians(objects: list[SceneObject], config: SynthPreset, rng: np.random.Generator) -> tuple[Gaussians, Tensor]:
    """Flat surface Gaussians for every object part, and their instance ids [N]."""
    chunks = []
    for obj in objects:
        density = config.density * (1.0 if obj.instance_id <= 5 else config.object_density_factor)
        for centre, half in obj.parts:
            points, normals = _sample_surface(obj.shape, np.array(centre), np.array(half), density, rng)
            colors = _texture(obj, points - np.array(centre))
            chunks.append((points, normals, colors, np.full(len(points), obj.instance_id), density))
    points = np.concatenate([c[0] for c in chunks])
    normals = np.concatenate([c[1] for c in chunks])
    colors = np.concatenate([c[2] for c in chunks])
    ids = np.concatenate([c[3] for c in chunks])
    spacing = np.concatenate([np.full(len(c[0]), 1 / math.sqrt(c[4])) for c in chunks])
    n = len(points)
    tangent = np.log(0.75 * spacing)
    scales = np.stack([tangent, tangent, np.log(0.08 * spacing)], axis=1)
    gaussians = Gaussians(
        means=torch.from_numpy(points).float(),
        scales=torch.from_numpy(scales).float(),
        quats=_quats_from_normals(torch.from_numpy(normals).float()),
        opacities=torch.full((n,), 4.0),
        sh0=rgb_to_sh0(torch.from_numpy(colors).float())[:, None, :],
        shN=torch.zeros(n, 0, 3),
        features=torch.zeros(n, 0),
    )
    return gaussians, torch.from_numpy(ids).long()


def _sample_surface(shape: Shape, centre: np.ndarray, half: np.ndarray, density: float, rng) -> tuple[np.ndarray, np.ndarray]:
    """Uniform points [M, 3] on a primitive's surface and their outward normals [M, 3]."""
    if shape == "box":
        areas = 4 * np.array([half[1] * half[2], half[0] * half[2], half[0] * half[1]])
        count = max(int(2 * areas.sum() * density), 12)
        axis = rng.choice(3, size=count, p=areas / areas.sum())
        sign = rng.choice([-1.0, 1.0], size=count)
        local = rng.uniform(-1, 1, size=(count, 3)) * half
        local[np.arange(count), axis] = sign * half[axis]
        normals = np.zeros((count, 3))
        normals[np.arange(count), axis] = sign
        return centre + local, normals
    if shape == "sphere":
        radius = half[0]
        count = max(int(4 * math.pi * radius**2 * density), 12)
        normals = rng.normal(size=(count, 3))
        normals /= np.linalg.norm(normals, axis=1, keepdims=True)
        return centre + radius * normals, normals
    radius, height = half[0], half[2]
    side, cap = 2 * math.pi * radius * 2 * height, math.pi * radius**2
    count = max(int((side + 2 * cap) * density), 12)
    on_side = rng.random(count) < side / (side + 2 * cap)
    angle = rng.uniform(0, 2 * math.pi, count)
    r = np.where(on_side, radius, radius * np.sqrt(rng.random(count)))
    cap_sign = rng.choice([-1.0, 1.0], size=count)
    z = np.where(on_side, rng.uniform(-height, height, count), cap_sign * height)
    local = np.stack([r * np.cos(angle), r * np.sin(angle), z], axis=1)
    normals = np.where(on_side[:, None], np.stack([np.cos(angle), np.sin(angle), np.zeros(count)], 1),
                       np.stack([np.zeros(count), np.zeros(count), cap_sign], 1))
    return centre + local, normals


def _texture(obj: SceneObject, local: np.ndarray) -> np.ndarray:
    """Colours [M, 3] of points given relative to the part centre [M, 3]."""
    base, other = np.array(obj.colors[0]), np.array(obj.colors[1])
    if obj.pattern == "stripes":
        mix = (np.sin(local[:, 2] * 40 + local[:, 0] * 10) > 0).astype(float)
    elif obj.pattern == "checker":
        cells = np.floor(local / 0.12).astype(int).sum(axis=1)
        mix = (cells % 2).astype(float)
    else:
        mix = np.zeros(len(local))
    # Per-object shading variation keeps flat colours from being trivially separable by colour alone.
    shade = 0.9 + 0.1 * np.cos(local[:, 0] * 7 + local[:, 1] * 5)
    return np.clip((base * (1 - mix[:, None]) + other * mix[:, None]) * shade[:, None], 0, 1)


def _quats_from_normals(normals: Tensor) -> Tensor:
    """wxyz quaternions [M, 4] rotating local +z onto `normals` [M, 3] (shortest arc)."""
    z = torch.tensor([0.0, 0.0, 1.0]).expand_as(normals)
    w = 1.0 + (normals * z).sum(-1, keepdim=True)
    xyz = torch.linalg.cross(z, normals)
    quats = torch.cat([w, xyz], dim=-1)
    # Anti-parallel normals have no unique shortest arc: rotate half a turn about x.
    flipped = w[:, 0] < 1e-6
    quats[flipped] = torch.tensor([0.0, 1.0, 0.0, 0.0])
    return torch.nn.functional.normalize(quats, dim=-1)


def _write_point_cloud(path: Path, gaussians: Gaussians, rng: np.random.Generator, count: int = 4000) -> None:
    """A sparse, noisy subset of the surface samples standing in for SfM points (x y z red green blue)."""
    pick = rng.choice(len(gaussians), size=min(count, len(gaussians)), replace=False)
    points = gaussians.means.numpy()[pick] + rng.normal(scale=0.01, size=(len(pick), 3))
    colors = (sh0_to_rgb(gaussians.sh0[pick, 0]).clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)
    vertices = np.empty(len(pick), dtype=[(a, "<f4") for a in "xyz"] + [(c, "u1") for c in ("red", "green", "blue")])
    for axis, column in zip("xyz", points.T):
        vertices[axis] = column
    for channel, column in zip(("red", "green", "blue"), colors.T):
        vertices[channel] = column
    with atomic_open(path) as handle:
        PlyData([PlyElement.describe(vertices, "vertex")]).write(handle)


# --- cameras and files -----------------------------------------------------------------------------


def trajectory(config: SynthPreset) -> Cameras:
    """A smooth loop inside the room looking across it, `num_views` poses."""
    angle = torch.linspace(0, 2 * math.pi, config.num_views + 1, dtype=torch.float64)[:-1]
    radius = 1.85 + 0.15 * torch.sin(3 * angle)
    eye = torch.stack([radius * torch.cos(angle), radius * torch.sin(angle), 1.35 + 0.2 * torch.sin(2 * angle)], 1)
    target = torch.stack([-0.4 * torch.cos(angle + 0.3), -0.4 * torch.sin(angle + 0.3), torch.full_like(angle, 0.35)], 1)
    viewmats = look_at(eye, target, torch.tensor(WORLD_UP, dtype=torch.float64)).float()
    focal = 0.5 * config.width / math.tan(math.radians(35))
    K = intrinsics(focal, focal, config.width / 2, config.height / 2, count=config.num_views)
    return Cameras(viewmats, K, config.width, config.height)


def _transforms_json(frames: list[tuple[str, Tensor]], cameras: Cameras) -> str:
    K = cameras.Ks[0]
    opencv_to_opengl = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0]))
    payload = {
        "fl_x": float(K[0, 0]), "fl_y": float(K[1, 1]), "cx": float(K[0, 2]), "cy": float(K[1, 2]),
        "w": cameras.width, "h": cameras.height,
        "ply_file_path": "points3d.ply",
        "depth_unit_scale_factor": DEPTH_UNIT,
        "frames": [
            {
                "file_path": f"images/{name}.png",
                "depth_file_path": f"depths/{name}.png",
                "transform_matrix": (torch.linalg.inv(viewmat) @ opencv_to_opengl).tolist(),
            }
            for name, viewmat in frames
        ],
    }
    return json.dumps(payload, indent=1) + "\n"


def _save_rgb(path: Path, image: Tensor) -> None:
    array = (image.clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)
    with atomic_open(path) as handle:
        Image.fromarray(array).save(handle, format="PNG", optimize=True)


def _save_depth(path: Path, depth: Tensor, covered: Tensor) -> None:
    """Depth in metres [H, W] as uint16 PNG in DEPTH_UNIT steps; 0 (unknown) outside `covered` [H, W] bool."""
    # Clipped at 65.535 m, far beyond any room.
    steps = torch.round(depth / DEPTH_UNIT).clamp(0, np.iinfo(np.uint16).max)
    array = torch.where(covered, steps, 0).numpy().astype(np.uint16)
    with atomic_open(path) as handle:
        Image.fromarray(array).save(handle, format="PNG", optimize=True)


def _write_simulated_masks(out: Path, noise: str, seed: int, progress: bool) -> None:
    from .datasets import load_scene
    from .masks import MasksConfig, generate_masks

    generate_masks(load_scene(out), MasksConfig(method="simulated", noise=noise, seed=seed), progress=progress)
