import numpy as np
import pytest
import torch

from protosaga_app.picking import contribution_weights, pick_along_ray, pick_instance, pick_rectangle
from protosaga_core.cameras import Cameras, intrinsics, look_at
from protosaga_core.gaussians import Gaussians
from protosaga_core.render import RasterSettings, render


def _label_map():
    labels = np.zeros((10, 20), dtype=np.uint16)
    labels[:, :10] = 3
    labels[:5, 10:] = 7
    labels[9, 19] = 9  # one stray pixel
    return labels


def test_pick_instance_reads_the_pixel_and_checks_bounds():
    labels = _label_map()
    assert pick_instance(labels, 2.5, 3.9) == 3
    assert pick_instance(torch.from_numpy(labels.astype(np.int64)), 12.0, 4.99) == 7
    assert pick_instance(labels, 12.0, 5.0) == 0
    assert pick_instance(labels, 19.99, 9.99) == 9
    for x, y in [(-0.01, 0), (20.0, 0), (0, 10.0), (1e9, -1e9)]:
        assert pick_instance(labels, x, y) == 0
    with pytest.raises(ValueError):
        pick_instance(labels, float("nan"), 0)
    with pytest.raises(ValueError):
        pick_instance(labels[None], 0, 0)


def test_pick_rectangle_any_corner_order_clipped_and_thresholded():
    labels = _label_map()
    assert pick_rectangle(labels, 0, 0, 19.5, 9.5) == {3, 7}  # the stray pixel is below 1 %
    assert pick_rectangle(labels, 0, 0, 19.5, 9.5, min_fraction=0.0) == {3, 7, 9}
    assert pick_rectangle(labels, 15, 9.5, 25, 3) == {7, 9}  # reversed corners, partly outside
    assert pick_rectangle(labels, 2, 2, 2, 2) == {3}  # a click-sized rectangle
    assert pick_rectangle(labels, 12, 6, 18, 8) == set()  # only background
    assert pick_rectangle(labels, 30, 30, 40, 40) == set()
    assert pick_rectangle(labels, 0, 0, 19, 9, min_fraction=0.6) == set()  # 3 covers 50 %


def _two_blob_scene():
    """Two overlapping blobs (instances 2 and 5) in front of one another, plus unassigned Gaussians."""
    generator = torch.Generator().manual_seed(0)
    near = Gaussians.random_box(60, (-0.6, -0.5, -0.3), (0.2, 0.5, 0.0), sh_degree=0, feature_dim=2, generator=generator)
    far = Gaussians.random_box(60, (-0.2, -0.5, 0.5), (0.6, 0.5, 0.8), sh_degree=0, feature_dim=2, generator=generator)
    stray = Gaussians.random_box(20, (-0.8, -0.8, 0.9), (0.8, 0.8, 1.0), sh_degree=0, feature_dim=2, generator=generator)
    parts = [near, far, stray]
    gaussians = Gaussians(**{name: torch.cat([p.tensors()[name] for p in parts]) for name in near.tensors()})
    gaussians.opacities.fill_(1.0)
    labels = torch.cat([torch.full((60,), 2), torch.full((60,), 5), torch.zeros(20, dtype=torch.int64)])
    viewmat = look_at(torch.tensor([[0.0, 0.0, -3.0]]), torch.zeros(1, 3), torch.tensor([0.0, -1.0, 0.0]))
    camera = Cameras(viewmat, intrinsics(40.0, 40.0, 16.0, 12.0), 32, 24)
    return gaussians, labels, camera


def test_ray_weights_match_the_renderer_and_the_pick_matches_its_argmax():
    gaussians, labels, camera = _two_blob_scene()
    one_hot = torch.nn.functional.one_hot(labels, 6).float()
    with torch.no_grad():
        out = render(gaussians, camera, rgb=False, extras=one_hot)
    rendered, alphas = out.extras[0], out.alphas[0, ..., 0]  # [H, W, 6], [H, W]
    picked_ids = set()
    for row in range(camera.height):
        for column in range(camera.width):
            x, y = column + 0.3, row + 0.7
            weights = contribution_weights(gaussians, camera, x, y)
            torch.testing.assert_close(weights @ one_hot, rendered[row, column], atol=2e-5, rtol=1e-4)
            torch.testing.assert_close(weights.sum(), alphas[row, column], atol=2e-5, rtol=1e-4)
            per_instance = rendered[row, column, 1:]
            expected = int(per_instance.argmax()) + 1 if per_instance.max() > 0 else 0
            if per_instance.max() > 0 and (per_instance.topk(2).values.diff().abs() < 1e-4).item():
                continue  # a near tie: either answer is right
            picked = pick_along_ray(gaussians, labels.numpy(), camera, x, y)
            assert picked == expected, (row, column)
            picked_ids.add(picked)
    assert {2, 5} <= picked_ids  # both blobs are pickable somewhere


def test_ray_weights_follow_the_antialiased_renderer():
    gaussians, labels, camera = _two_blob_scene()
    settings = RasterSettings(rasterize_mode="antialiased")
    with torch.no_grad():
        alphas = render(gaussians, camera, rgb=False, depth="D", settings=settings).alphas[0, ..., 0]
    moved = 0.0
    for row in range(0, camera.height, 3):
        for column in range(0, camera.width, 3):
            weights = contribution_weights(gaussians, camera, column + 0.5, row + 0.5, settings)
            torch.testing.assert_close(weights.sum(), alphas[row, column], atol=2e-5, rtol=1e-4)
            classic = contribution_weights(gaussians, camera, column + 0.5, row + 0.5)
            moved = max(moved, float((weights - classic).abs().max()))
    assert moved > 1e-3, "the mode matters in this scene"


def test_pick_along_ray_outside_and_through_nothing():
    gaussians, labels, camera = _two_blob_scene()
    assert pick_along_ray(gaussians, labels, camera, -1.0, 5.0) == 0
    assert pick_along_ray(gaussians, labels, camera, 5.0, 24.0) == 0
    only_unassigned = labels == 0
    assert pick_along_ray(gaussians.select(only_unassigned), labels[only_unassigned], camera, 16.0, 12.0) == 0
    with pytest.raises(ValueError):
        pick_along_ray(gaussians, labels[:-1], camera, 16.0, 12.0)
    with pytest.raises(ValueError):
        contribution_weights(gaussians, Cameras(camera.viewmats.repeat(2, 1, 1), camera.Ks.repeat(2, 1, 1), 32, 24), 1, 1)
