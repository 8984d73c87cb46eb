"""What every format reader hands over, and the checks and conversions they share.

A reader only translates its layout into `PosedImage`s (camera at its calibrated size, OpenCV world-to-camera
pose); `load_scene` then validates, splits, downscales and turns them into `View`s in one place.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..io.labelmaps import image_size
from .scene import Split, View

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".PNG", ".JPG", ".JPEG")


class DatasetError(ValueError):
    """A dataset that cannot be read; the message names the offending file and what is wrong with it."""


@dataclass(frozen=True)
class PosedImage:
    """One camera as a format reader found it, before splitting and downscaling.

    Attributes:
        name: the view name (normally the image's stem).
        image_path: the RGB file on disk (may not exist: `load_scene` reports that).
        K: intrinsics in pixels at width x height. [3, 3] float64
        viewmat: world-to-camera, OpenCV axes. [4, 4] float64
        width, height: the size the camera was calibrated at.
        source: the file the camera came from, named in error messages.
        file_downscale: the image file is already shrunk by this factor (a shipped `images_N/` folder); a
            larger downscale shrinks it the rest of the way on load.
        split: the split the layout itself states (NeRF's per-split json files), else None.
        instance_path: the ground-truth instance map, when the dataset has one.
        depth_path: the ground-truth depth map (integer PNG of camera z-depth), when the dataset has one.
        depth_scale: metres per stored depth unit.
    """

    name: str
    image_path: Path
    K: np.ndarray
    viewmat: np.ndarray
    width: int
    height: int
    source: Path
    file_downscale: int = 1
    split: Split | None = None
    instance_path: Path | None = None
    depth_path: Path | None = None
    depth_scale: float = 1e-3


@dataclass(frozen=True)
class RawScene:
    """A reader's result.

    Attributes:
        images: the posed images, in any order.
        format: "colmap", "nerf", "llff" or "replica".
        source: the file or folder holding the cameras, named in error messages.
        points: SfM points. [P, 3] float64 or None
        point_colors: their colours in [0, 1]. [P, 3] float64 or None
    """

    images: list[PosedImage]
    format: str
    source: Path
    points: np.ndarray | None = None
    point_colors: np.ndarray | None = None


def rigid_inverse(rotation: np.ndarray, translation: np.ndarray) -> np.ndarray:
    """Invert rigid transforms [R | t] without a general matrix inverse (which would hide a broken rotation).

    Args:
        rotation: [..., 3, 3]
        translation: [..., 3]

    Returns:
        [..., 4, 4] homogeneous [R^T | -R^T t]
    """
    rot_t = np.swapaxes(rotation, -1, -2)
    out = np.zeros(rotation.shape[:-2] + (4, 4))
    out[..., :3, :3] = rot_t
    out[..., :3, 3] = -(rot_t @ translation[..., None])[..., 0]
    out[..., 3, 3] = 1.0
    return out


def intrinsics_matrix(fx: float, fy: float, cx: float, cy: float) -> np.ndarray:
    """[3, 3] float64"""
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


def shipped_image_folders(root: Path) -> dict[int, Path]:
    """The image folders of `root` by the factor their images are shrunk by: `images/` 1, `images_N/` N."""
    folders = {1: root / "images"} if (root / "images").is_dir() else {}
    for path in root.glob("images_*"):
        factor = path.name.removeprefix("images_")
        if path.is_dir() and factor.isdigit() and int(factor) > 1:
            folders[int(factor)] = path
    return dict(sorted(folders.items()))


def image_folder(root: Path, downscale: int) -> tuple[Path, int]:
    """The shipped image folder with the largest factor not above `downscale`, and that factor.

    `images_<downscale>/` when the dataset ships it; otherwise the closest finer folder, whose images are shrunk
    the rest of the way on load (a training --max-width may ask for a factor no dataset ships).

    Raises:
        DatasetError: no shipped folder is fine enough, listing the folders there are.
    """
    folders = shipped_image_folders(root)
    usable = [factor for factor in folders if factor <= downscale]
    if not usable:
        found = ", ".join(f"{path.name}/" for path in folders.values()) or "none"
        raise DatasetError(
            f"{root}: no image folder to load downscale {downscale} from: needs images/ or images_N/ with "
            f"N <= {downscale} (images are only shrunk, never enlarged); found: {found}"
        )
    return folders[max(usable)], max(usable)


def find_image(folder: Path, relative: str) -> Path:
    """`folder/relative`, else the same file with an image suffix appended or swapped in.

    NeRF file_paths often omit the suffix, and LLFF's `images_N/` hold PNGs of the original JPEGs. When nothing
    exists the literal path is returned, so that the missing-file error names what the dataset listed.
    """
    path = folder / relative
    if path.is_file():
        return path
    for suffix in IMAGE_SUFFIXES:
        for candidate in (path.with_name(path.name + suffix), path.with_suffix(suffix)):
            if candidate.is_file():
                return candidate
    return path


def read_image_size(path: Path, source: Path) -> tuple[int, int]:
    """(width, height) from the image header only; the pixels are not decoded."""
    try:
        return image_size(path)
    except FileNotFoundError as err:
        raise DatasetError(f"{path}: image file missing (listed in {source})") from err
    except ValueError as err:
        raise DatasetError(str(err)) from err


def check_camera(image: PosedImage) -> None:
    """Reject non-finite or degenerate intrinsics and poses that are not rotations plus translations."""
    where = f"{image.source}: camera of {image.name!r}"
    if not np.isfinite(image.K).all():
        raise DatasetError(f"{where}: intrinsics contain NaN or inf: {image.K.tolist()}")
    if not np.isfinite(image.viewmat).all():
        raise DatasetError(f"{where}: pose contains NaN or inf: {image.viewmat.tolist()}")
    if image.K[0, 0] <= 0 or image.K[1, 1] <= 0:
        raise DatasetError(f"{where}: focal lengths must be positive, got fx={image.K[0, 0]}, fy={image.K[1, 1]}")
    if image.width <= 0 or image.height <= 0:
        raise DatasetError(f"{where}: image size must be positive, got {image.width}x{image.height}")
    rotation = image.viewmat[:3, :3]
    # A scaled, sheared or mirrored matrix means the pose was written in another convention than we read.
    if not np.allclose(rotation @ rotation.T, np.eye(3), atol=1e-3) or np.linalg.det(rotation) <= 0:
        raise DatasetError(f"{where}: pose rotation is not a proper rotation matrix: {rotation.tolist()}")


def view_size(image: PosedImage, downscale: int) -> tuple[int, int]:
    """The view's (width, height) after checking the file on disk against the camera.

    Images shrunk on load get (width // d, height // d) of the camera size, also when they are shrunk from a
    shipped `images_N/` file with N < d; a file of `images_<d>/` keeps its own size, which may differ from the
    camera size / d by the rounding of whatever tool shrank it.
    """
    file_w, file_h = read_image_size(image.image_path, image.source)
    factor = image.file_downscale
    if factor == 1:
        if (file_w, file_h) != (image.width, image.height):
            raise DatasetError(
                f"{image.image_path}: image is {file_w}x{file_h} but its camera in {image.source} "
                f"is {image.width}x{image.height}"
            )
    else:
        expect_w, expect_h = image.width / factor, image.height / factor
        if abs(file_w - expect_w) >= 1 or abs(file_h - expect_h) >= 1:
            raise DatasetError(
                f"{image.image_path}: image is {file_w}x{file_h} but its camera in {image.source} is "
                f"{image.width}x{image.height}, i.e. about {expect_w:.1f}x{expect_h:.1f} shrunk by {factor}"
            )
    width, height = file_w, file_h
    if downscale != factor:  # shrunk on load, from `images/` or from a finer shipped folder than asked
        width, height = image.width // downscale, image.height // downscale
    if width < 1 or height < 1:
        raise DatasetError(f"{image.image_path}: downscale {downscale} leaves no pixels of {file_w}x{file_h}")
    return width, height


def to_view(image: PosedImage, split: Split, downscale: int, root: Path) -> View:
    """Validate one posed image and make it a `View` at the downscaled size."""
    check_camera(image)
    width, height = view_size(image, downscale)
    # Scale by the actual ratio: integer division makes it differ from 1 / downscale on odd sizes.
    scale = np.diag([width / image.width, height / image.height, 1.0])
    mask_path = root / "masks" / f"{image.name}.png"
    return View(
        name=image.name,
        image_path=image.image_path,
        K=torch.from_numpy(scale @ image.K).float(),
        viewmat=torch.from_numpy(image.viewmat).float(),
        width=width,
        height=height,
        split=split,
        mask_path=mask_path if mask_path.is_file() else None,
        instance_path=image.instance_path,
        downscale=downscale,
        depth_path=image.depth_path,
        depth_scale=image.depth_scale,
        full_width=image.width,
        full_height=image.height,
    )
