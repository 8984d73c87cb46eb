"""The stage utilities shared by association, prototypes, segment and evaluate."""

import pytest
import torch

from protosaga_core.io.scene_dir import SceneDir, SceneDirError
from protosaga_core.render.sparse import WeightsCache, frozen_weights
from protosaga_core.stages import read_consistent_mask, render_features, view_batches


def test_view_batches_group_consecutive_views_of_one_size():
    class V:
        def __init__(self, name, width):
            self.name, self.width, self.height = name, width, 10

    views = [V("a", 8), V("b", 8), V("c", 8), V("d", 6), V("e", 8)]
    assert [[v.name for v in b] for b in view_batches(views, 2)] == [["a", "b"], ["c"], ["d"], ["e"]]


def test_rendered_features_are_the_same_from_cached_weights_as_from_the_rasterizer(trained_scene_readonly):
    scene_dir = SceneDir(trained_scene_readonly)
    scene, gaussians = scene_dir.load_dataset(), scene_dir.read_gaussians()
    views = scene.split("train")[:3]
    plain = list(render_features(gaussians, scene, views, chunk_views=2, progress=False))
    cache = WeightsCache()
    frozen_weights(gaussians, scene.cameras(views[:2]), cache)  # as association leaves its views cached
    mixed = list(render_features(gaussians, scene, views, chunk_views=2, progress=False, weights=cache))
    # the first batch came from the cache, the last view was rasterized (and its weights not computed)
    assert (cache.hits, cache.misses, len(cache)) == (2, 3, 2)
    assert [view.name for view, _ in plain] == [view.name for view, _ in mixed] == [view.name for view in views]
    for (view, expected), (_, features) in zip(plain, mixed):
        assert features.shape == (view.height, view.width, gaussians.feature_dim) and features.device.type == "cpu"
        torch.testing.assert_close(features, expected, atol=1e-5, rtol=1e-4)
    assert plain[0][1].abs().sum() > 0


def test_a_missing_consistent_mask_names_the_file_and_the_stage(trained_scene_readonly, tmp_path):
    scene_dir = SceneDir(trained_scene_readonly)
    view = scene_dir.load_dataset().split("train")[0]
    assert read_consistent_mask(scene_dir, view).shape == (view.height, view.width)
    elsewhere = SceneDir(tmp_path)
    with pytest.raises(SceneDirError, match=f"{tmp_path}.*{view.name}.*protosaga associate"):
        read_consistent_mask(elsewhere, view)
