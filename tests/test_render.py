"""The portable torch rasterizer against a dense float64 reference with gsplat's CUDA semantics.

Error criteria (shared by every comparison below):

- Images and alphas: max |out - ref| / max(1, max |ref|) over all pixels and channels. Colours, alphas
  and backgrounds lie in [0, 1], so this is the absolute error there; channels with a larger range
  (camera depth) are compared relative to their largest value. A float32 renderer summing a few dozen
  contributions is accurate to ~1e-6, so 1e-4 leaves a wide margin while still catching any semantic
  slip (a skipped 1/255 contribution alone moves a pixel by ~4e-3).
- Gradients, per parameter: max |g - g_ref| / max |g_ref|, i.e. relative to the largest entry of the
  reference gradient of that parameter (entry-wise relative errors blow up on entries that are ~0).
- Pixels where the reference sits within a relative 1e-4 of a discontinuous decision (alpha vs 1/255,
  alpha vs alpha_max, transmittance vs 1e-4) may legitimately go the other way in float32. They are
  excluded from the image comparison and get a zero upstream gradient; every test asserts that they
  are rare (< 1% of pixels), so nothing substantial escapes the check.
"""

from __future__ import annotations

import inspect
import math

import pytest
import torch
from reference_render import (
    gradient_error,
    reference_rasterize,
    reference_sh_colors,
    relative_error,
)

from protosaga_core.cameras import Cameras, intrinsics, look_at
from protosaga_core.gaussians import Gaussians, num_sh_rest
from protosaga_core.render import RasterSettings, composite, rasterize, render

VALUE_TOL_32 = 1e-4
GRAD_TOL_32 = 1e-3
TOL_64 = 1e-9
GRAD_NAMES = ("means", "quats", "scales", "opacities", "colors", "backgrounds")


# --- scenes ------------------------------------------------------------------------------------------


def orbit_cameras(gen: torch.Generator, num_cameras: int, width: int, height: int, radius: float = 4.0):
    """Cameras on a circle around the origin, looking roughly at it. viewmats [C, 4, 4], Ks [C, 3, 3]"""
    angle = torch.rand(num_cameras, generator=gen, dtype=torch.float64) * 2 * math.pi
    eye = torch.stack(
        [
            radius * torch.cos(angle),
            0.5 * torch.randn(num_cameras, generator=gen, dtype=torch.float64),
            radius * torch.sin(angle),
        ],
        dim=-1,
    )
    target = 0.2 * torch.randn(num_cameras, 3, generator=gen, dtype=torch.float64)
    viewmats = look_at(eye, target, torch.tensor([0.0, -1.0, 0.0], dtype=torch.float64))
    focal = 1.2 * max(width, height)
    Ks = intrinsics(focal, focal, width / 2, height / 2, num_cameras).double()
    return viewmats, Ks


def random_scene(
    seed: int,
    num: int,
    width: int,
    height: int,
    num_cameras: int,
    channels: int = 3,
    per_camera_colors: bool = False,
    scale: float = 0.08,
    opacity: tuple[float, float] = (0.05, 0.99),
    box: float = 1.0,
) -> dict:
    """Random Gaussians in [-box, box]^3 seen by orbiting cameras, all float64, with backgrounds."""
    gen = torch.Generator().manual_seed(seed)
    f64 = torch.float64
    lo, hi = opacity
    scene = {
        "means": (torch.rand(num, 3, generator=gen, dtype=f64) * 2 - 1) * box,
        "quats": torch.randn(num, 4, generator=gen, dtype=f64),  # unnormalised on purpose
        "scales": torch.exp(torch.randn(num, 3, generator=gen, dtype=f64) * 0.5 + math.log(scale)),
        "opacities": lo + (hi - lo) * torch.rand(num, generator=gen, dtype=f64),
    }
    color_shape = (num_cameras, num, channels) if per_camera_colors else (num, channels)
    scene["colors"] = torch.rand(color_shape, generator=gen, dtype=f64)
    scene["viewmats"], scene["Ks"] = orbit_cameras(gen, num_cameras, width, height)
    scene["backgrounds"] = torch.rand(num_cameras, channels, generator=gen, dtype=f64)
    scene["width"], scene["height"] = width, height
    return scene


def camera_space_scene(pixels, depths, scales, opacities, width, height, focal=30.0, seed=0, channels=3):
    """Gaussians placed by pixel position and depth in one identity-pose camera.

    Scales are `scales` times a random anisotropy factor in [0.7, 1.4] per axis, so that rotations
    matter (an isotropic Gaussian's quaternion gradient is zero)."""
    gen = torch.Generator().manual_seed(seed)
    f64 = torch.float64
    pixels = torch.as_tensor(pixels, dtype=f64).reshape(-1, 2)
    depths = torch.as_tensor(depths, dtype=f64).reshape(-1)
    num = pixels.shape[0]
    cx, cy = width / 2, height / 2
    means = torch.stack(
        [(pixels[:, 0] - cx) / focal * depths, (pixels[:, 1] - cy) / focal * depths, depths], dim=-1
    )
    return {
        "means": means,
        "quats": torch.randn(num, 4, generator=gen, dtype=f64),
        "scales": torch.as_tensor(scales, dtype=f64).reshape(-1, 1)
        * torch.exp(torch.rand(num, 3, generator=gen, dtype=f64) * 0.7 - 0.35),
        "opacities": torch.as_tensor(opacities, dtype=f64).reshape(-1).expand(num).clone(),
        "colors": torch.rand(num, channels, generator=gen, dtype=f64),
        "viewmats": torch.eye(4, dtype=f64)[None],
        "Ks": intrinsics(focal, focal, cx, cy).double(),
        "backgrounds": torch.rand(1, channels, generator=gen, dtype=f64),
        "width": width,
        "height": height,
    }


def concat_scenes(a: dict, b: dict) -> dict:
    out = dict(a)
    for name in ("means", "quats", "scales", "opacities", "colors"):
        out[name] = torch.cat([a[name], b[name]], dim=-2 if name == "colors" else 0)
    return out


# --- comparison --------------------------------------------------------------------------------------


