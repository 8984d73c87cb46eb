"""Frozen geometry's blending weights, computed once per view and reused as a sparse matrix (DESIGN §3).

Rendering any per-Gaussian channels c is Ĉ(p) = Σ_i w_i(p) c_i with w_i(p) = T_i(p) α_i(p), a linear map
W [H*W, N] that only the geometry and the camera decide; lifting masks onto Gaussians is its transpose
Wᵀ. Stages that never move the Gaussians (association, prototypes, lifted labels, the Cls baseline)
render and transpose the same views with several channel sets, each time paying for projection,
binning and compositing (and, for the transpose, a backward pass per 64-channel block). Here the
forward-only compositor's arithmetic (`blend_weights`: same alpha clamp, 1/255 skip, 1e-4 transmittance
stop, depth order) emits each view's nonzero (pixel, Gaussian, weight) triples once, and every later
render or transpose is one sparse product.

Only for the portable torch backend on the CPU: gsplat renders on CUDA faster than any sparse product,
and torch's sparse kernels on MPS are incomplete. Memory is ~8 bytes per (pixel, contributing Gaussian)
pair: a `WeightsCache` bounds it (by default a share of the memory free when it is made), and a view
that does not fit in what is left of the budget is not computed to the end (callers then rasterize). The cache
is an explicit object: whoever runs several frozen-geometry stages makes one and hands it to each (in
`protosaga run`, association computes the training views' weights and the prototypes stage reuses them);
a function given none rasterizes.
"""

from __future__ import annotations

import hashlib
import warnings
import weakref
from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.sparse
import torch
from torch import Tensor

from ..cameras import Cameras
from ..gaussians import Gaussians
from ..memory import available_memory
from .composite import BLOCK_ELEMENTS, blend_weights, pixel_basis, tile_blocks
from .projection import project
from .settings import RasterSettings
from .tiles import TileBins, bin_gaussians
from .torch_backend import reaching_intersections, slot_isects

TRANSPOSE_ENTRIES = 1 << 22
"""Weights `ViewWeights.transpose_labels` keys at once."""


