"""The torch rasterizer checked against gsplat's own pure-PyTorch reference (`gsplat.cuda._torch_impl`),
on the CPU, so that "gsplat's semantics" is checked rather than claimed.

- Projection (`render.projection.project`) against `_fully_fused_projection`: means2d, conics, depths
  and, in antialiased mode, opacity x `compensations`, their values and autograd gradients. Radii: that
  reference draws fixed 3.33-sigma boxes and culls no opacity, while gsplat's CUDA kernel, which the
  torch backend follows, uses extend = min(3.33, sqrt(2 ln(255 opacity))) and culls opacity < 1/255. So
  the radii must be the kernel's rule (`reference_render.kernel_radii`) applied to the reference's own
  2D covariance, and equal the reference's boxes where the opacity makes extend 3.33.
- Tile intersections (`render.tiles.bin_gaussians`) against `_isect_tiles` and `_isect_offset_encode`:
  the same keys, Gaussians and offsets, and each tile's chunks list the tile's Gaussians front to back
  exactly as gsplat's per-tile ranges do.
- SH colours: `_spherical_harmonics` (which `render` calls) against the real SH basis written out here
  with the 3DGS constants, and `render`'s colour of one opaque, centred Gaussian against its analytic
  value, gsplat's clamp_min(SH + 0.5, 0) times the alpha.
- Compositing: gsplat's `accumulate` (and `_rasterize_to_pixels`, built on it) needs nerfacc, whose
  `pack_info` takes CUDA tensors only, so it cannot run on a CPU. The rasterizer is compared instead with
  `reference_render.reference_rasterize`: `_fully_fused_projection`'s outputs composited per pixel with
  `accumulate`'s formula (pixel centres +0.5, sigma, alpha clamped at 0.999) and the CUDA kernel's skip of
  alpha < 1/255 and stop at transmittance 1e-4, differentiated by autograd.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from gsplat.cuda._torch_impl import (
    _fully_fused_projection,
    _isect_offset_encode,
    _isect_tiles,
    _persp_proj,
    _quat_scale_to_covar_preci,
    _spherical_harmonics,
    _world_to_cam,
)
from reference_render import gradient_error, kernel_radii, reference_rasterize

from protosaga_core.cameras import Cameras, intrinsics, look_at
from protosaga_core.gaussians import Gaussians, num_sh_rest
from protosaga_core.render import RasterSettings, rasterize, render
from protosaga_core.render.projection import project
from protosaga_core.render.settings import ALPHA_THRESHOLD
from protosaga_core.render.tiles import bin_gaussians

WIDTH, HEIGHT = 64, 48
SETTINGS = RasterSettings(near_plane=0.25, far_plane=8.0)
"""Planes exactly representable in float32, so that Gaussians can sit exactly on them."""
MODES = ["classic", "antialiased"]
F64 = torch.float64


# --- scenes: Gaussians in front of camera 0 (identity pose), seen by a second, tilted camera -----------


def two_cameras() -> tuple[torch.Tensor, torch.Tensor]:
    """viewmats [2, 4, 4], Ks [2, 3, 3] (float64)"""
    tilted = look_at(torch.tensor([[1.5, -0.5, -0.5]], dtype=F64), torch.tensor([[0.0, 0.0, 3.0]], dtype=F64),
                     torch.tensor([0.0, -1.0, 0.0], dtype=F64))  # fmt: skip
    viewmats = torch.cat([torch.eye(4, dtype=F64)[None], tilted])
    return viewmats, intrinsics(50.0, 50.0, WIDTH / 2, HEIGHT / 2, 2).double()


def random_scene(seed: int, num: int = 30) -> dict[str, torch.Tensor]:
    """Random Gaussians in camera 0's view, unnormalised quaternions, opacities over (0, 1) with one
    below 1/255 and one exactly 1 (float64)."""
    gen = torch.Generator().manual_seed(seed)
    box = torch.tensor([1.5, 1.2, 1.0], dtype=F64)
    means = (torch.rand(num, 3, generator=gen, dtype=F64) * 2 - 1) * box + torch.tensor([0.0, 0.0, 3.0], dtype=F64)
    opacities = torch.rand(num, generator=gen, dtype=F64)
    opacities[:2] = torch.tensor([0.002, 1.0])
    return {
        "means": means,
        "quats": torch.randn(num, 4, generator=gen, dtype=F64),
        "scales": torch.exp(torch.randn(num, 3, generator=gen, dtype=F64) * 0.6 + math.log(0.08)),
        "opacities": opacities,
        "colors": torch.rand(num, 3, generator=gen, dtype=F64),
    }


DEGENERATE = [
    # camera-0 position, scales, opacity, what
    ((0.1, 0.1, -1.0), (0.2, 0.2, 0.2), 0.9, "behind the camera"),
    ((0.0, 0.0, 0.25), (0.1, 0.1, 0.1), 0.9, "exactly at the near plane"),
    ((0.2, 0.1, 8.0), (0.5, 0.5, 0.5), 0.9, "exactly at the far plane"),
    ((0.0, 0.0, 9.0), (0.5, 0.5, 0.5), 0.9, "beyond the far plane"),
    ((0.0, 0.01, 0.3), (0.02, 0.03, 0.01), 0.8, "just beyond the near plane"),
    ((10.0, 0.0, 3.0), (0.05, 0.05, 0.05), 0.9, "off-screen, view direction clamped"),
    ((6.0, 0.2, 3.0), (2.5, 1.5, 2.0), 0.7, "off-screen centre, clamped, reaching in"),
    ((0.2, 2.4, 3.0), (0.6, 0.5, 0.4), 0.7, "below the image, clamped in y, reaching in"),
    ((0.5, 0.3, 3.0), (0.1, 0.05, 0.0), 0.8, "zero scale along one axis"),
    ((-0.5, 0.2, 2.5), (0.2, 0.0, 0.0), 0.8, "a segment: two zero scales"),
    ((0.2, -0.4, 3.5), (0.0, 0.0, 0.0), 0.8, "a point"),
    ((0.0, 0.0, 3.0), (100.0, 80.0, 50.0), 0.3, "huge"),
    ((0.1, 0.1, 3.0), (0.1, 0.1, 0.1), 0.0, "zero opacity"),
    ((-0.3, 0.3, 3.0), (0.1, 0.1, 0.1), 0.5 / 255, "opacity below 1/255"),
    ((0.4, 0.4, 2.0), (0.01, 0.01, 0.01), 1.0, "sub-pixel, opacity 1"),
]
OUTSIDE_DEPTH_RANGE = [0, 1, 2, 3]
"""`DEGENERATE` rows that camera 0 culls by depth; the next one it keeps."""
ON_CAMERA_PLANE = ((0.3, -0.2, 0.0), (0.2, 0.2, 0.2), 0.9, "on the camera plane")
"""Row `len(DEGENERATE)` of the "camera plane" scene. gsplat's reference divides by its depth, 0 (inf and
NaN there, then culled): its gradients are NaN, so only values are compared with it."""


def degenerate_scene(seed: int, camera_plane: bool = False) -> dict[str, torch.Tensor]:
    """`DEGENERATE` (then `ON_CAMERA_PLANE`) and a random scene (float64)."""
    rows = DEGENERATE + [ON_CAMERA_PLANE] * camera_plane
    gen = torch.Generator().manual_seed(seed)
    num = len(rows)
    special = {
        "means": torch.tensor([row[0] for row in rows], dtype=F64),
        "quats": torch.randn(num, 4, generator=gen, dtype=F64),
        "scales": torch.tensor([row[1] for row in rows], dtype=F64),
        "opacities": torch.tensor([row[2] for row in rows], dtype=F64),
        "colors": torch.rand(num, 3, generator=gen, dtype=F64),
    }
    rest = random_scene(seed, 12)
    return {name: torch.cat([special[name], rest[name]]) for name in special}


def dense_scene(seed: int) -> dict[str, torch.Tensor]:
    """Large, nearly opaque Gaussians: many pixels reach the transmittance stop (float64)."""
    scene = random_scene(seed, 40)
    scene["scales"] = scene["scales"] * 4
    scene["opacities"] = 0.9 + 0.09 * scene["opacities"]
    return scene


SCENES = {
    "random": random_scene,
    "degenerate": degenerate_scene,
    "camera-plane": lambda seed: degenerate_scene(seed, camera_plane=True),
    "dense": dense_scene,
}


def mode_settings(mode: str) -> RasterSettings:
    return dataclasses.replace(SETTINGS, rasterize_mode=mode)


# --- projection ----------------------------------------------------------------------------------------


def fresh_leaves(scene: dict, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """means, quats, scales, opacities of the scene as new leaves requiring gradients, in that order."""
    return {name: scene[name].to(dtype).clone().requires_grad_() for name in ("means", "quats", "scales", "opacities")}


def reference_projection(scene: dict, settings: RasterSettings, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """`_fully_fused_projection` of the scene, the 2D covariance it blurs and inverts (its own
    `_world_to_cam` and `_persp_proj`, plus eps2d), and its opacities (x compensations in antialiased
    mode), from fresh leaves. Values [C, N, ...] and `leaves`."""
    leaves = fresh_leaves(scene, dtype)
    viewmats, Ks = (t.to(dtype) for t in two_cameras())
    covars, _ = _quat_scale_to_covar_preci(leaves["quats"], leaves["scales"], compute_covar=True, compute_preci=False)
    radii, means2d, depths, conics, compensations = _fully_fused_projection(
        leaves["means"], covars, viewmats, Ks, WIDTH, HEIGHT, settings.eps2d, settings.near_plane, settings.far_plane,
        calc_compensations=settings.rasterize_mode == "antialiased",
    )  # fmt: skip
    with torch.no_grad():
        _, cov2d = _persp_proj(*_world_to_cam(leaves["means"], covars, viewmats), Ks, WIDTH, HEIGHT)
        cov2d = cov2d + settings.eps2d * torch.eye(2, dtype=dtype)
    opacities = leaves["opacities"].expand(2, -1) if compensations is None else leaves["opacities"] * compensations
    return {"radii": radii, "means2d": means2d, "depths": depths, "conics": conics, "opacities": opacities,
            "cov2d": cov2d, "leaves": leaves}  # fmt: skip


def our_projection(scene: dict, settings: RasterSettings, dtype: torch.dtype):
    """`project` of the scene from fresh leaves: (Projection, leaves)."""
    leaves = fresh_leaves(scene, dtype)
    viewmats, Ks = (t.to(dtype) for t in two_cameras())
    return project(*leaves.values(), viewmats, Ks, WIDTH, HEIGHT, settings), leaves


def in_range(ref: dict, settings: RasterSettings) -> torch.Tensor:
    """Where the kernel projects a Gaussian at all: strictly between the planes. [C, N]"""
    return (ref["depths"] > settings.near_plane) & (ref["depths"] < settings.far_plane)


def assert_rows_close(value: torch.Tensor, reference: torch.Tensor, rtol: float, what: str) -> None:
    """Each row [..., K] within rtol of its reference row's largest entry (conics mix entries of very
    different sizes; an entry-wise relative error would blow up on the small ones)."""
    value, reference = value.detach().double(), reference.detach().double()
    error = (value - reference).abs().amax(-1) / reference.abs().amax(-1).clamp_min(1e-300)
    assert error.numel() > 0 and error.max() <= rtol, (what, float(error.max()), int(error.argmax()))


VALUE_RTOL = {F64: 1e-13, torch.float32: 2e-5}


@pytest.mark.parametrize("dtype", [F64, torch.float32])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind,seed", [("random", 0), ("random", 1), ("camera-plane", 2), ("camera-plane", 3)])
def test_projection_equals_fully_fused_projection(kind, seed, mode, dtype):
    settings = mode_settings(mode)
    scene = SCENES[kind](seed)
    ref = reference_projection(scene, settings, dtype)
    ours, _ = our_projection(scene, settings, dtype)
    rtol = VALUE_RTOL[dtype]

    # Depths for every Gaussian, centres wherever the kernel projects, conics and opacities wherever it
    # also keeps the opacity (on screen or not). A compensation is the root of a ratio of determinants:
    # where the filter-free one is ~0 (segments, points) it is rounding noise, and only the culling counts.
    assert_rows_close(ours.depths[..., None], ref["depths"][..., None], rtol, "depths")
    projected = in_range(ref, settings)
    assert_rows_close(ours.means2d[projected], ref["means2d"][projected], rtol, "means2d")
    opacities = ours.opacities.expand(2, -1)
    kept = projected & (ref["opacities"] >= ALPHA_THRESHOLD)
    assert_rows_close(opacities[kept][:, None], ref["opacities"][kept][:, None], rtol, "opacities")
    assert (opacities < ALPHA_THRESHOLD)[projected & ~kept].all()
    assert_rows_close(ours.conics[kept], ref["conics"][kept], rtol, "conics")
    if mode == "classic":
        assert ours.opacities.shape == (1, len(scene["opacities"]))
    else:
        assert ours.opacities.shape == (2, len(scene["opacities"]))
        raw = scene["opacities"].to(dtype).expand(2, -1)
        assert (opacities < raw)[projected & (raw > 0)].all(), "the compensation is below 1"
    if kind == "camera-plane":
        culled = OUTSIDE_DEPTH_RANGE + [len(DEGENERATE)]
        assert (ours.radii[0, culled] == 0).all() and not projected[0, culled].any()
        assert projected[0, len(OUTSIDE_DEPTH_RANGE)]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind,seed", [("random", 4), ("random", 5), ("camera-plane", 6)])
def test_radii_follow_the_kernels_rule_on_the_references_covariance(kind, seed, mode):
    """Exact in float64: the kernel's opacity-aware boxes of the reference's blurred covariance, culling
    everything the reference culls, and more: opacities below 1/255 and boxes shrunk off the image."""
    settings = mode_settings(mode)
    scene = SCENES[kind](seed)
    ref = reference_projection(scene, settings, F64)
    ours, _ = our_projection(scene, settings, F64)
    cov2d = ref["cov2d"]
    projected = in_range(ref, settings) & (torch.linalg.det(cov2d) > 0)
    cov_diag = torch.diagonal(cov2d, dim1=-2, dim2=-1)
    expected = kernel_radii(ref["means2d"].detach(), cov_diag, ref["opacities"].detach(), projected, WIDTH, HEIGHT)
    assert ours.radii.dtype == torch.int32
    assert torch.equal(ours.radii, expected)

    culled = (ours.radii == 0).all(-1)
    assert culled[(ref["radii"] == 0).all(-1)].all(), "everything gsplat's reference culls"
    assert culled[ref["opacities"] < ALPHA_THRESHOLD].all()
    assert 0 < culled.sum() < culled.numel()


@pytest.mark.parametrize("kind,seed", [("random", 7), ("camera-plane", 8)])
def test_radii_equal_the_references_boxes_where_extend_is_3_33(kind, seed):
    """sqrt(2 ln(255 o)) reaches 3.33 only for o >= exp(3.33² / 2) / 255 = 1.0006 (at o = 1 it is 3.329):
    the kernel clamps no opacity, and at o = 1.5 its boxes and culling are the reference's exactly."""
    scene = SCENES[kind](seed)
    scene["opacities"] = torch.full_like(scene["opacities"], 1.5)
    ref = reference_projection(scene, SETTINGS, F64)
    ours, _ = our_projection(scene, SETTINGS, F64)
    assert torch.equal(ours.radii, ref["radii"])
    assert (ours.radii > 0).any()