def run_torch(scene: dict, dtype=torch.float32, settings: RasterSettings = RasterSettings()):
    """Render with the torch backend from fresh leaves; returns (image, alpha, meta, leaves)."""
    leaves = {
        name: scene[name].to(dtype).clone().requires_grad_()
        for name in GRAD_NAMES
        if scene.get(name) is not None
    }
    image, alpha, meta = rasterize(
        leaves["means"],
        leaves["quats"],
        leaves["scales"],
        leaves["opacities"],
        leaves["colors"],
        scene["viewmats"].to(dtype),
        scene["Ks"].to(dtype),
        scene["width"],
        scene["height"],
        settings,
        leaves.get("backgrounds"),
        backend="torch",
    )
    return image, alpha, meta, leaves


def run_reference(scene: dict, settings: RasterSettings = RasterSettings()):
    leaves = {name: scene[name].double().clone().requires_grad_() for name in GRAD_NAMES if scene.get(name) is not None}
    image, alpha, meta = reference_rasterize(
        leaves["means"],
        leaves["quats"],
        leaves["scales"],
        leaves["opacities"],
        leaves["colors"],
        scene["viewmats"].double(),
        scene["Ks"].double(),
        scene["width"],
        scene["height"],
        alpha_max=settings.alpha_max,
        near_plane=settings.near_plane,
        far_plane=settings.far_plane,
        eps2d=settings.eps2d,
        rasterize_mode=settings.rasterize_mode,
        backgrounds=leaves.get("backgrounds"),
    )
    return image, alpha, meta, leaves


def compare_with_reference(
    scene: dict,
    dtype=torch.float32,
    settings: RasterSettings = RasterSettings(),
    value_tol: float | None = None,
    grad_tol: float | None = None,
    seed: int = 0,
    check_radii: bool = True,
) -> dict:
    """Forward and backward of the torch backend vs the reference; asserts the tolerances.

    The upstream gradient is random on both the colours and the alphas (zero on ambiguous pixels).
    """
    value_tol = value_tol if value_tol is not None else (VALUE_TOL_32 if dtype == torch.float32 else TOL_64)
    grad_tol = grad_tol if grad_tol is not None else (GRAD_TOL_32 if dtype == torch.float32 else TOL_64)
    image, alpha, meta, leaves = run_torch(scene, dtype, settings)
    ref_image, ref_alpha, ref_meta, ref_leaves = run_reference(scene, settings)

    num_cameras = scene["viewmats"].shape[0]
    height, width = scene["height"], scene["width"]
    channels = scene["colors"].shape[-1]
    assert image.shape == (num_cameras, height, width, channels) and image.dtype == dtype
    assert alpha.shape == (num_cameras, height, width, 1) and alpha.dtype == dtype

    ambiguous = ref_meta["ambiguous"]
    assert ambiguous.float().mean() < 0.01, "too many ambiguous pixels for a meaningful comparison"
    keep = ~ambiguous[..., None]
    errors = {"image": relative_error(image, ref_image, keep), "alpha": relative_error(alpha, ref_alpha, keep)}
    assert errors["image"] < value_tol, errors
    assert errors["alpha"] < value_tol, errors
    if check_radii:
        assert meta["radii"].dtype == torch.int32
        assert torch.equal(meta["radii"], ref_meta["radii"])
        visible = (ref_meta["radii"] > 0).all(-1)
        for name in ("means2d", "depths", "conics", "opacities"):
            rel = relative_error(meta[name][visible], ref_meta[name][visible])
            assert rel < value_tol, (name, rel)

    gen = torch.Generator().manual_seed(1000 + seed)
    grad_image = torch.randn(ref_image.shape, generator=gen, dtype=torch.float64) * keep
    grad_alpha = torch.randn(ref_alpha.shape, generator=gen, dtype=torch.float64) * keep
    ((image * grad_image.to(dtype)).sum() + (alpha * grad_alpha.to(dtype)).sum()).backward()
    ((ref_image * grad_image).sum() + (ref_alpha * grad_alpha).sum()).backward()
    for name, leaf in leaves.items():
        assert leaf.grad is None or torch.isfinite(leaf.grad).all(), name
        errors[name] = gradient_error(leaf.grad, ref_leaves[name].grad)
        assert errors[name] < grad_tol, (name, errors)
    return {
        "errors": errors,
        "image": image,
        "alpha": alpha,
        "meta": meta,
        "grads": {name: leaf.grad for name, leaf in leaves.items()},
        "ref_image": ref_image,
        "ref_alpha": ref_alpha,
        "ref_meta": ref_meta,
        "ref_grads": {name: leaf.grad for name, leaf in ref_leaves.items()},
    }


def test_reference_is_importable_from_the_tests_folder():
    import reference_render

    assert reference_render.reference_rasterize is reference_rasterize
    source = inspect.getsource(reference_render)
    assert "from protosaga" not in source and "import protosaga" not in source


# --- random scenes -----------------------------------------------------------------------------------

RANDOM_CASES = [
    # seed, N, width, height, cameras, channels, per-camera colours
    (0, 30, 16, 16, 1, 3, False),
    (1, 120, 37, 29, 2, 3, False),
    (2, 200, 50, 23, 3, 5, False),
    (3, 150, 29, 37, 2, 3, True),
]


@pytest.mark.parametrize("seed,num,width,height,cams,channels,per_camera", RANDOM_CASES)
def test_random_scene_float32(seed, num, width, height, cams, channels, per_camera):
    scene = random_scene(seed, num, width, height, cams, channels, per_camera)
    result = compare_with_reference(scene, seed=seed)
    # The scene is not trivially empty: many Gaussians are visible and pixels are covered.
    assert (result["ref_meta"]["radii"] > 0).all(-1).sum() > num // 2
    assert result["ref_alpha"].max() > 0.5


@pytest.mark.parametrize("seed,num,width,height,cams,channels,per_camera", RANDOM_CASES[1:3])
def test_random_scene_float64(seed, num, width, height, cams, channels, per_camera):
    scene = random_scene(seed, num, width, height, cams, channels, per_camera)
    compare_with_reference(scene, dtype=torch.float64, seed=seed)


# --- culling -----------------------------------------------------------------------------------------


