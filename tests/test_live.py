"""Server-rendered frames: rendered lifted labels or per-pixel Eq. 19, the selection highlight, feature PCA, depth.

Most tests render a scene placed by hand in front of the camera, so that which instance, colour and depth
each tested pixel must show follows from where the Gaussians stand, not from the renderer or classifier;
the last ones use the trained demo scene."""

import numpy as np
import pytest
import torch
from builders import gaussians_from

from protosaga_app.browser_camera import camera_from_pose, pose_from_camera
from protosaga_app.live import FAR_DEPTH, OVERLAY_MIX, FeaturePca, render_frame, reselect_frame
from protosaga_app.scene import ViewerScene
from protosaga_app.splats import DIMMED, HIGHLIGHT_MIX, HIGHLIGHT_RGB
from protosaga_core.cameras import Cameras, intrinsics
from protosaga_core.method.prototypes import Prototypes
from protosaga_core.palette import instance_color


# --- a scene placed by hand ------------------------------------------------------------------------
# The camera sits at the origin looking down +z (OpenCV axes), so a point (x, y, z) lands on pixel
# (u, v) = (CX + F x / z, CY + F y / z), and a Gaussian of scale s at depth z has a standard deviation of
# F s / z pixels on screen. Three instances, each four identical opaque Gaussians stacked (so that nothing
# shows through their cores): LEFT and RIGHT at depth 2, 4 px standard deviation, centred on (u, v) =
# (12, 16) and (36, 16); BEHIND at depth 4, also 4 px on screen, exactly behind LEFT. Each Gaussian's
# feature is the one-hot of its instance, and its colour is its instance's.
F, CX, CY, WIDTH, HEIGHT = 40.0, 24.0, 16.0, 48, 32
LEFT, RIGHT, BEHIND = 3, 7, 5
CENTRES = {LEFT: (-0.6, 0.0, 2.0), RIGHT: (0.6, 0.0, 2.0), BEHIND: (-1.2, 0.0, 4.0)}
SIZES = {LEFT: 0.2, RIGHT: 0.2, BEHIND: 0.4}
COLOURS = {LEFT: (0.9, 0.2, 0.1), RIGHT: (0.1, 0.3, 0.8), BEHIND: (0.2, 0.8, 0.2)}
CHANNEL = {LEFT: 0, RIGHT: 1, BEHIND: 2}
LAYERS = 4
# [rows, columns] of the pixels within 2 px of a centre (each Gaussian's alpha > 0.85 there, < 1e-3
# shows through four of them) and of pixels more than 3 standard deviations from every Gaussian (nothing
# reaches them).
CORE = {LEFT: (slice(14, 18), slice(10, 14)), RIGHT: (slice(14, 18), slice(34, 38))}
CORE[BEHIND] = CORE[LEFT]
EMPTY = (slice(0, 3), np.r_[0:3, 45:48])
EDGE = (16, 42)  # 6.5 px right of RIGHT's centre: its four layers cover about 3/4 of the pixel


def hand_placed(instances=(LEFT, RIGHT, BEHIND)) -> tuple:
    """The Gaussians of `instances`, their ids [N], and the camera."""
    ids = torch.tensor(instances).repeat_interleave(LAYERS)
    gaussians = gaussians_from(
        torch.tensor([CENTRES[i] for i in ids.tolist()]),
        torch.tensor([SIZES[i] for i in ids.tolist()])[:, None].expand(-1, 3),
        colors=torch.tensor([COLOURS[i] for i in ids.tolist()]),
        opacities=0.99,
        features=torch.nn.functional.one_hot(torch.tensor([CHANNEL[i] for i in ids.tolist()]), 4).float(),
    )
    camera = Cameras(torch.eye(4)[None], intrinsics(F, F, CX, CY), WIDTH, HEIGHT)
    return gaussians, ids, camera


# Eq. 19's classifier for the one-hot features, listed out of id order so a mix-up of index and id shows.
ORDER = [RIGHT, BEHIND, LEFT]
PROTOTYPES = Prototypes(torch.tensor(ORDER), torch.eye(4)[[CHANNEL[i] for i in ORDER]], torch.ones(3, dtype=torch.int64))
PCA = FeaturePca.fit(torch.eye(4)[[0, 1, 2, 0, 1, 2]])


