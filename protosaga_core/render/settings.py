"""Rasterization settings shared by both backends."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

GSPLAT_ALPHA_MAX = 0.999
"""gsplat's CUDA kernels clamp alpha to this; the INRIA reference code uses 0.99."""

ALPHA_THRESHOLD = 1.0 / 255.0
"""Contributions with a smaller alpha are skipped (gsplat and INRIA alike)."""

GSPLAT_TILE_SIZE = 16
TORCH_TILE_SIZE = 4
"""Small tiles waste less work on pixels a Gaussian does not reach; on CPU that outweighs the cost of
more intersections (see bench/RESULTS.md)."""
TORCH_FORWARD_TILE_SIZE = 8
"""Without gradients (viewer frames, label maps) the torch backend's work per intersection outweighs
its work per pixel: 8-pixel tiles render the viewer bench's 640x480 frame ~25 % faster than 4 or 16."""

TRANSMITTANCE_MIN = 1e-4
"""A pixel stops compositing once its transmittance would fall to or below this."""

RasterizeMode = Literal["classic", "antialiased"]
"""gsplat's `rasterize_mode` values (`RasterSettings.rasterize_mode`)."""


@dataclass(frozen=True)
class RasterSettings:
    """How Gaussians become pixels. Defaults are gsplat's.

    Attributes:
        near_plane: Gaussians with camera depth below this are culled.
        far_plane: Gaussians with camera depth above this are culled.
        eps2d: low-pass filter added to the projected covariance's diagonal, in px².
        alpha_max: upper clamp of a single Gaussian's alpha (gsplat 0.999, INRIA 0.99).
        radius_clip: Gaussians whose projected radius is at most this many pixels are culled.
        tile_size: tile edge in pixels; None picks the backend's fastest (gsplat 16; torch 4, or 8
            without gradients). Changes speed, never the image.
        chunk_size: the torch backend composites each tile's depth-sorted list in chunks of this many
            Gaussians; memory grows with intersections rounded up to it.
        rasterize_mode: "classic" (3DGS), or "antialiased" (gsplat's, after Mip-Splatting): each
            camera's opacity is scaled by sqrt(det(cov2d) / det(cov2d + eps2d I)), so that the low-pass
            filter widens a Gaussian without brightening it. The scaled opacity decides culling (< 1/255),
            the bounding box and the alpha. Models trained in one mode should be rendered in it.
    """

    near_plane: float = 0.01
    far_plane: float = 1e10
    eps2d: float = 0.3
    alpha_max: float = GSPLAT_ALPHA_MAX
    radius_clip: float = 0.0
    tile_size: int | None = None
    chunk_size: int = 32
    rasterize_mode: RasterizeMode = "classic"

    def __post_init__(self) -> None:
        if not 0.0 < self.near_plane < self.far_plane:
            raise ValueError(f"need 0 < near_plane < far_plane, got {self.near_plane}, {self.far_plane}")
        if not ALPHA_THRESHOLD < self.alpha_max < 1.0:
            raise ValueError(f"alpha_max must lie in (1/255, 1), got {self.alpha_max}")
        if (self.tile_size is not None and self.tile_size <= 0) or self.chunk_size <= 0:
            raise ValueError("tile_size and chunk_size must be positive")
        if self.rasterize_mode not in get_args(RasterizeMode):
            raise ValueError(f"rasterize_mode must be one of {get_args(RasterizeMode)}, got {self.rasterize_mode!r}")

    def tile_size_for(self, backend: str, gradients: bool = True) -> int:
        if self.tile_size is not None:
            return self.tile_size
        if backend == "gsplat":
            return GSPLAT_TILE_SIZE
        return TORCH_TILE_SIZE if gradients else TORCH_FORWARD_TILE_SIZE