def test_culled_gaussians_contribute_nothing():
    """Behind the camera, nearer than near, beyond far, outside the image, opacity < 1/255: radii 0, no
    contribution and an exactly zero gradient."""
    width, height = 24, 20
    visible = camera_space_scene(
        pixels=[[6, 5], [12, 10], [18, 14], [10, 16], [15, 6]],
        depths=[2.0, 3.0, 2.5, 4.0, 3.5],
        scales=0.15,
        opacities=[0.8, 0.6, 0.9, 0.7, 0.5],
        width=width,
        height=height,
        seed=1,
    )
    culled = camera_space_scene(
        pixels=[[12, 10], [12, 10], [12, 10], [-200, 10], [12, 300], [11, 9], [13, 11]],
        depths=[-2.0, 0.005, 60.0, 3.0, 3.0, 2.0, 2.2],
        scales=0.3,
        opacities=[0.9, 0.9, 0.9, 0.9, 0.9, 1e-6, 0.5 / 255],
        width=width,
        height=height,
        seed=2,
    )
    num_visible = 5
    scene = concat_scenes(visible, culled)
    settings = RasterSettings(far_plane=50.0)
    result = compare_with_reference(scene, settings=settings)

    radii = result["meta"]["radii"]
    assert (radii[:, :num_visible] > 0).all()
    assert (radii[:, num_visible:] == 0).all()
    for name in ("means", "quats", "scales", "opacities", "colors"):
        grad = result["grads"][name]
        culled_grad = grad[..., num_visible:, :] if name == "colors" else grad[num_visible:]
        assert (culled_grad == 0).all(), name
        visible_grad = grad[..., :num_visible, :] if name == "colors" else grad[:num_visible]
        assert visible_grad.abs().sum() > 0, name

    # The same image as without them.
    image, alpha, _, _ = run_torch(visible, settings=settings)
    assert torch.allclose(result["image"], image, atol=1e-6)
    assert torch.allclose(result["alpha"], alpha, atol=1e-6)


def test_zero_opacity_is_culled():
    """Opacity 1e-6 (a logit of about -14) is culled: no contribution, zero gradients."""
    scene = random_scene(5, 60, 20, 18, 1)
    scene["opacities"][:20] = 1e-6
    result = compare_with_reference(scene)
    assert (result["meta"]["radii"][:, :20] == 0).all()
    for name in ("means", "quats", "scales", "opacities"):
        assert (result["grads"][name][:20] == 0).all(), name
    assert (result["grads"]["colors"][:20] == 0).all()
    rest = {**scene, **{n: scene[n][20:] for n in ("means", "quats", "scales", "opacities", "colors")}}
    image, alpha, _, _ = run_torch(rest)
    assert torch.allclose(result["image"], image, atol=1e-6)


def test_exactly_zero_opacity_has_zero_gradient():
    scene = random_scene(5, 60, 20, 18, 1)
    logits = torch.logit(scene["opacities"].float())
    logits[:5] = -200.0  # sigmoid underflows to exactly 0 in float32
    logits.requires_grad_()
    image, alpha, meta = rasterize(
        scene["means"].float(),
        scene["quats"].float(),
        scene["scales"].float(),
        torch.sigmoid(logits),
        scene["colors"].float(),
        scene["viewmats"].float(),
        scene["Ks"].float(),
        scene["width"],
        scene["height"],
        backend="torch",
    )
    (image.sum() + alpha.sum()).backward()
    assert (meta["radii"][:, :5] == 0).all()
    assert torch.isfinite(logits.grad).all(), logits.grad[:6]
    assert (logits.grad[:5] == 0).all()


def test_gaussians_straddling_the_border():
    width, height = 30, 22
    gen = torch.Generator().manual_seed(3)
    # Centres along all four edges, half of them just outside the image.
    edge = torch.rand(40, generator=gen, dtype=torch.float64)
    offset = torch.rand(40, generator=gen, dtype=torch.float64) * 8 - 4  # [-4, 4] px around the edge
    pixels = torch.zeros(40, 2, dtype=torch.float64)
    pixels[:10] = torch.stack([edge[:10] * width, offset[:10]], -1)  # top
    pixels[10:20] = torch.stack([edge[10:20] * width, height + offset[10:20]], -1)  # bottom
    pixels[20:30] = torch.stack([offset[20:30], edge[20:30] * height], -1)  # left
    pixels[30:] = torch.stack([width + offset[30:], edge[30:] * height], -1)  # right
    depths = 2.0 + torch.rand(40, generator=gen, dtype=torch.float64)
    scales = 0.05 + 0.1 * torch.rand(40, generator=gen, dtype=torch.float64)
    scene = camera_space_scene(pixels, depths, 0.1, 0.7, width, height, seed=3)
    scene["scales"] = scales[:, None] * torch.exp(0.3 * torch.randn(40, 3, generator=gen, dtype=torch.float64))
    scene["opacities"] = 0.2 + 0.79 * torch.rand(40, generator=gen, dtype=torch.float64)
    result = compare_with_reference(scene)

    outside = (pixels[:, 0] < 0) | (pixels[:, 0] > width) | (pixels[:, 1] < 0) | (pixels[:, 1] > height)
    kept_outside = outside & (result["meta"]["radii"][0] > 0).all(-1)
    assert kept_outside.sum() >= 5, "some centres outside the image still reach into it"
    assert result["grads"]["means"][kept_outside].abs().sum() > 0
    border = torch.cat([result["ref_alpha"][0, 0], result["ref_alpha"][0, -1], result["ref_alpha"][0, :, 0]])
    assert border.max() > 0.1


def test_huge_and_tiny_scales():
    """A Gaussian covering the whole image, one far outside the view whose Jacobian is clamped, and
    sub-pixel ones dominated by the 0.3 px² low-pass filter."""
    width, height = 26, 21
    huge = camera_space_scene([[13, 10]], [4.0], [6.0], [0.6], width, height, seed=4)
    clamped = camera_space_scene([[-60, 10]], [3.0], [4.0], [0.7], width, height, seed=5)
    gen = torch.Generator().manual_seed(6)
    tiny_pixels = torch.rand(25, 2, generator=gen, dtype=torch.float64) * torch.tensor([width, height])
    tiny = camera_space_scene(tiny_pixels, 1.0 + torch.rand(25, generator=gen), 1e-5, 0.9, width, height, seed=6)
    scene = concat_scenes(concat_scenes(huge, clamped), tiny)
    result = compare_with_reference(scene)

    ref_alpha = result["ref_alpha"]
    assert ref_alpha.min() > 0.05, "the huge Gaussian covers every pixel"
    radii = result["meta"]["radii"][0]
    assert (radii[0] > max(width, height)).all()
    assert (radii[1] > 0).all(), "the clamped off-screen Gaussian reaches into the image"
    # Sub-pixel Gaussians: 2D covariance ~ 0.3 I, radius ceil(extend * sqrt(0.3)) <= 2.
    assert ((radii[2:] >= 1) & (radii[2:] <= 2)).all()
    conics = result["meta"]["conics"][0, 2:].detach().double()
    assert torch.allclose(conics[:, 0], torch.full_like(conics[:, 0], 1 / 0.3), rtol=1e-3)


