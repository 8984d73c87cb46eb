"""A tab's live view (protosaga_app/live_view.py) without a browser or a viser server: the depth PNG,
pose identity, the frame a tab sees, and the background thread (reduced then full size, coalesced
requests, recolouring on selection, failures and stopping), driven through a stand-in client."""

from __future__ import annotations

import io
import threading
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from viser._messages import BackgroundImageMessage
from viser_client import until

from protosaga_app import live_view
from protosaga_app.browser_camera import BrowserPose, camera_from_pose, pose_from_camera, render_size
from protosaga_app.document import SceneDocument
from protosaga_app.live import FAR_DEPTH, FeaturePca, render_frame, render_view, reselect_frame
from protosaga_app.live_view import LiveSettings, LiveView, encode_depth, pose_key
from protosaga_app.scene import ViewerScene

DEPTH_UNIT = 1e-5
"""encode_depth's fixed-point step (metres)."""
MAX_DEPTH = (2**24 - 1) * DEPTH_UNIT
"""The deepest depth 24 bits hold; deeper ones are clipped to it."""


def decode_depth(png: bytes) -> np.ndarray:
    """Depth from encode_depth's PNG, read as viser's client reads it: little-endian in B, G, R. [H, W] float64"""
    with Image.open(io.BytesIO(png)) as image:
        assert image.mode == "RGBA"
        pixels = np.asarray(image).astype(np.int64)
    return (pixels[..., 2] + (pixels[..., 1] << 8) + (pixels[..., 0] << 16)) * DEPTH_UNIT


def jpeg_size(message: BackgroundImageMessage) -> tuple[int, int]:
    with Image.open(io.BytesIO(message.rgb_data)) as image:
        return image.size


# --- pure functions ----------------------------------------------------------------------------------


def test_encode_depth_round_trips_within_its_fixed_point_step():
    rng = np.random.default_rng(0)
    depth = rng.uniform(0.0, MAX_DEPTH, (37, 53)).astype(np.float32)
    depth[0, :4] = [0.0, DEPTH_UNIT, 1.0, 123.45678]
    depth[1, :3] = [-2.0, FAR_DEPTH, 1.0e9]  # out of range: clipped
    decoded = decode_depth(encode_depth(depth))
    assert decoded.shape == depth.shape
    inside = (depth >= 0) & (depth <= MAX_DEPTH)
    exact = depth[inside].astype(np.float64)
    # Truncated to the step, after float32's own rounding of depth * 1e5 (half an ulp, ~1 step at 167 m).
    error = exact - decoded[inside]
    assert np.all(np.abs(error) <= DEPTH_UNIT + 2 * np.spacing(depth[inside]).astype(np.float64) * 1e5 * DEPTH_UNIT)
    assert np.abs(error).max() >= 0.5 * DEPTH_UNIT  # really fixed point, not lossless
    np.testing.assert_allclose(decoded[0, :4], [0.0, DEPTH_UNIT, 1.0, 123.45678], atol=1.5 * DEPTH_UNIT)
    np.testing.assert_allclose(decoded[1, :3], [0.0, MAX_DEPTH, MAX_DEPTH], atol=1e-9)


def test_pose_key_changes_exactly_when_the_pose_does():
    pose = BrowserPose(np.array([0.9, 0.1, -0.3, 0.3]), np.array([1.0, -2.0, 0.5]), 0.9, 4 / 3)
    same = BrowserPose(pose.wxyz.copy(), pose.position.tolist(), 0.9, 4 / 3)  # equal values, other objects
    assert pose_key(same) == pose_key(pose) and hash(pose_key(same)) == hash(pose_key(pose))
    nudged_position = pose.position.copy()
    nudged_position[1] = np.nextafter(nudged_position[1], 0.0)  # one ulp
    nudged_wxyz = pose.wxyz.copy()
    nudged_wxyz[3] = np.nextafter(nudged_wxyz[3], 1.0)
    others = [
        replace(pose, position=nudged_position),
        replace(pose, wxyz=nudged_wxyz),
        replace(pose, fov=np.nextafter(0.9, 1.0)),
        replace(pose, aspect=16 / 9),
    ]
    keys = {pose_key(pose), *(pose_key(other) for other in others)}
    assert len(keys) == 1 + len(others)


# --- the frame a tab sees ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scene(trained_scene_readonly) -> ViewerScene:
    return ViewerScene.load(trained_scene_readonly)


@pytest.fixture(scope="module")
def pca(scene) -> FeaturePca:
    return FeaturePca.fit(scene.gaussians.features)


