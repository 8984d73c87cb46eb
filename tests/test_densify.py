"""gsplat's DefaultStrategy (clone, split, prune) driven by the torch backend's `info`, on CPU."""

from __future__ import annotations

import math

import torch
from gsplat.strategy import DefaultStrategy

from protosaga_core.cameras import Cameras, intrinsics, look_at
from protosaga_core.gaussians import Gaussians
from protosaga_core.render import render

WIDTH, HEIGHT = 32, 24
NUM = 300
NUM_FAINT = 30  # opacity ~1e-3 < prune_opa: must be pruned at the first refinement
NUM_TINY = 60  # max scale 0.009 <= grow_scale3d * scene_scale: duplicated rather than split


def ring_cameras(num_cameras: int = 3) -> Cameras:
    angle = torch.arange(num_cameras) * (2 * math.pi / num_cameras)
    eye = torch.stack([3.5 * torch.cos(angle), torch.full_like(angle, -0.5), 3.5 * torch.sin(angle)], dim=-1)
    viewmats = look_at(eye, torch.zeros_like(eye), torch.tensor([0.0, -1.0, 0.0]))
    focal = 1.1 * WIDTH
    return Cameras(viewmats, intrinsics(focal, focal, WIDTH / 2, HEIGHT / 2, num_cameras), WIDTH, HEIGHT)


def make_model(seed: int) -> Gaussians:
    gen = torch.Generator().manual_seed(seed)
    model = Gaussians.random_box(NUM, sh_degree=1, feature_dim=4, generator=gen)
    model.opacities[:] = torch.logit(torch.full((NUM,), 0.5))
    model.opacities[:NUM_FAINT] = math.log(1e-3 / (1 - 1e-3))
    model.scales[NUM_FAINT : NUM_FAINT + NUM_TINY] = math.log(0.009)
    return model


def test_default_strategy_grows_and_prunes_with_the_torch_backend():
    torch.manual_seed(0)
    cameras = ring_cameras()
    with torch.no_grad():
        target = render(make_model(1), cameras, extras=None, backend="torch").colors
        target_features = torch.zeros(1)  # pull the rendered features towards zero

    params = make_model(0).as_parameter_dict()
    lrs = {"means": 1e-3, "scales": 5e-3, "quats": 1e-3, "opacities": 5e-2, "sh0": 1e-2, "shN": 1e-3, "features": 1e-2}
    optimizers = {name: torch.optim.Adam([param], lr=lrs[name]) for name, param in params.items()}
    strategy = DefaultStrategy(
        prune_opa=0.005,
        grow_grad2d=6e-4,
        grow_scale3d=0.01,
        refine_start_iter=4,
        refine_every=5,
        refine_stop_iter=1_000,
        reset_every=100_000,
        verbose=False,
    )
    strategy.check_sanity(params, optimizers)
    state = strategy.initialize_state(scene_scale=1.0)

    # Record what each refinement did (the strategy's own counts), next to the size before and after.
    events: list[dict] = []
    grow, prune = strategy._grow_gs, strategy._prune_gs

    def recording_grow(*args, **kwargs):
        n_dupli, n_split = grow(*args, **kwargs)
        events.append({"dupli": n_dupli, "split": n_split})
        return n_dupli, n_split

    def recording_prune(*args, **kwargs):
        n_prune = prune(*args, **kwargs)
        events[-1]["prune"] = n_prune
        return n_prune

    strategy._grow_gs, strategy._prune_gs = recording_grow, recording_prune

    for step in range(25):
        out = render(Gaussians.from_tensors(params), cameras, extras=params["features"], backend="torch")
        loss = (out.colors - target).abs().mean() + 0.1 * (out.extras - target_features).square().mean()
        strategy.step_pre_backward(params, optimizers, state, step, out.info)
        loss.backward()
        assert out.info["means2d"].grad is not None
        before = len(params["means"])
        num_refinements = len(events)
        strategy.step_post_backward(params, optimizers, state, step, out.info, packed=False)
        after = len(params["means"])
        if len(events) > num_refinements:
            event = events[-1]
            event.update(step=step, before=before, after=after)
            assert after == before + event["dupli"] + event["split"] - event["prune"]
        else:
            assert after == before
        for optimizer in optimizers.values():
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        # Every parameter, the features included, was edited alike; optimizer states follow.
        for name, param in params.items():
            assert param.shape[0] == after, name
            assert optimizers[name].param_groups[0]["params"][0] is param, name
            for value in optimizers[name].state[param].values():
                if isinstance(value, torch.Tensor) and value.dim() > 0:
                    assert value.shape == param.shape, name
        assert torch.isfinite(params["means"]).all() and torch.isfinite(params["features"]).all()

    assert [e["step"] for e in events] == [5, 10, 15, 20]
    assert sum(e["dupli"] for e in events) > 0, events
    assert sum(e["split"] for e in events) > 0, events
    assert events[0]["prune"] >= NUM_FAINT, events
    assert any(e["after"] > e["before"] for e in events), events
    # The faint ones are gone; the features were duplicated and pruned with the rest.
    assert (torch.sigmoid(params["opacities"]) > 0.002).all()
    assert params["features"].shape == (len(params["means"]), 4)
    assert state["grad2d"].shape[0] == len(params["means"])
