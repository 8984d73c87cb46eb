"""Cached sparse blending weights (render/sparse.py) against the rasterizer, and the stages that use them."""

import numpy as np
import pytest
import torch

from protosaga_core.cameras import Cameras, intrinsics, look_at
from protosaga_core.gaussians import Gaussians
from protosaga_core.io.scene_dir import SceneDir
from protosaga_core.method.consensus import cluster_masks, mask_membership
from protosaga_core.method.lifting import CHANNEL_CHUNK, transpose_labels, transpose_render
from protosaga_core.method.prototypes import collect_view_prototypes, ensemble_prototypes, lifted_gaussian_labels
from protosaga_core.pipeline import RunConfig, associate_and_prototypes
from protosaga_core.render import RasterSettings, render
from protosaga_core.render import sparse
from protosaga_core.render.sparse import WeightsCache, compute_view_weights, frozen_weights, geometry_key
from protosaga_core.stages import frozen_feature_map, read_consistent_mask


def _random_scene(seed: int, count: int = 60, width: int = 30, height: int = 21) -> tuple[Gaussians, Cameras]:
    """Gaussians in front of two cameras; 30x21 leaves the forward path's 8-pixel tiles overhanging."""
    generator = torch.Generator().manual_seed(seed)
    means = torch.rand(count, 3, generator=generator) - 0.5
    gaussians = Gaussians(
        means=means,
        scales=torch.full((count, 3), -2.6) + 0.5 * torch.rand(count, 3, generator=generator),
        quats=torch.randn(count, 4, generator=generator),
        opacities=torch.randn(count, generator=generator) + 1.0,
        sh0=torch.rand(count, 1, 3, generator=generator),
        shN=torch.zeros(count, 0, 3),
        features=torch.randn(count, 5, generator=generator),
    )
    eye = torch.tensor([[0.2, -0.1, 2.0], [-0.4, 0.3, 1.8]])
    viewmats = look_at(eye, torch.zeros(2, 3), torch.tensor([0.0, 1.0, 0.0]))
    return gaussians, Cameras(viewmats, intrinsics(30.0, 30.0, width / 2, height / 2, count=2), width, height)


def _rasterized_transpose(gaussians: Gaussians, cameras: Cameras, targets: torch.Tensor) -> torch.Tensor:
    """`transpose_render` on the rasterizer (a cache of budget 0 turns the sparse path off)."""
    return transpose_render(gaussians, cameras, targets, WeightsCache(0))


