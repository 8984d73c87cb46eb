"""Front-to-back alpha compositing of depth-sorted chunks, with a hand-written backward.

Within a tile every Gaussian's exponent is a quadratic polynomial in the pixel's tile-local coordinates,
so a chunk's exponents for all pixels are one matrix product `Q @ basis.T`, and the gradients of the
polynomial coefficients are one matrix product back (`G @ basis`). The mapping from means2d, conics
and opacities to the coefficients (`torch_backend.SlotCoefficients`) is done once per intersection
instead of once per pixel.

Compositing follows gsplat's CUDA kernel: alpha = min(alpha_max, opacity * exp(-sigma)), contributions
with alpha < 1/255 are skipped, and a pixel stops before the Gaussian that would bring its
transmittance to 1e-4 or below.

Both paths work block by block of whole tiles, gathering each block's coefficients and channels
themselves: a 480p frame has ~1.2M intersections, and materialising their channels in the chunk layout
and whole-image [M, B, P] buffers cost more than compositing them. `CompositeChunks` (with gradients)
recomputes the weights in its backward instead of saving them; `composite_forward` (viewer frames,
label maps) also sums weights per bin, and `blend_weights` is what both blend with (render/sparse.py
keeps its nonzeros).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
from torch import Tensor

from .settings import ALPHA_THRESHOLD, TRANSMITTANCE_MIN


def pixel_basis(tile_size: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Monomials [1, x, y, x², y², xy] of pixel centres relative to the tile centre. [P, 6]"""
    offsets = torch.arange(tile_size, dtype=dtype, device=device) + 0.5 - tile_size / 2
    y, x = torch.meshgrid(offsets, offsets, indexing="ij")
    x, y = x.flatten(), y.flatten()
    return torch.stack([torch.ones_like(x), x, y, x * x, y * y, x * y], dim=-1)


def reaches_tile(coeffs: Tensor, tile_size: int) -> Tensor:
    """Whether each intersection's alpha exp(-coeffs . basis) can reach ALPHA_THRESHOLD at some pixel
    centre of its tile: a superset of those compositing does not skip everywhere, so that dropping the
    rest changes no pixel. [I, 6] -> [I] bool

    The exponent is a convex quadratic in tile-local coordinates: its minimum over the square of pixel
    centres is at the Gaussian's centre when that lies inside, else on one of the square's edges, where
    it is a parabola. Written in place into three buffers: each fresh [I] temporary costs page faults.
    """
    half = tile_size / 2 - 0.5
    q0, q1, q2, q3, q4, q5 = coeffs.T
    lowest, value, vertex = (torch.full_like(q0, math.inf) for _ in range(3))
    for side in (-half, half):
        # On the edge x = side, q0 + q1 x + q3 x² + y (q2 + q5 x + q4 y), lowest at y = -(q2 + q5 x) / (2 q4);
        # on y = side the same with the roles of x and y (q1, q3 and q2, q4) swapped.
        for linear, square, other_linear, other_square in ((q2, q4, q1, q3), (q1, q3, q2, q4)):
            torch.mul(q5, side, out=vertex).add_(linear).div_(square).mul_(-0.5).clamp_(-half, half)
            torch.mul(square, vertex, out=value).add_(linear).add_(q5, alpha=side).mul_(vertex)
            value.add_(q0).add_(other_linear, alpha=side).add_(other_square, alpha=side * side)
            torch.minimum(lowest, value, out=lowest)
    # Compositing evaluates the same polynomial another way: float32 rounding, relative to the size of
    # its terms, may put its value below this one.
    torch.abs(q1, out=value).add_(q2.abs()).mul_(half).add_(q0.abs()).add_(q5.abs(), alpha=half * half)
    value.add_(q3, alpha=half * half).add_(q4, alpha=half * half)
    reaches = lowest.sub_(value, alpha=1e-5) <= -math.log(ALPHA_THRESHOLD) + 1e-3
    # The Gaussian's centre, where the gradient (q1 + 2 q3 x + q5 y, q2 + q5 x + 2 q4 y) vanishes: there its
    # alpha is its opacity, at least the threshold for every Gaussian that was binned.
    det = torch.mul(q3, q4, out=lowest).mul_(4.0).sub_(q5 * q5)
    inside = torch.ones_like(reaches)
    for linear, other_linear, other_square in ((q1, q2, q4), (q2, q1, q3)):
        torch.mul(other_square, linear, out=vertex).mul_(-2.0).addcmul_(q5, other_linear)
        inside &= vertex.div_(det).abs_() <= half
    return reaches.logical_or_(inside)


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
        weights = blend_weights(block, basis, chunk_first[start:end] - start, alpha_max)
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


