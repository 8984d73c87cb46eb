"""The Gaussian model: gsplat's parameter names, stored raw (before activation).

Every activation lives here, so the renderer, the trainer, the PLY writer and the viewer agree on what
a raw value means.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np
import torch
from torch import Tensor

SH_C0 = 0.28209479177387814
"""The degree-0 spherical-harmonics basis constant: colour = SH_C0 * sh0 + 0.5."""

DEFAULT_FEATURE_DIM = 16
INITIAL_OPACITY = 0.1
INITIAL_FEATURE_STD = 1e-2
"""Fresh features f_i are drawn from N(0, this²)."""


def activate_scales(scales: Tensor) -> Tensor:
    """Log scales to scales. [..., 3]"""
    return torch.exp(scales)


def activate_opacities(opacities: Tensor) -> Tensor:
    """Logit opacities to opacities in (0, 1). [...]"""
    return torch.sigmoid(opacities)


def activate_quats(quats: Tensor) -> Tensor:
    """Unnormalised wxyz quaternions to unit quaternions. [..., 4]"""
    return torch.nn.functional.normalize(quats, dim=-1)


def rgb_to_sh0(rgb: Tensor) -> Tensor:
    """Colours in [0, 1] to degree-0 SH coefficients. [..., 3]"""
    return (rgb - 0.5) / SH_C0


def sh0_to_rgb(sh0: Tensor) -> Tensor:
    """Degree-0 SH coefficients to (unclamped) colours. [..., 3]"""
    return sh0 * SH_C0 + 0.5


def num_sh_rest(sh_degree: int) -> int:
    """Number of higher-order SH coefficients per colour channel for a degree."""
    return (sh_degree + 1) ** 2 - 1


def sh_degree_from_rest(num_rest: int) -> int:
    """Inverse of `num_sh_rest`; raises if `num_rest` is not (d+1)^2 - 1 for d in 0..3."""
    for degree in range(4):
        if num_sh_rest(degree) == num_rest:
            return degree
    raise ValueError(f"{num_rest} higher-order SH coefficients match no SH degree 0..3")


@dataclass
class Gaussians:
    """N Gaussians with D-dimensional features, raw (pre-activation) values.

    Attributes:
        means: centres. [N, 3]
        scales: log standard deviations along the local axes. [N, 3]
        quats: rotations, wxyz, unnormalised. [N, 4]
        opacities: logit opacities. [N]
        sh0: degree-0 SH coefficients. [N, 1, 3]
        shN: higher-order SH coefficients, K = (degree + 1)^2 - 1. [N, K, 3]
        features: segmentation embeddings f_i (paper Eq. 1). [N, D]
    """

    means: Tensor
    scales: Tensor
    quats: Tensor
    opacities: Tensor
    sh0: Tensor
    shN: Tensor
    features: Tensor

    def __post_init__(self) -> None:
        n = self.means.shape[0]
        expected = {
            "means": (n, 3),
            "scales": (n, 3),
            "quats": (n, 4),
            "opacities": (n,),
            "sh0": (n, 1, 3),
        }
        for name, shape in expected.items():
            got = tuple(getattr(self, name).shape)
            if got != shape:
                raise ValueError(f"Gaussians.{name} must have shape {list(shape)}, got {list(got)}")
        if self.shN.ndim != 3 or self.shN.shape[0] != n or self.shN.shape[2] != 3:
            raise ValueError(f"Gaussians.shN must have shape [N, K, 3], got {list(self.shN.shape)}")
        sh_degree_from_rest(self.shN.shape[1])
        if self.features.ndim != 2 or self.features.shape[0] != n:
            raise ValueError(f"Gaussians.features must have shape [N, D], got {list(self.features.shape)}")

    # --- sizes -------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.means.shape[0]

    @property
    def sh_degree(self) -> int:
        return sh_degree_from_rest(self.shN.shape[1])

    @property
    def feature_dim(self) -> int:
        return self.features.shape[1]

    @property
    def device(self) -> torch.device:
        return self.means.device

    # --- activated views ---------------------------------------------------------------------------
    @property
    def activated_scales(self) -> Tensor:
        """[N, 3]"""
        return activate_scales(self.scales)

    @property
    def activated_opacities(self) -> Tensor:
        """[N]"""
        return activate_opacities(self.opacities)

    @property
    def activated_quats(self) -> Tensor:
        """[N, 4]"""
        return activate_quats(self.quats)

    @property
    def sh(self) -> Tensor:
        """All SH coefficients, degree 0 first. [N, (degree + 1)^2, 3]"""
        return torch.cat([self.sh0, self.shN], dim=1)

    # --- conversions -------------------------------------------------------------------------------
    def tensors(self) -> dict[str, Tensor]:
        """The parameters by gsplat name, in field order."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_tensors(cls, tensors: dict[str, Tensor]) -> "Gaussians":
        """Build from a mapping with gsplat names (e.g. the ParameterDict that densification edits)."""
        return cls(**{f.name: tensors[f.name] for f in fields(cls)})

    def as_parameter_dict(self) -> torch.nn.ParameterDict:
        """Trainable copies, in the form `gsplat.strategy.DefaultStrategy` edits in place."""
        return torch.nn.ParameterDict(
            {name: torch.nn.Parameter(t.detach().clone()) for name, t in self.tensors().items()}
        )

    def map(self, fn) -> "Gaussians":
        """Apply `fn` to every parameter tensor (e.g. `.detach()`, `.to(device)`, `[mask]`)."""
        return Gaussians(**{name: fn(t) for name, t in self.tensors().items()})

    def to(self, device: torch.device | str) -> "Gaussians":
        return self.map(lambda t: t.to(device))

    def detach(self) -> "Gaussians":
        return self.map(lambda t: t.detach())

    def select(self, index: Tensor) -> "Gaussians":
        """The Gaussians picked by a boolean mask [N] or an index tensor [M]."""
        return self.map(lambda t: t[index])

    # --- initialisation ----------------------------------------------------------------------------
    @classmethod
    def from_points(
        cls,
        points: Tensor,
        colors: Tensor,
        sh_degree: int = 3,
        feature_dim: int = DEFAULT_FEATURE_DIM,
        feature_std: float = INITIAL_FEATURE_STD,
        generator: torch.Generator | None = None,
    ) -> "Gaussians":
        """Initialise as the 3DGS reference does from an SfM point cloud.

        SH DC from the colour, higher SH zero, isotropic log-scale from the root mean squared distance to
        the 3 nearest neighbours, identity rotation, opacity 0.1, features drawn from N(0, feature_std²).

        Args:
            points: positions. [N, 3]
            colors: colours in [0, 1]. [N, 3]
        """
        if points.ndim != 2 or points.shape[1] != 3 or len(points) == 0:
            raise ValueError(f"points must be a non-empty [N, 3] tensor, got {list(points.shape)}")
        if colors.shape != points.shape:
            raise ValueError(f"colors must match points {list(points.shape)}, got {list(colors.shape)}")
        n = points.shape[0]
        dtype, device = points.dtype, points.device
        log_scale = torch.log(_mean_neighbour_distance(points)).to(dtype=dtype, device=device)
        quats = torch.zeros(n, 4, dtype=dtype, device=device)
        quats[:, 0] = 1.0
        features = torch.randn(n, feature_dim, generator=generator, dtype=dtype) * feature_std
        return cls(
            means=points.clone(),
            scales=log_scale[:, None].repeat(1, 3),
            quats=quats,
            opacities=torch.full((n,), math.log(INITIAL_OPACITY / (1 - INITIAL_OPACITY)), dtype=dtype, device=device),
            sh0=rgb_to_sh0(colors.clamp(0, 1))[:, None, :].clone(),
            shN=torch.zeros(n, num_sh_rest(sh_degree), 3, dtype=dtype, device=device),
            features=features.to(device),
        )

    @classmethod
    def random_box(
        cls,
        num: int,
        lower: tuple[float, float, float] = (-1.0, -1.0, -1.0),
        upper: tuple[float, float, float] = (1.0, 1.0, 1.0),
        sh_degree: int = 3,
        feature_dim: int = DEFAULT_FEATURE_DIM,
        generator: torch.Generator | None = None,
    ) -> "Gaussians":
        """Initialise `num` Gaussians at uniform random points in a box, with random colours."""
        if num <= 0:
            raise ValueError(f"num must be positive, got {num}")
        lo, hi = torch.tensor(lower), torch.tensor(upper)
        points = lo + (hi - lo) * torch.rand(num, 3, generator=generator)
        colors = torch.rand(num, 3, generator=generator)
        return cls.from_points(points, colors, sh_degree, feature_dim, generator=generator)


def _mean_neighbour_distance(points: Tensor, neighbours: int = 3) -> Tensor:
    """Root of the mean squared distance to the nearest `neighbours` other points. [N]"""
    from scipy.spatial import cKDTree

    xyz = points.detach().cpu().double().numpy()
    k = min(neighbours + 1, len(xyz))
    if k < 2:
        return torch.ones(len(xyz), dtype=torch.float64)
    dist, _ = cKDTree(xyz).query(xyz, k=k)
    mean_sq = np.maximum((dist[:, 1:] ** 2).mean(axis=1), 1e-7)
    return torch.from_numpy(np.sqrt(mean_sq))
