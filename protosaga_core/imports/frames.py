"""The frames imported Gaussians may live in, relative to their dataset's: the candidates the alignment check
decides between.

- INRIA 3DGS trains in its dataset's frame: the identity.
- nerfstudio: dataparser_transforms.json's x' = s·(T·x), from the capture's original frame; a dataset read
  from a transforms.json that records `applied_transform` stores its cameras in another frame, so both the
  transform after undoing it and the transform as it is are tried (nerfstudio.py).
- gsplat's trainer: the normalisation its COLMAP parser applies by default (`normalize_world_space`),
  computed again here from the dataset's cameras and SfM points as its `examples/datasets/normalize.py`
  describes:
  1. T1, from the cameras: rotate the mean camera "up" (-y of OpenCV cameras) onto the axis the code aligns it
     with (Rodrigues' formula from the two unit vectors), move the median of the points nearest the origin on
     each camera's optical axis to the origin, and scale the median camera distance to 1;
  2. T2, from the SfM points moved by T1: their per-axis median to the origin, their principal axes (the
     covariance's eigenvectors, largest variance first) onto x, y, z;
  3. T3, in newer versions: a half turn about x when the points' median height exceeds their mean.
  An eigenvector's sign is the linear-algebra library's choice, and T3 depends on the gsplat version, so
  the four proper sign patterns of the principal axes are all candidates (T3 is one of them).
- a --transform file: as nerfstudio's.
The alignment check renders every candidate and keeps the best fit (importer.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..datasets.scene import Scene
from ..datasets.similarity import Similarity

GSPLAT_UP = np.array([0.0, -1.0, 0.0])
"""The axis gsplat's similarity_from_cameras turns the cameras' mean up vector onto."""
AXIS_SIGNS = ((1.0, 1.0, 1.0), (1.0, -1.0, -1.0), (-1.0, 1.0, -1.0), (-1.0, -1.0, 1.0))
"""The proper sign patterns of three principal axes; (1, -1, -1) is gsplat's upside-down fix T3."""


@dataclass(frozen=True)
class Frame:
    """A candidate map from the dataset's frame to the Gaussians', and where it came from (for messages)."""

    name: str
    similarity: Similarity


def identity_frames() -> list[Frame]:
    return [Frame("the dataset's own frame", Similarity.identity())]


def transform_frames(transform: Similarity, applied: Similarity | None, where: str) -> list[Frame]:
    """A dataparser-style transform (from the capture's original frame), after undoing the dataset's applied
    transform where it records one, then as it is."""
    frames = []
    if applied is not None:
        frames.append(Frame(f"{where} after the dataset's applied_transform", transform.after(applied.inverse())))
    return frames + [Frame(where, transform)]


def gsplat_frames(scene: Scene) -> list[Frame]:
    """gsplat's world normalisation of this dataset, in each sign pattern of its principal axes (see the
    module docstring); [] for a dataset without SfM points (gsplat's parser reads a COLMAP model's)."""
    if scene.points is None or len(scene.points) < 4:
        return []
    camera_to_world = np.linalg.inv(torch.stack([view.viewmat for view in scene.views]).double().numpy())
    t1 = camera_normalisation(camera_to_world)
    points = scene.points.double().numpy() @ t1[:3, :3].T + t1[:3, 3]
    t2 = principal_axes(points)
    frames = []
    for signs in AXIS_SIGNS:
        matrix = np.diag([*signs, 1.0]) @ t2 @ t1
        name = "gsplat's normalised world" + ("" if signs == AXIS_SIGNS[0] else f" (axes {'/'.join(f'{s:+.0f}' for s in signs)})")
        frames.append(Frame(name, Similarity.from_matrix(matrix, name)))
    return frames


def camera_normalisation(camera_to_world: np.ndarray) -> np.ndarray:
    """T1: up aligned, the cameras' focus at the origin, their median distance 1. [C, 4, 4] -> [4, 4]"""
    rotations, centres = camera_to_world[:, :3, :3], camera_to_world[:, :3, 3]
    world_up = (rotations @ GSPLAT_UP).mean(axis=0)
    world_up /= np.linalg.norm(world_up)
    cosine = float(world_up @ GSPLAT_UP)
    if cosine <= -1.0 + 1e-12:  # the two are opposite: any half turn about an axis normal to them
        align = np.diag([-1.0, -1.0, 1.0])
    else:
        axis = np.cross(world_up, GSPLAT_UP)
        skew = np.array([[0.0, -axis[2], axis[1]], [axis[2], 0.0, -axis[0]], [-axis[1], axis[0], 0.0]])
        align = np.eye(3) + skew + skew @ skew / (1.0 + cosine)
    forwards = (align @ rotations)[:, :, 2]
    centres = centres @ align.T
    nearest = centres + np.sum(forwards * -centres, axis=-1, keepdims=True) * forwards
    translate = -np.median(nearest, axis=0)
    scale = 1.0 / np.median(np.linalg.norm(centres + translate, axis=-1))
    transform = np.eye(4)
    transform[:3, :3], transform[:3, 3] = align, translate
    transform[:3] *= scale
    return transform


def principal_axes(points: np.ndarray) -> np.ndarray:
    """T2: the points' per-axis median to the origin, their principal axes (largest variance first) onto x, y, z,
    as a proper rotation. [P, 3] -> [4, 4]"""
    centroid = np.median(points, axis=0)
    values, vectors = np.linalg.eigh(np.cov(points - centroid, rowvar=False))
    vectors = vectors[:, np.argsort(values)[::-1]]
    if np.linalg.det(vectors) < 0:
        vectors[:, 0] *= -1
    transform = np.eye(4)
    transform[:3, :3] = vectors.T
    transform[:3, 3] = -vectors.T @ centroid
    return transform
