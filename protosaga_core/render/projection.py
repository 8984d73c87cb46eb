"""EWA projection of 3D Gaussians to image-plane conics, as gsplat's fused projection kernel does.

The maths is that of gsplat's pure-PyTorch reference (`gsplat.cuda._torch_impl`), rearranged for speed:
instead of batches of tiny 3x3 matrix products (and their backward), the 2D covariance J W R S (J W R S)^T
is built from one GEMM per camera and elementwise products. This module adds the culling and
opacity-aware radii of gsplat's CUDA kernel, which that reference leaves out, and which in antialiased
mode read the opacity scaled by the kernel's compensation (`add_blur`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from gsplat.cuda._torch_impl import _quat_to_rotmat
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
        opacities: the opacities compositing uses: in antialiased mode each camera's opacity x
            compensation [C, N] (gsplat's meta["opacities"]); in classic mode the inputs [1, N], the same
            for every camera. Broadcast them to [C, N].
    """

    means2d: Tensor
    conics: Tensor
    depths: Tensor
    radii: Tensor
    opacities: Tensor


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
        settings: near and far planes, eps2d, radius_clip and rasterize_mode are read.
    """
    rot_c, trans_c = viewmats[:, :3, :3], viewmats[:, :3, 3]
    means_c = torch.matmul(means, rot_c.transpose(1, 2)) + trans_c[:, None, :]  # [C, N, 3]
    depths = means_c[..., 2]
    with torch.no_grad():
        in_range = (depths > settings.near_plane) & (depths < settings.far_plane)
    # gsplat's kernel never touches culled Gaussians. Here they are computed and discarded, so they must
    # stay finite: near z = 0 the perspective divide's derivative is infinite, and zero upstream gradient
    # times infinity is NaN. A point on the optical axis stands in for them.
    on_axis = torch.tensor([0.0, 0.0, 1.0], dtype=means.dtype, device=means.device)
    means_c = torch.where(in_range[..., None], means_c, on_axis)
    means2d = torch.matmul(means_c, Ks[:, :2, :3].transpose(1, 2)) / means_c[..., 2:]
    rows_x, rows_y = _jacobian_rows(means_c, _camera_factors(quats, scales, rot_c), Ks, width, height)
    sxx, cxy, syy = (rows_x * rows_x).sum(-1), (rows_x * rows_y).sum(-1), (rows_y * rows_y).sum(-1)
    cxx, cyy = sxx + settings.eps2d, syy + settings.eps2d
    det = cxx * cyy - cxy * cxy

    with torch.no_grad():
        projected = in_range & (det > 0)
    # The kernel scales the opacity (antialiased mode) before it culls on it and sizes the box with it.
    if settings.rasterize_mode == "antialiased":
        opacities = opacities * _compensation(sxx * syy - cxy * cxy, det, projected)
    else:
        opacities = opacities[None, :]
    # Culled entries get a harmless determinant so their (unused) conics stay finite.
    with torch.no_grad():
        valid = projected & (opacities >= ALPHA_THRESHOLD)
    safe_det = torch.where(valid, det, torch.ones_like(det))
    conics = torch.stack([cyy / safe_det, -cxy / safe_det, cxx / safe_det], dim=-1)
    radii = _radii(means2d.detach(), cxx.detach(), cyy.detach(), opacities.detach(), valid, width, height, settings)
    return Projection(means2d=means2d, conics=conics, depths=depths, radii=radii, opacities=opacities)


@torch.no_grad()
def may_reach_image(
    means: Tensor,
    max_scales: Tensor,
    viewmat: Tensor,
    K: Tensor,
    width: int,
    height: int,
    settings: RasterSettings,
    window: tuple[int, int, int, int] | None = None,
) -> Tensor:
    """Which Gaussians `project` may keep for one camera: a superset of those with radii > 0, from the
    centres and largest scales alone, so that a frame of a big scene projects only what can reach it.
    With a `window`, a superset of those whose box of `_radii` overlaps it (a pick's tile).

    Each row of J W R S (`_jacobian_rows`) has a norm of at most f / z (1 + |slope|) max_scale, since the
    rows of W R S are at most max_scale long; the radius of `_radii` is then at most RADIUS_SIGMAS times
    the root of its square plus eps2d, plus two pixels (its ceiling, float rounding), and its box test is
    applied with that.

    Args:
        means: [N, 3]; max_scales: the largest activated scale of each. [N]
        viewmat: [4, 4]; K: [3, 3].
        window: pixels x0, y0, x1, y1 (x0 <= x < x1, y0 <= y < y1); None: the whole image.
    Returns:
        [N] bool
    """
    means_c = means @ viewmat[:3, :3].T + viewmat[:3, 3]
    depths = means_c[:, 2]
    in_range = (depths > settings.near_plane) & (depths < settings.far_plane)
    safe_depths = torch.where(in_range, depths, torch.ones_like(depths))
    pixels = (means_c @ K[:2, :3].T) / safe_depths[:, None]  # [N, 2], as `project`'s means2d
    keep = in_range
    x0, y0, x1, y1 = (0, 0, width, height) if window is None else window
    for axis, size, low, high in ((0, width, x0, x1), (1, height, y0, y1)):
        focal, centre = K[axis, axis], K[axis, 2]
        margin = 0.3 * 0.5 * size / focal
        slope = means_c[:, axis] / safe_depths
        clamped = slope.clamp(min=-(centre / focal + margin), max=(size - centre) / focal + margin)
        spread = focal / safe_depths * (1.0 + clamped.abs()) * max_scales
        radius = RADIUS_SIGMAS * torch.sqrt(spread * spread + settings.eps2d) + 2.0
        keep = keep & (pixels[:, axis] + radius > low) & (pixels[:, axis] - radius < high)
    return keep


def _compensation(det_orig: Tensor, det_blur: Tensor, projected: Tensor) -> Tensor:
    """gsplat's antialiasing factor sqrt(max(0, det_orig / det_blur)) of the 2D covariance before and
    after the low-pass filter, 0 where not `projected`. [C, N] each -> [C, N]"""
    ratio = det_orig / torch.where(projected, det_blur, torch.ones_like(det_blur))
    with torch.no_grad():
        positive = projected & (ratio > 0)
    # A point or a segment has det_orig = 0, where sqrt's derivative is infinite: its zero upstream
    # gradient (it is culled) times that is NaN, so only positive ratios reach the root.
    root = torch.sqrt(torch.where(positive, ratio, torch.ones_like(ratio)))
    return torch.where(positive, root, torch.zeros_like(root))


def _camera_factors(quats: Tensor, scales: Tensor, rot_c: Tensor) -> Tensor:
    """W R S per camera and Gaussian, whose product with its transpose is the camera-space covariance.
    [N, 4], [N, 3], [C, 3, 3] -> [C, 3, N, 3] (row i of W R S at [:, i])"""
    factors = _quat_to_rotmat(quats) * scales[:, None, :]  # R S, [N, 3, 3]
    num_cameras, num_gaussians = rot_c.shape[0], quats.shape[0]
    # One [3, 3] @ [3, 3 N] GEMM per camera instead of N tiny matrix products.
    columns = factors.permute(1, 0, 2).reshape(3, 3 * num_gaussians)
    return torch.matmul(rot_c, columns).view(num_cameras, 3, num_gaussians, 3)


def _jacobian_rows(means_c: Tensor, factors_c: Tensor, Ks: Tensor, width: int, height: int) -> tuple[Tensor, Tensor]:
    """The two rows of J W R S, J the perspective Jacobian with gsplat's clamp of the view direction to
    1.3x the field of view. means_c: [C, N, 3] (in front of the camera); factors_c: [C, 3, N, 3];
    Ks: [C, 3, 3] -> [C, N, 3] each"""
    fx, fy, cx, cy = (Ks[:, i, j, None] for i, j in ((0, 0), (1, 1), (0, 2), (1, 2)))  # [C, 1] each
    tx, ty, tz = means_c.unbind(-1)
    margin_x, margin_y = 0.3 * 0.5 * width / fx, 0.3 * 0.5 * height / fy
    slope_x = torch.clamp(tx / tz, min=-(cx / fx + margin_x), max=(width - cx) / fx + margin_x)
    slope_y = torch.clamp(ty / tz, min=-(cy / fy + margin_y), max=(height - cy) / fy + margin_y)
    # J = [[fx / z, 0, -fx x / z²], [0, fy / z, -fy y / z²]] with x / z, y / z the clamped slopes.
    depth_row = factors_c[:, 2]
    rows_x = (fx / tz)[..., None] * (factors_c[:, 0] - slope_x[..., None] * depth_row)
    rows_y = (fy / tz)[..., None] * (factors_c[:, 1] - slope_y[..., None] * depth_row)
    return rows_x, rows_y


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
    """Opacity-aware bounding boxes (gsplat; arXiv 2402.00525 B.2), zero where culled; opacities
    broadcast to cxx. [C, N, 2] int32"""
    # Beyond sqrt(2 ln(o / threshold)) sigmas a Gaussian's alpha is below the threshold anyway.
    extend = torch.sqrt(2.0 * torch.log(opacities.clamp_min(ALPHA_THRESHOLD) / ALPHA_THRESHOLD))
    extend = extend.clamp(max=RADIUS_SIGMAS)
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
