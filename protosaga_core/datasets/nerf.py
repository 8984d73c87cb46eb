"""NeRF / instant-ngp / nerfstudio layout: `transforms.json`, or `transforms_train.json` + `transforms_test.json`.

`transform_matrix` is camera-to-world with OpenGL/Blender camera axes (x right, y up, z backwards); we flip the
y and z camera axes to get OpenCV's (x right, y down, z forward) and invert. Intrinsics are per frame or shared
at the top level (`fl_x`, `fl_y`, `cx`, `cy`, `w`, `h`), or a field of view (`camera_angle_x`, optional
`camera_angle_y`) with the size read from the image header. NeRF datasets ship no shrunk image folders, so a
downscale is applied on load.

Ground-truth depth follows nerfstudio: a frame's `depth_file_path` (relative to the transforms file's folder, like
`file_path`) names an integer PNG of camera z-depth, 0 = unknown, in units of `depth_unit_scale_factor` metres
(per frame or shared, default 1e-3: millimetres).
"""

from __future__ import annotations


import math
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from plyfile import PlyData

import numpy as np

from ..io.bounded import BoundedReadError
from ..io.bounded import read_json as read_bounded_json
from .common import (
    DatasetError,
    PosedImage,
    RawScene,
    find_image,
    intrinsics_matrix,
    read_image_size,
    rigid_inverse,
)
from .scene import Split

SPLIT_FILES: dict[Split, str] = {"train": "transforms_train.json", "test": "transforms_test.json"}
SINGLE_FILE = "transforms.json"
DISTORTION_KEYS = ("k1", "k2", "k3", "k4", "p1", "p2")
PINHOLE_MODELS = ("OPENCV", "PINHOLE", "SIMPLE_PINHOLE")  # nerfstudio's names; OPENCV is fine without distortion
GL_TO_CV = np.array([1.0, -1.0, -1.0])  # flips the camera's y and z axes
DEFAULT_DEPTH_SCALE = 1e-3  # nerfstudio's default depth_unit_scale_factor: depths stored in millimetres


def transform_files(root: Path) -> list[tuple[Path, Split | None]]:
    """The json files to read with the split each states: the per-split pair when present, else the single file.

    Blender's `transforms_val.json` is not read: its views belong to neither split.
    """
    per_split = [(root / name, split) for split, name in SPLIT_FILES.items() if (root / name).is_file()]
    if per_split:
        return per_split
    return [(root / SINGLE_FILE, None)]


def read_nerf(root: Path, downscale: int = 1) -> RawScene:
    """All frames of the transforms file(s) in `root`; GT instance maps from `root/instances/<name>.png`."""
    del downscale  # applied on load: see the module docstring
    files = transform_files(root)
    images: list[PosedImage] = []
    for path, split in files:
        meta = read_json(path)
        images += [frame_image(path, meta, frame, index, split) for index, frame in enumerate(meta["frames"])]
    names = unique_names([image.image_path for image in images], root)
    images = [replace(im, name=name, instance_path=instance_map(root, name)) for im, name in zip(images, names)]
    points, colors = read_point_cloud(root, read_json(files[0][0]), files[0][0])
    return RawScene(images, "nerf", files[0][0], points, colors)


