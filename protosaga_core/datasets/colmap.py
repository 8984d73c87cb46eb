"""COLMAP layout: `images/` plus a sparse model in `sparse/0/` (binary or text), read with pycolmap."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .common import DatasetError, PosedImage, RawScene, find_image, image_folder

if TYPE_CHECKING:
    import pycolmap

PINHOLE_MODELS = ("PINHOLE", "SIMPLE_PINHOLE")
UNDISTORT_HINT = (
    "undistort the images first: colmap image_undistorter --image_path images --input_path sparse/0 "
    "--output_path undistorted --output_type COLMAP, then load the undistorted/ folder; or pose the photos "
    "again with protosaga colmap images -o DATASET, which undistorts them"
)


def read_colmap(root: Path, downscale: int = 1) -> RawScene:
    """Registered images of `root/sparse/0` with their SfM points, read from the shipped image folder that fits
    (`images_<downscale>/`, else the largest shipped factor below it; see `common.image_folder`)."""
    sparse = root / "sparse" / "0"
    reconstruction = read_reconstruction(sparse)
    folder, file_downscale = image_folder(root, downscale)
    images = [
        posed_image(reconstruction, image, folder, file_downscale, sparse)
        for image in reconstruction.images.values()
        if image.has_pose
    ]
    # By id, so that the same model always initialises the same Gaussians in the same order.
    points = [reconstruction.points3D[point_id] for point_id in sorted(reconstruction.points3D)]
    if not points:
        return RawScene(images, "colmap", sparse)
    xyz = np.array([point.xyz for point in points], dtype=np.float64)
    rgb = np.array([point.color for point in points], dtype=np.float64) / 255.0
    return RawScene(images, "colmap", sparse, xyz, rgb)


def read_reconstruction(sparse: Path) -> "pycolmap.Reconstruction":
    """The pycolmap.Reconstruction at `sparse`, with errors that name the folder."""
    try:
        import pycolmap
    except ImportError as err:
        raise DatasetError(f"{sparse}: reading COLMAP models needs pycolmap (pip install pycolmap)") from err
    if not sparse.is_dir():
        raise DatasetError(f"{sparse}: COLMAP model folder missing")
    try:
        return pycolmap.Reconstruction(sparse)
    except Exception as err:  # pycolmap raises bare ValueError/RuntimeError with C++ messages
        raise DatasetError(f"{sparse}: pycolmap cannot read the model ({err})") from err


def model_file(sparse: Path, stem: str) -> Path:
    """`sparse/<stem>.bin`, else `.txt`: the file to name when its content is wrong."""
    binary = sparse / f"{stem}.bin"
    return binary if binary.is_file() else sparse / f"{stem}.txt"


def posed_image(
    reconstruction: "pycolmap.Reconstruction",
    image: "pycolmap.Image",
    folder: Path,
    file_downscale: int,
    sparse: Path,
) -> PosedImage:
    """One registered pycolmap image as a PosedImage; distorted camera models are refused."""
    camera = reconstruction.cameras[image.camera_id]
    model = camera.model.name
    if model not in PINHOLE_MODELS:
        raise DatasetError(
            f"{model_file(sparse, 'cameras')}: camera {image.camera_id} (image {image.name}) uses the {model} "
            f"model with lens distortion; only {' and '.join(PINHOLE_MODELS)} are supported: {UNDISTORT_HINT}"
        )
    pose = image.cam_from_world
    # Recent pycolmap derives poses from rigs/frames and exposes this as a method; older versions as a property.
    pose = pose() if callable(pose) else pose
    viewmat = np.eye(4)
    viewmat[:3, :] = pose.matrix()
    return PosedImage(
        name=Path(image.name).stem,
        image_path=find_image(folder, image.name),
        K=np.asarray(camera.calibration_matrix(), dtype=np.float64),
        viewmat=viewmat,
        width=camera.width,
        height=camera.height,
        source=sparse,
        file_downscale=file_downscale,
    )
