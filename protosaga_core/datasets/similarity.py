"""The map from a dataset's world frame to the frame of Gaussians trained elsewhere: a similarity
x' = s·R·x + t (a rotation, a uniform scale and a translation), as a 4x4 matrix.

An imported scene keeps its Gaussians exactly as the other trainer wrote them, in that trainer's frame, and
moves the dataset's cameras into it instead (`SceneDir.load_dataset` applies the scene's transform to every
view it loads, in that one place). The INRIA code trains in the COLMAP frame (identity); nerfstudio's export
lies in its dataparser frame, x' = scale·(T·x) with `dataparser_transforms.json`'s "transform" T (3x4) and
"scale"; gsplat's trainer may normalise the world the same way.

Moving a camera: its world-to-camera matrix W = [Rc | tc] becomes W' = S·W·M⁻¹ with S = diag(s, s, s, 1), so
W' = [Rc·Rᵀ | s·tc - Rc·Rᵀ·t] stays a rotation and translation (OpenCV axes), every projected pixel stays
where it was, and camera depths are s times the dataset's: GT depth maps are scaled by s, and SfM points
are mapped like the Gaussians.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor

from .scene import Scene

ORTHONORMAL_TOLERANCE = 1e-4
"""How far R·Rᵀ may be from the identity: a JSON file written from float32 values (nerfstudio's) is
orthonormal to ~1e-7; a matrix that shears or scales one axis more than another is off by far more."""


class SimilarityError(ValueError):
    """A matrix that is not a similarity (uniform scale, rotation, translation); says where it came from."""


@dataclass(frozen=True)
class Similarity:
    """x' = s·R·x + t, from the dataset's world frame to the Gaussians' frame.

    Attributes:
        matrix: [[s·R, t], [0, 0, 0, 1]]. [4, 4] float64
    """

    matrix: Tensor

    @classmethod
    def identity(cls) -> Similarity:
        return cls(torch.eye(4, dtype=torch.float64))

    @classmethod
    def from_matrix(cls, values: Any, where: str, scale: float = 1.0) -> Similarity:
        """Validate a 4x4 or 3x4 matrix (nested lists or a tensor), times a uniform `scale` applied after it
        (nerfstudio's `scale`). `where` names the file in errors.

        Raises:
            SimilarityError: not 3x4 / 4x4 numbers, a last row other than [0, 0, 0, 1], not finite, a
                reflection, or a linear part that is no rotation times one positive scale.
        """
        try:
            matrix = torch.as_tensor(values, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError) as error:
            raise SimilarityError(f"{where}: the transform must be a 3x4 or 4x4 matrix of numbers ({error})") from None
        if matrix.shape == (3, 4):
            matrix = torch.cat([matrix, torch.tensor([[0.0, 0.0, 0.0, 1.0]], dtype=torch.float64)])
        if matrix.shape != (4, 4):
            raise SimilarityError(f"{where}: the transform must be a 3x4 or 4x4 matrix, got shape {list(matrix.shape)}")
        if not torch.isfinite(matrix).all() or not math.isfinite(scale) or scale <= 0:
            raise SimilarityError(f"{where}: the transform must hold finite numbers and a positive scale, got scale {scale}")
        if not torch.allclose(matrix[3], torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=torch.float64)):
            raise SimilarityError(f"{where}: the transform's last row must be [0, 0, 0, 1], got {matrix[3].tolist()}")
        matrix = torch.diag(torch.tensor([scale, scale, scale, 1.0], dtype=torch.float64)) @ matrix
        linear = matrix[:3, :3]
        det = float(torch.linalg.det(linear))
        if det <= 0:
            raise SimilarityError(f"{where}: the transform {'mirrors' if det < 0 else 'flattens'} the world (determinant {det:.3g}); it must be a rotation, a uniform scale and a translation")
        s = det ** (1.0 / 3.0)
        rotation = linear / s
        error = float((rotation @ rotation.T - torch.eye(3, dtype=torch.float64)).abs().max())
        if error > ORTHONORMAL_TOLERANCE:
            raise SimilarityError(
                f"{where}: the transform's 3x3 part is no rotation times one uniform scale (R·Rᵀ is off the identity by "
                f"{error:.2g}); shears and per-axis scales cannot be applied to Gaussians"
            )
        return cls(matrix)

    @classmethod
    def fit(cls, source: Tensor, target: Tensor) -> Similarity:
        """The similarity that best maps the points `source` onto `target` in least squares (Umeyama 1991).
        source, target: [P, 3], P >= 3 not on one line."""
        source, target = source.double(), target.double()
        source_mean, target_mean = source.mean(0), target.mean(0)
        centred_source, centred_target = source - source_mean, target - target_mean
        u, singular, vt = torch.linalg.svd(centred_target.T @ centred_source / len(source))
        sign = torch.ones(3, dtype=torch.float64)
        sign[2] = torch.sign(torch.linalg.det(u @ vt))  # a rotation, never a reflection
        rotation = u @ torch.diag(sign) @ vt
        scale = float((singular * sign).sum() / centred_source.pow(2).sum(1).mean())
        matrix = torch.eye(4, dtype=torch.float64)
        matrix[:3, :3] = scale * rotation
        matrix[:3, 3] = target_mean - scale * rotation @ source_mean
        return cls(matrix)

    @property
    def scale(self) -> float:
        """s."""
        return float(torch.linalg.det(self.matrix[:3, :3])) ** (1.0 / 3.0)

    @property
    def rotation(self) -> Tensor:
        """R. [3, 3] float64"""
        return self.matrix[:3, :3] / self.scale

    @property
    def translation(self) -> Tensor:
        """t. [3] float64"""
        return self.matrix[:3, 3]

    def after(self, first: Similarity) -> Similarity:
        """x ↦ self(first(x))."""
        return Similarity(self.matrix @ first.matrix)

    def inverse(self) -> Similarity:
        return Similarity(torch.linalg.inv(self.matrix))

    def is_identity(self) -> bool:
        return bool(torch.equal(self.matrix, torch.eye(4, dtype=torch.float64)))

    def to_json(self) -> list[list[float]]:
        return self.matrix.tolist()

    def apply_points(self, points: Tensor) -> Tensor:
        """x' = s·R·x + t, in the points' dtype. [P, 3] -> [P, 3]"""
        moved = points.double() @ self.matrix[:3, :3].T.to(points.device) + self.matrix[:3, 3].to(points.device)
        return moved.to(points.dtype)

    def apply_viewmats(self, viewmats: Tensor) -> Tensor:
        """World-to-camera matrices of the dataset's frame in the Gaussians' frame, W' = S·W·M⁻¹, with camera
        coordinates scaled by s (so the rotation stays orthonormal and depths are s times larger).
        [..., 4, 4] -> [..., 4, 4], in their dtype"""
        s = self.scale
        inverse = torch.linalg.inv(self.matrix).to(viewmats.device)
        scaled = torch.diag(torch.tensor([s, s, s, 1.0], dtype=torch.float64)).to(viewmats.device)
        return (scaled @ viewmats.double() @ inverse).to(viewmats.dtype)

    def apply_scene(self, scene: Scene) -> Scene:
        """The dataset's views (cameras, GT depth units) and SfM points moved into the Gaussians' frame."""
        if self.is_identity():
            return scene
        s = self.scale
        views = [replace(view, viewmat=self.apply_viewmats(view.viewmat), depth_scale=view.depth_scale * s) for view in scene.views]
        points = None if scene.points is None else self.apply_points(scene.points)
        return replace(scene, views=views, points=points)


def similarity_from_json(raw: Any, where: str) -> Similarity:
    """A transform file's contents: {"transform": 3x4 or 4x4, "scale": s (optional, default 1)} meaning
    x' = scale·(transform·x) — nerfstudio's `dataparser_transforms.json` is read as it is — or a bare 4x4 list."""
    if isinstance(raw, Sequence) and not isinstance(raw, (str, bytes)):
        return Similarity.from_matrix(raw, where)
    if not isinstance(raw, dict) or "transform" not in raw:
        raise SimilarityError(
            f'{where}: expected {{"transform": [[...], ...] (3x4 or 4x4), "scale": s}} (as nerfstudio\'s '
            "dataparser_transforms.json) or a 4x4 list of rows"
        )
    scale = raw.get("scale", 1.0)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise SimilarityError(f'{where}: "scale" must be a number, got {scale!r:.40}')
    return Similarity.from_matrix(raw["transform"], where, float(scale))
