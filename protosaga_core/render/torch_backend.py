"""The portable rasterizer: gsplat's semantics in plain PyTorch, for CPU and MPS."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .composite import CompositeChunks, composite_forward, pixel_basis, reaches_tile
from .labels import LabelWeights, tile_label_weights, tile_local_labels
from .projection import Projection, project
from .settings import ALPHA_THRESHOLD, RasterSettings
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
    basis = pixel_basis(tile_size, means.dtype, means.device)
    flat_colors = colors.reshape(num_cameras * num_gaussians, channels)
    label_weights = None
    if gradients:
        slot_rows = _slot_rows(bins)
        tile_colors, tile_alphas = CompositeChunks.apply(
            SlotCoefficients.apply(proj.means2d, proj.conics, proj.opacities, slot_rows, bins),
            flat_colors,
            slot_rows,
            basis,
            bins.chunk_tiles,
            bins.chunk_first,
            bins.num_tiles,
            settings.alpha_max,
        )
    else:
        reaching, coeffs = reaching_intersections(proj, bins)
        tile_colors, tile_alphas, label_weights = _composite_without_grad(
            coeffs, flat_colors, labels, basis, reaching, settings.alpha_max
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
        "opacities": proj.opacities.expand(num_cameras, -1),
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
    """`composite_forward` of the intersections (coeffs: `with_padding`'s [I + 1, 6]): tile colours
    [T, P, K], alphas [T, P] and, for labels [N], the (ids, best, total) of `LabelWeights` per tile
    pixel, each [T, P]."""
    channels = flat_colors.shape[-1]
    slots = slot_isects(bins)

    def per_slot(isect_values: Tensor, empty_value: int) -> Tensor:
        """Per-intersection values [I] in the chunk layout [M, B], `empty_value` in empty slots."""
        padded = torch.cat([isect_values, isect_values.new_full((1,), empty_value)])
        return padded.index_select(0, slots.flatten()).view_as(slots)

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
        coeffs,
        slots,
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


def slot_isects(bins: TileBins) -> Tensor:
    """The intersection in each slot of the chunk layout, I (the padding row, `with_padding`) in empty
    slots. [M, B] int64"""
    num_isects = bins.isect_slots.numel()
    device = bins.isect_slots.device
    flat = torch.full((bins.num_chunks * bins.chunk_size,), num_isects, device=device)
    flat.index_copy_(0, bins.isect_slots, torch.arange(num_isects, device=device))
    return flat.view(bins.num_chunks, bins.chunk_size)


def with_padding(coeffs: Tensor) -> Tensor:
    """Exponent coefficients [I, 6] and one more row for empty slots (alpha exactly 0). [I + 1, 6]"""
    padding = coeffs.new_zeros(1, 6)
    padding[0, 0] = _PADDING_EXPONENT
    return torch.cat([coeffs, padding])


def reaching_intersections(proj: Projection, bins: TileBins) -> tuple[TileBins, Tensor]:
    """Without gradients: the bins of the intersections that reach the alpha threshold somewhere in
    their tile (`reaches_tile`), and their `exponent_coefficients` `with_padding`. ([I + 1, 6])

    A box-binned Gaussian misses much of its box's corner tiles: on the viewer bench's 1M-Gaussian
    frame, a quarter of the intersections contribute to no pixel, and dropping them changes none."""
    coeffs = exponent_coefficients(proj.means2d, proj.conics, proj.opacities, bins)
    kept = reaches_tile(coeffs, bins.tile_size).nonzero()[:, 0]
    # Gathered as the [6, I] buffer `coeffs` views: rows of contiguous values.
    return bins.select(kept), with_padding(coeffs.T.index_select(1, kept).T)


def exponent_coefficients(means2d: Tensor, conics: Tensor, opacities: Tensor, bins: TileBins) -> Tensor:
    """Per intersection, the coefficients q with `log(opacity) - sigma(pixel) = -q . basis(pixel)`, a
    view of a [6, I] buffer; without autograd (`SlotCoefficients` is the differentiable twin). [I, 6]

    sigma = a/2 dx² + b dx dy + c/2 dy² with (dx, dy) = centre - pixel, expanded in pixel coordinates
    relative to the tile centre. means2d: [C, N, 2]; conics: [C, N, 3]; opacities: [C, N] or [1, N]
    (`Projection.opacities`).
    """
    ids = bins.flatten_ids
    centre = means2d.reshape(-1, 2).index_select(0, ids)
    a, b, c = conics.reshape(-1, 3).index_select(0, ids).unbind(-1)
    u, v = (centre - _tile_centres(bins.isect_tiles, bins)).unbind(-1)
    # ids index the flattened [C * N]: modulo N for opacities shared by the cameras ([1, N]).
    log_opacity = torch.log(opacities.reshape(-1).index_select(0, ids % opacities.numel()))
    return _quadratic(u, v, a, b, c, log_opacity).T


def _tile_centres(tiles: Tensor, bins: TileBins) -> Tensor:
    """Pixel coordinates of the centres of global tiles. [...] int64 -> [..., 2]"""
    # One row per tile of an image, gathered: int64 divisions per intersection cost ~5x more.
    tile = torch.arange(bins.tiles_x * bins.tiles_y, device=tiles.device)
    column, row = tile % bins.tiles_x, torch.div(tile, bins.tiles_x, rounding_mode="floor")
    centres = torch.stack([column, row], dim=-1) * bins.tile_size + bins.tile_size / 2
    return centres.repeat(bins.num_cameras, 1).index_select(0, tiles.flatten()).view(*tiles.shape, 2)


def _quadratic(u: Tensor, v: Tensor, a: Tensor, b: Tensor, c: Tensor, log_opacity: Tensor) -> Tensor:
    """The six coefficients of `log_opacity - sigma` (negated) for centre offsets (u, v) from the tile
    centre and conic (a, b, c), stacked. [...] each -> [6, ...]

    Written into one buffer with out= and in-place ops (so not differentiable by autograd): every
    temporary the size of the intersections costs page faults on a CPU.
    """
    out = u.new_empty(6, *u.shape)
    q0, q1, q2, q3, q4, q5 = out
    torch.mul(a, u, out=q1).addcmul_(b, v).neg_()
    torch.mul(b, u, out=q2).addcmul_(c, v).neg_()
    # sigma = (a u² + 2 b u v + c v²) / 2 = -(u q1 + v q2) / 2
    torch.mul(u, q1, out=q0).addcmul_(v, q2).mul_(-0.5).sub_(log_opacity)
    torch.mul(a, 0.5, out=q3)
    torch.mul(c, 0.5, out=q4)
    q5.copy_(b)
    return out


def _slot_rows(bins: TileBins) -> Tensor:
    """The flattened [C * N] Gaussian in each chunk slot, C * N in empty slots. [M, B] int64"""
    empty = bins.tiles_per_gauss.numel()
    rows = bins.flatten_ids.new_full((bins.num_chunks * bins.chunk_size,), empty)
    return rows.index_copy_(0, bins.isect_slots, bins.flatten_ids).view(bins.num_chunks, bins.chunk_size)


class SlotCoefficients(torch.autograd.Function):
    """`exponent_coefficients` gathered straight into the chunk layout, with a hand-written backward:
    autograd through the gathers and the polynomial would cost a dozen passes over the intersections
    and a slow multi-column index_add_ per input.

    Forward inputs:
        means2d: [C, N, 2]; conics: [C, N, 3];
        opacities: per camera [C, N], or [1, N] shared by all cameras (`Projection.opacities`);
        slot_rows: `_slot_rows`. [M, B] int64
        bins: the `TileBins` the slots belong to.

    Returns:
        coeffs as `CompositeChunks` takes them, a view of a [6, M, B] buffer; empty slots get
        `_PADDING_EXPONENT` and zeros. [M, B, 6]
    """

    @staticmethod
    def forward(ctx, means2d, conics, opacities, slot_rows, bins):
        num_cameras, num_gaussians, _ = means2d.shape
        rows = num_cameras * num_gaussians
        table = means2d.new_empty(6, rows + 1)  # one column per Gaussian: rows of the gather are contiguous
        table[:2, :rows] = means2d.reshape(rows, 2).T
        table[2:5, :rows] = conics.reshape(rows, 3).T
        # Culled Gaussians may have opacity 0: their log is never gathered (they have no slots).
        table[5, :rows] = torch.log(opacities).expand(num_cameras, -1).flatten()
        # The empty column makes the polynomial the constant _PADDING_EXPONENT.
        table[:, rows] = table.new_tensor([0.0, 0.0, 0.0, 0.0, 0.0, -_PADDING_EXPONENT])
        gathered = table.index_select(1, slot_rows.flatten()).view(6, *slot_rows.shape)  # [6, M, B]
        centres = _tile_centres(bins.chunk_tiles, bins).to(table.dtype).T[..., None]  # [2, M, 1]
        u, v = gathered[:2] - centres
        a, b, c, log_o = gathered[2:]
        coeffs = _quadratic(u, v, a, b, c, log_o)  # [6, M, B]
        ctx.shape = (num_cameras, num_gaussians)
        ctx.save_for_backward(u, v, gathered[2:5], slot_rows, opacities)
        return coeffs.permute(1, 2, 0)

    @staticmethod
    def backward(ctx, grad_coeffs):
        u, v, conic, slot_rows, opacities = ctx.saved_tensors
        num_cameras, num_gaussians = ctx.shape
        a, b, c = conic
        g0, g1, g2, g3, g4, g5 = grad_coeffs.permute(2, 0, 1)
        # The derivatives of q0 = (a u² + 2 b u v + c v²) / 2 - log o, q1 = -(a u + b v),
        # q2 = -(b u + c v), q3 = a / 2, q4 = c / 2, q5 = b by (u, v, a, b, c), written in place into
        # one buffer (each fresh temporary costs page faults), with p = g0 u - g1 and q = g0 v - g2.
        p = torch.mul(g0, u).sub_(g1)
        q = torch.mul(g0, v).sub_(g2)
        grads = u.new_empty(5, *u.shape)
        grad_u, grad_v, grad_a, grad_b, grad_c = grads
        torch.mul(a, p, out=grad_u).addcmul_(b, q)
        torch.mul(b, p, out=grad_v).addcmul_(c, q)
        torch.sub(p, g1, out=grad_a).mul_(u).add_(g3).mul_(0.5)
        torch.mul(v, p, out=grad_b).addcmul_(g2, u, value=-1.0).add_(g5)
        torch.sub(q, g2, out=grad_c).mul_(v).add_(g4).mul_(0.5)
        index = slot_rows.flatten()
        # One index_add_ per component: on a CPU, ~2x faster than accumulating [M B, 6] rows at once.
        sums = grad_coeffs.new_zeros(6, num_cameras * num_gaussians + 1)
        for total, grad in zip(sums, (*grads, g0)):
            total.index_add_(0, index, grad.flatten())
        grad_means2d = sums[:2, :-1].T.reshape(num_cameras, num_gaussians, 2)
        grad_conics = sums[2:5, :-1].T.reshape(num_cameras, num_gaussians, 3)
        # dq0 / dlog(o) = -1 and dlog(o) / do = 1 / o; Gaussians with slots have o >= ALPHA_THRESHOLD,
        # the rest a zero sum.
        grad_log_opacity = -sums[5, :-1].view(num_cameras, num_gaussians)
        if len(opacities) == 1:  # shared by the cameras: one division of their summed gradients
            grad_log_opacity = grad_log_opacity.sum(0, keepdim=True)
        grad_opacities = grad_log_opacity / opacities.clamp_min(ALPHA_THRESHOLD)
        return grad_means2d, grad_conics, grad_opacities, None, None


def _untile(tile_values: Tensor, bins: TileBins, width: int, height: int) -> Tensor:
    """[C * tiles, P, K] tile pixels to images [C, H, W, K]."""
    size, channels = bins.tile_size, tile_values.shape[-1]
    images = tile_values.reshape(bins.num_cameras, bins.tiles_y, bins.tiles_x, size, size, channels)
    images = images.permute(0, 1, 3, 2, 4, 5).reshape(
        bins.num_cameras, bins.tiles_y * size, bins.tiles_x * size, channels
    )
    return images[:, :height, :width]
