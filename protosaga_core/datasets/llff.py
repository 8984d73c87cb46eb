"""LLFF layout: `poses_bounds.npy` with images in `images/` and/or shrunk copies in `images_N/`.

Each row of poses_bounds.npy is a flattened 3x5 matrix [R | t | hwf] followed by near/far bounds. R's columns
are the camera axes in world coordinates in LLFF's order (down, right, backwards), t is the camera centre and
hwf = (height, width, focal) at the full resolution of `images/`. Rows follow the sorted image file names.
The OpenCV camera axes (right, down, forward) are therefore the columns (1, 0, -2); the principal point is the
image centre.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..io.bounded import BoundedReadError, load_npy
from .common import DatasetError, PosedImage, RawScene, image_folder, intrinsics_matrix, rigid_inverse

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def read_llff(root: Path, downscale: int = 1) -> RawScene:
    """The cameras of `root/poses_bounds.npy` with the sorted files of the shipped image folder that fits.

    That is `images_<downscale>/`, else the folder of the largest shipped factor below it (`images/` is 1), whose
    images are shrunk the rest of the way on load: an LLFF scene that ships only `images_8/` loads at 8 and at
    any larger factor a training --max-width asks for.
    """
    path = root / "poses_bounds.npy"
    poses = read_poses(path)
    folder, file_downscale = image_folder(root, downscale)
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if len(files) != len(poses):
        raise DatasetError(f"{path}: {len(poses)} poses but {len(files)} images in {folder}")
    if not np.isfinite(poses[:, :, 4]).all():
        raise DatasetError(f"{path}: the image size or focal length (hwf column) contains NaN or inf")
    viewmats = llff_to_viewmats(poses[:, :, :4])
    height, width, focal = poses[:, 0, 4], poses[:, 1, 4], poses[:, 2, 4]
    images = [
        PosedImage(
            name=file.stem,
            image_path=file,
            K=intrinsics_matrix(focal[i], focal[i], width[i] / 2, height[i] / 2),
            viewmat=viewmats[i],
            width=int(round(width[i])),
            height=int(round(height[i])),
            source=path,
            file_downscale=file_downscale,
        )
        for i, file in enumerate(files)
    ]
    return RawScene(images, "llff", path)


def read_poses(path: Path) -> np.ndarray:
    """poses_bounds.npy's pose matrices, bounds dropped. [N, 3, 5] float64"""
    try:
        array = load_npy(path)
    except FileNotFoundError as err:
        raise DatasetError(f"{path}: file missing") from err
    except BoundedReadError as err:  # a header announcing more than the file holds, before allocating it
        raise DatasetError(str(err)) from err
    except (OSError, ValueError, EOFError) as err:
        raise DatasetError(f"{path}: cannot read the array ({err})") from err
    if array.ndim != 2 or array.shape[1] != 17:
        raise DatasetError(f"{path}: expected an [N, 17] array (3x5 pose + 2 bounds per image), got {array.shape}")
    return array[:, :15].reshape(-1, 3, 5).astype(np.float64)


def llff_to_viewmats(c2w: np.ndarray) -> np.ndarray:
    """LLFF camera-to-world [N, 3, 4] (columns down, right, backwards, centre) to OpenCV world-to-camera.

    Returns:
        [N, 4, 4]
    """
    down, right, backwards, centre = (c2w[..., k] for k in range(4))
    rotation = np.stack([right, down, -backwards], axis=-1)
    return rigid_inverse(rotation, centre)
