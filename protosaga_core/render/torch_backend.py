"""The portable rasterizer: gsplat's semantics in plain PyTorch, for CPU and MPS."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .composite import CompositeChunks, composite_forward, pixel_basis
from .labels import LabelWeights, tile_label_weights, tile_local_labels
from .projection import project
from .settings import RasterSettings
from .tiles import TileBins, bin_gaussians

_PADDING_EXPONENT = 1e4
"""Exponent coefficient of padding slots: exp(-1e4) is exactly 0 in float32 and float64."""


def rasterize_torch(
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
    labels: Tensor | None = None,
) -> tuple[Tensor, Tensor, dict[str, Any]]:
    """Rasterize N Gaussians into C images, shaped like `gsplat.rasterization` with packed=False.

    Without gradients (no input requires one, or under torch.no_grad()) it composites forward-only
    (`composite_forward`) in larger tiles: the same values up to float rounding, several times faster
    and with a fraction of the memory.

    Args:
        means: [N, 3]; quats: wxyz [N, 4]; scales: activated [N, 3]; opacities: activated [N];
        colors: per-Gaussian channels [N, K] or per-camera [C, N, K]; viewmats: [C, 4, 4];
        Ks: [C, 3, 3]; backgrounds: [C, K] or None;
        labels: optional categorical label per Gaussian, 0 = none (forward-only). [N] int64

    Returns:
        render_colors [C, H, W, K], render_alphas [C, H, W, 1], and gsplat's `meta` dict
        (`means2d` [C, N, 2] carries the screen-space gradient densification reads), plus, when
        `labels` are given, meta["labels"]: the `LabelWeights` of each pixel, [C, H, W] each.
    """
    num_cameras, num_gaussians = viewmats.shape[0], means.shape[0]
    if colors.dim() == 2:
        colors = colors.expand(num_cameras, -1, -1)
    channels = colors.shape[-1]
    inputs = (means, quats, scales, opacities, colors, viewmats, Ks)
    gradients = torch.is_grad_enabled() and any(t.requires_grad for t in inputs)
    if gradients and labels is not None:
        raise ValueError("labels are rendered without gradients: call under torch.no_grad()")
    proj = project(means, quats, scales, opacities, viewmats, Ks, width, height, settings)
    tile_size = settings.tile_size_for("torch", gradients)
    bins = bin_gaussians(proj.means2d, proj.radii, proj.depths, width, height, tile_size, settings.chunk_size)
    coeffs = _exponent_coefficients(proj.means2d, proj.conics, opacities, bins)
    basis = pixel_basis(tile_size, means.dtype, means.device)
    flat_colors = colors.reshape(num_cameras * num_gaussians, channels)
    label_weights = None
    if gradients:
        isect_colors = flat_colors.index_select(0, bins.flatten_ids)
        padding = coeffs.new_zeros(1, 6)
        padding[0, 0] = _PADDING_EXPONENT
        tile_colors, tile_alphas = CompositeChunks.apply(
            _to_chunks(coeffs, padding, bins),
            _to_chunks(isect_colors, isect_colors.new_zeros(1, channels), bins),
            basis,
            bins.chunk_tiles,
            bins.chunk_first,
            bins.num_tiles,
            settings.alpha_max,
        )
    else:
        tile_colors, tile_alphas, label_weights = _composite_without_grad(
            coeffs, flat_colors, labels, basis, bins, settings.alpha_max
        )
    render_colors = _untile(tile_colors, bins, width, height)
    render_alphas = _untile(tile_alphas[..., None], bins, width, height)
    if backgrounds is not None:
        render_colors = render_colors + (1.0 - render_alphas) * backgrounds[:, None, None, :]
    meta = {
        "camera_ids": None,
        "gaussian_ids": None,
        "radii": proj.radii,
        "means2d": proj.means2d,
        "depths": proj.depths,
        "conics": proj.conics,
        "opacities": opacities.expand(num_cameras, -1),
        "tile_width": bins.tiles_x,
        "tile_height": bins.tiles_y,
        "tiles_per_gauss": bins.tiles_per_gauss,
        "isect_ids": bins.isect_ids,
        "flatten_ids": bins.flatten_ids,
        "isect_offsets": bins.isect_offsets,
        "width": width,
        "height": height,
        "tile_size": tile_size,
        "n_cameras": num_cameras,
    }
    if label_weights is not None:
        meta["labels"] = LabelWeights(*(_untile(t[..., None], bins, width, height)[..., 0] for t in label_weights))
    return render_colors, render_alphas, meta


def _composite_without_grad(
    coeffs: Tensor, flat_colors: Tensor, labels: Tensor | None, basis: Tensor, bins: TileBins, alpha_max: float
) -> tuple[Tensor, Tensor, tuple[Tensor, Tensor, Tensor] | None]:
    """`composite_forward` of the intersections: tile colours [T, P, K], alphas [T, P] and, for labels
    [N], the (ids, best, total) of `LabelWeights` per tile pixel, each [T, P]."""
    num_isects, channels = coeffs.shape[0], flat_colors.shape[-1]
    padding = coeffs.new_zeros(1, 6)
    padding[0, 0] = _PADDING_EXPONENT
    empty = torch.full((bins.num_chunks * bins.chunk_size,), num_isects, device=coeffs.device)
    slot_isects = empty.index_copy_(0, bins.isect_slots, torch.arange(num_isects, device=coeffs.device))

    def per_slot(isect_values: Tensor, empty_value: int) -> Tensor:
        """Per-intersection values [I] in the chunk layout [M, B], `empty_value` in empty slots."""
        padded = torch.cat([isect_values, isect_values.new_full((1,), empty_value)])
        return padded.index_select(0, slot_isects).view(bins.num_chunks, bins.chunk_size)

    slot_bins, tile_labels, num_bins = None, None, 0
    if labels is not None:
        # Only the labels on screen: `tile_local_labels` takes memory per tile and distinct label.
        on_screen = (bins.tiles_per_gauss > 0).any(0)
        ids, compact = torch.unique(torch.where(on_screen, labels, 0), return_inverse=True)
        isect_labels = compact.index_select(0, bins.flatten_ids % labels.shape[0])
        tile_labels = tile_local_labels(isect_labels, ids, bins.isect_tiles, bins.num_tiles)
        num_bins = bins.num_tiles * tile_labels.width  # one per (tile, tile-local label)
        isect_bins = bins.isect_tiles * tile_labels.width + tile_labels.columns
        slot_bins = per_slot(torch.where(tile_labels.columns >= 0, isect_bins, num_bins), num_bins)
    out, binned = composite_forward(
        torch.cat([coeffs, padding]),
        slot_isects.view(bins.num_chunks, bins.chunk_size),
        torch.cat([flat_colors, flat_colors.new_zeros(1, channels)]),  # empty slots: alpha 0 anyway
        per_slot(bins.flatten_ids, len(flat_colors)),
        basis,
        bins.chunk_tiles,
        bins.chunk_first,
        bins.num_tiles,
        alpha_max,
        slot_bins,
        num_bins,
    )
    label_weights = None
    if tile_labels is not None:
        binned = binned.view(bins.num_tiles, tile_labels.width, basis.shape[0])
        weights = tile_label_weights(binned, tile_labels.ids)
        label_weights = (weights.ids, weights.best, weights.total)
    return out[..., :channels], out[..., channels], label_weights


def _exponent_coefficients(means2d: Tensor, conics: Tensor, opacities: Tensor, bins: TileBins) -> Tensor:
    """Per intersection, the coefficients q with `log(opacity) - sigma(pixel) = -q . basis(pixel)`. [I, 6]

    sigma = a/2 dx² + b dx dy + c/2 dy² with (dx, dy) = centre - pixel, expanded in pixel coordinates
    relative to the tile centre.
    """
    num_gaussians = opacities.shape[0]
    ids = bins.flatten_ids
    centre = means2d.reshape(-1, 2).index_select(0, ids)
    a, b, c = conics.reshape(-1, 3).index_select(0, ids).unbind(-1)
    tile = bins.isect_tiles % (bins.tiles_x * bins.tiles_y)
    half = bins.tile_size / 2
    u = centre[:, 0] - ((tile % bins.tiles_x) * bins.tile_size + half)
    v = centre[:, 1] - (torch.div(tile, bins.tiles_x, rounding_mode="floor") * bins.tile_size + half)
    # Gather before the log: culled Gaussians may have opacity exactly 0, and log(0) would put 0/0 in
    # their gradient.
    log_opacity = torch.log(opacities.index_select(0, ids % num_gaussians))
    return torch.stack(
        [
            0.5 * a * u * u + b * u * v + 0.5 * c * v * v - log_opacity,
            -(a * u + b * v),
            -(b * u + c * v),
            0.5 * a,
            0.5 * c,
            b,
        ],
        dim=-1,
    )


def _to_chunks(values: Tensor, padding: Tensor, bins: TileBins) -> Tensor:
    """Per-intersection rows [I, K] into the chunk layout [M, B, K], empty slots filled with `padding` [1, K].

    `index_copy` rather than a gather, because its backward is a plain gather too.
    """
    slots = padding.expand(bins.num_chunks * bins.chunk_size, -1).contiguous()
    return slots.index_copy(0, bins.isect_slots, values).reshape(bins.num_chunks, bins.chunk_size, values.shape[-1])


def _untile(tile_values: Tensor, bins: TileBins, width: int, height: int) -> Tensor:
    """[C * tiles, P, K] tile pixels to images [C, H, W, K]."""
    size, channels = bins.tile_size, tile_values.shape[-1]
    images = tile_values.reshape(bins.num_cameras, bins.tiles_y, bins.tiles_x, size, size, channels)
    images = images.permute(0, 1, 3, 2, 4, 5).reshape(
        bins.num_cameras, bins.tiles_y * size, bins.tiles_x * size, channels
    )
    return images[:, :height, :width]