@pytest.fixture()
def document(scene) -> SceneDocument:
    """A fresh edit model on the shared scene; tests here only select, which is never saved."""
    return SceneDocument(scene, torch.device("cpu"))


def view_pose(scene: ViewerScene, index: int = 0) -> BrowserPose:
    view = scene.training_views()[index]
    return pose_from_camera(view.viewmat, view.K, view.width, view.height)


def test_render_view_is_render_frame_of_the_visible_gaussians(trained_scene, pca):
    scene = ViewerScene.load(trained_scene)  # a private copy: hiding an instance is saved into the scene
    document = SceneDocument(scene, torch.device("cpu"))
    assert document.lifted
    pose = view_pose(scene)
    width, height = render_size(pose.aspect, 96)
    camera = camera_from_pose(pose, width, height)
    everything = render_view(document, pca, pose, "segmentation", width, height)
    ids, counts = np.unique(everything.labels[everything.labels > 0], return_counts=True)
    hidden, chosen = (int(i) for i in ids[np.argsort(-counts)[:2]])
    document.model.click(hidden)
    document.model.hide_selected()
    document.model.click(chosen)

    shown = scene.labels != hidden
    gaussians, labels = scene.gaussians.select(torch.from_numpy(shown)), torch.from_numpy(scene.labels[shown])
    frames = {}
    for mode in ("segmentation", "pca"):
        frame = frames[mode] = render_view(document, pca, pose, mode, width, height)
        expected = render_frame(gaussians, camera, mode, scene.prototypes, pca, frozenset({chosen}), labels)
        assert frame.mode == mode and (frame.camera.width, frame.camera.height) == (width, height)
        np.testing.assert_array_equal(frame.image, expected.image)
        np.testing.assert_array_equal(frame.labels, expected.labels)
        np.testing.assert_array_equal(frame.depth, expected.depth)
    # The hidden instance's Gaussians are not drawn (the PCA mode's labels are Eq. 19 of the rendered
    # features, which may still name it); the selection is highlighted.
    segmentation = frames["segmentation"]
    assert hidden not in segmentation.labels and chosen in segmentation.labels
    assert np.any(frames["pca"].depth != everything.depth)
    np.testing.assert_array_equal(segmentation.image, reselect_frame(segmentation, frozenset({chosen})).image)
    assert np.any(segmentation.image != reselect_frame(segmentation, frozenset()).image)


def test_render_view_classifies_by_eq_19_when_the_labels_were_not_lifted(trained_scene, pca):
    scene = ViewerScene.load(trained_scene)  # a private copy: hiding below is saved in its edits.json
    configs = {**scene.meta.configs, "prototypes": {"gaussian_labels": "proto"}}
    document = SceneDocument(replace(scene, meta=replace(scene.meta, configs=configs)), torch.device("cpu"))
    assert not document.lifted
    pose = view_pose(scene, 1)
    frame = render_view(document, pca, pose, "segmentation", 80, 60)
    expected = render_frame(scene.gaussians, camera_from_pose(pose, 80, 60), "segmentation", scene.prototypes, pca)
    np.testing.assert_array_equal(frame.labels, expected.labels)
    np.testing.assert_array_equal(frame.image, expected.image)
    assert frame.labels.any()
    # A hidden instance is neither drawn nor named: Eq. 19 runs over the visible instances' prototypes.
    largest = int(np.bincount(frame.labels.ravel())[1:].argmax()) + 1
    document.model.click(largest)
    document.model.hide_selected()
    hidden = render_view(document, pca, pose, "segmentation", 80, 60)
    assert largest not in hidden.labels and hidden.labels.any()


# --- the background thread, with a stand-in client ---------------------------------------------------


class FakeScene:
    """What LiveView uses of a client's scene: `set_background_image(None)`, and the websocket interface
    `send_background` queues the frame's message on. Records both (None for a cleared background)."""

    def __init__(self) -> None:
        self.messages: list[BackgroundImageMessage | None] = []
        self._websock_interface = self

    def queue_message(self, message: BackgroundImageMessage) -> None:
        self.messages.append(message)

    def set_background_image(self, image: None, **_) -> None:
        assert image is None
        self.messages.append(None)


def fake_camera(pose: BrowserPose, width: int = 80, height: int = 60, reported: bool = True) -> SimpleNamespace:
    """A tab's camera as viser's ClientHandle.camera states it (update_timestamp 0: not reported yet)."""
    return SimpleNamespace(
        wxyz=pose.wxyz, position=pose.position, fov=pose.fov, aspect=pose.aspect,
        image_width=width, image_height=height, update_timestamp=1.0 if reported else 0.0,
    )