def frame_of(instances=(LEFT, RIGHT, BEHIND), mode="segmentation", selected=frozenset(), lifted: dict | None = None):
    """render_frame of the hand-placed instances; `lifted` maps instance -> the per-Gaussian label to render."""
    gaussians, ids, camera = hand_placed(instances)
    labels = None if lifted is None else torch.tensor([lifted[i] for i in ids.tolist()])
    prototypes = PROTOTYPES.only(instances)  # as render_view does: hidden instances have no prototype
    return render_frame(gaussians, camera, mode, prototypes, PCA, frozenset(selected), labels)


def overlay(instance: int, shown_id: int | None = None, selected: bool = False) -> np.ndarray:
    """What a core of `instance` should show, in 0..255, for every pixel of the core [4, 4, 3]: the palette
    colour of the id it is shown as, blended over the instance's colour (OVERLAY_MIX of it); when selected,
    that palette colour is first moved towards the highlight colour (HIGHLIGHT_MIX of it), as splats.py
    does to the browser's selected splats."""
    palette = np.asarray(instance_color(instance if shown_id is None else shown_id)) / 255.0
    if selected:
        palette = (1.0 - HIGHLIGHT_MIX) * palette + HIGHLIGHT_MIX * HIGHLIGHT_RGB
    colour = 255.0 * ((1.0 - OVERLAY_MIX) * np.asarray(COLOURS[instance]) + OVERLAY_MIX * palette)
    return np.broadcast_to(colour, (4, 4, 3))


def test_a_frame_shows_each_instance_where_its_gaussians_stand():
    """Eq. 19 per pixel: each instance's core carries its id, its colour with its palette colour over it,
    and its depth; where nothing stands the frame is empty (id 0, black, FAR_DEPTH)."""
    frame = frame_of()
    assert frame.image.shape == (HEIGHT, WIDTH, 3) and frame.image.dtype == np.uint8
    assert frame.labels.shape == (HEIGHT, WIDTH) and frame.depth.shape == (HEIGHT, WIDTH)
    for instance in (LEFT, RIGHT):
        core = CORE[instance]
        assert np.all(frame.labels[core] == instance)
        np.testing.assert_allclose(frame.rgb[core], np.broadcast_to(COLOURS[instance], (4, 4, 3)), atol=2e-3)
        np.testing.assert_allclose(frame.depth[core], CENTRES[instance][2], atol=1e-2)
        np.testing.assert_allclose(frame.image[core], overlay(instance), atol=1.5)
    # Where RIGHT covers only part of the pixel the depth is still RIGHT's: the expected depth, not the
    # accumulated one (which would be ~3/4 of it).
    assert frame.labels[EDGE] == RIGHT and frame.depth[EDGE] == pytest.approx(CENTRES[RIGHT][2], abs=1e-2)
    assert BEHIND not in frame.labels  # wholly hidden by LEFT in front of it
    assert np.all(frame.labels[EMPTY] == 0) and np.all(frame.image[EMPTY] == 0) and np.all(frame.depth[EMPTY] == FAR_DEPTH)
    assert set(np.unique(frame.labels)) == {0, LEFT, RIGHT}


def test_a_hidden_instance_leaves_its_pixels_to_what_stands_behind_it():
    """The caller passes only the visible Gaussians (and prototypes): hiding LEFT reveals BEHIND in its
    pixels, at BEHIND's depth; hiding both empties them; RIGHT's pixels stay as they were."""
    everything = frame_of()
    without_left = frame_of((RIGHT, BEHIND))
    assert LEFT not in without_left.labels
    assert np.all(without_left.labels[CORE[BEHIND]] == BEHIND)
    np.testing.assert_allclose(without_left.depth[CORE[BEHIND]], CENTRES[BEHIND][2], atol=1e-2)
    np.testing.assert_allclose(without_left.image[CORE[BEHIND]], overlay(BEHIND), atol=1.5)
    only_right = frame_of((RIGHT,))
    assert set(np.unique(only_right.labels)) == {0, RIGHT}
    assert np.all(only_right.image[CORE[LEFT]] == 0) and np.all(only_right.depth[CORE[LEFT]] == FAR_DEPTH)
    for frame in (without_left, only_right):
        np.testing.assert_array_equal(frame.labels[CORE[RIGHT]], everything.labels[CORE[RIGHT]])
        np.testing.assert_allclose(frame.image[CORE[RIGHT]], everything.image[CORE[RIGHT]], atol=1)


