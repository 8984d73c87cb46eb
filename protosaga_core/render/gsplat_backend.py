"""The CUDA backend: a thin call of `gsplat.rasterization`, which is only importable on CUDA machines."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from .settings import GSPLAT_ALPHA_MAX, RasterSettings


def rasterize_gsplat(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    colors: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    settings: RasterSettings,
    backgrounds: Tensor | None = None,
) -> tuple[Tensor, Tensor, dict[str, Any]]:
    """Same contract as `rasterize_torch`; runs gsplat's fused CUDA kernels."""
    if settings.alpha_max != GSPLAT_ALPHA_MAX:
        raise ValueError(
            f"the gsplat backend clamps alpha at {GSPLAT_ALPHA_MAX} in its CUDA kernels; "
            f"alpha_max={settings.alpha_max} needs backend='torch'"
        )
    from gsplat import rasterization

    return rasterization(
        means=means,
        quats=quats,
        scales=scales,
        opacities=opacities,
        colors=colors,
        viewmats=viewmats,
        Ks=Ks,
        width=width,
        height=height,
        near_plane=settings.near_plane,
        far_plane=settings.far_plane,
        radius_clip=settings.radius_clip,
        eps2d=settings.eps2d,
        sh_degree=None,
        packed=False,
        tile_size=settings.tile_size_for("gsplat"),
        backgrounds=backgrounds,
        render_mode="RGB",
        rasterize_mode=settings.rasterize_mode,
    )