def moved(pose: BrowserPose, step: int) -> BrowserPose:
    return replace(pose, position=pose.position + 0.01 * step * np.array([1.0, 0.0, 0.0]))


class Renders:
    """Wraps `render_view` in live_view's namespace: records (pose position, width, height) of each call;
    `hold` makes the next call wait until `release()`; `fail` makes the next call raise."""

    def __init__(self, monkeypatch) -> None:
        self.calls: list[tuple[tuple[float, ...], int, int]] = []
        self.entered, self.released = threading.Event(), threading.Event()
        self.released.set()
        self.fail = False
        monkeypatch.setattr(live_view, "render_view", self)

    def __call__(self, document, pca, pose, mode, width, height):
        self.calls.append((tuple(np.asarray(pose.position).tolist()), width, height))
        self.entered.set()
        assert self.released.wait(20.0)
        if self.fail:
            self.fail = False
            raise RuntimeError("a frame that fails")
        return render_view(document, pca, pose, mode, width, height)

    def hold(self) -> None:
        self.entered.clear()
        self.released.clear()


@pytest.fixture()
def start_view(document, pca):
    """Start LiveViews on stand-in clients; each is stopped, and its thread joined, afterwards."""
    views = []

    def start(camera: SimpleNamespace, settings: LiveSettings, mode: str = "segmentation") -> LiveView:
        client = SimpleNamespace(client_id=len(views), camera=camera, scene=FakeScene())
        modes = {"now": mode}
        view = LiveView(client, document, pca, lambda: modes["now"], settings)
        view.modes = modes  # the test may switch the mode
        views.append(view)
        return view

    yield start
    for view in views:
        view.stop()
        view._thread.join(10.0)
        assert not view._thread.is_alive()


SMALL = LiveSettings(moving_size=48, still_size=96, settle_s=0.05)


def test_a_request_renders_the_moving_size_then_the_still_size(scene, document, pca, start_view):
    pose = view_pose(scene)
    view = start_view(fake_camera(pose), SMALL)
    messages = view.client.scene.messages
    view.request()
    until(lambda: len(messages) == 2, timeout=10.0)
    assert [jpeg_size(m) for m in messages] == [render_size(pose.aspect, 48), render_size(pose.aspect, 96)]
    frame = view.current_frame()
    assert (frame.camera.width, frame.camera.height) == render_size(pose.aspect, 96)
    # The frame kept and sent is the public render_view's, its depth in the message.
    expected = render_view(document, pca, pose, "segmentation", *render_size(pose.aspect, 96))
    np.testing.assert_array_equal(frame.labels, expected.labels)
    np.testing.assert_array_equal(frame.image, expected.image)
    np.testing.assert_allclose(decode_depth(messages[1].depth_data), np.minimum(frame.depth, MAX_DEPTH), atol=2 * DEPTH_UNIT)
    threading.Event().wait(4 * SMALL.settle_s)
    assert len(messages) == 2  # nothing more until the next request


def test_without_reduced_sizes_a_frame_is_the_browsers_size_and_rendered_once(scene, start_view):
    pose = view_pose(scene)
    view = start_view(fake_camera(pose, 72, 54), LiveSettings(moving_size=None, still_size=None, settle_s=0.01))
    view.request()
    until(lambda: view.client.scene.messages)
    threading.Event().wait(0.2)
    assert [jpeg_size(m) for m in view.client.scene.messages] == [(72, 54)]


def test_requests_coalesce_to_the_newest_camera(scene, start_view, monkeypatch):
    renders = Renders(monkeypatch)
    pose = view_pose(scene)
    view = start_view(fake_camera(pose), SMALL)
    renders.hold()
    view.request()
    assert renders.entered.wait(10.0)
    # While the first frame renders, the camera moves five times, each with a request.
    for step in range(1, 6):
        view.client.camera = fake_camera(moved(pose, step))
        view.request()
    renders.released.set()
    until(lambda: len(view.client.scene.messages) == 3, timeout=10.0)
    view.stop()
    view._thread.join(10.0)
    moving, still = render_size(pose.aspect, 48), render_size(pose.aspect, 96)
    first, last = tuple(pose.position.tolist()), tuple(moved(pose, 5).position.tolist())
    # The first frame at the moving size (no still frame: the camera moved within settle_s), then only
    # the newest camera, at both sizes; none of the cameras in between.
    assert renders.calls == [(first, *moving), (last, *moving), (last, *still)]
    assert [jpeg_size(m) for m in view.client.scene.messages] == [moving, moving, still]
    assert view.current_frame() is not None and view.current_frame().camera.width == still[0]


