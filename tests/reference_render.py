"""A dense float64 reference rasterizer with gsplat's CUDA semantics (1.5.3), for tests only.

Every pixel is evaluated against every projected Gaussian ([pixels x N] per camera), the transmittance
is a plain sequential product (`cumprod`) over the depth-sorted Gaussians, and autograd differentiates
everything. The geometry is gsplat's own pure-PyTorch reference, `_fully_fused_projection` of
`gsplat.cuda._torch_impl`; culling, radii and compositing follow gsplat's CUDA kernels:

- Sigma = R S S^T R^T from normalised quaternions and scales, world -> camera, EWA projection with the
  Jacobian's x/z, y/z clamp of `_persp_proj`, plus `eps2d` on the 2D covariance's diagonal;
- in antialiased mode each camera's opacity is scaled by gsplat's compensation
  sqrt(max(0, det(cov2d) / det(cov2d + eps2d I))), and that opacity is used below;
- culled (radii 0) when depth <= near or >= far, opacity < 1/255, or the opacity-aware bounding box
  (radius_i = ceil(extend sqrt(cov2d_ii)), extend = min(3.33, sqrt(2 ln(255 opacity)))) lies outside
  the image (the kernel also culls a blurred determinant <= 0, which eps2d > 0 rules out);
- pixel centres at (x + 0.5, y + 0.5); sigma = a/2 dx² + b dx dy + c/2 dy² with the conic (a, b, c);
  alpha = min(alpha_max, opacity exp(-sigma)), skipped when alpha < 1/255 (gsplat's `accumulate`, with
  the skip of its CUDA kernel);
- front to back by camera depth; a pixel stops before the Gaussian that would bring its transmittance
  to 1e-4 or below; colour = sum w_i c_i + T_final background, alpha = 1 - T_final.

No bounding-box or tile mask is applied to the pixels: for any opacity < 1 the region where
alpha >= 1/255 (sigma <= ln(255 opacity) <= ln 255 = 5.541) lies inside the 3.33-sigma box
(3.33² / 2 = 5.544), so the box never cuts a contribution the kernel would make.

This module deliberately imports nothing from `protosaga_core.render`.
"""

from __future__ import annotations

from typing import Any

import torch
from gsplat.cuda._torch_impl import _fully_fused_projection, _quat_scale_to_covar_preci
from torch import Tensor

ALPHA_THRESHOLD = 1.0 / 255.0
TRANSMITTANCE_MIN = 1e-4
RADIUS_SIGMAS = 3.33


