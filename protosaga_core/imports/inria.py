"""The output folder of the INRIA 3DGS code (graphdeco-inria/gaussian-splatting), as `protosaga import` reads it.

```
MODEL/
  point_cloud/iteration_7000/point_cloud.ply     one folder per saved iteration (--save_iterations)
  point_cloud/iteration_30000/point_cloud.ply
  cameras.json     every camera of the run (scene/__init__.py, camera_to_JSON): img_name, width, height,
                   position and rotation of the camera in the world (camera-to-world: its code names
                   them W2C, but they are the inverse of the world-to-camera [R|T]), fx, fy
  cfg_args         train.py's model arguments, as the repr of an argparse.Namespace:
                   Namespace(sh_degree=3, source_path='/data/garden', model_path='output/x', images='images',
                             resolution=-1, white_background=False, data_device='cuda', eval=False)
```
The code trains in the frame of its dataset (COLMAP's or the NeRF-synthetic transforms' world), so the
Gaussians and the dataset's cameras share one frame. A bare PLY in the same layout (any other trainer's INRIA
export) is read the same way, without the two files.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..io.bounded import BoundedReadError, read_json

if TYPE_CHECKING:
    from .sources import FoundSource

POINT_CLOUD_DIR = "point_cloud"
PLY_NAME = "point_cloud.ply"
CAMERAS_FILE = "cameras.json"
CFG_FILE = "cfg_args"
ITERATION_DIR = re.compile(r"iteration_(\d+)")
MAX_CFG_BYTES = 1 << 20
"""cfg_args is one line of a few hundred bytes; anything far larger is not one."""


@dataclass(frozen=True)
class InriaCamera:
    """One entry of cameras.json.

    Attributes:
        name: the image's stem (img_name).
        position: the camera centre in the world. [3] float64
        rotation: camera-to-world rotation. [3, 3] float64
        width, height: the image size it was trained at.
    """

    name: str
    position: np.ndarray
    rotation: np.ndarray
    width: int
    height: int


def find_inria(source: Path, iteration: int | None = None) -> FoundSource:
    """The PLY to import from an INRIA model folder (the latest iteration_N, or `iteration`) or a bare PLY.

    Raises:
        ValueError / FileNotFoundError: one line naming the path: no such file, a folder without
            point_cloud/iteration_*/point_cloud.ply, a missing --iteration (the ones present are listed),
            --iteration with a bare PLY, a malformed cameras.json or cfg_args.
    """
    from .sources import FoundSource

    if source.is_file():
        if iteration is not None:
            raise ValueError(f"{source}: --iteration picks a folder under MODEL/{POINT_CLOUD_DIR}/; this is a single PLY")
        return FoundSource("ply", source, source)
    found = iterations(source)
    if not found:
        if (source / PLY_NAME).is_file() and iteration is None:  # an iteration_N folder given itself
            return FoundSource("inria", source, source / PLY_NAME, _iteration_of(source))
        raise ValueError(
            f"{source}: no {POINT_CLOUD_DIR}/iteration_<N>/{PLY_NAME} (INRIA), dataparser_transforms.json (nerfstudio) "
            "or ply/ and ckpts/ (gsplat); give the trainer's output folder or the .ply itself"
        )
    if iteration is None:
        iteration = found[-1]
    elif iteration not in found:
        raise ValueError(f"{source / POINT_CLOUD_DIR}: no iteration_{iteration}; it holds iterations {', '.join(map(str, found))}")
    ply = source / POINT_CLOUD_DIR / f"iteration_{iteration}" / PLY_NAME
    cameras = read_cameras_json(source / CAMERAS_FILE) if (source / CAMERAS_FILE).is_file() else None
    cfg = read_cfg_args(source / CFG_FILE) if (source / CFG_FILE).is_file() else {}
    named = cfg.get("source_path")
    return FoundSource(
        "inria", source, ply, iteration, tuple(found), cameras=cameras,
        dataset_path=named if isinstance(named, str) and named else None,
        config_file=source / CFG_FILE if cfg else None, white_background=bool(cfg.get("white_background", False)),
    )


def iterations(folder: Path) -> list[int]:
    """The iterations N with point_cloud/iteration_N/point_cloud.ply under `folder`, ascending."""
    base = folder / POINT_CLOUD_DIR
    if not base.is_dir():
        return []
    found = []
    for child in base.iterdir():
        match = ITERATION_DIR.fullmatch(child.name)
        if match and (child / PLY_NAME).is_file():
            found.append(int(match.group(1)))
    return sorted(found)


def _iteration_of(folder: Path) -> int | None:
    match = ITERATION_DIR.fullmatch(folder.name)
    return int(match.group(1)) if match else None


def read_cfg_args(path: Path) -> dict[str, Any]:
    """cfg_args' `Namespace(key=value, ...)` as a dict of Python literals (never evaluated as code).

    Raises:
        ValueError: naming the file, when it is not one such Namespace of literals.
    """
    if path.stat().st_size > MAX_CFG_BYTES:
        raise ValueError(f"{path}: {path.stat().st_size:,} bytes; an INRIA cfg_args is one short line")
    try:
        text = path.read_text(encoding="utf-8").strip()
        call = ast.parse(text, mode="eval").body
        if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "Namespace" and not call.args):
            raise ValueError("not Namespace(key=value, ...)")
        return {keyword.arg: ast.literal_eval(keyword.value) for keyword in call.keywords if keyword.arg is not None}
    except (SyntaxError, ValueError, UnicodeDecodeError, RecursionError, MemoryError) as error:
        raise ValueError(f"{path}: not an INRIA cfg_args (Namespace(key=value, ...) of literals): {error}") from None


def read_cameras_json(path: Path) -> list[InriaCamera]:
    """cameras.json's entries (see the module docstring).

    Raises:
        ValueError: naming the file and the entry, for anything but a list of such entries.
    """
    try:
        raw = read_json(path)
    except BoundedReadError as error:
        raise ValueError(str(error)) from None
    if not isinstance(raw, list):
        raise ValueError(f"{path}: expected a list of cameras (INRIA's cameras.json), got {type(raw).__name__}")
    cameras = []
    for index, entry in enumerate(raw):
        try:
            position = np.asarray(entry["position"], dtype=np.float64)
            rotation = np.asarray(entry["rotation"], dtype=np.float64)
            camera = InriaCamera(str(entry["img_name"]), position, rotation, int(entry["width"]), int(entry["height"]))
        except (TypeError, KeyError, ValueError) as error:
            raise ValueError(f"{path}: camera {index} is malformed ({error!r}); expected img_name, width, height, position, rotation") from None
        if position.shape != (3,) or rotation.shape != (3, 3) or not (np.isfinite(position).all() and np.isfinite(rotation).all()):
            raise ValueError(f"{path}: camera {index} ({camera.name}): position must be 3 and rotation 3x3 finite numbers")
        cameras.append(camera)
    return cameras