def test_every_gaussian_culled_gives_the_background():
    """A camera that sees nothing (all Gaussians behind it): background, alpha 0, zero gradients."""
    scene = random_scene(8, 30, 20, 18, 1)
    scene["viewmats"] = scene["viewmats"].clone()
    scene["viewmats"][:, 2, 3] -= 20.0  # push the scene behind the camera
    image, alpha, meta, leaves = run_torch(scene)
    assert (meta["radii"] == 0).all()
    assert torch.equal(alpha, torch.zeros_like(alpha))
    assert torch.allclose(image, leaves["backgrounds"][:, None, None, :].expand_as(image).detach())
    (image.sum() + alpha.sum()).backward()
    assert (leaves["means"].grad == 0).all() and (leaves["opacities"].grad == 0).all()


def test_empty_scene():
    width, height = 19, 13
    empty = torch.zeros(0, 3, dtype=torch.float64)
    gen = torch.Generator().manual_seed(7)
    viewmats, Ks = orbit_cameras(gen, 2, width, height)
    backgrounds = torch.rand(2, 4, generator=gen).requires_grad_()
    means = empty.float().requires_grad_()
    image, alpha, meta = rasterize(
        means,
        torch.zeros(0, 4),
        torch.zeros(0, 3),
        torch.zeros(0),
        torch.zeros(0, 4),
        viewmats.float(),
        Ks.float(),
        width,
        height,
        backgrounds=backgrounds,
        backend="torch",
    )
    assert image.shape == (2, height, width, 4) and alpha.shape == (2, height, width, 1)
    assert torch.equal(alpha, torch.zeros_like(alpha))
    assert torch.equal(image, backgrounds[:, None, None, :].expand_as(image).detach())
    assert meta["radii"].shape == (2, 0, 2) and meta["means2d"].shape == (2, 0, 2)
    assert meta["isect_ids"].numel() == 0
    grad = torch.randn(image.shape, generator=gen)
    (image * grad).sum().backward()
    assert torch.allclose(backgrounds.grad, grad.sum(dim=(1, 2)), atol=1e-4)
    # And without a background: black.
    image, alpha, _ = rasterize(
        empty.float(), torch.zeros(0, 4), torch.zeros(0, 3), torch.zeros(0), torch.zeros(0, 3),
        viewmats.float(), Ks.float(), width, height, backend="torch",
    )
    assert torch.equal(image, torch.zeros(2, height, width, 3)) and torch.equal(alpha, torch.zeros_like(alpha))


@pytest.mark.parametrize("width,height", [(16, 16), (17, 5), (3, 40), (33, 1), (48, 32)])
def test_image_sizes(width, height):
    """Non-square sizes and sizes that are not multiples of the tile size."""
    scene = random_scene(11, 60, width, height, 1, scale=0.15)
    result = compare_with_reference(scene)
    assert result["ref_alpha"].max() > 0.3


def test_several_cameras_shared_and_per_camera_colors():
    width, height = 27, 19
    shared = random_scene(12, 100, width, height, 3)
    result_shared = compare_with_reference(shared)
    per_camera = dict(shared)
    gen = torch.Generator().manual_seed(13)
    per_camera["colors"] = torch.rand(3, 100, 3, generator=gen, dtype=torch.float64)
    result_per = compare_with_reference(per_camera)
    # Every camera sees something, and the views differ.
    assert (result_shared["ref_alpha"].amax(dim=(1, 2, 3)) > 0.3).all()
    assert (result_shared["image"][0] - result_shared["image"][1]).abs().max() > 0.1
    # Camera i of the batch equals camera i rendered alone.
    for cam in range(3):
        alone = dict(per_camera)
        alone["viewmats"], alone["Ks"] = per_camera["viewmats"][cam : cam + 1], per_camera["Ks"][cam : cam + 1]
        alone["colors"], alone["backgrounds"] = per_camera["colors"][cam], per_camera["backgrounds"][cam : cam + 1]
        image, alpha, meta, _ = run_torch(alone)
        assert torch.allclose(image[0], result_per["image"][cam], atol=1e-6)
        assert torch.allclose(alpha[0], result_per["alpha"][cam], atol=1e-6)
        assert torch.equal(meta["radii"][0], result_per["meta"]["radii"][cam])


@pytest.mark.parametrize("alpha_max", [0.99, 0.999])
def test_alpha_max(alpha_max):
    """Near-opaque Gaussians (opacity up to 0.9999): the clamp decides the centre pixels."""
    scene = random_scene(14, 40, 24, 20, 1, scale=0.25, opacity=(0.995, 0.9999))
    settings = RasterSettings(alpha_max=alpha_max)
    result = compare_with_reference(scene, settings=settings)
    compare_with_reference(scene, dtype=torch.float64, settings=settings)
    other = RasterSettings(alpha_max=0.999 if alpha_max == 0.99 else 0.99)
    image, alpha, _, _ = run_torch(scene, settings=other)
    assert (image - result["image"]).abs().max() > 1e-3, "the clamp matters in this scene"


def test_transmittance_stop_in_dense_scene():
    """Many opaque overlapping Gaussians: most pixels stop early; values and gradients still match."""
    scene = random_scene(15, 120, 24, 20, 2, scale=0.3, opacity=(0.7, 0.99), box=0.6)
    result = compare_with_reference(scene)
    assert result["ref_meta"]["stopped"].float().mean() > 0.3
    assert result["ref_alpha"].max() > 0.999  # < 0.9999 always: the stop keeps T above 1e-4
    compare_with_reference(scene, dtype=torch.float64)