def reference_rasterize(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    colors: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    alpha_max: float = 0.999,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    eps2d: float = 0.3,
    rasterize_mode: str = "classic",
    backgrounds: Tensor | None = None,
    ambiguity_margin: float = 1e-4,
) -> tuple[Tensor, Tensor, dict[str, Any]]:
    """Dense float64 rasterization; same arguments and shapes as `gsplat.rasterization(packed=False)`.

    Args:
        means: [N, 3]; quats: wxyz, normalised here [N, 4]; scales: activated [N, 3];
        opacities: activated [N]; colors: [N, K] or [C, N, K]; viewmats: [C, 4, 4]; Ks: [C, 3, 3];
        rasterize_mode: "classic" or "antialiased", as gsplat's;
        backgrounds: [C, K] or None.
        ambiguity_margin: pixels where a discontinuous decision (alpha vs 1/255, alpha vs alpha_max,
            transmittance vs 1e-4) is within this relative margin are flagged in `meta["ambiguous"]`;
            there a float32 renderer may legitimately decide the other way.

    Returns:
        render_colors [C, H, W, K] float64, render_alphas [C, H, W, 1] float64, and meta with
        `means2d` [C, N, 2], `conics` [C, N, 3], `depths` [C, N], `radii` [C, N, 2] int32,
        `opacities` [C, N] (scaled by the compensation in antialiased mode),
        `ambiguous` [C, H, W] bool, `stopped` [C, H, W] bool (pixels that hit the transmittance stop
        before their last Gaussian), `max_depth_complexity` (most contributions in one pixel).
    """
    dt = torch.float64
    means, quats, scales, opacities = means.to(dt), quats.to(dt), scales.to(dt), opacities.to(dt)
    colors, viewmats, Ks = colors.to(dt), viewmats.to(dt), Ks.to(dt)
    num_cameras = viewmats.shape[0]
    if colors.dim() == 2:
        colors = colors.expand(num_cameras, -1, -1)
    channels = colors.shape[-1]
    device = means.device

    covars, _ = _quat_scale_to_covar_preci(quats, scales, compute_covar=True, compute_preci=False)
    # gsplat's radii here are its reference's fixed 3.33-sigma boxes, not the kernel's: made again below.
    _, means2d, depths, conics, compensations = _fully_fused_projection(
        means, covars, viewmats, Ks, width, height, eps2d, near_plane, far_plane,
        calc_compensations=rasterize_mode == "antialiased",
    )  # fmt: skip
    opacities = opacities.expand(num_cameras, -1) if compensations is None else opacities * compensations

    with torch.no_grad():
        # The blurred 2D covariance's diagonal, from its inverse (the conic).
        a, b, c = conics.unbind(-1)
        cov_diag = torch.stack([c, a], dim=-1) / (a * c - b * b)[..., None]
        # The blurred determinant is at least eps2d² > 0 (and gsplat's reference clamps it at 1e-10).
        in_range = (depths > near_plane) & (depths < far_plane)
        radii = kernel_radii(means2d, cov_diag, opacities, in_range, width, height)
        visible = (radii > 0).all(-1)

    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=dt, device=device) + 0.5,
        torch.arange(width, dtype=dt, device=device) + 0.5,
        indexing="ij",
    )
    px, py = xs.reshape(-1, 1), ys.reshape(-1, 1)  # [P, 1]
    num_pixels = width * height

    images, alphas, ambiguous, stopped = [], [], [], []
    max_complexity = 0
    for cam in range(num_cameras):
        ids = torch.nonzero(visible[cam]).flatten()
        # Stable sort by float32 depth, as gsplat's 64-bit keys hold float32 depth bits.
        ids = ids[torch.argsort(depths[cam, ids].detach().float(), stable=True)]
        if ids.numel() == 0:
            images.append(torch.zeros(num_pixels, channels, dtype=dt, device=device) + 0.0 * colors.sum())
            alphas.append(torch.zeros(num_pixels, dtype=dt, device=device))
            ambiguous.append(torch.zeros(num_pixels, dtype=torch.bool, device=device))
            stopped.append(torch.zeros(num_pixels, dtype=torch.bool, device=device))
            continue
        dx = px - means2d[cam, ids, 0][None, :]  # [P, M]
        dy = py - means2d[cam, ids, 1][None, :]
        a, b, c = conics[cam, ids].unbind(-1)
        sigma = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
        raw = opacities[cam, ids][None, :] * torch.exp(-sigma)
        clamped = torch.clamp(raw, max=alpha_max)
        alpha = torch.where(clamped >= ALPHA_THRESHOLD, clamped, torch.zeros_like(clamped))
        one_minus = 1.0 - alpha
        trans_incl = torch.cumprod(one_minus, dim=1)  # [P, M]
        with torch.no_grad():
            contributes = (trans_incl > TRANSMITTANCE_MIN) & (alpha > 0)
        trans_excl = torch.cat([torch.ones_like(trans_incl[:, :1]), trans_incl[:, :-1]], dim=1)
        weights = torch.where(contributes, alpha * trans_excl, torch.zeros_like(alpha))
        images.append(weights @ colors[cam, ids])
        t_final = torch.where(contributes, one_minus, torch.ones_like(one_minus)).prod(dim=1)
        alphas.append(1.0 - t_final)
        with torch.no_grad():
            max_complexity = max(max_complexity, int(contributes.sum(dim=1).max()))
            near_threshold = (clamped * 255.0).log().abs() < ambiguity_margin
            near_clamp = (raw / alpha_max).log().abs() < ambiguity_margin
            near_stop = ((trans_incl / TRANSMITTANCE_MIN).log().abs() < ambiguity_margin) & (alpha > 0)
            ambiguous.append((near_threshold | near_clamp | near_stop).any(dim=1))
            stopped.append(((alpha > 0) & ~contributes).any(dim=1))

    render_colors = torch.stack(images).reshape(num_cameras, height, width, channels)
    render_alphas = torch.stack(alphas).reshape(num_cameras, height, width, 1)
    if backgrounds is not None:
        render_colors = render_colors + (1.0 - render_alphas) * backgrounds.to(dt)[:, None, None, :]
    meta = {
        "means2d": means2d,
        "conics": conics,
        "depths": depths,
        "radii": radii,
        "opacities": opacities,
        "ambiguous": torch.stack(ambiguous).reshape(num_cameras, height, width),
        "stopped": torch.stack(stopped).reshape(num_cameras, height, width),
        "max_depth_complexity": max_complexity,
    }
    return render_colors, render_alphas, meta


