"""The cpu preset's schedule: resolution warm-up (views shrunk consistently) and the Gaussian budget."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from gsplat.strategy import DefaultStrategy

from protosaga_core.cameras import Cameras, intrinsics, look_at
from protosaga_core.gaussians import Gaussians
from protosaga_core.method.schedule import MIN_WARMUP_SIDE, cap_gaussians, shrink, warmup_factor
from protosaga_core.render import render


def test_the_warmup_halves_its_factor_every_stage_and_keeps_views_above_the_minimum_side():
    factors = [warmup_factor(step, 2, 250, 320, 240) for step in (0, 249, 250, 499, 500, 1_499)]
    assert factors == [4, 4, 2, 2, 1, 1]
    assert warmup_factor(0, 0, 250, 320, 240) == 1  # off
    assert warmup_factor(0, 3, 250, 4 * MIN_WARMUP_SIDE, 1_000) == 4  # 8 would leave 8 px
    assert warmup_factor(0, 3, 250, MIN_WARMUP_SIDE + 1, 1_000) == 1


def camera(width: int, height: int) -> Cameras:
    eye = torch.tensor([[0.3, -0.2, -3.0]])
    viewmat = look_at(eye, torch.zeros(1, 3), torch.tensor([0.0, -1.0, 0.0]))
    return Cameras(viewmat, intrinsics(1.2 * width, 1.2 * width, 0.52 * width, 0.47 * height), width, height)


def test_a_shrunk_view_renders_what_the_full_view_averages_to():
    """The scaled intrinsics put every Gaussian where the averaged full-size pixels have it."""
    generator = torch.Generator().manual_seed(0)
    gaussians = Gaussians.random_box(400, sh_degree=0, feature_dim=1, generator=generator)
    gaussians.scales[:] = math.log(0.15)
    full = camera(96, 64)
    with torch.no_grad():
        image = render(gaussians, full, backend="torch").colors[0]
        target = torch.arange(96 * 64).reshape(64, 96)
        small_image, small_target, small = shrink(image, target, full, 4)
        rendered_small = render(gaussians, small, backend="torch").colors[0]
    assert (small.width, small.height) == (24, 16) and small_image.shape == (16, 24, 3)
    assert torch.allclose(small_image, F.avg_pool2d(image.permute(2, 0, 1)[None], 4)[0].permute(1, 2, 0))
    shifted = Cameras(small.viewmats, small.Ks + torch.tensor([[0.0, 0, 1], [0, 0, 0], [0, 0, 0]]), 24, 16)
    rendered_shifted = render(gaussians, shifted, backend="torch").colors[0]

    def correlation(a: torch.Tensor) -> float:
        return float(torch.corrcoef(torch.stack([a.flatten(), small_image.flatten()]))[0, 1])

    # Measured 0.999 against 0.923 for a camera one small pixel off: the Gaussians are where they average to.
    assert correlation(rendered_small) > 0.99 > 0.95 > correlation(rendered_shifted)
    # Each small pixel takes the class of the full pixel at its block's centre, never a blend.
    assert small_target[1, 2].item() == target[4 + 2, 8 + 2].item()
    assert shrink(image, target, full, 1)[2] is full


def test_the_budget_removes_the_least_opaque_with_their_optimizer_and_strategy_state():
    generator = torch.Generator().manual_seed(1)
    params = Gaussians.random_box(50, sh_degree=0, feature_dim=2, generator=generator).as_parameter_dict()
    with torch.no_grad():
        params["opacities"][:] = torch.linspace(-3, 3, 50)
    optimizers = {name: torch.optim.Adam([p], lr=1e-3) for name, p in params.items()}
    for p in params.values():
        p.grad = torch.ones_like(p)
    for optimizer in optimizers.values():
        optimizer.step()
    strategy_state = DefaultStrategy(verbose=False).initialize_state()
    strategy_state["grad2d"], strategy_state["count"] = torch.arange(50.0), torch.ones(50)
    kept_means = params["means"][20:].detach().clone()

    assert cap_gaussians(params, optimizers, strategy_state, None) == 0
    assert cap_gaussians(params, optimizers, strategy_state, 80) == 0
    assert cap_gaussians(params, optimizers, strategy_state, 30) == 20
    assert torch.equal(params["means"].detach(), kept_means)  # the 30 most opaque, in their order
    assert torch.equal(strategy_state["grad2d"], torch.arange(20.0, 50.0))
    for name, optimizer in optimizers.items():
        assert optimizer.param_groups[0]["params"][0] is params[name]
        assert optimizer.state[params[name]]["exp_avg"].shape == params[name].shape