def test_transmittance_stop_excludes_the_crossing_gaussian():
    """Four Gaussians centred exactly on one pixel centre (alpha = opacity there): 0.95 three times
    leaves T = 1.25e-4 > 1e-4; the fourth (0.5) would bring T to 6.25e-5 <= 1e-4 and is left out."""
    width, height = 17, 17
    scene = camera_space_scene(
        pixels=[[8.5, 8.5]] * 4, depths=[1.0, 1.1, 1.2, 1.3], scales=0.2,
        opacities=[0.95, 0.95, 0.95, 0.5], width=width, height=height, seed=16,
    )
    scene["backgrounds"] = None
    for dtype in (torch.float32, torch.float64):
        image, alpha, meta, leaves = run_torch(scene, dtype)
        colors = scene["colors"].to(dtype)
        expected = 0.95 * colors[0] + 0.05 * 0.95 * colors[1] + 0.05**2 * 0.95 * colors[2]
        tol = 1e-6 if dtype == torch.float32 else 1e-12
        assert torch.allclose(image[0, 8, 8], expected, atol=tol)
        assert abs(float(alpha[0, 8, 8, 0].detach()) - (1 - 0.05**3)) < tol
        (image[0, 8, 8].sum() + alpha[0, 8, 8, 0]).backward()
        assert (leaves["colors"].grad[3] == 0).all()
        assert leaves["opacities"].grad[3] == 0
        assert (leaves["colors"].grad[:3] > 0).all()
    compare_with_reference(scene)


_BASELINES: dict = {}


@pytest.mark.parametrize("tile_size,chunk_size", [(16, 32), (8, 32), (4, 16), (8, 1), (16, 5)])
def test_tile_and_chunk_sizes_give_the_same_image(tile_size, chunk_size):
    """Each combination matches the reference, and all match each other more tightly."""
    scene = random_scene(17, 120, 37, 29, 2, scale=0.12)
    settings = RasterSettings(tile_size=tile_size, chunk_size=chunk_size)
    result = compare_with_reference(scene, settings=settings)
    if "tile" not in _BASELINES:
        _BASELINES["tile"] = compare_with_reference(scene, settings=RasterSettings(tile_size=16, chunk_size=32))
    baseline = _BASELINES["tile"]
    assert relative_error(result["image"], baseline["image"]) < 1e-5
    assert relative_error(result["alpha"], baseline["alpha"]) < 1e-5
    for name in GRAD_NAMES:
        assert gradient_error(result["grads"][name], baseline["grads"][name]) < 1e-4, name
    assert result["meta"]["tile_size"] == tile_size


@pytest.mark.parametrize("block_elements", [1, 1 << 10])
def test_gradient_path_in_blocks_matches_the_reference(monkeypatch, block_elements):
    """With gradients the rasterizer composites block by block of whole tiles (one tile per block at
    the smallest); 4-Gaussian chunks give tiles several chunks each, split across blocks never."""
    monkeypatch.setattr(composite, "GRADIENT_BLOCK_ELEMENTS", block_elements)
    scene = random_scene(2, 200, 50, 23, 3, 5, False)
    compare_with_reference(scene, dtype=torch.float64, settings=RasterSettings(chunk_size=4))
    compare_with_reference(scene, settings=RasterSettings(chunk_size=4))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("seed,num,width,height,cams,channels,per_camera", RANDOM_CASES + [(17, 120, 37, 29, 2, 3, False)])
def test_forward_only_path_matches_the_reference(seed, num, width, height, cams, channels, per_camera, dtype):
    """Without gradients the rasterizer composites forward-only, in 8-pixel tiles by default."""
    scene = random_scene(seed, num, width, height, cams, channels, per_camera)
    ref_image, ref_alpha, ref_meta, _ = run_reference(scene)
    with torch.no_grad():
        image, alpha, meta, _ = run_torch(scene, dtype)
    assert meta["tile_size"] == 8 and image.dtype == alpha.dtype == dtype
    keep = ~ref_meta["ambiguous"][..., None]
    tolerance = VALUE_TOL_32 if dtype == torch.float32 else TOL_64
    assert relative_error(image, ref_image, keep) < tolerance
    assert relative_error(alpha, ref_alpha, keep) < tolerance
    assert torch.equal(meta["radii"], ref_meta["radii"])


@pytest.mark.parametrize("tile_size,chunk_size", [(4, 32), (16, 5), (8, 1)])
def test_forward_only_path_tile_and_chunk_sizes(tile_size, chunk_size):
    scene = random_scene(17, 120, 37, 29, 2, scale=0.12)
    ref_image, ref_alpha, ref_meta, _ = run_reference(scene)
    with torch.no_grad():
        image, alpha, meta, _ = run_torch(scene, settings=RasterSettings(tile_size=tile_size, chunk_size=chunk_size))
    keep = ~ref_meta["ambiguous"][..., None]
    assert relative_error(image, ref_image, keep) < VALUE_TOL_32 and relative_error(alpha, ref_alpha, keep) < VALUE_TOL_32
    assert meta["tile_size"] == tile_size


# --- antialiased mode --------------------------------------------------------------------------------

ANTIALIASED = RasterSettings(rasterize_mode="antialiased")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("seed,num,width,height,cams,channels,per_camera", RANDOM_CASES[:3])
def test_antialiased_random_scene(seed, num, width, height, cams, channels, per_camera, dtype):
    scene = random_scene(seed, num, width, height, cams, channels, per_camera)
    result = compare_with_reference(scene, dtype=dtype, settings=ANTIALIASED, seed=seed)
    assert result["meta"]["opacities"].shape == (cams, num)
    assert (result["ref_meta"]["radii"] > 0).all(-1).sum() > num // 2


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_antialiased_forward_only_path(dtype):
    scene = random_scene(17, 120, 37, 29, 2, scale=0.12)
    ref_image, ref_alpha, ref_meta, _ = run_reference(scene, ANTIALIASED)
    with torch.no_grad():
        image, alpha, meta, _ = run_torch(scene, dtype, ANTIALIASED)
    keep = ~ref_meta["ambiguous"][..., None]
    tolerance = VALUE_TOL_32 if dtype == torch.float32 else TOL_64
    assert relative_error(image, ref_image, keep) < tolerance
    assert relative_error(alpha, ref_alpha, keep) < tolerance
    assert torch.equal(meta["radii"], ref_meta["radii"])


