"""Server-rendered frames: rendered lifted labels or per-pixel Eq. 19, the selection highlight, feature PCA, depth."""

import numpy as np
import torch

from protosaga_app.browser_camera import camera_from_pose, pose_from_camera
from protosaga_app.live import COVERED_ALPHA, FAR_DEPTH, FeaturePca, render_frame, reselect_frame
from protosaga_app.scene import ViewerScene
from protosaga_app.splats import DIMMED
from protosaga_core.method.lifting import render_label_maps
from protosaga_core.method.prototypes import classify
from protosaga_core.render import render


def test_segmentation_frame_is_eq_19_of_the_rendered_features(trained_scene_readonly):
    scene = ViewerScene.load(trained_scene_readonly)
    view = scene.training_views()[0]
    camera = view.cameras
    pca = FeaturePca.fit(scene.gaussians.features)
    frame = render_frame(scene.gaussians, camera, "segmentation", scene.prototypes, pca)
    with torch.no_grad():
        out = render(scene.gaussians, camera, sh_degree=0, extras=scene.gaussians.features, depth="ED")
    covered = (out.alphas[0, ..., 0] > COVERED_ALPHA).numpy()
    expected = np.where(covered, classify(out.extras[0], scene.prototypes).numpy(), 0)
    np.testing.assert_array_equal(frame.labels, expected)
    assert frame.image.shape == (view.height, view.width, 3) and frame.image.dtype == np.uint8
    np.testing.assert_allclose(frame.depth[covered], out.depths[0, ..., 0].numpy()[covered], rtol=1e-6)
    assert np.all(frame.depth[~covered] == FAR_DEPTH)

    # Selecting the largest instance highlights its pixels and dims every other one.
    ids, counts = np.unique(frame.labels[frame.labels > 0], return_counts=True)
    chosen = int(ids[np.argmax(counts)])
    highlighted = render_frame(scene.gaussians, camera, "segmentation", scene.prototypes, pca, frozenset({chosen}))
    changed = np.any(highlighted.image != frame.image, axis=-1)
    assert changed[frame.labels == chosen].mean() > 0.9
    others = frame.labels != chosen
    np.testing.assert_allclose(highlighted.image[others], DIMMED * frame.image[others].astype(float), atol=1.0)
    # The click feedback recolours the kept frame: the same picture as rendering it again.
    np.testing.assert_array_equal(reselect_frame(frame, frozenset({chosen})).image, highlighted.image)
    np.testing.assert_array_equal(reselect_frame(highlighted, frozenset()).image, frame.image)

    pca_frame = render_frame(scene.gaussians, camera, "pca", scene.prototypes, pca)
    np.testing.assert_array_equal(pca_frame.labels, frame.labels)
    assert np.any(pca_frame.image != frame.image)


def test_segmentation_frame_of_lifted_labels_is_the_rendered_labels(trained_scene_readonly):
    scene = ViewerScene.load(trained_scene_readonly)
    view = scene.training_views()[2]
    labels = torch.from_numpy(scene.labels)
    frame = render_frame(scene.gaussians, view.cameras, "segmentation", scene.prototypes, FeaturePca.fit(scene.gaussians.features), labels=labels)
    rendered = render_label_maps(scene.gaussians, view.cameras, labels, torch.unique(labels[labels > 0]))[0].numpy()
    covered = frame.depth < FAR_DEPTH
    np.testing.assert_array_equal(frame.labels[covered], rendered[covered])
    assert not frame.labels[~covered].any() and frame.labels.any()
    # The PCA frame's label map (what clicks in that mode read) is the same one, so a click there never
    # picks an instance whose Gaussians were left out (hidden) through its prototype.
    pca_frame = render_frame(scene.gaussians, view.cameras, "pca", scene.prototypes, FeaturePca.fit(scene.gaussians.features), labels=labels)
    np.testing.assert_array_equal(pca_frame.labels, frame.labels)
    assert np.any(pca_frame.image != frame.image)


def test_frame_from_the_browser_pose_of_a_training_view_matches_the_view(trained_scene_readonly):
    scene = ViewerScene.load(trained_scene_readonly)
    view = scene.training_views()[3]
    pose = pose_from_camera(view.viewmat, view.K, view.width, view.height)
    pca = FeaturePca.fit(scene.gaussians.features)
    direct = render_frame(scene.gaussians, view.cameras, "segmentation", scene.prototypes, pca)
    browser = render_frame(scene.gaussians, camera_from_pose(pose, view.width, view.height), "segmentation", scene.prototypes, pca)
    assert (direct.labels == browser.labels).mean() > 0.999


def test_an_empty_scene_renders_an_empty_frame(trained_scene_readonly):
    scene = ViewerScene.load(trained_scene_readonly)
    nothing = scene.gaussians.select(torch.zeros(len(scene.gaussians), dtype=torch.bool))
    frame = render_frame(nothing, scene.training_views()[0].cameras, "pca", scene.prototypes, FeaturePca.fit(scene.gaussians.features))
    assert not frame.labels.any() and np.all(frame.depth == FAR_DEPTH)


def test_pca_colours_lie_in_the_unit_cube():
    features = torch.randn(500, 16)
    pca = FeaturePca.fit(features)
    colors = pca.colors(torch.randn(7, 9, 16))
    assert colors.shape == (7, 9, 3) and colors.min() >= 0 and colors.max() <= 1
    assert FeaturePca.fit(torch.randn(50, 2)).axes.shape == (2, 3)