def test_a_tab_without_a_camera_gets_nothing_and_a_browser_mode_clears_the_background(scene, start_view, monkeypatch):
    renders = Renders(monkeypatch)
    pose = view_pose(scene)
    asked = threading.Event()

    class Unreported(SimpleNamespace):
        @property
        def update_timestamp(self) -> float:
            asked.set()
            return 0.0

    camera = fake_camera(pose)
    del camera.update_timestamp
    unreported = start_view(Unreported(**vars(camera)), SMALL)
    unreported.request()
    assert asked.wait(10.0)  # the thread looked at the camera...
    unreported.stop()
    unreported._thread.join(10.0)
    assert unreported.client.scene.messages == [] and renders.calls == []  # ...and rendered nothing

    view = start_view(fake_camera(pose), SMALL)
    view.request()
    until(lambda: len(view.client.scene.messages) == 2)
    assert view.current_frame() is not None
    view.modes["now"] = "rgb"
    view.request()
    until(lambda: len(view.client.scene.messages) == 3)
    assert view.client.scene.messages[-1] is None and view.current_frame() is None
    assert len(renders.calls) == 2


def test_reselect_recolours_the_current_frame_without_rendering(scene, document, start_view, monkeypatch):
    renders = Renders(monkeypatch)
    pose = view_pose(scene)
    view = start_view(fake_camera(pose), LiveSettings(moving_size=64, still_size=64))
    messages = view.client.scene.messages
    view.request()
    until(lambda: len(messages) == 1)
    frame = view.current_frame()
    ids, counts = np.unique(frame.labels[frame.labels > 0], return_counts=True)
    chosen = int(ids[np.argmax(counts)])
    document.model.click(chosen)
    view.reselect()  # on the calling thread
    assert len(renders.calls) == 1 and len(messages) == 2
    recoloured = view.current_frame()
    np.testing.assert_array_equal(recoloured.image, reselect_frame(frame, frozenset({chosen})).image)
    assert recoloured.depth is frame.depth and np.any(recoloured.image != frame.image)
    assert messages[1].depth_data == messages[0].depth_data and messages[1].rgb_data != messages[0].rgb_data

    # Once the camera has moved, the kept frame is stale: reselecting renders the new camera instead.
    view.client.camera = fake_camera(moved(pose, 3))
    assert view.current_frame() is None
    view.reselect()
    until(lambda: len(messages) == 3)
    assert len(renders.calls) == 2 and renders.calls[-1][0] == tuple(moved(pose, 3).position.tolist())


def test_render_now_renders_on_the_calling_thread_and_keeps_the_frame(scene, document, pca, start_view):
    pose = view_pose(scene, 2)
    view = start_view(fake_camera(pose, reported=False), SMALL, mode="rgb")
    frame = view.render_now(40)  # a browser mode: the segmentation, for picking
    assert frame.mode == "segmentation" and (frame.camera.width, frame.camera.height) == render_size(pose.aspect, 40)
    expected = render_view(document, pca, pose, "segmentation", *render_size(pose.aspect, 40))
    np.testing.assert_array_equal(frame.labels, expected.labels)
    assert view.current_frame() is frame and view.client.scene.messages == []
    full = view.render_now(None)
    assert (full.camera.width, full.camera.height) == (80, 60)


def test_a_failing_frame_does_not_end_the_thread(scene, start_view, monkeypatch, caplog):
    renders = Renders(monkeypatch)
    renders.fail = True
    view = start_view(fake_camera(view_pose(scene)), LiveSettings(moving_size=48, still_size=48))
    view.request()
    until(lambda: "failed" in caplog.text)
    assert view._thread.is_alive() and view.client.scene.messages == []
    view.request()
    until(lambda: len(view.client.scene.messages) == 1)
    assert len(renders.calls) == 2


def test_stop_ends_the_thread_and_drops_the_frame_in_progress(scene, start_view, monkeypatch):
    renders = Renders(monkeypatch)
    view = start_view(fake_camera(view_pose(scene)), SMALL)
    renders.hold()
    view.request()
    assert renders.entered.wait(10.0)
    view.stop()  # the tab closes while its frame renders
    renders.released.set()
    view._thread.join(10.0)
    assert not view._thread.is_alive()
    assert view.client.scene.messages == [] and len(renders.calls) == 1
    view.request()
    threading.Event().wait(0.1)
    assert len(renders.calls) == 1