def blend_weights(coeffs: Tensor, basis: Tensor, chunk_first: Tensor, alpha_max: float) -> Tensor:
    """Each slot's blending weight w = T_before * alpha at each pixel, 0 past the transmittance stop,
    for whole tiles (chunk_first indexes this block). [M, B, 6] -> [M, B, P]

    The transmittance is one cumulative product over [1, 1 - alpha_0, ...], so that the exclusive and
    the inclusive products are two views of one buffer."""
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


GRADIENT_BLOCK_ELEMENTS = 1 << 18
"""Slot-pixel pairs (`chunks x B x P`) `CompositeChunks` composites at once: its buffers (~1 MB each in
float32) are allocated once per call and reused from block to block."""


class CompositeChunks(torch.autograd.Function):
    """Composite chunks of depth-sorted Gaussians into tile pixels, gathering each slot's channels.

    Forward inputs:
        coeffs: exponent polynomial `log(opacity) - sigma = -coeffs @ basis` per slot (any strides:
            `SlotCoefficients` hands them over as a view of a [6, M, B] buffer). [M, B, 6]
        channels: the channels of every Gaussian. [R, K]
        slot_rows: the `channels` row of each slot, R in empty slots. [M, B] int64
        basis: `pixel_basis`. [P, 6]
        chunk_tiles, chunk_first: chunk-to-tile layout from `TileBins`. [M], [M]
        num_tiles: number of tiles T over all cameras.
        alpha_max: clamp of a single alpha.

    Returns:
        tile_colors [T, P, K] (without background) and tile_alphas [T, P] (1 - final transmittance).

    The alpha is blended as one more channel of ones, so that one pass serves both outputs. Both
    directions run block by block of whole tiles, every pass writing into `_Scratch` buffers, and the
    backward recomputes the blending weights instead of saving them: on a CPU each fresh [M, B, P]
    buffer costs as much in page faults as several passes over it, and glibc hands freed buffers back
    to the system, so only reusing them avoids the faults.
    """

    @staticmethod
    def forward(ctx, coeffs, channels, slot_rows, basis, chunk_tiles, chunk_first, num_tiles: int, alpha_max: float):
        rows, num_channels = channels.shape
        table = channels.new_ones(rows + 1, num_channels + 1)  # the last column blends the alpha
        table[:rows, :num_channels] = channels
        table[rows, :num_channels] = 0.0  # empty slots have weight 0; finite channels keep 0 * c at 0
        tile_out = table.new_zeros(num_tiles, num_channels + 1, basis.shape[0])
        blocks = tile_blocks(chunk_first, max(GRADIENT_BLOCK_ELEMENTS // (coeffs.shape[1] * basis.shape[0]), 1))
        scratch = _Scratch.make(blocks, coeffs.shape[1], basis.shape[0], num_channels + 1, table)
        for start, end in blocks:
            buffers = scratch.first(end - start)
            block_first = chunk_first[start:end] - start
            weights, _, _ = _weights_and_gains(coeffs[start:end], basis, block_first, alpha_max, buffers)
            slot_channels = _gather_rows(table, slot_rows[start:end], buffers.channels)
            # channels^T @ weights, not weights^T @ channels: the same sums, faster as [K, B] @ [B, P].
            chunk_out = torch.bmm(slot_channels.transpose(1, 2), weights, out=buffers.grad_chunk)
            tile_out.index_add_(0, chunk_tiles[start:end], chunk_out)
        ctx.alpha_max = alpha_max
        ctx.save_for_backward(coeffs, table, slot_rows, basis, chunk_tiles, chunk_first)
        tile_out = tile_out.transpose(1, 2)  # [T, P, K + 1]
        return tile_out[..., :num_channels], tile_out[..., num_channels]

    @staticmethod
    def backward(ctx, grad_colors, grad_alphas):
        coeffs, table, slot_rows, basis, chunk_tiles, chunk_first = ctx.saved_tensors
        num_tiles, pixels, num_channels = grad_colors.shape
        num_chunks, chunk_size, _ = coeffs.shape
        grad_tiles = grad_colors.new_empty(num_tiles, num_channels + 1, pixels)
        grad_tiles[:, :num_channels] = grad_colors.transpose(1, 2)
        grad_tiles[:, num_channels] = grad_alphas
        tile_end = chunk_first + torch.bincount(chunk_tiles, minlength=num_tiles).index_select(0, chunk_tiles)
        grad_table = table.new_zeros(table.shape) if ctx.needs_input_grad[1] else None
        grad_coeffs = coeffs.new_empty(6, num_chunks * chunk_size) if ctx.needs_input_grad[0] else None
        minus_basis_t = basis.T.neg()
        blocks = tile_blocks(chunk_first, max(GRADIENT_BLOCK_ELEMENTS // (chunk_size * pixels), 1))
        scratch = _Scratch.make(blocks, chunk_size, pixels, num_channels + 1, table)
        for start, end in blocks:
            buffers = scratch.first(end - start)
            block_first = chunk_first[start:end] - start
            weights, trans, gain = _weights_and_gains(coeffs[start:end], basis, block_first, ctx.alpha_max, buffers)
            slot_channels = _gather_rows(table, slot_rows[start:end], buffers.channels)
            grad_chunk = torch.index_select(grad_tiles, 0, chunk_tiles[start:end], out=buffers.grad_chunk)
            if grad_table is not None:
                grad_slots = torch.bmm(weights, grad_chunk.transpose(1, 2), out=buffers.grad_slots)
                # index_add_, not index_put_(accumulate=True): that one adds in an order that depends on
                # the threads, and training must repeat bit for bit (a resumed run equals a straight one).
                grad_table.index_add_(0, slot_rows[start:end].flatten(), grad_slots.flatten(0, 1))
            if grad_coeffs is None:  # frozen geometry (label lifting): the channels' gradient is all
                continue
            # The loss is sum_j w_j v_j with v_j = c_j . g per pixel (alpha included as a channel of
            # ones); dL/de_j = alpha_j dL/dalpha_j = r_j (T_j v_j - S_j), T_j the transmittance after
            # slot j and S_j = sum_{k > j} w_k v_k over the rest of the tile, r_j = alpha_j / (1 - alpha_j).
            # Past the stop T_j (zeroed there) and S_j are exactly 0, and so is the gradient.
            value = torch.bmm(slot_channels, grad_chunk, out=buffers.value)  # [m, B, P]
            suffix = torch.mul(value, weights, out=weights).cumsum_(dim=1)  # prefix sums, turned into S_j
            chunk_sum = suffix[:, -1, :]
            later = _later_chunk_sums(chunk_sum.double(), tile_end[start:end] - start).to(suffix.dtype)
            torch.sub((chunk_sum + later)[:, None, :], suffix, out=suffix)
            # gain = -r (0 where alpha is clamped), so gain * (S - T v) is dL/de.
            grad_exponent = suffix.sub_(value.mul_(trans)).mul_(gain).view(-1, pixels)
            # dL/dcoeffs = -dL/de @ basis, computed transposed: [6, P] @ [P, m B] is ~3x faster.
            grad_coeffs[:, start * chunk_size : end * chunk_size] = torch.mm(minus_basis_t, grad_exponent.T)
        if grad_coeffs is not None:
            grad_coeffs = grad_coeffs.T.view(num_chunks, chunk_size, 6)
        if grad_table is not None:
            grad_table = grad_table[:-1, :num_channels]
        return grad_coeffs, grad_table, None, None, None, None, None, None


@dataclass(frozen=True)
class _Scratch:
    """`CompositeChunks`' buffers for its largest block; `first(m)` views them for a block of m chunks.

    Attributes:
        ratio, weights, value: [m, B, P]; trans: [m, B + 1, P]; channels, grad_slots: [m, B, K + 1];
        grad_chunk: [m, K + 1, P] (the forward's chunk sums, the backward's upstream gradient).
    Buffers a pass leaves unused cost nothing: pages are only faulted in when first written.
    """

    ratio: Tensor
    trans: Tensor
    weights: Tensor
    value: Tensor
    channels: Tensor
    grad_slots: Tensor
    grad_chunk: Tensor

    @staticmethod
    def make(blocks: list[tuple[int, int]], chunk_size: int, pixels: int, width: int, like: Tensor) -> _Scratch:
        most = max((end - start for start, end in blocks), default=0)
        return _Scratch(
            ratio=like.new_empty(most, chunk_size, pixels),
            trans=like.new_empty(most, chunk_size + 1, pixels),
            weights=like.new_empty(most, chunk_size, pixels),
            value=like.new_empty(most, chunk_size, pixels),
            channels=like.new_empty(most, chunk_size, width),
            grad_slots=like.new_empty(most, chunk_size, width),
            grad_chunk=like.new_empty(most, width, pixels),
        )

    def first(self, num_chunks: int) -> _Scratch:
        return _Scratch(*(getattr(self, f.name)[:num_chunks] for f in fields(self)))


def _gather_rows(table: Tensor, rows: Tensor, out: Tensor) -> Tensor:
    """`table` rows [R, K] of each slot [m, B], into out. -> [m, B, K]"""
    return torch.index_select(table, 0, rows.flatten(), out=out.view(-1, table.shape[1])).view(out.shape)


def _weights_and_gains(
    coeffs: Tensor, basis: Tensor, chunk_first: Tensor, alpha_max: float, buffers: _Scratch
) -> tuple[Tensor, Tensor, Tensor]:
    """What `CompositeChunks` blends with and differentiates through, for whole tiles, in `buffers`.
    [m, B, 6] -> weights w = T_before * alpha, transmittances after each slot T, and gains
    -alpha / (1 - alpha), all [m, B, P]. w and T are 0 from the transmittance stop on, the gain where
    alpha is clamped at alpha_max (no gradient there)."""
    ratio, trans = buffers.ratio, buffers.trans
    # The alphas as `slot_alphas` computes them, into the buffer.
    torch.mm(coeffs.reshape(-1, 6), basis.T.neg(), out=ratio.view(-1, basis.shape[0]))
    ratio.clamp_(min=EXPONENT_FLOOR).exp_().clamp_(max=alpha_max)
    # threshold_ is exactly masked_fill_(alpha < ALPHA_THRESHOLD, 0), ~20x faster on a CPU.
    torch.nn.functional.threshold_(ratio, _float_below(ALPHA_THRESHOLD, ratio.dtype), 0.0)
    trans[:, 0] = 1.0
    torch.sub(1.0, ratio, out=trans[:, 1:])
    ratio.div_(trans[:, 1:])  # alpha / (1 - alpha), so that w = ratio * T
    trans.cumprod_(dim=1)
    chunk_total = trans[:, -1, :].double().clamp_min(1e-300).log()
    trans.mul_(segment_exclusive_cumsum(chunk_total, chunk_first).exp().to(ratio.dtype)[:, None, :])
    after = trans[:, 1:]
    # The stop: a slot contributes while the transmittance after it stays above TRANSMITTANCE_MIN.
    torch.nn.functional.threshold_(after, TRANSMITTANCE_MIN, 0.0)
    weights = torch.mul(ratio, after, out=buffers.weights)
    # Clamped alphas all equal alpha_max, so their ratios equal the largest one exactly: zero them
    # with threshold_ (x <= limit -> 0) on the negated ratios.
    limit = torch.tensor(alpha_max, dtype=ratio.dtype)
    torch.nn.functional.threshold_(ratio.neg_(), (-limit / (1.0 - limit)).item(), 0.0)
    return weights, after, ratio


def _later_chunk_sums(chunk_sums: Tensor, tile_end: Tensor) -> Tensor:
    """Per chunk, the sum of the later chunks of its tile, exactly 0 where those are all 0.

    Args:
        chunk_sums: [M, P]; tile_end: one past the last chunk of each chunk's tile. [M]

    Differences of suffix sums rather than of prefix sums: past the transmittance stop the chunks sum
    to exact zeros, and adding zeros leaves a suffix sum bitwise unchanged.
    """
    suffix = torch.cat([chunk_sums, chunk_sums.new_zeros(1, chunk_sums.shape[1])]).flip(0).cumsum(0).flip(0)
    return suffix[1:] - suffix.index_select(0, tile_end)
