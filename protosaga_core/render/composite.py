"""Front-to-back alpha compositing of depth-sorted chunks, with a hand-written backward.

Within a tile every Gaussian's exponent is a quadratic polynomial in the pixel's tile-local coordinates,
so a chunk's exponents for all pixels are one matrix product `Q @ basis.T`, and the gradients of the
polynomial coefficients are one matrix product back (`G @ basis`). The mapping from means2d, conics
and opacities to the coefficients is ordinary autograd code (in `torch_backend`), done once per
intersection instead of once per pixel.

Compositing follows gsplat's CUDA kernel: alpha = min(alpha_max, opacity * exp(-sigma)), contributions
with alpha < 1/255 are skipped, and a pixel stops before the Gaussian that would bring its
transmittance to 1e-4 or below.

Without gradients (viewer frames, label maps) `composite_forward` does the same arithmetic block by
block (whole tiles), gathering each block's coefficients and channels itself: a 480p frame has ~1.2M
intersections, and materialising their chunk layout, channels and the [M, B, P] buffers the backward
needs (hundreds of MB) cost more than compositing them.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .settings import ALPHA_THRESHOLD, TRANSMITTANCE_MIN


def pixel_basis(tile_size: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Monomials [1, x, y, x², y², xy] of pixel centres relative to the tile centre. [P, 6]"""
    offsets = torch.arange(tile_size, dtype=dtype, device=device) + 0.5 - tile_size / 2
    y, x = torch.meshgrid(offsets, offsets, indexing="ij")
    x, y = x.flatten(), y.flatten()
    return torch.stack([torch.ones_like(x), x, y, x * x, y * y, x * y], dim=-1)


EXPONENT_FLOOR = math.log(ALPHA_THRESHOLD) - 10.0
"""Exponents are clamped to this before exp: any alpha below ALPHA_THRESHOLD is dropped anyway, and
exp of very negative exponents gives denormals, which CPUs compute ~10x slower."""


def slot_alphas(coeffs: Tensor, basis: Tensor) -> Tensor:
    """Unclamped alphas exp(-coeffs . basis) of every slot at every pixel, exact wherever they reach
    ALPHA_THRESHOLD. [..., B, 6], [P, 6] -> [..., B, P]"""
    # Negating the small basis instead of the product is exact (IEEE rounding is sign-symmetric) and
    # saves a pass over [..., B, P].
    return torch.matmul(coeffs, basis.T.neg()).clamp_(min=EXPONENT_FLOOR).exp_()


def segment_exclusive_cumsum(values: Tensor, first: Tensor) -> Tensor:
    """Exclusive prefix sums along dim 0 restarting at each segment, in float64 for accuracy.

    Args:
        values: [M, ...]; first: index of the first row of each row's segment. [M]
    """
    total = torch.cumsum(values.double(), dim=0)
    exclusive = total - values.double()
    return exclusive - exclusive[first]


BLOCK_ELEMENTS = 1 << 20
"""Slot-pixel pairs (`chunks x B x P`) the forward-only path composites at once: ~4 MB per float32
buffer, which bounds its memory; the viewer bench's frame time is flat from 2^16 to 2^20."""


