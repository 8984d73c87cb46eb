"""A dense float64 reference rasterizer with gsplat's CUDA semantics (1.5.3), for tests only.

Every pixel is evaluated against every projected Gaussian ([pixels x N] per camera), the transmittance
is a plain sequential product (`cumprod`) over the depth-sorted Gaussians, and autograd differentiates
everything. The geometry is gsplat's own pure-PyTorch reference (`gsplat.cuda._torch_impl`); culling,
radii and compositing follow gsplat's CUDA kernels:

- Sigma = R S S^T R^T from normalised quaternions and scales, world -> camera, EWA projection with the
  Jacobian's x/z, y/z clamp of `_persp_proj`, plus `eps2d` on the 2D covariance's diagonal;
- culled (radii 0) when det <= 0, depth <= near or >= far, opacity < 1/255, or the opacity-aware
  bounding box (radius_i = ceil(extend sqrt(cov2d_ii)), extend = min(3.33, sqrt(2 ln(255 opacity))))
  lies outside the image;
- pixel centres at (x + 0.5, y + 0.5); sigma = a/2 dx² + b dx dy + c/2 dy² with the conic (a, b, c);
  alpha = min(alpha_max, opacity exp(-sigma)), skipped when alpha < 1/255;
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
from gsplat.cuda._torch_impl import _persp_proj, _quat_scale_to_covar_preci, _world_to_cam
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
    backgrounds: Tensor | None = None,
    ambiguity_margin: float = 1e-4,
) -> tuple[Tensor, Tensor, dict[str, Any]]:
    """Dense float64 rasterization; same arguments and shapes as `gsplat.rasterization(packed=False)`.

    Args:
        means: [N, 3]; quats: wxyz, normalised here [N, 4]; scales: activated [N, 3];
        opacities: activated [N]; colors: [N, K] or [C, N, K]; viewmats: [C, 4, 4]; Ks: [C, 3, 3];
        backgrounds: [C, K] or None.
        ambiguity_margin: pixels where a discontinuous decision (alpha vs 1/255, alpha vs alpha_max,
            transmittance vs 1e-4) is within this relative margin are flagged in `meta["ambiguous"]`;
            there a float32 renderer may legitimately decide the other way.

    Returns:
        render_colors [C, H, W, K] float64, render_alphas [C, H, W, 1] float64, and meta with
        `means2d` [C, N, 2], `conics` [C, N, 3], `depths` [C, N], `radii` [C, N, 2] int32,
        `ambiguous` [C, H, W] bool, `stopped` [C, H, W] bool (pixels that hit the transmittance stop
        before their last Gaussian), `max_depth_complexity` (most contributions in one pixel).
    """
    dt = torch.float64
    means, quats, scales, opacities = means.to(dt), quats.to(dt), scales.to(dt), opacities.to(dt)
    colors, viewmats, Ks = colors.to(dt), viewmats.to(dt), Ks.to(dt)
    num_cameras, num_gaussians = viewmats.shape[0], means.shape[0]
    if colors.dim() == 2:
        colors = colors.expand(num_cameras, -1, -1)
    channels = colors.shape[-1]
    device = means.device

    covars, _ = _quat_scale_to_covar_preci(quats, scales, compute_covar=True, compute_preci=False)
    means_c, covars_c = _world_to_cam(means, covars, viewmats)
    means2d, cov2d = _persp_proj(means_c, covars_c, Ks, width, height)  # [C, N, 2], [C, N, 2, 2]
    cov2d = cov2d + eps2d * torch.eye(2, dtype=dt, device=device)
    cxx, cxy, cyy = cov2d[..., 0, 0], cov2d[..., 0, 1], cov2d[..., 1, 1]
    det = cxx * cyy - cxy * cxy
    depths = means_c[..., 2]

    with torch.no_grad():
        valid = (det > 0) & (depths > near_plane) & (depths < far_plane)
        valid &= (opacities >= ALPHA_THRESHOLD)[None, :]
        extend = torch.sqrt(2.0 * torch.log(opacities.clamp_min(ALPHA_THRESHOLD) * 255.0))
        extend = extend.clamp(max=RADIUS_SIGMAS)[None, :]
        rx = torch.ceil(extend * torch.sqrt(cxx.clamp_min(0)))
        ry = torch.ceil(extend * torch.sqrt(cyy.clamp_min(0)))
        mx, my = means2d[..., 0], means2d[..., 1]
        inside = (mx + rx > 0) & (mx - rx < width) & (my + ry > 0) & (my - ry < height)
        visible = valid & inside & ~((rx <= 0) & (ry <= 0))
        radii = torch.where(visible[..., None], torch.stack([rx, ry], -1), torch.zeros_like(cov2d[..., 0]))
        radii = radii.to(torch.int32)

    safe_det = torch.where(valid, det, torch.ones_like(det))
    conics = torch.stack([cyy / safe_det, -cxy / safe_det, cxx / safe_det], dim=-1)  # [C, N, 3]

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
        raw = opacities[ids][None, :] * torch.exp(-sigma)
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
        "ambiguous": torch.stack(ambiguous).reshape(num_cameras, height, width),
        "stopped": torch.stack(stopped).reshape(num_cameras, height, width),
        "max_depth_complexity": max_complexity,
    }
    return render_colors, render_alphas, meta


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
    "reference_rasterize",
    "reference_sh_colors",
    "relative_error",
]