@dataclass(frozen=True)
class ViewWeights:
    """One camera's blending weights w_i(p), the matrix W [H*W, N] stored by its nonempty rows: row r is
    pixel `pixels[r]` (y * W + x), its entries `row_offsets[r]:row_offsets[r + 1]`. Rows come in the order
    the compositor emits them (tile by tile), which spares sorting every entry by pixel; pixels no
    Gaussian reaches have no row.

    Attributes:
        pixels: the image pixel of each row. [R] int64
        row_offsets: where each row's entries start, then nnz. [R + 1] int32 (int64 past 2^31 entries)
        gaussians: the Gaussian of each entry, front to back within a row. [nnz], dtype of row_offsets
        weights: w_i(p) of each entry. [nnz] float32
        height, width: the image size.
        num_gaussians: N.
    """

    pixels: Tensor
    row_offsets: Tensor
    gaussians: Tensor
    weights: Tensor
    height: int
    width: int
    num_gaussians: int

    @property
    def nnz(self) -> int:
        return self.weights.numel()

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.pixels, self.row_offsets, self.gaussians, self.weights))

    @property
    def alpha(self) -> Tensor:
        """Accumulated opacity Σ_i w_i(p), as `render(...).alphas` (a blend of ones). [H, W]"""
        return self.render(self.weights.new_ones(self.num_gaussians, 1))[..., 0]

    def render(self, channels: Tensor) -> Tensor:
        """W @ channels: the channels blended at every pixel, no background; differentiable in
        `channels`. [N, K] -> [H, W, K]"""
        return _Blend.apply(channels, self)

    def transpose(self, targets: Tensor) -> Tensor:
        """Wᵀ @ targets: Σ_p w_i(p) g(p) for every Gaussian (`lifting.transpose_render` of one view).
        [H, W, K] -> [N, K]"""
        rows = targets.detach().reshape(self.height * self.width, -1).to(self.weights.dtype).index_select(0, self.pixels)
        # scipy's transposed CSR product scatters row by row; torch converts to CSC on every call
        # (~10x slower on the demo views).
        return torch.from_numpy(np.ascontiguousarray(self._scipy().T @ rows.numpy()))

    def transpose_labels(self, columns: Tensor, num_columns: int, out: Tensor | None = None) -> Tensor:
        """Wᵀ @ one_hot(columns) without the one-hot image ([H, W, L] floats: gigabytes at 1080p with hundreds
        of labels): each Gaussian's summed weight per label column. Each sum adds the same weights in the
        same order as `transpose` of the one-hot image (row by row, front to back), so into zeros the votes
        are the same floats. [H, W] int64 in 0..L-1 -> [N, L]

        Args:
            out: votes to add this view's to, in place (the weights one by one, in the same order), so that a
                caller summing many views holds one [N, L] array, not two. [N, L] float32, contiguous
        """
        if out is None:
            out = self.weights.new_zeros(self.num_gaussians, num_columns)
        if out.shape != (self.num_gaussians, num_columns) or not out.is_contiguous() or out.dtype != self.weights.dtype:
            raise ValueError(f"votes to add to must be a contiguous {self.weights.dtype} [{self.num_gaussians}, {num_columns}], got {out.dtype} {list(out.shape)}")
        votes = out.view(-1)
        offsets = self.row_offsets.long()
        row_columns = columns.reshape(-1).index_select(0, self.pixels)  # [R]
        num_rows = len(self.pixels)
        # The entries' keys are built a block of rows at a time (~TRANSPOSE_ENTRIES entries, 16 bytes each).
        rows_per_block = max(1, num_rows * TRANSPOSE_ENTRIES // max(self.nnz, 1))
        for start in range(0, num_rows, rows_per_block):
            stop = min(start + rows_per_block, num_rows)
            first, last = int(offsets[start]), int(offsets[stop])
            entry_columns = torch.repeat_interleave(row_columns[start:stop], offsets[start + 1 : stop + 1] - offsets[start:stop])
            # index_add_ on a 1-D tensor adds in index order on the CPU, as scipy's transposed product does.
            votes.index_add_(0, self.gaussians[first:last].long() * num_columns + entry_columns, self.weights[first:last])
        return out

    def _product(self, channels: Tensor) -> Tensor:
        shape = (len(self.pixels), self.num_gaussians)
        with warnings.catch_warnings():  # torch's "CSR support is in beta" notice is not for our users
            warnings.simplefilter("ignore", UserWarning)
            matrix = torch.sparse_csr_tensor(self.row_offsets, self.gaussians, self.weights, shape, check_invariants=False)
        rows = matrix @ channels.to(self.weights.dtype).contiguous()
        image = rows.new_zeros(self.height * self.width, rows.shape[1]).index_copy_(0, self.pixels, rows)
        return image.view(self.height, self.width, -1)

    def _scipy(self) -> scipy.sparse.csr_matrix:
        """The same arrays as a scipy matrix [R, N] (no copy)."""
        arrays = (self.weights.numpy(), self.gaussians.numpy(), self.row_offsets.numpy())
        return scipy.sparse.csr_matrix(arrays, shape=(len(self.pixels), self.num_gaussians), copy=False)


class _Blend(torch.autograd.Function):
    """W @ channels with the gradient Wᵀ @ grad (the Cls baseline trains features through it)."""

    @staticmethod
    def forward(ctx, channels: Tensor, view: ViewWeights) -> Tensor:
        ctx.view, ctx.dtype = view, channels.dtype
        return view._product(channels)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return ctx.view.transpose(grad).to(ctx.dtype), None


@torch.no_grad()
def compute_view_weights(
    gaussians: Gaussians, camera: Cameras, settings: RasterSettings = RasterSettings(), max_bytes: int | None = None
) -> ViewWeights | None:
    """One camera's blending weights, as the torch backend's forward-only path composites them.

    Args:
        gaussians: on the CPU (gradients are ignored).
        camera: a batch of one camera.
        max_bytes: stop and return None once the weights would take more.
    """
    if camera.num_cameras != 1:
        raise ValueError(f"compute_view_weights takes one camera, got {camera.num_cameras}")
    width, height = camera.width, camera.height
    proj = project(
        gaussians.means, gaussians.activated_quats, gaussians.activated_scales, gaussians.activated_opacities,
        camera.viewmats, camera.Ks, width, height, settings,
    )  # fmt: skip
    tile_size = settings.tile_size_for("torch", gradients=False)
    bins = bin_gaussians(proj.means2d, proj.radii, proj.depths, width, height, tile_size, settings.chunk_size)
    bins, coeffs = reaching_intersections(proj, bins)
    slots = slot_isects(bins)  # [M, B]
    basis = pixel_basis(tile_size, coeffs.dtype, coeffs.device)
    tile_rows = _tile_pixel_rows(bins, width, height)  # [T, P]
    # Entries are kept compact from the start (int32 pixel and Gaussian, float32 weight): the peak while
    # assembling the view is about three times its final 8 bytes per entry.
    compact = torch.int32 if max(width * height, len(gaussians)) < 2**31 else torch.int64
    parts, nbytes = [], 0
    for start, end in tile_blocks(bins.chunk_first, max(BLOCK_ELEMENTS // slots.shape[1] // basis.shape[0], 1)):
        block = slots[start:end]
        weights = blend_weights(
            coeffs.index_select(0, block.flatten()).view(*block.shape, 6), basis, bins.chunk_first[start:end] - start, settings.alpha_max
        )
        pixels, isects, values = _pixel_major_entries(weights, block, tile_rows.index_select(0, bins.chunk_tiles[start:end]))
        parts.append((pixels.to(compact), bins.flatten_ids.index_select(0, isects).to(compact), values))
        nbytes += pixels.numel() * (compact.itemsize + values.element_size())
        if max_bytes is not None and nbytes > max_bytes:
            return None
    pixels, columns, values = (torch.cat(p) for p in zip(*parts)) if parts else _no_entries(coeffs.dtype)
    index_dtype = compact if pixels.numel() < 2**31 else torch.int64  # one dtype for scipy and torch
    # Each pixel's entries are one run (`_pixel_major_entries`): the runs are the rows.
    starts = (pixels[1:] != pixels[:-1]).nonzero()[:, 0] + 1
    starts = torch.cat([starts.new_zeros(min(pixels.numel(), 1)), starts])
    return ViewWeights(
        pixels.index_select(0, starts).long(),
        torch.cat([starts, starts.new_full((1,), pixels.numel())]).to(index_dtype),
        columns.to(index_dtype),
        values,
        height,
        width,
        len(gaussians),
    )


def _pixel_major_entries(weights: Tensor, slots: Tensor, chunk_rows: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The nonzero weights of whole tiles ordered by tile pixel, then chunk and slot, so that each image
    pixel's entries are consecutive and front to back. Empty slots and skipped or stopped contributions
    are exactly 0: the nonzeros are the contributions.

    Args:
        weights: `blend_weights` of consecutive chunks. [m, B, P]
        slots: their intersections. [m, B] int64
        chunk_rows: the image pixel of each chunk's tile pixels, -1 off the image. [m, P] int64

    Returns:
        image pixels, intersections, weights. [E] each
    """
    num_chunks, chunk_size, _ = weights.shape
    by_pixel = weights.permute(2, 0, 1).reshape(-1)  # [P * m * B]
    pixel_rows = chunk_rows.T.reshape(-1)  # [P * m]
    keep = by_pixel != 0
    off_image = pixel_rows < 0  # tiles overhanging the image's right and bottom edges
    if off_image.any():
        keep.view(-1, chunk_size).logical_and_(~off_image[:, None])
    flat = keep.nonzero()[:, 0]
    if by_pixel.numel() < 2**31:  # int32 divisions are ~2x faster
        flat = flat.to(torch.int32)
    return (
        pixel_rows.index_select(0, flat // chunk_size),
        slots.view(-1).index_select(0, flat % (num_chunks * chunk_size)),
        by_pixel.index_select(0, flat),
    )


def _tile_pixel_rows(bins: TileBins, width: int, height: int) -> Tensor:
    """The image pixel y * W + x of each tile pixel, -1 past the image's edges. [T, P] int64"""
    size = bins.tile_size
    tile = torch.arange(bins.tiles_x * bins.tiles_y)
    local = torch.arange(size * size)
    y = (tile // bins.tiles_x * size)[:, None] + local // size
    x = (tile % bins.tiles_x * size)[:, None] + local % size
    return torch.where((y < height) & (x < width), y * width + x, -1)


def _no_entries(dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    empty = torch.zeros(0, dtype=torch.int64)
    return empty, empty, torch.zeros(0, dtype=dtype)


GEOMETRY = ("means", "scales", "quats", "opacities")
"""The Gaussians' tensors that decide the weights."""


def geometry_key(gaussians: Gaussians) -> str:
    """A digest of what decides the weights (means, scales, quats, opacities): Gaussians read from the
    same gaussians.ply into new tensors have the same key. It reads every value (~0.1 s per million
    Gaussians on a 2-core CPU): `WeightsCache` computes it once per Gaussians object, not per call."""
    digest = hashlib.blake2b(digest_size=16)
    for name in GEOMETRY:
        digest.update(getattr(gaussians, name).detach().cpu().contiguous().numpy())
    return digest.hexdigest()


def camera_key(camera: Cameras) -> tuple:
    """One camera's pose, intrinsics and image size, exactly."""
    return (camera.viewmats.cpu().numpy().tobytes(), camera.Ks.cpu().numpy().tobytes(), camera.width, camera.height)


@dataclass(frozen=True)
class BoundGeometry:
    """The geometry a cache holds weights for: its `geometry_key`, and the tensors last seen with that key
    with their version counters.

    Attributes:
        key: `geometry_key` of the Gaussians the first weights were computed from.
        tensors: weak references to the GEOMETRY tensors last hashed to `key` (the cache keeps no
            Gaussians alive).
        versions: their `_version` counters then.
    """

    key: str
    tensors: tuple[weakref.ref, ...]
    versions: tuple[int, ...]

    @classmethod
    def of(cls, gaussians: Gaussians, key: str) -> BoundGeometry:
        tensors = [getattr(gaussians, name) for name in GEOMETRY]
        return cls(key, tuple(weakref.ref(t) for t in tensors), tuple(t._version for t in tensors))

    def unchanged(self, gaussians: Gaussians) -> bool:
        """Whether `gaussians` hold the very tensors last seen, not modified in place since (no hashing).

        Safe because PyTorch bumps a tensor's version counter on every in-place operation on it or on an
        alias sharing the counter (views, `.detach()`), and a tensor object never changes its storage
        otherwise. Writes that bypass the counter (through `.data`, or a numpy array or DLPack capsule
        sharing the memory) go unseen: the stages never modify the Gaussians they render, and code that
        did so would need a cache per state of its Gaussians.
        """
        tensors = [getattr(gaussians, name) for name in GEOMETRY]
        return all(ref() is t and t._version == version for ref, t, version in zip(self.tensors, tensors, self.versions))


FALLBACK_BUDGET_BYTES = 512 << 20
"""A cache's budget where the free memory cannot be read. The demo's 36 training views (128x96, ~50
contributing Gaussians per pixel) take 176 MB; one 1080p view of a large scene (2M pixels x ~50) ~800 MB."""
BUDGET_SHARE = 16
"""A cache takes at most 1 / BUDGET_SHARE of the memory free when it is made (`default_budget`)."""
BUDGET_FLOOR = 256 << 20
BUDGET_CAP = 64 << 30


def default_budget(available: int | None) -> int:
    """The bytes of weights a cache keeps by default, given the bytes this process may still take
    (`memory.available_memory()`): a sixteenth of them, within [BUDGET_FLOOR, BUDGET_CAP];
    FALLBACK_BUDGET_BYTES where unknown (None).

    A sixteenth: the cache is an accelerator that the stages beside it must leave room for. While it holds
    up to its budget, the next view is assembled at up to three times its final size
    (`compute_view_weights`), and the association's membership and the stages' own arrays take a
    gigabyte or two for a million Gaussians over 200 views. Measured there (bench/RESULTS.md, 24 GB
    machine): an eighth (2.8 GB) peaked at 6.5 GiB for association + prototypes + labels in 12.0 min, a
    sixteenth (1.4 GB) at 5.0 GiB in 12.5 min. The floor
    keeps small scenes cached where the figure reads near zero although memory is there (a cgroup's
    usage counts the page cache, which the kernel reclaims); the cap bounds what one figure, read once
    when the cache is made, lets a cache take from the stages and processes that start after it (64 GiB
    hold ~80 1080p views of a million Gaussians).
    """
    if available is None:
        return FALLBACK_BUDGET_BYTES
    return min(max(available // BUDGET_SHARE, BUDGET_FLOOR), BUDGET_CAP)


class WeightsCache:
    """The blending weights of one frozen geometry's views, which the stages that render or lift the same
    views (association, prototypes, feature training) pass each other explicitly.

    Keyed by (camera, settings). Views are kept while they fit in `budget_bytes` and never evicted: the
    stages go through the views in the same order, and evicting the least recently used would drop every
    view of a pass over more views than fit before its next use; kept, the first ones hit in every pass
    and the others are rasterized (a batch with one view that does not fit is rasterized whole). The cache is bound to
    the geometry of the first Gaussians it is used with (`BoundGeometry`): Gaussians with other means,
    scales, rotations or opacities are refused, while the same geometry read again into new tensors (each
    stage reads gaussians.ply itself) shares the entries. Checking costs nothing for the tensors last
    seen and one `geometry_key` for each new Gaussians object.
    """

    def __init__(self, budget_bytes: int | None = None) -> None:
        """`budget_bytes`: weights kept at most; 0 keeps none (every stage rasterizes); None:
        `default_budget` of the memory free now."""
        self.budget_bytes = default_budget(available_memory()) if budget_bytes is None else budget_bytes
        self._entries: dict[tuple, ViewWeights] = {}
        self._geometry: BoundGeometry | None = None
        self.used_bytes = 0
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nnz(self) -> int:
        """Nonzero weights held, over all views."""
        return sum(view.nnz for view in self._entries.values())

    def views(
        self, gaussians: Gaussians, cameras: Cameras, settings: RasterSettings = RasterSettings(), compute: bool = True
    ) -> list[ViewWeights] | None:
        """Every camera's weights, missing ones computed and kept when `compute`; None when a view is
        missing and not to be computed, or does not fit in what is left of the budget (always for a
        budget of 0).

        Raises:
            ValueError: `gaussians` have another geometry than the one the cache holds weights for.
        """
        if self.budget_bytes <= 0:
            return None
        self._bind(gaussians)
        return self._views(gaussians, cameras, settings, compute)

    def _bind(self, gaussians: Gaussians) -> None:
        if self._geometry is not None and self._geometry.unchanged(gaussians):
            return
        key = geometry_key(gaussians)
        if self._geometry is not None and key != self._geometry.key:
            raise ValueError(
                "this WeightsCache holds the blending weights of other Gaussians (their means, scales, rotations or "
                "opacities differ, or were changed in place); give each geometry its own cache"
            )
        self._geometry = BoundGeometry.of(gaussians, key)

    def _views(self, gaussians: Gaussians, cameras: Cameras, settings: RasterSettings, compute: bool) -> list[ViewWeights] | None:
        result = []
        for index in range(cameras.num_cameras):
            camera = cameras[index]
            key = (camera_key(camera), settings)
            view = self._entries.get(key)
            if view is not None:
                self.hits += 1
            else:
                self.misses += 1
                remaining = self.budget_bytes - self.used_bytes
                view = compute_view_weights(gaussians, camera, settings, remaining) if compute and remaining > 0 else None
                if view is None:
                    return None
                self._entries[key] = view
                self.used_bytes += view.nbytes
            result.append(view)
        return result


Compute = Literal["never", "cache", "always"]


def frozen_weights(
    gaussians: Gaussians, cameras: Cameras, weights: WeightsCache | None, compute: Compute = "cache"
) -> list[ViewWeights] | None:
    """Each camera's blending weights (default raster settings) for the sparse path, or None: rasterize.

    With a cache, the views it holds, and missing ones computed and kept in it while they fit unless
    `compute` is "never". Without one, or where the cache keeps no more, none, unless `compute` is
    "always": then computed for this call alone, within `default_budget`. A cache of budget 0 gives none
    whatever `compute` says (the rasterizer only).

    Computing a view's weights costs a little more than one transpose on the rasterizer (a forward and
    a backward pass; ~1.1-1.3x on the demo) or two forward renders, and applying them a few milliseconds:
    they pay where a view is rendered or transposed again, or with more channels than one rasterizer
    pass takes. None also where the sparse path does not apply (not on the CPU, over the memory budget).
    """
    if gaussians.device.type != "cpu":
        return None
    cameras = cameras.to("cpu")
    if weights is not None:
        views = weights.views(gaussians, cameras, compute=compute != "never")
        if views is not None or compute != "always" or weights.budget_bytes <= 0:
            return views
    elif compute != "always":
        return None
    # Needed whether kept or not (a cache full of other views keeps no more): computed for this call alone,
    # in a cache of its own, which needs no geometry check as nothing else reads it.
    return WeightsCache()._views(gaussians, cameras, RasterSettings(), True)
