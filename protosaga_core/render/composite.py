"""Front-to-back alpha compositing of depth-sorted chunks, with a hand-written backward.

Within a tile every Gaussian's exponent is a quadratic polynomial in the pixel's tile-local coordinates,
so a chunk's exponents for all pixels are one matrix product `Q @ basis.T`, and the gradients of the
polynomial coefficients are one matrix product back (`G @ basis`). The mapping from means2d, conics
and opacities to the coefficients is ordinary autograd code (in `torch_backend`), done once per
intersection instead of once per pixel.

Compositing follows gsplat's CUDA kernel: alpha = min(alpha_max, opacity * exp(-sigma)), contributions
with alpha < 1/255 are skipped, and a pixel stops before the Gaussian that would bring its
transmittance to 1e-4 or below.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .settings import ALPHA_THRESHOLD, TRANSMITTANCE_MIN


def pixel_basis(tile_size: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Monomials [1, x, y, x², y², xy] of pixel centres relative to the tile centre. [P, 6]"""
    offsets = torch.arange(tile_size, dtype=dtype, device=device) + 0.5 - tile_size / 2
    y, x = torch.meshgrid(offsets, offsets, indexing="ij")
    x, y = x.flatten(), y.flatten()
    return torch.stack([torch.ones_like(x), x, y, x * x, y * y, x * y], dim=-1)


def segment_exclusive_cumsum(values: Tensor, first: Tensor) -> Tensor:
    """Exclusive prefix sums along dim 0 restarting at each segment, in float64 for accuracy.

    Args:
        values: [M, ...]; first: index of the first row of each row's segment. [M]
    """
    total = torch.cumsum(values.double(), dim=0)
    exclusive = total - values.double()
    return exclusive - exclusive[first]


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
        alpha = torch.matmul(coeffs, basis.T).neg_().exp_()  # [M, B, P]
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