GRAD_RTOL = {F64: 1e-12, torch.float32: 1e-4}


@pytest.mark.parametrize("dtype", [F64, torch.float32])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind,seed", [("random", 9), ("degenerate", 10)])
def test_projection_gradients_equal_the_references(kind, seed, mode, dtype):
    """Autograd gradients of a random linear function of means2d, conics, depths and the opacities, over
    the Gaussians the kernel keeps, with respect to means, quats, scales and opacities."""
    settings = mode_settings(mode)
    scene = SCENES[kind](seed)
    ref = reference_projection(scene, settings, dtype)
    ours, leaves = our_projection(scene, settings, dtype)
    kept = (ours.radii > 0).all(-1, keepdim=True)  # [C, N, 1]
    outputs = (ours.means2d, ours.conics, ours.depths[..., None], ours.opacities.expand(2, -1)[..., None])
    ref_outputs = (ref["means2d"], ref["conics"], ref["depths"][..., None], ref["opacities"][..., None])
    gen = torch.Generator().manual_seed(100 + seed)
    weights = [torch.randn(t.shape, generator=gen, dtype=F64).to(dtype) * kept for t in outputs]
    sum((w * t).sum() for w, t in zip(weights, outputs)).backward()
    sum((w * t).sum() for w, t in zip(weights, ref_outputs)).backward()
    assert kept.sum() > 10
    for name, leaf in leaves.items():
        reference = ref["leaves"][name].grad
        assert torch.isfinite(leaf.grad).all() and torch.isfinite(reference).all(), name
        assert reference.abs().max() > 0, name
        assert gradient_error(leaf.grad, reference) < GRAD_RTOL[dtype], (name, gradient_error(leaf.grad, reference))


