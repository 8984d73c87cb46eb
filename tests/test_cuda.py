"""gsplat's CUDA kernels against the project's torch rasterizer, both on the GPU: the two backends behind
`render` must give the same images, alphas, label maps and screen-space gradients. Runs only where CUDA
exists (`bench/gpu_check.sh` runs it first); everywhere else the gsplat path is checked against gsplat's
CPU reference functions (tests/test_gsplat_reference.py) and emulated (the `gsplat_emulated` fixture)."""

from __future__ import annotations

import pytest
import torch
from test_render import random_cameras, random_gaussians

from protosaga_core.device import gsplat_status
from protosaga_core.render import RasterSettings, render

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="hardware: needs a CUDA device")
CUDA = torch.device("cuda")
IMAGE_TOL = 2e-3
"""gsplat composites in float32 with fast-math exponentials: a few 1e-4 per pixel against the torch path."""


def scene(seed: int, num: int = 3000, sh_degree: int = 2):
    gaussians = random_gaussians(seed, num, sh_degree=sh_degree, feature_dim=16).to(CUDA)
    cameras = random_cameras(seed + 1, 3, 96, 72).to(CUDA)
    return gaussians, cameras


def both(gaussians, cameras, **kwargs):
    return [render(gaussians, cameras, backend=backend, **kwargs) for backend in ("gsplat", "torch")]


def test_gsplat_kernels_load_here():
    assert gsplat_status().usable, gsplat_status().detail


@pytest.mark.parametrize("mode", ["classic", "antialiased"])
@pytest.mark.parametrize("seed", [0, 1])
def test_images_alphas_and_depths_agree(seed, mode):
    gaussians, cameras = scene(seed)
    settings = RasterSettings(rasterize_mode=mode)
    with torch.no_grad():
        fast, portable = both(gaussians, cameras, extras=gaussians.features, depth="ED", settings=settings)
    for name in ("colors", "extras", "alphas"):
        assert (getattr(fast, name) - getattr(portable, name)).abs().max() < IMAGE_TOL, name
    covered = portable.alphas[..., 0] > 0.5
    assert torch.allclose(fast.depths[..., 0][covered], portable.depths[..., 0][covered], rtol=1e-3, atol=1e-3)
    assert torch.equal(fast.info["radii"], portable.info["radii"])


def test_screen_space_gradients_agree():
    """Densification reads means2d's gradient: both backends must give it alike."""
    gaussians, cameras = scene(2, num=1500)
    grads = []
    for backend in ("gsplat", "torch"):
        params = gaussians.map(lambda t: t.clone().requires_grad_())
        out = render(params, cameras, extras=params.features, backend=backend)
        out.info["means2d"].retain_grad()
        (out.colors.square().sum() + out.extras.sum()).backward()
        grads.append((out.info["means2d"].grad, params.means.grad, params.features.grad))
    for fast, portable in zip(*grads):
        assert torch.allclose(fast, portable, rtol=1e-2, atol=1e-4)


def test_label_maps_agree_and_no_channel_is_fine():
    gaussians, cameras = scene(3)
    labels = torch.randint(0, 6, (len(gaussians),), device=CUDA)
    with torch.no_grad():
        fast, portable = both(gaussians, cameras, rgb=False, labels=labels)
        decided = portable.labels.best > 0.6 * portable.labels.total
        assert torch.equal(fast.labels.ids[decided], portable.labels.ids[decided])
        empty = render(gaussians, cameras, rgb=False, labels=torch.zeros_like(labels), backend="gsplat")
    assert empty.labels.ids.max() == 0 and empty.alphas.max() > 0
