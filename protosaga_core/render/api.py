"""One render interface for every stage: RGB from SH, extra per-Gaussian channels, depth, alpha."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from gsplat.cuda._torch_impl import _spherical_harmonics
from torch import Tensor

from ..cameras import Cameras
from ..device import Backend, choose_backend
from ..gaussians import Gaussians
from .gsplat_backend import rasterize_gsplat
from .labels import LabelWeights, one_hot_columns
from .settings import RasterSettings
from .torch_backend import rasterize_torch

DepthMode = Literal["none", "D", "ED"]


@dataclass
class RenderOutput:
    """What `render` returns; absent modes are None.

    Attributes:
        colors: RGB. [C, H, W, 3]
        extras: the extra channels (e.g. features). [C, H, W, E]
        depths: accumulated ("D") or expected ("ED") camera depth. [C, H, W, 1]
        alphas: accumulated opacity. [C, H, W, 1]
        labels: per pixel, the label with the largest blended weight (`render(labels=...)`). [C, H, W] each
        info: gsplat's rasterization `meta`, the dict `gsplat.strategy.DefaultStrategy` consumes
            (`means2d` [C, N, 2] with its gradient, `radii` [C, N, 2], `width`, `height`, `n_cameras`).
    """

    colors: Tensor | None
    extras: Tensor | None
    depths: Tensor | None
    alphas: Tensor
    info: dict[str, Any]
    labels: LabelWeights | None = None


def rasterize(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    colors: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    settings: RasterSettings = RasterSettings(),
    backgrounds: Tensor | None = None,
    backend: Backend = "auto",
    labels: Tensor | None = None,
) -> tuple[Tensor, Tensor, dict[str, Any]]:
    """Activated Gaussians and arbitrary channels to images; `gsplat.rasterization`'s contract.

    Args:
        means: [N, 3]; quats: wxyz [N, 4]; scales: [N, 3]; opacities: [N] (all activated);
        colors: [N, K] or [C, N, K]; viewmats: world-to-camera [C, 4, 4]; Ks: [C, 3, 3];
        backgrounds: [C, K] or None;
        labels: categorical label per Gaussian, 0 = none; without gradients only. [N] int64

    Returns:
        render_colors [C, H, W, K], render_alphas [C, H, W, 1], meta dict; with `labels`,
        meta["labels"] is the `LabelWeights` of every pixel ([C, H, W] each).
    """
    num_gaussians, num_cameras = means.shape[0], viewmats.shape[0]
    _check_shape("means", means, (num_gaussians, 3))
    _check_shape("quats", quats, (num_gaussians, 4))
    _check_shape("scales", scales, (num_gaussians, 3))
    _check_shape("opacities", opacities, (num_gaussians,))
    _check_shape("viewmats", viewmats, (num_cameras, 4, 4))
    _check_shape("Ks", Ks, (num_cameras, 3, 3))
    if colors.shape[-2] != num_gaussians or colors.dim() not in (2, 3):
        raise ValueError(f"colors must be [N, K] or [C, N, K] with N = {num_gaussians}, got {list(colors.shape)}")
    if backgrounds is not None:
        _check_shape("backgrounds", backgrounds, (num_cameras, colors.shape[-1]))
    if labels is not None:
        _check_shape("labels", labels, (num_gaussians,))
    chosen = choose_backend(means.device, backend)
    geometry = (means, quats, scales, opacities)
    if chosen == "torch":
        return rasterize_torch(*geometry, colors, viewmats, Ks, width, height, settings, backgrounds, labels)
    if labels is None:
        return _rasterize_gsplat_channels(geometry, colors, viewmats, Ks, width, height, settings, backgrounds)
    # gsplat blends one one-hot channel per label (fast on a GPU), split off again here.
    one_hot, ids = one_hot_columns(labels)
    channels = colors.shape[-1]
    colors = torch.cat([colors, one_hot.to(colors).expand(*colors.shape[:-1], -1)], dim=-1)
    if backgrounds is not None:
        backgrounds = torch.cat([backgrounds, backgrounds.new_zeros(num_cameras, len(ids))], dim=-1)
    images, alphas, meta = _rasterize_gsplat_channels(geometry, colors, viewmats, Ks, width, height, settings, backgrounds)
    meta["labels"] = LabelWeights.from_weights(images[..., channels:], ids)
    return images[..., :channels], alphas, meta


def _rasterize_gsplat_channels(
    geometry: tuple[Tensor, Tensor, Tensor, Tensor],
    colors: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    settings: RasterSettings,
    backgrounds: Tensor | None,
) -> tuple[Tensor, Tensor, dict[str, Any]]:
    """gsplat refuses 0 channels ("Unsupported number of color channels: 0"), which an alpha-only render or
    a label render with no labelled Gaussian asks for: it then blends one zero channel, dropped again."""
    if colors.shape[-1] > 0:
        return rasterize_gsplat(*geometry, colors, viewmats, Ks, width, height, settings, backgrounds)
    colors = colors.new_zeros(*colors.shape[:-1], 1)
    backgrounds = None if backgrounds is None else backgrounds.new_zeros(backgrounds.shape[0], 1)
    images, alphas, meta = rasterize_gsplat(*geometry, colors, viewmats, Ks, width, height, settings, backgrounds)
    return images[..., :0], alphas, meta


def render(
    gaussians: Gaussians,
    cameras: Cameras,
    *,
    sh_degree: int | None = None,
    rgb: bool = True,
    extras: Tensor | None = None,
    depth: DepthMode = "none",
    backgrounds: Tensor | None = None,
    settings: RasterSettings = RasterSettings(),
    backend: Backend = "auto",
    labels: Tensor | None = None,
) -> RenderOutput:
    """Render Gaussians from a batch of cameras.

    Args:
        gaussians: raw (pre-activation) parameters; gradients flow to every field used.
        cameras: C cameras sharing one image size.
        sh_degree: SH degree to evaluate (defaults to the model's); lower during warm-up.
        rgb: render colour from SH (gsplat's `clamp_min(sh + 0.5, 0)`).
        extras: extra per-Gaussian channels, e.g. `gaussians.features`. [N, E] or [C, N, E]
        depth: "D" accumulated depth, "ED" expected depth (accumulated / alpha), or "none".
        backgrounds: RGB background blended by the final transmittance; extras and depth get 0. [C, 3] or [3]
        labels: categorical label per Gaussian, 0 = none: the output's `labels` give each pixel's label
            with the largest blended weight, as the argmax of rendered one-hot channels would, without a
            channel per label on the CPU. Without gradients only. [N] int64
    """
    degree = gaussians.sh_degree if sh_degree is None else sh_degree
    if not 0 <= degree <= gaussians.sh_degree:
        raise ValueError(f"sh_degree must lie in 0..{gaussians.sh_degree}, got {degree}")
    num_cameras, num_gaussians = cameras.num_cameras, len(gaussians)
    means = gaussians.means
    parts: list[Tensor] = []
    if rgb:
        dirs = means[None, :, :] - cameras.centers[:, None, :]  # [C, N, 3]
        # Degree 0 (viewer frames, warm-up) reads sh0 alone: skip copying all [N, 16, 3] coefficients. The
        # empty slice keeps shN in the graph, so its gradient is zeros as before, and the sum over
        # coefficients is b0 * c0 exactly either way.
        rest = gaussians.shN if degree > 0 else gaussians.shN[:, :0]
        coeffs = torch.cat([gaussians.sh0, rest], dim=1)[None].expand(num_cameras, -1, -1, -1)
        parts.append(torch.clamp_min(_spherical_harmonics(degree, dirs, coeffs) + 0.5, 0.0))
    if extras is not None:
        parts.append(extras.expand(num_cameras, num_gaussians, -1))
    if depth != "none":
        world_to_cam = cameras.viewmats[:, None, 2, :3] @ means.T  # [C, 1, N]
        parts.append((world_to_cam[:, 0, :] + cameras.viewmats[:, 2, 3, None])[..., None])
    if not parts and labels is None:
        raise ValueError("nothing to render: enable rgb, extras, depth or labels")
    colors = torch.cat(parts, dim=-1) if parts else means.new_zeros(num_cameras, num_gaussians, 0)
    bg = None
    if backgrounds is not None:
        bg = colors.new_zeros(num_cameras, colors.shape[-1])
        bg[:, :3] = backgrounds.expand(num_cameras, 3) if rgb else 0.0
    images, alphas, info = rasterize(
        means,
        gaussians.activated_quats,
        gaussians.activated_scales,
        gaussians.activated_opacities,
        colors,
        cameras.viewmats,
        cameras.Ks,
        cameras.width,
        cameras.height,
        settings,
        bg,
        backend,
        labels,
    )
    return _split(images, alphas, info, rgb, extras, depth)


def _split(images, alphas, info, rgb: bool, extras: Tensor | None, depth: DepthMode) -> RenderOutput:
    start = 0
    out_rgb = out_extras = out_depth = None
    if rgb:
        out_rgb, start = images[..., :3], 3
    if extras is not None:
        width = extras.shape[-1]
        out_extras, start = images[..., start : start + width], start + width
    if depth != "none":
        out_depth = images[..., start : start + 1]
        if depth == "ED":
            out_depth = out_depth / alphas.clamp_min(1e-10)
    return RenderOutput(out_rgb, out_extras, out_depth, alphas, info, info.pop("labels", None))


def _check_shape(name: str, tensor: Tensor, shape: tuple[int, ...]) -> None:
    if tuple(tensor.shape) != shape:
        raise ValueError(f"{name} must have shape {list(shape)}, got {list(tensor.shape)}")