@pytest.mark.parametrize("seed, width, height", [(0, 30, 21), (1, 32, 24), (2, 41, 9)])
def test_weights_render_transpose_and_alpha_match_the_rasterizer(seed, width, height):
    gaussians, cameras = _random_scene(seed, width=width, height=height)
    targets = torch.rand(2, height, width, 4, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        expected = render(gaussians, cameras, rgb=False, extras=gaussians.features)
    for index in range(2):
        weights = compute_view_weights(gaussians, cameras[index])
        assert weights.nnz > 100 and weights.gaussians.dtype == torch.int32
        assert weights.weights.min() > 0 and len(torch.unique(weights.pixels)) == len(weights.pixels)
        torch.testing.assert_close(weights.render(gaussians.features), expected.extras[index], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(weights.alpha, expected.alphas[index, ..., 0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(
            weights.transpose(targets[index]), _rasterized_transpose(gaussians, cameras[index], targets[index : index + 1]), rtol=1e-4, atol=1e-5
        )


def test_antialiased_weights_match_the_antialiased_rasterizer():
    gaussians, cameras = _random_scene(7)
    settings = RasterSettings(rasterize_mode="antialiased")
    with torch.no_grad():
        expected = render(gaussians, cameras, rgb=False, extras=gaussians.features, settings=settings)
        classic = render(gaussians, cameras, rgb=False, extras=gaussians.features)
    assert (expected.alphas - classic.alphas).abs().max() > 0.01, "the mode matters in this scene"
    for index in range(2):
        weights = compute_view_weights(gaussians, cameras[index], settings)
        torch.testing.assert_close(weights.render(gaussians.features), expected.extras[index], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(weights.alpha, expected.alphas[index, ..., 0], rtol=1e-5, atol=1e-5)


def test_a_view_that_sees_no_gaussian_has_no_weights():
    gaussians, cameras = _random_scene(6)
    away = Cameras(look_at(torch.tensor([[0.0, 0.0, 2.0]]), torch.tensor([[0.0, 0.0, 5.0]]), torch.tensor([0.0, 1.0, 0.0])), cameras.Ks[:1], 30, 21)
    weights = compute_view_weights(gaussians, away)
    assert weights.nnz == 0 and len(weights.pixels) == 0
    assert not weights.render(gaussians.features).any() and weights.render(gaussians.features).shape == (21, 30, 5)
    assert not weights.transpose(torch.ones(21, 30, 2)).any()


def test_the_gradient_of_a_weights_render_is_the_rasterizers():
    gaussians, cameras = _random_scene(3)
    grad_out = torch.randn(cameras.height, cameras.width, 5, generator=torch.Generator().manual_seed(0))
    sparse = gaussians.features.clone().requires_grad_(True)
    (compute_view_weights(gaussians, cameras[0]).render(sparse) * grad_out).sum().backward()
    dense = gaussians.features.clone().requires_grad_(True)
    (render(gaussians, cameras[0], rgb=False, extras=dense).extras[0] * grad_out).sum().backward()
    torch.testing.assert_close(sparse.grad, dense.grad, rtol=1e-4, atol=1e-5)


def test_transpose_render_of_many_channels_takes_the_weights_and_agrees():
    gaussians, cameras = _random_scene(4)
    targets = torch.rand(2, cameras.height, cameras.width, CHANNEL_CHUNK + 6, generator=torch.Generator().manual_seed(1))
    assert frozen_weights(gaussians, cameras, None) is None  # without a cache: rasterize ...
    assert len(frozen_weights(gaussians, cameras, None, "always")) == 2  # ... unless the channels need several passes
    torch.testing.assert_close(transpose_render(gaussians, cameras, targets), _rasterized_transpose(gaussians, cameras, targets), rtol=1e-4, atol=1e-4)


def test_the_cache_shares_views_keeps_those_that_fit_and_falls_back():
    gaussians, cameras = _random_scene(5)
    one_view = compute_view_weights(gaussians, cameras[0]).nbytes
    cache = WeightsCache()
    assert frozen_weights(gaussians, cameras[1], cache, "never") is None  # nothing computed ...
    first = frozen_weights(gaussians, cameras, cache)  # ... until asked to
    assert frozen_weights(gaussians.map(torch.clone), cameras, cache, "never")[0] is first[0]  # same geometry, new tensors
    assert (cache.hits, cache.misses, len(cache)) == (2, 3, 2)
    small = WeightsCache(int(1.5 * one_view))
    assert small.views(gaussians, cameras[0]) is not None and small.views(gaussians, cameras[1]) is None
    # The view kept is never evicted for a later one: a pass over more views than fit still hits it.
    assert small.views(gaussians, cameras[0], compute=False) is not None and small.views(gaussians, cameras[1]) is None
    assert len(small) == 1 and small.used_bytes <= small.budget_bytes
    assert WeightsCache(one_view // 2).views(gaussians, cameras[0]) is None  # not even one view fits
    assert compute_view_weights(gaussians, cameras[0], max_bytes=100) is None


def test_the_default_budget_is_a_share_of_the_memory_free_when_the_cache_is_made(monkeypatch):
    for free, budget in [(16 << 30, 1 << 30), (100 << 20, sparse.BUDGET_FLOOR), (1 << 41, sparse.BUDGET_CAP), (None, 512 << 20)]:
        monkeypatch.setattr(sparse, "available_memory", lambda: free)
        assert WeightsCache().budget_bytes == budget, free
    assert WeightsCache(12345).budget_bytes == 12345  # a budget given is kept as it is


def test_a_cache_of_budget_zero_keeps_nothing_and_the_rasterizer_agrees_with_the_cached_path():
    gaussians, cameras = _random_scene(8)
    targets = torch.rand(2, cameras.height, cameras.width, CHANNEL_CHUNK + 6, generator=torch.Generator().manual_seed(2))
    off = WeightsCache(0)
    assert frozen_weights(gaussians, cameras, off, "always") is None  # not even the channels that pay for weights
    rasterized = transpose_render(gaussians, cameras, targets, off)
    rendered = frozen_feature_map(gaussians, cameras[1], gaussians.features, off)
    assert (len(off), off.used_bytes, off.hits, off.misses) == (0, 0, 0, 0)
    cache = WeightsCache()
    torch.testing.assert_close(transpose_render(gaussians, cameras, targets, cache), rasterized, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(frozen_feature_map(gaussians, cameras[1], gaussians.features, cache), rendered, rtol=1e-5, atol=1e-5)
    assert (len(cache), cache.misses, cache.hits) == (2, 2, 1)


def test_a_cache_hashes_each_gaussians_once_and_refuses_another_geometry(monkeypatch):
    gaussians, cameras = _random_scene(9)
    hashed = []
    monkeypatch.setattr(sparse, "geometry_key", lambda g: hashed.append(1) or geometry_key(g))
    cache = WeightsCache()
    first = cache.views(gaussians, cameras)
    assert cache.views(gaussians, cameras)[0] is first[0] and cache.views(gaussians.to("cpu"), cameras)[0] is first[0]
    assert len(hashed) == 1  # the same tensors, unchanged: no hashing after the first
    copy = gaussians.map(torch.clone)  # the same geometry read again (each stage reads gaussians.ply itself)
    assert cache.views(copy, cameras, compute=False)[0] is first[0] and cache.views(copy, cameras, compute=False)[0] is first[0]
    assert len(hashed) == 2  # hashed once more, for the new tensors
    moved = Gaussians(**{**gaussians.tensors(), "means": gaussians.means + 0.01})
    with pytest.raises(ValueError, match="other Gaussians"):
        cache.views(moved, cameras)
    copy.opacities.add_(1.0)  # changed in place: the tensors' versions tell
    with pytest.raises(ValueError, match="other Gaussians"):
        cache.views(copy, cameras, compute=False)
    assert cache.views(gaussians, cameras)[0] is first[0] and len(cache) == 2  # what it holds stays usable


def test_protosaga_run_computes_each_training_views_weights_once(trained_scene):
    """Association computes the training views' weights; the refine stage renders its prototypes and each
    iteration's features from them, the prototypes stage its features and lifted labels."""
    scene_dir = SceneDir(trained_scene)
    scene_dir.forget_from("associate")
    views = scene_dir.load_dataset().split("train")
    config = RunConfig()
    cache = associate_and_prototypes(scene_dir, config, progress=False)
    assert scene_dir.read_meta().stages[-3:] == ["associate", "refine", "prototypes"]
    refine_hits = len(views) + min(config.refine.passes * len(views), config.refine.max_iterations)
    assert (cache.misses, len(cache), cache.hits) == (len(views), len(views), 2 * len(views) + refine_hits)


def test_stages_on_the_trained_scene_give_the_rasterizers_results(trained_scene_readonly):
    """Association's memberships, the prototypes and the lifted labels with cached weights (as in
    `protosaga run`) equal the rasterizer's up to float rounding: the same clusters, ids and labels."""
    scene_dir = SceneDir(trained_scene_readonly)
    gaussians, scene = scene_dir.read_gaussians(), scene_dir.load_dataset()
    views = scene.split("train")
    camera, mask = views[0].cameras, read_consistent_mask(scene_dir, views[0])
    weights = compute_view_weights(gaussians, camera)
    with torch.no_grad():
        expected = render(gaussians, camera, rgb=False, extras=gaussians.features).extras[0]
    torch.testing.assert_close(weights.render(gaussians.features), expected, rtol=1e-5, atol=1e-5)
    one_hot = torch.nn.functional.one_hot(mask, int(mask.max()) + 1).float()
    torch.testing.assert_close(weights.transpose(one_hot), _rasterized_transpose(gaussians, camera, one_hot[None]), rtol=1e-4, atol=1e-4)

    def stages(weights: WeightsCache):
        membership = mask_membership(gaussians, ((view.cameras, view.load_mask()[None]) for view in views), weights=weights)
        per_view = collect_view_prototypes(scene_dir, gaussians, scene, progress=False, weights=weights)
        ids = ensemble_prototypes([p[0] for p in per_view], [p[1] for p in per_view]).ids
        return membership, per_view, lifted_gaussian_labels(scene_dir, gaussians, scene, ids, progress=False, weights=weights)

    old_membership, old_views, old_labels = stages(WeightsCache(0))
    cache = WeightsCache()
    membership, per_view, labels = stages(cache)
    assert len(cache) == len(views) and cache.hits == 2 * len(views)  # association filled it
    assert np.array_equal(cluster_masks(membership)[0], cluster_masks(old_membership)[0])
    assert abs(membership.members - old_membership.members).max() < 1e-4 * abs(old_membership.members).max()
    for (ids, vectors, counts), (old_ids, old_vectors, old_counts) in zip(per_view, old_views):
        assert torch.equal(ids, old_ids) and torch.equal(counts, old_counts)
        torch.testing.assert_close(vectors, old_vectors, rtol=1e-4, atol=1e-5)
    assert torch.equal(labels, old_labels)


@pytest.mark.parametrize("num_columns", [5, CHANNEL_CHUNK + 9])
def test_label_votes_are_the_transpose_of_the_one_hot_images_bit_for_bit(num_columns, monkeypatch):
    gaussians, cameras = _random_scene(3, count=400, width=41, height=29)
    columns = torch.randint(0, num_columns, (2, 29, 41), generator=torch.Generator().manual_seed(3))
    one_hot = torch.nn.functional.one_hot(columns, num_columns).float()
    monkeypatch.setattr(sparse, "TRANSPOSE_ENTRIES", 97)  # many blocks of rows, cut mid-pixel never
    for cache in (WeightsCache(), WeightsCache(0)):  # sparse weights, then the rasterizer
        for view in range(2):
            votes = transpose_labels(gaussians, cameras[view], columns[view : view + 1], num_columns, cache)
            assert votes.shape == (400, num_columns) and votes.sum() > 10
            assert torch.equal(votes, transpose_render(gaussians, cameras[view], one_hot[view : view + 1], cache))
        # Both views at once add the second's weights into the first's votes: the same sums, rounded in
        # another order; and `out` takes more votes in place.
        both = transpose_labels(gaussians, cameras, columns, num_columns, cache)
        torch.testing.assert_close(both, transpose_render(gaussians, cameras, one_hot, cache))
        again = transpose_labels(gaussians, cameras, columns, num_columns, cache, out=both.clone())
        torch.testing.assert_close(again, 2 * both)


def test_a_call_that_needs_weights_computes_them_for_itself_when_the_cache_keeps_no_more():
    gaussians, cameras = _random_scene(6)
    full = WeightsCache(int(1.5 * compute_view_weights(gaussians, cameras[0]).nbytes))
    assert frozen_weights(gaussians, cameras[0], full) is not None  # kept: the cache is now full
    assert frozen_weights(gaussians, cameras[1], full) is None  # few channels: the rasterizer does
    needed = frozen_weights(gaussians, cameras[1], full, "always")  # many channels: weights all the same
    assert needed is not None and len(full) == 1
    torch.testing.assert_close(needed[0].alpha, compute_view_weights(gaussians, cameras[1]).alpha)
