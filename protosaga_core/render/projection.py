"""EWA projection of 3D Gaussians to image-plane conics, as gsplat's fused projection kernel does.

The differentiable maths is gsplat's own pure-PyTorch reference (`gsplat.cuda._torch_impl`); this module
adds the culling and opacity-aware radii of gsplat's CUDA kernel, which that reference leaves out.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from gsplat.cuda._torch_impl import _persp_proj, _quat_scale_to_covar_preci, _world_to_cam
from torch import Tensor

from .settings import ALPHA_THRESHOLD, RasterSettings

RADIUS_SIGMAS = 3.33
"""gsplat's bounding-box extent in standard deviations (tightened for faint Gaussians)."""


@dataclass(frozen=True)
class Projection:
    """Per-camera projected Gaussians. Entries with `radii == 0` are culled and carry no meaning.

    Attributes:
        means2d: projected centres in pixels. [C, N, 2]
        conics: inverse 2D covariance (a, b, c) upper triangle. [C, N, 3]
        depths: camera-space z. [C, N]
        radii: bounding-box half extents in pixels, 0 when culled. [C, N, 2] int32
    """

    means2d: Tensor
    conics: Tensor
    depths: Tensor
    radii: Tensor


def project(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    settings: RasterSettings,
) -> Projection:
    """Project N Gaussians into C pinhole cameras.

    Args:
        means: [N, 3]; quats: unit or raw wxyz [N, 4]; scales: activated [N, 3];
        opacities: activated [N]; viewmats: [C, 4, 4]; Ks: [C, 3, 3].
    """
    covars, _ = _quat_scale_to_covar_preci(quats, scales, compute_covar=True, compute_preci=False)
    means_c, covars_c = _world_to_cam(means, covars, viewmats)
    depths = means_c[..., 2]
    with torch.no_grad():
        in_range = (depths > settings.near_plane) & (depths < settings.far_plane)
    # gsplat's kernel never touches culled Gaussians. Here they are computed and discarded, so they must
    # stay finite: near z = 0 the perspective divide's derivative is infinite, and zero upstream gradient
    # times infinity is NaN. A point on the optical axis stands in for them.
    on_axis = torch.tensor([0.0, 0.0, 1.0], dtype=means.dtype, device=means.device)
    means2d, covars2d = _persp_proj(torch.where(in_range[..., None], means_c, on_axis), covars_c, Ks, width, height)
    eye = torch.eye(2, dtype=means.dtype, device=means.device)
    covars2d = covars2d + settings.eps2d * eye
    cxx, cxy, cyy = covars2d[..., 0, 0], covars2d[..., 0, 1], covars2d[..., 1, 1]
    det = cxx * cyy - cxy * cxy

    # Culled entries get a harmless determinant so their (unused) conics stay finite.
    with torch.no_grad():
        valid = in_range & (det > 0) & (opacities[None, :] >= ALPHA_THRESHOLD)
    safe_det = torch.where(valid, det, torch.ones_like(det))
    conics = torch.stack([cyy / safe_det, -cxy / safe_det, cxx / safe_det], dim=-1)
    radii = _radii(means2d.detach(), cxx.detach(), cyy.detach(), opacities.detach(), valid, width, height, settings)
    return Projection(means2d=means2d, conics=conics, depths=depths, radii=radii)


@torch.no_grad()
def _radii(
    means2d: Tensor,
    cxx: Tensor,
    cyy: Tensor,
    opacities: Tensor,
    valid: Tensor,
    width: int,
    height: int,
    settings: RasterSettings,
) -> Tensor:
    """Opacity-aware bounding boxes (gsplat; arXiv 2402.00525 B.2), zero where culled. [C, N, 2] int32"""
    # Beyond sqrt(2 ln(o / threshold)) sigmas a Gaussian's alpha is below the threshold anyway.
    extend = torch.sqrt(2.0 * torch.log(opacities.clamp_min(ALPHA_THRESHOLD) / ALPHA_THRESHOLD))
    extend = extend.clamp(max=RADIUS_SIGMAS)[None, :]
    radius = torch.stack(
        [torch.ceil(extend * torch.sqrt(cxx.clamp_min(0))), torch.ceil(extend * torch.sqrt(cyy.clamp_min(0)))],
        dim=-1,
    )
    keep = valid & ~((radius[..., 0] <= settings.radius_clip) & (radius[..., 1] <= settings.radius_clip))
    keep &= means2d[..., 0] + radius[..., 0] > 0
    keep &= means2d[..., 0] - radius[..., 0] < width
    keep &= means2d[..., 1] + radius[..., 1] > 0
    keep &= means2d[..., 1] - radius[..., 1] < height
    return torch.where(keep[..., None], radius, torch.zeros_like(radius)).to(torch.int32)