# --- tile intersections --------------------------------------------------------------------------------


def gsplat_bins(means2d, radii, depths, tile_size: int) -> dict[str, torch.Tensor]:
    """gsplat's reference binning: tiles_per_gauss [C, N], sorted isect_ids [I], flatten_ids [I],
    isect_offsets [C, tiles_y, tiles_x]."""
    tiles_x, tiles_y = math.ceil(WIDTH / tile_size), math.ceil(HEIGHT / tile_size)
    tiles_per_gauss, isect_ids, flatten_ids = _isect_tiles(means2d, radii, depths, tile_size, tiles_x, tiles_y)
    offsets = _isect_offset_encode(isect_ids, means2d.shape[0], tiles_x, tiles_y)
    return {"tiles_per_gauss": tiles_per_gauss, "isect_ids": isect_ids, "flatten_ids": flatten_ids, "offsets": offsets}


def per_tile_lists(bins) -> list[list[int]]:
    """Each tile's Gaussians (flattened [C * N] ids) in the order the compositor reads its chunks,
    asserting that empty slots only pad a tile's last chunk."""
    slots = torch.full((bins.num_chunks * bins.chunk_size,), -1, dtype=torch.int64)
    slots[bins.isect_slots] = bins.flatten_ids
    slots = slots.view(bins.num_chunks, bins.chunk_size)
    lists = []
    for tile in range(bins.num_tiles):
        sequence = slots[bins.chunk_tiles == tile].flatten()
        count = int((sequence >= 0).sum())
        assert (sequence[:count] >= 0).all() and (sequence[count:] == -1).all()
        assert len(sequence) - count < bins.chunk_size
        lists.append(sequence[:count].tolist())
    return lists


