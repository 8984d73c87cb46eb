"""Image quality: PSNR, and SSIM exactly as the 3DGS code computes it (its D-SSIM is also a training loss)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_C1 = 0.01**2
SSIM_C2 = 0.03**2


def _as_batch(pred: Tensor, gt: Tensor, name: str) -> tuple[Tensor, Tensor]:
    """Check shapes and return both as [B, H, W, C] (a lone [H, W, C] image gets B = 1)."""
    if pred.shape != gt.shape:
        raise ValueError(
            f"{name}: pred and gt must have the same shape, got {list(pred.shape)} and {list(gt.shape)}"
        )
    if pred.ndim == 3:
        return pred[None], gt[None]
    if pred.ndim == 4:
        return pred, gt
    raise ValueError(f"{name}: images must be [H, W, C] or [B, H, W, C] (channels last), got {list(pred.shape)}")


def psnr(pred: Tensor, gt: Tensor) -> float:
    """Peak signal-to-noise ratio in dB for images with values in [0, 1] (peak 1).

    Args:
        pred, gt: [H, W, C] or [B, H, W, C], channels last, on any (the same) device.

    Returns:
        10 log10(1 / MSE) with the MSE over all pixels and channels of an image; for a batch, the mean
        of the per-image PSNRs (as the 3DGS evaluation averages per-view PSNR). +inf for identical images.
        The caller clamps renders to [0, 1] first if it wants the 3DGS convention.
    """
    pred_b, gt_b = _as_batch(pred, gt, "psnr")
    with torch.no_grad():
        mse = (pred_b.double() - gt_b.double()).square().flatten(1).mean(1)  # [B]
        return float((-10.0 * torch.log10(mse)).mean().item())


def _gaussian_window(channels: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """The 3DGS SSIM window: 11x11 separable Gaussian (sigma 1.5), normalised, one per channel. [C, 1, 11, 11]"""
    coords = torch.arange(SSIM_WINDOW, dtype=torch.float64) - SSIM_WINDOW // 2
    g = torch.exp(-(coords**2) / (2 * SSIM_SIGMA**2))
    g = g / g.sum()
    window = (g[:, None] * g[None, :]).to(dtype=dtype, device=device)
    return window.expand(channels, 1, SSIM_WINDOW, SSIM_WINDOW).contiguous()


def ssim_map(pred: Tensor, gt: Tensor) -> Tensor:
    """Per-pixel, per-channel SSIM exactly as the 3DGS code's ``ssim`` computes it (differentiable).

    Gaussian window 11x11, sigma 1.5, C1 = 0.01^2, C2 = 0.03^2 (data range 1), local statistics by
    ``conv2d`` grouped over channels with zero padding of 5 pixels (so values within 5 pixels of the
    border see zeros outside the image, as in 3DGS), population (not sample) variances.

    Args:
        pred, gt: [H, W, C] or [B, H, W, C], channels last, floating point, same shape and device.
            B is any batch (for instance C cameras of a render: [cameras, H, W, 3]).

    Returns:
        The SSIM map with the input's shape; gradients flow to both inputs.
    """
    pred_b, gt_b = _as_batch(pred, gt, "ssim")
    if not pred_b.is_floating_point():
        raise ValueError(f"ssim: images must be floating point in [0, 1], got {pred_b.dtype}")
    channels = pred_b.shape[-1]
    # conv2d wants [B, C, H, W]; all channels go through one grouped convolution.
    x = pred_b.permute(0, 3, 1, 2)
    y = gt_b.permute(0, 3, 1, 2)
    window = _gaussian_window(channels, x.dtype, x.device)

    def blur(t: Tensor) -> Tensor:
        return F.conv2d(t, window, padding=SSIM_WINDOW // 2, groups=channels)

    mu_x, mu_y = blur(x), blur(y)
    mu_xx, mu_yy, mu_xy = mu_x * mu_x, mu_y * mu_y, mu_x * mu_y
    sigma_xx = blur(x * x) - mu_xx
    sigma_yy = blur(y * y) - mu_yy
    sigma_xy = blur(x * y) - mu_xy
    num = (2 * mu_xy + SSIM_C1) * (2 * sigma_xy + SSIM_C2)
    den = (mu_xx + mu_yy + SSIM_C1) * (sigma_xx + sigma_yy + SSIM_C2)
    out = (num / den).permute(0, 2, 3, 1)  # back to channels last
    return out[0] if pred.ndim == 3 else out


def ssim_tensor(pred: Tensor, gt: Tensor) -> Tensor:
    """Mean SSIM over batch, pixels and channels (3DGS ``size_average=True``), a differentiable scalar.

    Shapes as ``ssim_map``: [H, W, C] or [B, H, W, C].
    """
    return ssim_map(pred, gt).mean()


def ssim_loss(pred: Tensor, gt: Tensor) -> Tensor:
    """``1 - ssim_tensor(pred, gt)``: the D-SSIM term of the 3DGS photometric loss. Scalar, differentiable."""
    return 1.0 - ssim_tensor(pred, gt)


def ssim(pred: Tensor, gt: Tensor) -> float:
    """Mean SSIM as a Python float, for reports (no gradients). Shapes: [H, W, C] or [B, H, W, C]."""
    with torch.no_grad():
        return float(ssim_tensor(pred, gt).item())