def test_antialiasing_fades_subpixel_gaussians():
    """Sub-pixel Gaussians, whose 2D covariance the 0.3 px² filter dominates, fade by their compensation;
    one faint enough falls below 1/255 and is culled, with a zero gradient, where classic mode draws it."""
    width, height = 24, 20
    gen = torch.Generator().manual_seed(18)
    pixels = torch.rand(30, 2, generator=gen, dtype=torch.float64) * torch.tensor([width, height])
    small = camera_space_scene(pixels, 2.0 + torch.rand(30, generator=gen), 0.02, 0.9, width, height, seed=18)
    faint = camera_space_scene([[12.3, 9.6]], [2.0], [0.003], [0.05], width, height, seed=19)
    scene = concat_scenes(small, faint)
    result = compare_with_reference(scene, settings=ANTIALIASED)
    classic = compare_with_reference(scene)

    opacities = result["meta"]["opacities"][0].detach()
    assert ((opacities[:30] > 0.05) & (opacities[:30] < 0.6)).all(), "every small Gaussian fades"
    assert (classic["meta"]["radii"][0, 30] > 0).all() and (result["meta"]["radii"][0, 30] == 0).all()
    for name in ("means", "quats", "scales", "opacities"):
        assert (result["grads"][name][30] == 0).all(), name
        assert result["grads"][name][:30].abs().sum() > 0, name
    assert (result["image"] - classic["image"]).abs().max() > 0.1


def test_antialiasing_culls_points_with_a_finite_zero_gradient():
    """A point (all scales 0) has a 2D covariance of 0 before the filter: compensation 0, culled, and the
    root's infinite derivative at 0 must not turn its zero gradient into NaN. Classic mode draws it."""
    pixels, depths = [[6.5, 5.5], [10.5, 8.5], [4.0, 9.0]], [2.0, 2.5, 3.0]
    scene = camera_space_scene(pixels, depths, [0.2, 0.0, 0.0], 0.8, 16, 14, seed=20)
    scene["scales"][2, 0] = 0.3  # a segment: two zero scales
    image, alpha, meta, leaves = run_torch(scene, settings=ANTIALIASED)
    (image.sum() + alpha.sum()).backward()
    assert (meta["radii"][0, 1:] == 0).all() and (meta["radii"][0, 0] > 0).all()
    for name, leaf in leaves.items():
        assert torch.isfinite(leaf.grad).all(), name
        if name not in ("backgrounds", "colors"):
            assert (leaf.grad[1:] == 0).all(), name
    _, _, classic_meta, _ = run_torch(scene)
    assert (classic_meta["radii"][0] > 0).all()


def test_unknown_rasterize_mode_is_refused():
    with pytest.raises(ValueError, match="rasterize_mode"):
        RasterSettings(rasterize_mode="mip")


# --- the render() interface --------------------------------------------------------------------------