def projected_boxes(seed: int):
    """Centres, radii and depths as the rasterizer bins them: `project` of a random scene (float32)."""
    scene = random_scene(seed)
    proj, _ = our_projection(scene, SETTINGS, torch.float32)
    return proj.means2d.detach(), proj.radii, proj.depths.detach()


def synthetic_boxes(seed: int, tile_size: int):
    """Random boxes around and beyond the image, some culled (a radius 0), and boxes whose edges fall
    exactly on tile boundaries, where floor and ceil decide; distinct depths (gsplat's sort is unstable)."""
    gen = torch.Generator().manual_seed(seed)
    num = 40
    means2d = torch.rand(2, num, 2, generator=gen) * torch.tensor([WIDTH + 48.0, HEIGHT + 48.0]) - 24.0
    radii = torch.randint(0, 25, (2, num, 2), generator=gen, dtype=torch.int32)
    radii[:, :4, 0] = 0  # gsplat skips a box with either radius 0
    aligned = torch.randint(0, 4, (2, 8, 2), generator=gen)
    means2d[:, 4:12] = (aligned * tile_size).float()
    radii[:, 4:12] = (torch.randint(1, 3, (2, 8, 2), generator=gen) * tile_size).int()
    means2d[:, 12:16] = (aligned[:, :4] * tile_size).float() + 0.5  # a half pixel past a boundary
    depths = (torch.randperm(2 * num, generator=gen).float().view(2, num) + 1.0) * 0.37
    return means2d, radii, depths