def test_a_selection_is_highlighted_and_everything_else_dimmed():
    """As splats.py documents for the browser's splats: the selected instance's palette colour moves
    towards the highlight colour (HIGHLIGHT_MIX of it) at full brightness, every other pixel is dimmed to
    DIMMED of its unselected brightness; clearing the selection restores the plain frame."""
    plain = frame_of()
    chosen = frame_of(selected={LEFT})
    np.testing.assert_allclose(chosen.image[CORE[LEFT]], overlay(LEFT, selected=True), atol=1.5)
    np.testing.assert_allclose(chosen.image[CORE[RIGHT]], DIMMED * overlay(RIGHT), atol=1.5)
    np.testing.assert_array_equal(chosen.labels, plain.labels)  # a selection recolours, it does not relabel
    # Both selected: neither is dimmed.
    both = frame_of(selected={LEFT, RIGHT})
    for instance in (LEFT, RIGHT):
        np.testing.assert_allclose(both.image[CORE[instance]], overlay(instance, selected=True), atol=1.5)
    # The click feedback recolours the kept frame: the same picture as rendering it again.
    np.testing.assert_array_equal(reselect_frame(plain, frozenset({LEFT})).image, chosen.image)
    np.testing.assert_array_equal(reselect_frame(chosen, frozenset()).image, plain.image)


def test_lifted_labels_are_drawn_instead_of_eq_19():
    """Given per-Gaussian labels, the frame draws those, even an id with no prototype (a split's new
    instance, 11 here) and against what the features say; the PCA frame reads the same label map."""
    relabel = {LEFT: 11, RIGHT: RIGHT, BEHIND: BEHIND}
    frame = frame_of(lifted=relabel)
    assert np.all(frame.labels[CORE[LEFT]] == 11) and np.all(frame.labels[CORE[RIGHT]] == RIGHT)
    assert np.all(frame.labels[EMPTY] == 0) and set(np.unique(frame.labels)) == {0, 11, RIGHT}
    np.testing.assert_allclose(frame.image[CORE[LEFT]], overlay(LEFT, shown_id=11), atol=1.5)
    pca_frame = frame_of(mode="pca", lifted=relabel)
    np.testing.assert_array_equal(pca_frame.labels, frame.labels)


def test_the_prototypes_mode_draws_eq_19_even_where_labels_were_lifted():
    """The paper's inference live: with lifted labels given, the "prototypes" frame still classifies the
    rendered features by Eq. 19, overlaid as the segmentation is, and a selection recolours it the same way."""
    relabel = {LEFT: 11, RIGHT: RIGHT, BEHIND: BEHIND}
    frame = frame_of(mode="prototypes", lifted=relabel)
    np.testing.assert_array_equal(frame.labels, frame_of().labels)
    np.testing.assert_allclose(frame.image[CORE[LEFT]], overlay(LEFT), atol=1.5)
    chosen = frame_of(mode="prototypes", selected={LEFT}, lifted=relabel)
    np.testing.assert_array_equal(reselect_frame(frame, frozenset({LEFT})).image, chosen.image)


def test_the_pca_frame_colours_covered_pixels_by_their_feature():
    """Covered pixels show the PCA colour of the one feature that covers them; LEFT and RIGHT, of
    different features, differ; empty pixels stay black; the label map is the segmentation's."""
    frame = frame_of(mode="pca")
    for instance in (LEFT, RIGHT):
        colour = 255.0 * PCA.colors(torch.eye(4)[CHANNEL[instance]]).numpy()
        np.testing.assert_allclose(frame.image[CORE[instance]], np.broadcast_to(colour, (4, 4, 3)), atol=1.5)
    assert np.abs(frame.image[CORE[LEFT]].astype(int) - frame.image[CORE[RIGHT]]).max() > 50
    assert np.all(frame.image[EMPTY] == 0)
    np.testing.assert_array_equal(frame.labels, frame_of().labels)


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