def random_gaussians(seed: int, num: int, sh_degree: int = 3, feature_dim: int = 4, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    opacity = 0.05 + 0.94 * torch.rand(num, generator=gen, dtype=torch.float64)
    return Gaussians(
        means=torch.rand(num, 3, generator=gen, dtype=torch.float64) * 2 - 1,
        scales=torch.randn(num, 3, generator=gen, dtype=torch.float64) * 0.4 + math.log(0.1),
        quats=torch.randn(num, 4, generator=gen, dtype=torch.float64),
        opacities=torch.logit(opacity),
        sh0=torch.randn(num, 1, 3, generator=gen, dtype=torch.float64),
        shN=0.3 * torch.randn(num, num_sh_rest(sh_degree), 3, generator=gen, dtype=torch.float64),
        features=torch.randn(num, feature_dim, generator=gen, dtype=torch.float64),
    ).map(lambda t: t.to(dtype))


def random_cameras(seed: int, num_cameras: int, width: int, height: int, dtype=torch.float32) -> Cameras:
    gen = torch.Generator().manual_seed(seed)
    viewmats, Ks = orbit_cameras(gen, num_cameras, width, height)
    return Cameras(viewmats.to(dtype), Ks.to(dtype), width, height)


def reference_render(gaussians, cameras, sh_degree, rgb, extras, depth, backgrounds):
    """render() rebuilt on the reference: same channel layout, activations written out here."""
    g = gaussians.map(lambda t: t.double())
    viewmats, Ks = cameras.viewmats.double(), cameras.Ks.double()
    num_cameras, num = viewmats.shape[0], g.means.shape[0]
    parts = []
    if rgb:
        sh = torch.cat([g.sh0, g.shN], dim=1)
        parts.append(reference_sh_colors(sh_degree, g.means, sh, viewmats))
    if extras is not None:
        parts.append(extras.double().expand(num_cameras, num, -1))
    if depth != "none":
        means_h = torch.cat([g.means, torch.ones(num, 1, dtype=torch.float64)], dim=-1)
        parts.append(torch.einsum("cj,nj->cn", viewmats[:, 2], means_h)[..., None])
    colors = torch.cat(parts, dim=-1)
    bg = None
    if backgrounds is not None:
        bg = torch.zeros(num_cameras, colors.shape[-1], dtype=torch.float64)
        bg[:, :3] = backgrounds.double().expand(num_cameras, 3)
    image, alpha, meta = reference_rasterize(
        g.means,
        g.quats / g.quats.norm(dim=-1, keepdim=True),
        torch.exp(g.scales),
        torch.sigmoid(g.opacities),
        colors,
        viewmats,
        Ks,
        cameras.width,
        cameras.height,
        backgrounds=bg,
    )
    out, start = {}, 0
    if rgb:
        out["colors"], start = image[..., :3], 3
    if extras is not None:
        out["extras"], start = image[..., start : start + extras.shape[-1]], start + extras.shape[-1]
    if depth != "none":
        out["depths"] = image[..., start : start + 1]
        if depth == "ED":
            out["depths"] = out["depths"] / alpha.clamp_min(1e-10)
    out["alphas"] = alpha
    return out, meta


def compare_render(seed, sh_degree=None, rgb=True, use_extras=False, depth="none", use_background=False,
                   model_degree=3, width=23, height=17, num_cameras=2, num=80):
    """render() vs the reference for outputs and gradients of every raw parameter used."""
    model = random_gaussians(seed, num, sh_degree=model_degree)
    cameras = random_cameras(seed + 1, num_cameras, width, height)
    gen = torch.Generator().manual_seed(seed + 2)
    backgrounds = torch.rand(num_cameras, 3, generator=gen) if use_background else None
    params = model.as_parameter_dict()
    ref_params = {name: p.detach().double().requires_grad_() for name, p in params.items()}
    degree = model_degree if sh_degree is None else sh_degree

    out = render(Gaussians.from_tensors(params), cameras, sh_degree=sh_degree, rgb=rgb,
                 extras=params["features"] if use_extras else None, depth=depth,
                 backgrounds=backgrounds, backend="torch")
    ref_model = Gaussians.from_tensors(ref_params)
    ref, ref_meta = reference_render(ref_model, cameras, degree, rgb,
                                     ref_params["features"] if use_extras else None, depth, backgrounds)

    keep = ~ref_meta["ambiguous"][..., None]
    assert ref_meta["ambiguous"].float().mean() < 0.01
    loss, ref_loss = 0.0, 0.0
    for name in ("colors", "extras", "depths", "alphas"):
        value = getattr(out, name)
        if name not in ref:
            assert value is None, name
            continue
        mask = keep
        if name == "depths" and depth == "ED":
            # Expected depth = D / alpha is ill-conditioned where alpha ~ 0; compare covered pixels.
            mask = keep & (ref["alphas"] > 0.05)
        assert value.shape == ref[name].shape, name
        assert relative_error(value, ref[name], mask) < VALUE_TOL_32, (name, relative_error(value, ref[name], mask))
        upstream = torch.randn(ref[name].shape, generator=gen, dtype=torch.float64) * mask
        loss = loss + (value * upstream.float()).sum()
        ref_loss = ref_loss + (ref[name] * upstream).sum()
    loss.backward()
    ref_loss.backward()
    for name, param in params.items():
        if name == "features" and not use_extras:
            assert param.grad is None
            continue
        if name in ("sh0", "shN") and not rgb:
            assert param.grad is None
            continue
        assert param.grad is not None, name
        err = gradient_error(param.grad, ref_params[name].grad)
        assert err < GRAD_TOL_32, (name, err)
    return out, ref, params


@pytest.mark.parametrize("model_degree", [0, 3])
def test_render_rgb_from_sh(model_degree):
    out, ref, params = compare_render(20 + model_degree, model_degree=model_degree)
    assert out.extras is None and out.depths is None
    assert params["sh0"].grad.abs().sum() > 0
    if model_degree == 3:
        assert params["shN"].grad.abs().sum() > 0


def test_render_lower_sh_degree_than_the_model():
    out, ref, params = compare_render(30, sh_degree=1, model_degree=3)
    # Only the degree-1 bases (the first 3 of shN) get a gradient.
    assert params["shN"].grad[:, :3].abs().sum() > 0
    assert (params["shN"].grad[:, 3:] == 0).all()
    with pytest.raises(ValueError):
        model = random_gaussians(30, 10, sh_degree=1)
        render(model, random_cameras(31, 1, 8, 8), sh_degree=2, backend="torch")


@pytest.mark.parametrize("depth", ["D", "ED"])
def test_render_extras_depth_and_background(depth):
    out, ref, params = compare_render(40, use_extras=True, depth=depth, use_background=True, num=40)
    assert out.colors.shape[-1] == 3 and out.extras.shape[-1] == 4 and out.depths.shape[-1] == 1
    assert params["features"].grad.abs().sum() > 0


def test_background_only_on_rgb():
    model = random_gaussians(50, 15)
    cameras = random_cameras(51, 2, 21, 15)
    backgrounds = torch.tensor([0.2, 0.5, 0.9])
    out = render(model, cameras, extras=model.features, depth="D", backgrounds=backgrounds, backend="torch")
    plain = render(model, cameras, extras=model.features, depth="D", backend="torch")
    empty = out.alphas[..., 0] == 0
    assert empty.sum() > 10, "the scene leaves pixels uncovered"
    assert torch.allclose(out.colors[empty], backgrounds.expand(int(empty.sum()), 3))
    assert torch.allclose(out.colors, plain.colors + (1 - plain.alphas) * backgrounds, atol=1e-6)
    assert torch.equal(out.extras, plain.extras)
    assert torch.equal(out.depths, plain.depths)
    assert (out.extras[empty] == 0).all() and (out.depths[empty] == 0).all()


def test_render_without_rgb():
    out, ref, params = compare_render(60, rgb=False, use_extras=True, depth="D", num=40)
    assert out.colors is None
    with pytest.raises(ValueError):
        render(random_gaussians(61, 5), random_cameras(62, 1, 8, 8), rgb=False, backend="torch")


def test_meta_for_densification():
    model = random_gaussians(70, 50)
    model.opacities[:5] = -10.0  # opacity 4.5e-5 < 1/255: culled everywhere
    cameras = random_cameras(71, 2, 25, 18)
    params = model.as_parameter_dict()
    out = render(Gaussians.from_tensors(params), cameras, backend="torch")
    info = out.info
    means2d = info["means2d"]
    assert means2d.shape == (2, 50, 2) and means2d.requires_grad
    means2d.retain_grad()
    assert info["radii"].shape == (2, 50, 2) and info["radii"].dtype == torch.int32
    assert info["width"] == 25 and info["height"] == 18 and info["n_cameras"] == 2
    (out.colors.sum() + out.alphas.sum()).backward()
    visible = (info["radii"] > 0).all(-1)
    assert visible.any() and not visible[:, :5].any()
    assert means2d.grad is not None and means2d.grad.shape == (2, 50, 2)
    assert means2d.grad[visible].abs().sum(-1).gt(0).float().mean() > 0.8
    assert (means2d.grad[~visible] == 0).all()


def test_memory_grows_with_intersections_not_pixels():
    """2,000 tiny Gaussians at 512x512: the intersection list is O(N), far below pixels x N."""
    width = height = 512
    num = 2000
    gen = torch.Generator().manual_seed(80)
    pixels = torch.rand(num, 2, generator=gen, dtype=torch.float64) * width
    scene = camera_space_scene(pixels, 2.0 + torch.rand(num, generator=gen), 0.003, 0.8, width, height,
                               focal=400.0, seed=80)
    image, alpha, meta, leaves = run_torch(scene)
    num_isects = meta["isect_ids"].numel()
    # Each Gaussian touches at most (2 r / tile + 2)^2 tiles: O(N) for small radii, whatever the tile.
    tile = meta["tile_size"]
    radii = meta["radii"][0].double()
    bound = ((2 * radii[:, 0] / tile + 2) * (2 * radii[:, 1] / tile + 2)).sum()
    assert (radii <= 4).all()
    assert 0 < num_isects <= bound
    assert num_isects < width * height * num // 10_000
    assert meta["flatten_ids"].numel() == num_isects
    (image.sum() + alpha.sum()).backward()
    assert torch.isfinite(leaves["means"].grad).all()
    assert 0 < float(alpha.detach().max()) <= 0.999
    # Reference check on a crop: its own camera, principal point shifted to the crop's corner.
    crop = dict(scene)
    crop["width"], crop["height"] = 24, 20
    crop["Ks"] = scene["Ks"].clone()
    crop["Ks"][0, 0, 2] -= 100
    crop["Ks"][0, 1, 2] -= 200
    crop_image, crop_alpha, _, _ = run_torch(crop)
    assert crop_alpha.max() > 0.3
    assert relative_error(crop_image, image[:, 200:220, 100:124]) < VALUE_TOL_32
    assert relative_error(crop_alpha, alpha[:, 200:220, 100:124]) < VALUE_TOL_32
    compare_with_reference(crop)


# --- the gsplat backend's guards ---------------------------------------------------------------------


def test_gsplat_backend_needs_cuda():
    scene = random_scene(90, 10, 8, 8, 1)
    args = [scene[n].float() for n in ("means", "quats", "scales", "opacities", "colors", "viewmats", "Ks")]
    with pytest.raises(ValueError):
        rasterize(*args, 8, 8, backend="gsplat")
    with pytest.raises(ValueError):
        render(random_gaussians(91, 10), random_cameras(92, 1, 8, 8), backend="gsplat")


@pytest.mark.parametrize("labelled", [False, True])
def test_gsplat_path_renders_alpha_and_labels_without_any_channel(gsplat_emulated, labelled):
    """`render(rgb=False, labels=...)` with no labelled Gaussian asks gsplat for 0 channels, which it refuses;
    the viewer and segment do that whenever every instance is hidden."""
    gaussians, cameras = random_gaussians(94, 30), random_cameras(95, 2, 16, 12)
    labels = torch.zeros(30, dtype=torch.int64)
    if labelled:
        labels[::3] = 4
    with torch.no_grad():
        out = render(gaussians, cameras, rgb=False, labels=labels)
        plain = rasterize(
            gaussians.means, gaussians.activated_quats, gaussians.activated_scales, gaussians.activated_opacities,
            gaussians.means.new_zeros(30, 0), cameras.viewmats, cameras.Ks, 16, 12,
        )
    assert out.alphas.shape == (2, 12, 16, 1) and out.alphas.max() > 0
    assert set(out.labels.ids.unique().tolist()) == ({0, 4} if labelled else {0})
    assert plain[0].shape == (2, 12, 16, 0) and torch.equal(plain[1], out.alphas)


def test_gsplat_backend_refuses_other_alpha_max(monkeypatch):
    import gsplat

    from protosaga_core.render.gsplat_backend import rasterize_gsplat

    def no_cuda(*args, **kwargs):
        raise AssertionError("gsplat.rasterization must not be reached")

    monkeypatch.setattr(gsplat, "rasterization", no_cuda)
    scene = random_scene(93, 10, 8, 8, 1)
    args = [scene[n].float() for n in ("means", "quats", "scales", "opacities", "colors", "viewmats", "Ks")]
    with pytest.raises(ValueError, match="alpha"):
        rasterize_gsplat(*args, 8, 8, RasterSettings(alpha_max=0.99))


@pytest.mark.parametrize("mode", ["classic", "antialiased"])
def test_gsplat_backend_passes_the_settings_in_gsplats_api(monkeypatch, mode):
    import gsplat

    from protosaga_core.render.gsplat_backend import rasterize_gsplat

    signature = inspect.signature(gsplat.rasterization)
    calls = []

    def record(*args, **kwargs):
        calls.append(signature.bind(*args, **kwargs).arguments)  # only arguments gsplat takes
        return None, None, {}

    monkeypatch.setattr(gsplat, "rasterization", record)
    scene = random_scene(96, 10, 8, 8, 1)
    args = [scene[n].float() for n in ("means", "quats", "scales", "opacities", "colors", "viewmats", "Ks")]
    rasterize_gsplat(*args, 8, 8, RasterSettings(rasterize_mode=mode, eps2d=0.1))
    assert calls[0]["rasterize_mode"] == mode and calls[0]["eps2d"] == 0.1


def test_gaussian_in_the_camera_plane_gets_a_finite_zero_gradient():
    """A culled Gaussian at camera depth exactly 0 must not poison gradients with 0 * inf = NaN."""
    means = torch.tensor([[0.0, 0.0, 2.0], [0.3, -0.2, 0.0], [0.0, 0.0, -1e-30]], requires_grad=True)
    quats = torch.tensor([[1.0, 0.0, 0.0, 0.0]]).repeat(3, 1).requires_grad_()
    scales = torch.full((3, 3), 0.1, requires_grad=True)
    opacities = torch.full((3,), 0.8, requires_grad=True)
    colors = torch.rand(3, 3, requires_grad=True)
    K = torch.tensor([[[20.0, 0.0, 8.0], [0.0, 20.0, 8.0], [0.0, 0.0, 1.0]]])
    image, alpha, meta = rasterize(means, quats, scales, opacities, colors, torch.eye(4)[None], K, 16, 16, backend="torch")
    (image.sum() + alpha.sum()).backward()
    assert (meta["radii"][0, 1:] == 0).all()
    for tensor in (means, quats, scales, opacities, colors):
        assert torch.isfinite(tensor.grad).all()
        assert (tensor.grad[1:] == 0).all()
    assert means.grad[0].abs().sum() > 0


def test_gradients_repeat_bit_for_bit_with_several_threads():
    """Training must repeat exactly (a resumed run equals a straight one): no reduction whose order
    depends on the threads."""
    generator = torch.Generator().manual_seed(0)
    count = 4000
    means = (torch.rand(count, 3, generator=generator) - 0.5) * 2 + torch.tensor([0.0, 0.0, 4.0])
    inputs = (
        means, torch.randn(count, 4, generator=generator), torch.rand(count, 3, generator=generator) * 0.05 + 0.01,
        torch.rand(count, generator=generator), torch.rand(count, 19, generator=generator),
    )
    viewmat, K = torch.eye(4)[None], torch.tensor([[[60.0, 0.0, 32.0], [0.0, 60.0, 32.0], [0.0, 0.0, 1.0]]])

    def gradients() -> list[torch.Tensor]:
        leaves = [t.clone().requires_grad_(True) for t in inputs]
        image, alpha, _ = rasterize(*leaves, viewmat, K, 64, 64, RasterSettings())
        (image.square().sum() + alpha.sum()).backward()
        return [leaf.grad for leaf in leaves]

    threads = torch.get_num_threads()
    torch.set_num_threads(max(threads, 2))
    try:
        for first, second in zip(gradients(), gradients()):
            assert torch.equal(first, second)
    finally:
        torch.set_num_threads(threads)