@pytest.mark.parametrize("tile_size", [4, 8, 16])
@pytest.mark.parametrize("source,seed", [("projected", 11), ("synthetic", 12), ("synthetic", 13)])
def test_tile_bins_equal_isect_tiles(source, seed, tile_size):
    means2d, radii, depths = projected_boxes(seed) if source == "projected" else synthetic_boxes(seed, tile_size)
    ours = bin_gaussians(means2d, radii, depths, WIDTH, HEIGHT, tile_size, chunk_size=3)
    ref = gsplat_bins(means2d, radii, depths, tile_size)
    assert ref["isect_ids"].numel() > 50
    assert torch.equal(ours.tiles_per_gauss, ref["tiles_per_gauss"].long())
    assert torch.equal(ours.isect_ids, ref["isect_ids"])
    assert torch.equal(ours.flatten_ids, ref["flatten_ids"].long())
    assert torch.equal(ours.isect_offsets, ref["offsets"])
    # What the compositor reads: every tile's chunks, against gsplat's per-tile ranges (front to back).
    starts = ref["offsets"].flatten().tolist()
    ends = starts[1:] + [ref["flatten_ids"].numel()]
    gsplat_lists = [ref["flatten_ids"][start:end].tolist() for start, end in zip(starts, ends)]
    assert per_tile_lists(ours) == gsplat_lists