def composite_forward(
    coeffs: Tensor,
    slot_isects: Tensor,
    channels: Tensor,
    slot_rows: Tensor,
    basis: Tensor,
    chunk_tiles: Tensor,
    chunk_first: Tensor,
    num_tiles: int,
    alpha_max: float,
    slot_bins: Tensor | None = None,
    num_bins: int = 0,
) -> tuple[Tensor, Tensor | None]:
    """`CompositeChunks`' forward without autograd, block by block, each block gathering its own slots.

    Args:
        coeffs: the exponent polynomial of every intersection, then one of empty slots. [I + 1, 6]
        slot_isects: the intersection in each slot (I: empty). [M, B] int64
        channels: the channels of every Gaussian, then a row for empty slots (any values). [G + 1, K]
        slot_rows: the `channels` row of each slot. [M, B] int64
        basis, chunk_tiles, chunk_first, num_tiles, alpha_max: as in `CompositeChunks`.
        slot_bins: optionally, a bin per slot whose blending weights are summed per pixel, `num_bins`:
            none. [M, B] int64
        num_bins: the number of bins.

    Returns:
        Per tile pixel the K channels and the alpha, blended [T, P, K + 1]; with `slot_bins`, the
        weight of each bin at each pixel of a tile [num_bins, P], else None.
    """
    chunk_size = slot_isects.shape[1]
    rows, pixels = channels.shape[0], basis.shape[0]
    table = torch.cat([channels, channels.new_ones(rows, 1)], dim=1)  # alpha: the blend of ones
    out = table.new_zeros(num_tiles, table.shape[1], pixels)  # [T, K + 1, P]: see the bmm below
    # Summing weights per bin adds weight rows: no blended channel per bin (per label, for label maps).
    binned = table.new_zeros(num_bins + 1, pixels) if slot_bins is not None else None
    for start, end in tile_blocks(chunk_first, max(BLOCK_ELEMENTS // (chunk_size * pixels), 1)):
        block = coeffs.index_select(0, slot_isects[start:end].flatten()).view(end - start, chunk_size, 6)
        weights = _blend_weights(block, basis, chunk_first[start:end] - start, alpha_max)
        colors = table.index_select(0, slot_rows[start:end].flatten()).view(end - start, chunk_size, -1)
        # colors^T @ weights, not weights^T @ colors: the same sums, ~6x faster as [K, B] @ [B, P].
        out.index_add_(0, chunk_tiles[start:end], torch.bmm(colors.transpose(1, 2), weights))
        if binned is not None:
            binned.index_add_(0, slot_bins[start:end].flatten(), weights.view(-1, pixels))
    return out.transpose(1, 2), binned[:-1] if binned is not None else None


def tile_blocks(chunk_first: Tensor, size: int) -> list[tuple[int, int]]:
    """Consecutive [start, end) ranges of about `size` chunks that never split a tile's chunks (a tile
    longer than `size` is a block of its own). chunk_first: [M]"""
    starts = torch.unique_consecutive(chunk_first).tolist() + [chunk_first.numel()]
    blocks, start = [], 0
    for tile_start in starts[1:]:
        if tile_start - start >= size:
            blocks.append((start, tile_start))
            start = tile_start
    if start < chunk_first.numel():
        blocks.append((start, chunk_first.numel()))
    return blocks


def _blend_weights(coeffs: Tensor, basis: Tensor, chunk_first: Tensor, alpha_max: float) -> Tensor:
    """Each slot's blending weight w = T_before * alpha at each pixel, 0 past the transmittance stop,
    for whole tiles (chunk_first indexes this block). [M, B, 6] -> [M, B, P]

    The transmittance is one cumulative product over [1, 1 - alpha_0, ...], so that the exclusive and
    the inclusive products are two views of one buffer (CompositeChunks concatenates them)."""
    num_chunks, chunk_size, _ = coeffs.shape
    alpha = slot_alphas(coeffs, basis).clamp_(max=alpha_max)
    # threshold_ (zero where alpha <= the float just below the threshold) is exactly masked_fill_(alpha
    # < ALPHA_THRESHOLD), ~20x faster on a CPU; multiplying by a 0/1 float mask below, ~6x.
    torch.nn.functional.threshold_(alpha, _float_below(ALPHA_THRESHOLD, alpha.dtype), 0.0)
    trans = alpha.new_empty(num_chunks, chunk_size + 1, alpha.shape[-1])
    trans[:, 0] = 1.0
    torch.sub(1.0, alpha, out=trans[:, 1:])
    trans.cumprod_(dim=1)
    chunk_total = trans[:, -1, :].double().clamp_min(1e-300).log()
    trans.mul_(segment_exclusive_cumsum(chunk_total, chunk_first).exp().to(alpha.dtype)[:, None, :])
    contributes = torch.gt(trans[:, 1:], TRANSMITTANCE_MIN, out=torch.empty_like(alpha))
    return alpha.mul_(trans[:, :-1]).mul_(contributes)


def _float_below(value: float, dtype: torch.dtype) -> float:
    """The largest `dtype` number below `value` (as rounded to `dtype`)."""
    rounded = torch.tensor(value, dtype=dtype)
    return torch.nextafter(rounded, torch.zeros((), dtype=dtype)).item()


class CompositeChunks(torch.autograd.Function):
    """Composite chunks of depth-sorted Gaussians into tile pixels.

    Forward inputs:
        coeffs: exponent polynomial `log(opacity) - sigma = -coeffs @ basis` per slot. [M, B, 6]
        colors: channels per slot. [M, B, K]
        basis: `pixel_basis`. [P, 6]
        chunk_tiles, chunk_first: chunk-to-tile layout from `TileBins`. [M], [M]
        num_tiles: number of tiles T over all cameras.
        alpha_max: clamp of a single alpha.

    Returns:
        tile_colors [T, P, K] (without background) and tile_alphas [T, P] (1 - final transmittance).
    """

    @staticmethod
    def forward(ctx, coeffs, colors, basis, chunk_tiles, chunk_first, num_tiles: int, alpha_max: float):
        num_chunks, chunk_size, _ = coeffs.shape
        pixels, channels = basis.shape[0], colors.shape[-1]
        alpha = slot_alphas(coeffs, basis)  # [M, B, P]
        clamped = alpha > alpha_max
        alpha.clamp_(max=alpha_max).masked_fill_(alpha < ALPHA_THRESHOLD, 0.0)
        one_minus = 1.0 - alpha
        trans = torch.cumprod(one_minus, dim=1)  # inclusive, relative to the chunk start
        chunk_total = trans[:, -1, :].double().clamp_min(1e-300).log()
        start = segment_exclusive_cumsum(chunk_total, chunk_first).exp().to(alpha.dtype)  # [M, P]
        trans.mul_(start[:, None, :])
        contributes = trans > TRANSMITTANCE_MIN
        weights = torch.cat([start[:, None, :], trans[:, :-1, :]], dim=1).mul_(alpha)
        weights.masked_fill_(~contributes, 0.0)

        colors_and_one = torch.cat([colors, colors.new_ones(num_chunks, chunk_size, 1)], dim=-1)
        chunk_out = torch.bmm(weights.transpose(1, 2), colors_and_one)  # [M, P, K + 1]
        tile_out = chunk_out.new_zeros(num_tiles, pixels, channels + 1).index_add_(0, chunk_tiles, chunk_out)
        tile_colors, tile_alphas = tile_out[..., :channels], tile_out[..., channels]

        if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
            # d(alpha) chain factor alpha / (1 - alpha), zero where the slot has no gradient path.
            ratio = alpha.div_(one_minus).masked_fill_(~contributes | clamped, 0.0)
            ctx.save_for_backward(weights, ratio, clamped, colors, basis, chunk_tiles, chunk_first, tile_alphas)
        return tile_colors, tile_alphas

    @staticmethod
    def backward(ctx, grad_colors, grad_alphas):
        weights, ratio, clamped, colors, basis, chunk_tiles, chunk_first, tile_alphas = ctx.saved_tensors
        grad_chunk = grad_colors.index_select(0, chunk_tiles)  # [M, P, K]
        grad_colors_in = torch.bmm(weights, grad_chunk)  # [M, B, K]
        if not ctx.needs_input_grad[0]:  # frozen geometry (label lifting): the channels' gradient is all
            return None, grad_colors_in, None, None, None, None, None

        # w_j (c_j . g): what each slot adds to the loss through its colour.
        weighted = torch.bmm(colors, grad_chunk.transpose(1, 2)).mul_(weights)  # [M, B, P]
        within = torch.cumsum(weighted, dim=1)
        chunk_sum = within[:, -1, :]
        chunk_sum64 = chunk_sum.double()
        tile_sum = chunk_sum64.new_zeros(tile_alphas.shape).index_add_(0, chunk_tiles, chunk_sum64)
        later = tile_sum[chunk_tiles] - segment_exclusive_cumsum(chunk_sum64, chunk_first) - chunk_sum64
        # The alpha output's gradient enters every slot as -T_final * dL/dA (A = 1 - T_final).
        final_term = (1.0 - tile_alphas) * grad_alphas
        beyond_chunk = (later - final_term.index_select(0, chunk_tiles).double()).to(within.dtype)
        suffix = (chunk_sum[:, None, :] - within).add_(beyond_chunk[:, None, :])
        # alpha_j * dL/dalpha_j, the gradient of the exponent with the opposite sign.
        grad_exponent = weighted.masked_fill_(clamped, 0.0).sub_(suffix.mul_(ratio))
        grad_coeffs = -torch.matmul(grad_exponent, basis)  # [M, B, 6]
        return grad_coeffs, grad_colors_in, None, None, None, None, None

