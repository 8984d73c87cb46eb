"""Tile binning: which Gaussians touch which tiles, in front-to-back order, with one sort.

Each (camera, Gaussian, tile) intersection gets gsplat's 64-bit key
`camera << (tile_bits + 32) | tile << 32 | float32 depth bits`; positive float32 depths order like their
bit patterns, so a single integer sort groups intersections by image and tile and orders each tile's
list by depth. Each tile's list is then cut into fixed-size chunks so that compositing runs as batched
tensor operations whose size grows with the number of intersections, never with pixels x Gaussians.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import Tensor


@dataclass(frozen=True)
class TileBins:
    """Intersections of projected Gaussians with image tiles.

    Attributes:
        tile_size: tile edge in pixels.
        tiles_x, tiles_y: tiles per image row and column.
        num_cameras: C.
        tiles_per_gauss: tiles each Gaussian touches. [C, N] int64
        isect_ids: sorted keys (camera, tile, depth). [I] int64
        flatten_ids: index into the flattened [C * N] Gaussians, in key order. [I] int64
        isect_tiles: global tile index `camera * tiles_x * tiles_y + tile`, in key order. [I] int64
        isect_offsets: first intersection of each tile (gsplat layout). [C, tiles_y, tiles_x] int32
        chunk_size: B, slots per chunk.
        isect_slots: flat slot `chunk * B + position` of each intersection in the chunk layout. [I] int64
        chunk_tiles: global tile of each chunk; chunks of one tile are consecutive. [M] int64
        chunk_first: index of the first chunk of each chunk's tile. [M] int64
    """

    tile_size: int
    tiles_x: int
    tiles_y: int
    num_cameras: int
    tiles_per_gauss: Tensor
    isect_ids: Tensor
    flatten_ids: Tensor
    isect_tiles: Tensor
    isect_offsets: Tensor
    chunk_size: int
    isect_slots: Tensor
    chunk_tiles: Tensor
    chunk_first: Tensor

    @property
    def num_chunks(self) -> int:
        return self.chunk_tiles.numel()

    @property
    def num_tiles(self) -> int:
        """Tiles over all cameras."""
        return self.num_cameras * self.tiles_x * self.tiles_y

    def select(self, kept: Tensor) -> TileBins:
        """The bins of the intersections `kept` (ascending indices), laid out in chunks anew. [I'] int64"""
        isect_tiles, flatten_ids = self.isect_tiles.index_select(0, kept), self.flatten_ids.index_select(0, kept)
        tile_first, isect_slots, chunk_tiles, chunk_first = chunk_layout(isect_tiles, self.num_tiles, self.chunk_size)
        tiles_per_gauss = torch.bincount(flatten_ids, minlength=self.tiles_per_gauss.numel())
        return replace(
            self,
            tiles_per_gauss=tiles_per_gauss.view_as(self.tiles_per_gauss),
            isect_ids=self.isect_ids.index_select(0, kept),
            flatten_ids=flatten_ids,
            isect_tiles=isect_tiles,
            isect_offsets=tile_first.view_as(self.isect_offsets).int(),
            isect_slots=isect_slots,
            chunk_tiles=chunk_tiles,
            chunk_first=chunk_first,
        )


def tile_rectangles(means2d: Tensor, radii: Tensor, tile_size: int) -> tuple[Tensor, Tensor]:
    """The tiles each projected Gaussian is binned into, as gsplat bins them: columns and rows
    lo <= (x, y) < hi, before clamping to the image (a Gaussian with a zero radius reaches none).

    Args:
        means2d: [..., 2]; radii: [..., 2].

    Returns:
        lo, hi: [..., 2] int64 tile coordinates (x, y).
    """
    tile_means = means2d.detach().float() / tile_size
    tile_radii = radii.float() / tile_size
    return torch.floor(tile_means - tile_radii).long(), torch.ceil(tile_means + tile_radii).long()


@torch.no_grad()
def bin_gaussians(
    means2d: Tensor,
    radii: Tensor,
    depths: Tensor,
    width: int,
    height: int,
    tile_size: int,
    chunk_size: int,
) -> TileBins:
    """Intersect C x N projected Gaussians with tiles and lay the result out in chunks.

    Args:
        means2d: [C, N, 2]; radii: [C, N, 2] (0 = culled); depths: [C, N] (positive where not culled).
    """
    device = means2d.device
    num_cameras = depths.shape[0]
    tiles_x, tiles_y = math.ceil(width / tile_size), math.ceil(height / tile_size)
    tiles_per_image = tiles_x * tiles_y

    lo, hi = tile_rectangles(means2d, radii, tile_size)
    limits = torch.tensor([tiles_x, tiles_y], device=device)
    lo = torch.minimum(lo.clamp_min(0), limits)
    hi = torch.minimum(hi.clamp_min(0), limits)
    span = hi - lo  # [C, N, 2]
    tiles_per_gauss = span[..., 0] * span[..., 1] * (radii > 0).all(dim=-1)

    # Every per-intersection quantity is a per-Gaussian one gathered once plus a function of the rank
    # within the Gaussian's rectangle, computed in place: each fresh [I] buffer costs page faults.
    counts = tiles_per_gauss.flatten()
    num_isects = int(counts.sum())
    gauss = torch.repeat_interleave(torch.arange(counts.numel(), device=device), counts)
    span_x = span[..., 0].clamp_min(1)
    corner = lo[..., 1] * tiles_x + lo[..., 0]  # the rectangle's first tile
    tile_bits = tiles_per_image.bit_length()
    camera = torch.arange(num_cameras, device=device)[:, None]
    depth_bits = depths.detach().float().view(torch.int32).long() & 0xFFFFFFFF
    # gsplat's key `camera << (tile_bits + 32) | tile << 32 | depth`, less the tile's offset from the corner.
    key_base = (camera << (tile_bits + 32)) | (corner << 32) | depth_bits  # [C, N]
    # index_select rather than indexing: several times faster for these million-row gathers on a CPU.
    local = torch.arange(num_isects, device=device).sub_((torch.cumsum(counts, 0) - counts).index_select(0, gauss))
    row = torch.div(local, span_x.flatten().index_select(0, gauss), rounding_mode="floor")
    # tile - corner = row * tiles_x + column = local + row * (tiles_x - span_x)
    offset = local.add_(row.mul_((tiles_x - span_x).flatten().index_select(0, gauss)))
    keys = offset.bitwise_left_shift_(32).add_(key_base.flatten().index_select(0, gauss))
    isect_ids, order = torch.sort(keys, stable=True)
    flatten_ids = gauss.index_select(0, order)
    tile = isect_ids >> 32
    isect_tiles = (tile >> tile_bits).mul_(tiles_per_image).add_(tile.bitwise_and_((1 << tile_bits) - 1))

    num_tiles = num_cameras * tiles_per_image
    tile_first, isect_slots, chunk_tiles, chunk_first = chunk_layout(isect_tiles, num_tiles, chunk_size)
    return TileBins(
        tile_size=tile_size,
        tiles_x=tiles_x,
        tiles_y=tiles_y,
        num_cameras=num_cameras,
        tiles_per_gauss=tiles_per_gauss,
        isect_ids=isect_ids,
        flatten_ids=flatten_ids,
        isect_tiles=isect_tiles,
        isect_offsets=tile_first.reshape(num_cameras, tiles_y, tiles_x).int(),
        chunk_size=chunk_size,
        isect_slots=isect_slots,
        chunk_tiles=chunk_tiles,
        chunk_first=chunk_first,
    )


def chunk_layout(isect_tiles: Tensor, num_tiles: int, chunk_size: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Cut each tile's list of intersections into chunks of `chunk_size` slots.

    Args:
        isect_tiles: global tile of each intersection, grouped by tile (sorted). [I] int64

    Returns:
        first intersection of each tile [T], slot of each intersection [I], tile of each chunk [M] and
        first chunk of each chunk's tile [M] (`TileBins`' `isect_offsets`, `isect_slots`,
        `chunk_tiles`, `chunk_first`).
    """
    tile_counts = torch.bincount(isect_tiles, minlength=num_tiles)
    tile_first = torch.cumsum(tile_counts, 0) - tile_counts
    chunks_per_tile = (tile_counts + chunk_size - 1) // chunk_size
    chunk_offset = torch.cumsum(chunks_per_tile, 0) - chunks_per_tile
    # A tile's intersections fill its chunks in order: slot = first slot of the tile + rank in the tile.
    slot_shift = chunk_offset * chunk_size - tile_first
    isect_slots = torch.arange(isect_tiles.numel(), device=isect_tiles.device).add_(slot_shift.index_select(0, isect_tiles))
    chunk_tiles = torch.repeat_interleave(torch.arange(num_tiles, device=isect_tiles.device), chunks_per_tile)
    return tile_first, isect_slots, chunk_tiles, chunk_offset.index_select(0, chunk_tiles)