def kernel_radii(
    means2d: Tensor, cov_diag: Tensor, opacities: Tensor, projected: Tensor, width: int, height: int
) -> Tensor:
    """The bounding boxes of gsplat's CUDA projection kernel (ProjectionEWA3DGSFused.cu), 0 where it culls.

    radius_i = ceil(extend sqrt(cov2d_ii)) with extend = min(3.33, sqrt(2 ln(255 opacity))); culled where
    not `projected`, where opacity < 1/255, where both radii are 0, or where the box misses the image.

    Args:
        means2d: [C, N, 2]; cov_diag: the blurred 2D covariance's diagonal [C, N, 2];
        opacities: as compositing uses them (compensated in antialiased mode) [C, N];
        projected: within the depth range with a positive determinant. [C, N] bool

    Returns:
        [C, N, 2] int32
    """
    extend = torch.sqrt(2.0 * torch.log(opacities.clamp_min(ALPHA_THRESHOLD) * 255.0)).clamp(max=RADIUS_SIGMAS)
    radius = torch.ceil(extend[..., None] * torch.sqrt(cov_diag.clamp_min(0)))
    mx, my, rx, ry = means2d[..., 0], means2d[..., 1], radius[..., 0], radius[..., 1]
    inside = (mx + rx > 0) & (mx - rx < width) & (my + ry > 0) & (my - ry < height)
    kept = projected & (opacities >= ALPHA_THRESHOLD) & inside & ~((rx <= 0) & (ry <= 0))
    return torch.where(kept[..., None], radius, torch.zeros_like(radius)).to(torch.int32)


def reference_sh_colors(sh_degree: int, means: Tensor, sh: Tensor, viewmats: Tensor) -> Tensor:
    """gsplat's SH colour `clamp_min(SH(dirs) + 0.5, 0)` with dirs = means - camera centre. [C, N, 3]

    Args:
        means: [N, 3]; sh: all coefficients [N, B, 3]; viewmats: [C, 4, 4].
    """
    from gsplat.cuda._torch_impl import _spherical_harmonics

    rot, trans = viewmats[:, :3, :3], viewmats[:, :3, 3]
    centres = -(rot.transpose(1, 2) @ trans[:, :, None])[:, :, 0]  # [C, 3]
    dirs = means[None, :, :] - centres[:, None, :]
    coeffs = sh[None].expand(viewmats.shape[0], -1, -1, -1)
    return torch.clamp_min(_spherical_harmonics(sh_degree, dirs, coeffs) + 0.5, 0.0)


def relative_error(value: Tensor, reference: Tensor, mask: Tensor | None = None) -> float:
    """max |value - reference| / max(1, max |reference|), over `mask` (broadcast) when given."""
    diff = (value.detach().double() - reference.detach().double()).abs()
    ref = reference.detach().double().abs()
    if mask is not None:
        mask = mask.expand_as(diff)
        diff, ref = diff[mask], ref[mask]
    if diff.numel() == 0:
        return 0.0
    return float(diff.max() / max(1.0, float(ref.max())))


def gradient_error(value: Tensor | None, reference: Tensor | None) -> float:
    """max |g - g_ref| / max |g_ref| (absolute when the reference gradient is all zero)."""
    if value is None and reference is None:
        return 0.0
    if value is None:
        value = torch.zeros_like(reference)
    if reference is None:
        reference = torch.zeros_like(value)
    value, reference = value.detach().double(), reference.detach().double()
    diff = float((value - reference).abs().max()) if value.numel() else 0.0
    scale = float(reference.abs().max()) if reference.numel() else 0.0
    return diff / scale if scale > 0 else diff


__all__ = [
    "ALPHA_THRESHOLD",
    "TRANSMITTANCE_MIN",
    "gradient_error",
    "kernel_radii",
    "reference_rasterize",
    "reference_sh_colors",
    "relative_error",
]