def read_point_cloud(root: Path, meta: dict[str, Any], source: Path) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The optional `ply_file_path` point cloud (nerfstudio's convention): xyz [P, 3], rgb in [0, 1] [P, 3]."""
    if "ply_file_path" not in meta:
        return None, None
    path = root / str(meta["ply_file_path"])
    try:
        vertex = PlyData.read(str(path))["vertex"]
        points = np.stack([np.asarray(vertex[axis], dtype=np.float64) for axis in "xyz"], axis=1)
    except (OSError, KeyError, ValueError) as err:
        raise DatasetError(f"{source}: ply_file_path {path} is not a readable point cloud ({err})") from err
    names = {prop.name for prop in vertex.properties}
    if {"red", "green", "blue"} <= names:
        colors = np.stack([np.asarray(vertex[c], dtype=np.float64) for c in ("red", "green", "blue")], axis=1) / 255.0
    else:
        colors = np.full_like(points, 0.5)
    if not np.isfinite(points).all():
        raise DatasetError(f"{path}: NaN or inf in the point positions")
    return points, colors


def read_json(path: Path) -> dict[str, Any]:
    """A transforms file, checked to be an object with a list of frames."""
    try:
        meta = read_bounded_json(path)
    except FileNotFoundError as err:
        raise DatasetError(f"{path}: transforms file missing") from err
    except BoundedReadError as err:  # too large, nested too deep, not UTF-8 or not JSON; names the file
        raise DatasetError(str(err)) from err
    if not isinstance(meta, dict) or not isinstance(meta.get("frames"), list):
        raise DatasetError(f"{path}: expected a JSON object with a 'frames' list")
    return meta


def frame_image(path: Path, meta: dict[str, Any], frame: Any, index: int, split: Split | None) -> PosedImage:
    """One frame of a transforms file; its own intrinsics keys override the file's shared ones."""
    where = f"{path}: frame {index}"
    if not isinstance(frame, dict) or "file_path" not in frame or "transform_matrix" not in frame:
        raise DatasetError(f"{where}: needs 'file_path' and 'transform_matrix'")
    camera = {**meta, **frame}
    check_pinhole(camera, where)
    image_path = find_image(path.parent, str(frame["file_path"]))
    if "w" in camera and "h" in camera:
        width, height = int(number(camera, "w", where)), int(number(camera, "h", where))
    else:
        width, height = read_image_size(image_path, path)
    depth_path, depth_scale = frame_depth(path, frame, camera, where)
    return PosedImage(
        name=image_path.stem,
        image_path=image_path,
        K=intrinsics(camera, width, height, where),
        viewmat=gl_to_viewmat(pose_matrix(frame["transform_matrix"], where)),
        width=width,
        height=height,
        source=path,
        split=split,
        depth_path=depth_path,
        depth_scale=depth_scale,
    )


def frame_depth(
    path: Path, frame: dict[str, Any], camera: dict[str, Any], where: str
) -> tuple[Path | None, float]:
    """The frame's depth file and metres per stored unit; (None, default) for a frame without depth.

    Args:
        path: the transforms file (depth paths are relative to its folder).
        frame: the frame's own keys (a depth file belongs to one frame, never to the whole file).
        camera: the file's shared keys overridden by the frame's own (the scale may be either).
    """
    if "depth_file_path" not in frame:
        return None, DEFAULT_DEPTH_SCALE
    depth_path = path.parent / str(frame["depth_file_path"])
    if not depth_path.is_file():
        raise DatasetError(f"{where}: depth file {depth_path} missing (depth_file_path {frame['depth_file_path']!r})")
    if "depth_unit_scale_factor" not in camera:
        return depth_path, DEFAULT_DEPTH_SCALE
    scale = number(camera, "depth_unit_scale_factor", where)
    if scale <= 0:
        raise DatasetError(f"{where}: 'depth_unit_scale_factor' must be positive, got {scale}")
    return depth_path, scale


def check_pinhole(camera: dict[str, Any], where: str) -> None:
    """Refuse camera models and lens distortion a pinhole cannot represent."""
    model = camera.get("camera_model", "OPENCV")
    if model not in PINHOLE_MODELS:
        raise DatasetError(f"{where}: unsupported camera_model {model!r}; expected one of {PINHOLE_MODELS}")
    distorted = {key: camera[key] for key in DISTORTION_KEYS if camera.get(key, 0) != 0}
    if distorted:
        raise DatasetError(
            f"{where}: lens distortion {distorted} cannot be treated as a pinhole; undistort the images first "
            "(e.g. with COLMAP's image_undistorter, then load the COLMAP model)"
        )


def number(camera: dict[str, Any], key: str, where: str) -> float:
    """camera[key] as a finite float (Python's json accepts NaN and Infinity)."""
    try:
        value = float(camera[key])
    except (TypeError, ValueError) as err:
        raise DatasetError(f"{where}: '{key}' must be a number, got {camera[key]!r}") from err
    if not math.isfinite(value):
        raise DatasetError(f"{where}: '{key}' must be finite, got {value}")
    return value


def intrinsics(camera: dict[str, Any], width: int, height: int, where: str) -> np.ndarray:
    """K [3, 3] from focal lengths in pixels, else from the field of view; the principal point defaults to the
    image centre."""
    if "fl_x" in camera:
        fx = number(camera, "fl_x", where)
        fy = number(camera, "fl_y", where) if "fl_y" in camera else fx
    elif "camera_angle_x" in camera:
        fx = 0.5 * width / math.tan(0.5 * number(camera, "camera_angle_x", where))
        fy = fx
        if "camera_angle_y" in camera:
            fy = 0.5 * height / math.tan(0.5 * number(camera, "camera_angle_y", where))
    else:
        raise DatasetError(f"{where}: no intrinsics: needs 'fl_x' or 'camera_angle_x' (per frame or shared)")
    cx = number(camera, "cx", where) if "cx" in camera else width / 2
    cy = number(camera, "cy", where) if "cy" in camera else height / 2
    return intrinsics_matrix(fx, fy, cx, cy)


def pose_matrix(value: Any, where: str) -> np.ndarray:
    """A transform_matrix as [3, 4] or [4, 4] float64, shape-checked."""
    try:
        matrix = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise DatasetError(f"{where}: transform_matrix is not a numeric matrix ({err})") from err
    if matrix.shape not in ((3, 4), (4, 4)):
        raise DatasetError(f"{where}: transform_matrix must be 4x4 (or 3x4), got shape {list(matrix.shape)}")
    return matrix


def gl_to_viewmat(c2w_gl: np.ndarray) -> np.ndarray:
    """Camera-to-world in OpenGL camera axes [..., 3|4, 4] to world-to-camera in OpenCV axes [..., 4, 4]."""
    return rigid_inverse(c2w_gl[..., :3, :3] * GL_TO_CV, c2w_gl[..., :3, 3])


def unique_names(paths: list[Path], root: Path) -> list[str]:
    """Image stems, or, when stems repeat (Blender's train/r_0 and test/r_0), root-relative paths joined by '_'."""
    stems = [path.stem for path in paths]
    if len(set(stems)) == len(stems):
        return stems
    return ["_".join(Path(os.path.relpath(path, root)).with_suffix("").parts) for path in paths]


def instance_map(root: Path, name: str) -> Path | None:
    """`root/instances/<name>.png`, as the project's synthetic datasets write them, when it exists."""
    path = root / "instances" / f"{name}.png"
    return path if path.is_file() else None