# --- SH colours ----------------------------------------------------------------------------------------

SH_C0 = 0.28209479177387814
SH_C1 = 0.4886025119029199
SH_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
SH_C3 = (-0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154, -0.4570457994644658,
         1.445305721320277, -0.5900435899266435)  # fmt: skip


def real_sh_basis(degree: int, dirs: torch.Tensor) -> torch.Tensor:
    """The real SH basis of the 3DGS code (`eval_sh`) at unit directions. [..., 3] -> [..., (degree + 1)²]"""
    x, y, z = dirs.unbind(-1)
    basis = [torch.full_like(x, SH_C0)]
    if degree >= 1:
        basis += [-SH_C1 * y, SH_C1 * z, -SH_C1 * x]
    if degree >= 2:
        xx, yy, zz = x * x, y * y, z * z
        basis += [
            SH_C2[0] * x * y,
            SH_C2[1] * y * z,
            SH_C2[2] * (2 * zz - xx - yy),
            SH_C2[3] * x * z,
            SH_C2[4] * (xx - yy),
        ]
    if degree >= 3:
        basis += [
            SH_C3[0] * y * (3 * xx - yy),
            SH_C3[1] * x * y * z,
            SH_C3[2] * y * (4 * zz - xx - yy),
            SH_C3[3] * z * (2 * zz - 3 * xx - 3 * yy),
            SH_C3[4] * x * (4 * zz - xx - yy),
            SH_C3[5] * z * (xx - yy),
            SH_C3[6] * x * (xx - 3 * yy),
        ]
    return torch.stack(basis, dim=-1)


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_gsplats_spherical_harmonics_are_the_real_sh_basis(degree):
    """On unnormalised directions (gsplat normalises them), with 16 coefficients of which it must read
    only the first (degree + 1)²."""
    gen = torch.Generator().manual_seed(14 + degree)
    dirs = torch.randn(500, 3, generator=gen, dtype=F64) * torch.rand(500, 1, generator=gen, dtype=F64) * 10
    coeffs = torch.randn(500, 16, 3, generator=gen, dtype=F64)
    expected = (real_sh_basis(degree, F.normalize(dirs, dim=-1))[..., None] * coeffs[:, : (degree + 1) ** 2]).sum(-2)
    torch.testing.assert_close(_spherical_harmonics(degree, dirs, coeffs), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_render_colour_of_one_opaque_centred_gaussian(degree):
    """A Gaussian centred on a pixel centre: sigma = 0 there, so alpha = min(0.999, opacity) = 0.999 and
    the pixel is 0.999 clamp_min(SH(dir) + 0.5, 0), dir from the camera centre to the Gaussian."""
    gen = torch.Generator().manual_seed(20 + degree)
    centre = torch.tensor([[0.3, -0.2, 0.5]], dtype=F64)
    eye = torch.tensor([[2.0, 1.0, -2.5]], dtype=F64)
    viewmat = look_at(eye, centre, torch.tensor([0.0, -1.0, 0.0], dtype=F64))
    camera = Cameras(viewmat, intrinsics(30.0, 30.0, 4.5, 3.5).double(), 9, 7)  # pixel (4, 3) centred
    sh = torch.randn(1, 16, 3, generator=gen, dtype=F64) * 0.2
    sh[0, 0] = torch.tensor([1.0, 0.5, -5.0])  # the last channel clamps to 0
    gaussians = Gaussians(
        means=centre,
        scales=torch.full((1, 3), math.log(0.1), dtype=F64),
        quats=torch.randn(1, 4, generator=gen, dtype=F64),
        opacities=torch.tensor([12.0], dtype=F64),  # sigmoid: 0.999994
        sh0=sh[:, :1],
        shN=sh[:, 1 : 1 + num_sh_rest(degree)],
        features=torch.zeros(1, 1, dtype=F64),
    )
    out = render(gaussians, camera, backend="torch")
    direction = F.normalize(centre - eye, dim=-1)
    expected = (real_sh_basis(degree, direction)[..., None] * sh[:, : (degree + 1) ** 2]).sum(-2) + 0.5
    expected = 0.999 * expected.clamp_min(0.0)
    assert expected[0, 2] == 0 and (expected[0, :2] > 0).all()
    torch.testing.assert_close(out.colors[0, 3, 4], expected[0], rtol=1e-9, atol=1e-9)
    assert float(out.alphas[0, 3, 4, 0]) == pytest.approx(0.999, abs=1e-12)


# --- compositing ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind,seed", [("random", 15), ("random", 16), ("degenerate", 17), ("dense", 18)])
def test_compositing_equals_the_per_pixel_reference(kind, seed, mode):
    """Colours, alphas and every input's gradient, in float64, against `reference_rasterize`."""
    scene = SCENES[kind](seed)
    settings = mode_settings(mode)
    viewmats, Ks = two_cameras()
    backgrounds = torch.rand(2, 3, generator=torch.Generator().manual_seed(seed), dtype=F64)
    names = ("means", "quats", "scales", "opacities", "colors")
    ours = {name: scene[name].clone().requires_grad_() for name in names}
    theirs = {name: scene[name].clone().requires_grad_() for name in names}
    image, alpha, _ = rasterize(*ours.values(), viewmats, Ks, WIDTH, HEIGHT, settings, backgrounds, backend="torch")
    ref_image, ref_alpha, ref_meta = reference_rasterize(
        *theirs.values(), viewmats, Ks, WIDTH, HEIGHT, near_plane=settings.near_plane, far_plane=settings.far_plane,
        eps2d=settings.eps2d, rasterize_mode=mode, backgrounds=backgrounds,
    )  # fmt: skip
    assert ref_alpha.max() > 0.5 and ref_meta["max_depth_complexity"] >= 3
    assert kind != "dense" or ref_meta["stopped"].float().mean() > 0.05
    torch.testing.assert_close(image, ref_image, rtol=0, atol=1e-12)
    torch.testing.assert_close(alpha, ref_alpha, rtol=0, atol=1e-12)

    gen = torch.Generator().manual_seed(200 + seed)
    grad_image = torch.randn(image.shape, generator=gen, dtype=F64)
    grad_alpha = torch.randn(alpha.shape, generator=gen, dtype=F64)
    ((image * grad_image).sum() + (alpha * grad_alpha).sum()).backward()
    ((ref_image * grad_image).sum() + (ref_alpha * grad_alpha).sum()).backward()
    for name in names:
        assert theirs[name].grad.abs().max() > 0, name
        error = gradient_error(ours[name].grad, theirs[name].grad)
        assert error < 1e-12, (name, error)
