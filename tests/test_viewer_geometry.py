"""What the viewer sends the browser is finite and placed where it can be seen.

Every number of every scene node (splat centres and covariances, frustum sizes, poses, the start camera)
is read back from viser's own record of the scene, the state a new tab receives, and must be finite (the
`computeBoundingSphere(): Computed radius is NaN` every tab logs comes from viser's own splat mesh, not
from this data: see server.py). A jump to a training view must leave the tab outside that camera's
frustum, facing the objects; the start view must show what the training cameras look at beside viser's
control panel, not under it.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, Iterator

import msgspec.msgpack
import numpy as np
import pytest
import torch
import viser
import viser.transforms as vtf
import zstandard

from protosaga_app.browser_camera import frustum_depth, frustum_scale, is_drawable_pose, pose_from_camera
from protosaga_app.document import SceneDocument
from protosaga_app.origins import start_viser_server
from protosaga_app.scene import ViewerScene
from protosaga_app.framing import (
    BEHIND_FRUSTUM,
    CONTROL_PANEL_PX,
    VISER_BACKGROUND_DISTANCE,
    camera_counts,
    frustum_depth_for,
    near_plane,
    object_bounds,
    overview_pose,
)
from protosaga_app.server import HOTKEY_HINT, ViewerApp, ViewerOptions
from protosaga_app.splats import browser_subset, drawable, splat_arrays
from protosaga_app.viewer import ViewerConfig, serve
from protosaga_core.cameras import project_to_pixels
from protosaga_core.gaussians import Gaussians

from viser_client import ViserTestClient, free_port, until

CANVASES = ((1000, 700), (1280, 800))
"""Canvases the start view must work in: the browser test's viewport and a laptop window."""


# --- reading the scene as a new tab receives it ------------------------------------------------------
def scene_messages(server: viser.ViserServer) -> list[dict[str, Any]]:
    """The scene state viser replays to a new tab, with every binary array decoded (viser's .viser format:
    inner size, then zstd of [msgpack length][msgpack][8-byte aligned buffers])."""
    blob = server.get_scene_serializer().serialize()
    inner = zstandard.ZstdDecompressor().decompress(blob[8:], max_output_size=int.from_bytes(blob[:8], "little"))
    length = int.from_bytes(inner[:8], "little")
    payload = msgspec.msgpack.decode(inner[8 : 8 + length])
    buffers, offset = [], 8 + length
    for size in payload["binaryBufferLengths"]:
        offset += (8 - offset % 8) % 8
        buffers.append(inner[offset : offset + size])
        offset += size
    return [_resolve(message, buffers) for _, message in payload["messages"]]


def _resolve(value: Any, buffers: list[bytes]) -> Any:
    if isinstance(value, dict) and "__binary_index" in value and "dtype" in value:
        return np.frombuffer(buffers[value["__binary_index"]], dtype=value["dtype"])
    if isinstance(value, dict):
        return {key: _resolve(item, buffers) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_resolve(item, buffers) for item in value]
    return value


def splat_buffers(messages: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """The last splat buffer sent per node (creation or update), [M, 8] uint32 words."""
    buffers: dict[str, np.ndarray] = {}
    for message in messages:
        props = message.get("props") if message["type"] == "GaussianSplatsMessage" else message.get("updates")
        if isinstance(props, dict) and isinstance(props.get("buffer"), np.ndarray):
            buffers[message["name"]] = props["buffer"].reshape(-1, 8)
    return buffers


def numeric_arrays(value: Any, key: str = "") -> Iterator[tuple[str, np.ndarray]]:
    """(field name, float array) of every number in a message: scalars, tuples, binary arrays; a splat
    buffer as its float32 centres and float16 covariances (its colours are bytes)."""
    if isinstance(value, np.ndarray):
        if key == "buffer" and value.dtype == np.uint32:
            words = value.reshape(-1, 8)
            yield "centers", np.ascontiguousarray(words[:, 0:3]).view("<f4")
            yield "covariances", np.ascontiguousarray(words[:, 4:7]).view("<f2").astype(np.float32)
        elif value.dtype.kind == "f":
            yield key, value
    elif isinstance(value, dict):
        for name, item in value.items():
            yield from numeric_arrays(item, name)
    elif isinstance(value, (list, tuple)):
        numbers = [item for item in value if isinstance(item, float)]
        if numbers:
            yield key, np.asarray(numbers)
        for item in value:
            if not isinstance(item, float):
                yield from numeric_arrays(item, key)
    elif isinstance(value, float):
        yield key, np.asarray([value])


def assert_all_finite(messages: list[dict[str, Any]], where: str) -> None:
    bad = [
        f"{message['type']} {message.get('name', '')} {field}"
        for message in messages
        for field, array in numeric_arrays(message)
        if not np.isfinite(array).all()
    ]
    assert not bad, f"{where}: non-finite values in {bad[:10]}"


def assert_initial_camera_finite(server: viser.ViserServer) -> None:
    camera = server.initial_camera
    values = [camera.position, camera.look_at, camera.up, [camera.fov, camera.near, camera.far]]
    assert all(np.isfinite(np.asarray(v, dtype=float)).all() for v in values if v is not None)


def connect(app: ViewerApp, width: int = 256, height: int = 192) -> tuple[ViserTestClient, viser.ClientHandle]:
    """A tab that has reported its camera (the start view), and its handle on the server."""
    before = set(app.server.get_clients())
    client = ViserTestClient(f"ws://127.0.0.1:{app.server.get_port()}")
    initial = app.server.initial_camera
    forward = initial.look_at - initial.position
    rotation = look_rotation(forward, initial.up)
    client.send(
        "ViewerCameraMessage",
        wxyz=tuple(map(float, vtf.SO3.from_matrix(rotation).wxyz)), position=tuple(map(float, initial.position)),
        fov=float(initial.fov), near=float(initial.near), far=100.0, image_height=height, image_width=width,
        look_at=tuple(map(float, initial.look_at)), up_direction=tuple(map(float, initial.up)),
    )
    # viser lists a tab once it has reported its camera.
    until(lambda: any(c.camera.update_timestamp > 0 for i, c in app.server.get_clients().items() if i not in before))
    (handle,) = [c for i, c in app.server.get_clients().items() if i not in before]
    return client, handle


def look_rotation(forward: np.ndarray, up: np.ndarray) -> np.ndarray:
    """Camera-to-world rotation with OpenCV axes (x right, y down, z forward). [3, 3]"""
    z = forward / np.linalg.norm(forward)
    x = np.cross(z, up)
    x /= np.linalg.norm(x)
    return np.stack([x, np.cross(z, x), z], axis=1)


def opaque_centres(scene: ViewerScene) -> np.ndarray:
    """Centres of the Gaussians at least half opaque, computed from the scene alone. [M, 3]"""
    gaussians = scene.gaussians
    keep = (torch.sigmoid(gaussians.opacities) >= 0.5) & torch.isfinite(gaussians.means).all(dim=1)
    return gaussians.means[keep].double().numpy()


@pytest.fixture()
def app(trained_scene):
    app = serve(ViewerConfig(trained_scene, port=free_port(), open_browser=False))
    yield app
    app.stop()


# --- 1. finite geometry ------------------------------------------------------------------------------
def test_every_number_sent_stays_finite_through_edits_modes_and_jumps(app):
    messages = scene_messages(app.server)
    assert_all_finite(messages, "at start")
    assert_initial_camera_finite(app.server)
    sent = sum(len(buffer) for buffer in splat_buffers(messages).values())
    assert sent == len(app.nodes.shown) > 0
    assert any(m["type"] == "CameraFrustumMessage" for m in messages)

    client, handle = connect(app)
    counts = np.bincount(app.document.scene.labels)
    counts[0] = 0
    instance = int(counts.argmax())
    app.document.model.click(instance)
    assert_all_finite(scene_messages(app.server), "after a selection")
    for action in ("isolate", "show_all", "delete", "undo", "hide", "undo"):
        app.run_action(action)
        assert_all_finite(scene_messages(app.server), f"after {action}")
    for mode in ("instances", "segmentation", "pca", "rgb"):
        app.set_mode(mode)
        assert_all_finite(scene_messages(app.server), f"in mode {mode}")
    app.cameras.set_visible(False)
    app.cameras.set_visible(True)
    for view in app.document.scene.training_views()[:3]:
        app.cameras.go_to(handle, view.name)
        assert np.isfinite(handle.camera.position).all() and np.isfinite(handle.camera.wxyz).all()
    # The camera moves the tab itself was sent are finite too.
    camera_messages = lambda: [m for m in list(client.messages) if m.get("type", "").startswith("SetCamera")]  # noqa: E731
    until(lambda: any(m["type"] == "SetCameraPositionMessage" for m in camera_messages()))
    assert_all_finite(camera_messages(), "camera messages sent to the tab")
    client.close()


def poisoned(scene: ViewerScene, rows: dict[str, int]) -> ViewerScene:
    """The scene with a few degenerate Gaussians (as a live training run or an in-memory edit can hold
    them; PLY files refuse NaN) and one training camera with broken intrinsics."""
    tensors = {name: tensor.clone() for name, tensor in scene.gaussians.tensors().items()}
    tensors["means"][rows["nan_centre"], 1] = math.nan
    tensors["means"][rows["inf_centre"], 0] = math.inf
    tensors["scales"][rows["inf_scale"]] = 1e4  # exp overflows float32
    tensors["scales"][rows["huge_scale"]] = 8.0  # finite, but its covariance (~9e6) is beyond float16
    tensors["opacities"][rows["nan_opacity"]] = math.nan
    tensors["sh0"][rows["nan_colour"]] = math.nan
    train = scene.training_views()[0]
    views = [replace(view, K=torch.zeros(3, 3)) if view is train else view for view in scene.dataset.views]
    return replace(scene, gaussians=Gaussians(**tensors), dataset=replace(scene.dataset, views=views))


def test_degenerate_gaussians_and_cameras_are_not_sent(trained_scene):
    scene = ViewerScene.load(trained_scene)
    opacities = torch.sigmoid(scene.gaussians.opacities)
    chosen = torch.argsort(opacities, descending=True)[:6].tolist()  # the ones max_splats would send first
    rows = dict(zip(("nan_centre", "inf_centre", "inf_scale", "huge_scale", "nan_opacity", "nan_colour"), chosen))
    scene = poisoned(scene, rows)
    broken_view = scene.training_views()[0].name
    server = start_viser_server("127.0.0.1", free_port(), (), label="test")
    app = None
    try:
        app = ViewerApp(server, SceneDocument(scene, torch.device("cpu")), ViewerOptions(max_splats=len(scene.gaussians)))
        messages = scene_messages(server)
        assert_all_finite(messages, "poisoned scene")
        assert_initial_camera_finite(server)
        buffers = splat_buffers(messages)
        assert sum(len(b) for b in buffers.values()) == len(scene.gaussians) - len(rows)
        sent_centres = np.concatenate([np.ascontiguousarray(b[:, 0:3]).view("<f4") for b in buffers.values()])
        for name in ("inf_scale", "huge_scale", "nan_opacity", "nan_colour"):  # finite centres, still left out
            centre = scene.gaussians.means[rows[name]].numpy()
            assert not (sent_centres == centre).all(axis=1).any(), name
        frustums = [m["name"] for m in messages if m["type"] == "CameraFrustumMessage"]
        assert len(frustums) == len(scene.training_views()) - 1 and f"/cameras/{broken_view}" not in frustums

        client, handle = connect(app)
        before = handle.camera.position.copy()
        app.cameras.go_to(handle, broken_view)  # no camera to go to: nothing moves, nothing raises
        np.testing.assert_array_equal(handle.camera.position, before)
        client.close()
    finally:
        if app is not None:
            app.stop()  # its tabs' live views first
        else:
            server.stop()


def test_drawable_and_the_browser_subset_leave_out_what_the_browser_cannot_draw():
    torch.manual_seed(0)
    gaussians = Gaussians.random_box(8, sh_degree=0, feature_dim=2)
    tensors = gaussians.tensors()
    tensors["means"][1, 0] = math.nan
    tensors["scales"][2] = 7.0  # sigma ~1100: covariance beyond float16
    tensors["opacities"][3] = math.inf  # sigmoid(inf) = 1: fine
    tensors["quats"][4] = 0.0  # normalised to 0: identity rotation, fine
    splats = splat_arrays(Gaussians(**tensors))
    keep = drawable(splats)
    assert keep.tolist() == [True, False, False, True, True, True, True, True]
    assert 1 not in browser_subset(splats.opacities, 3, keep).tolist()
    assert browser_subset(splats.opacities, None, keep).tolist() == [0, 3, 4, 5, 6, 7]
    assert browser_subset(splats.opacities, 0, keep).tolist() == []


def test_pose_from_a_broken_camera_is_not_drawable():
    viewmat = torch.eye(4)
    assert is_drawable_pose(pose_from_camera(viewmat, torch.diag(torch.tensor([50.0, 50.0, 1.0])), 64, 48))
    assert not is_drawable_pose(pose_from_camera(viewmat, torch.zeros(3, 3), 64, 48))
    assert not is_drawable_pose(pose_from_camera(torch.zeros(4, 4), torch.diag(torch.tensor([50.0, 50.0, 1.0])), 64, 48))
    assert not is_drawable_pose(pose_from_camera(torch.full((4, 4), math.nan), torch.eye(3), 64, 48))


# --- 2. where the camera goes ------------------------------------------------------------------------
def test_frustum_depth_is_the_depth_viser_draws():
    """Mirrors the client's CameraFrustumVariants.tsx: a unit-volume pyramid, then `scale`."""
    fov, aspect, scale = 0.9, 4 / 3, 0.2
    y = math.tan(fov / 2)
    x = y * aspect
    volume_scale = (x * y * 1.0 / 3.0) ** (1 / 3)
    assert frustum_depth(fov, aspect, scale) == pytest.approx(scale / volume_scale)
    assert frustum_depth(fov, aspect, frustum_scale(fov, aspect, 0.37)) == pytest.approx(0.37)


def test_a_jump_to_a_training_view_stands_behind_its_frustum_facing_the_objects(app):
    client, handle = connect(app)
    messages = scene_messages(app.server)
    frustums = {m["name"]: m["props"] for m in messages if m["type"] == "CameraFrustumMessage"}
    centre = np.median(opaque_centres(app.document.scene), axis=0)
    for view in app.document.scene.training_views()[::7]:
        app.cameras.go_to(handle, view.name)
        pose = pose_from_camera(view.viewmat, view.K, view.width, view.height)
        rotation = vtf.SO3(pose.wxyz).as_matrix()
        props = frustums[f"/cameras/{view.name}"]
        depth = frustum_depth(props["fov"], props["aspect"], props["scale"])  # as the browser draws it
        camera = handle.camera
        # Behind the apex, on the axis: outside the pyramid, which lies at z in [0, depth] of the camera.
        local = rotation.T @ (camera.position - pose.position)
        assert local[2] < -0.5 * depth and np.hypot(local[0], local[1]) < 1e-6 * (1 + depth)
        # Same orientation and field of view; the near plane lies beyond the frustum's photo.
        np.testing.assert_allclose(vtf.SO3(camera.wxyz).as_matrix(), rotation, atol=1e-6)
        assert camera.fov == pytest.approx(pose.fov)
        assert camera.near > depth - local[2]
        # The objects are in front of the camera, beyond the near plane, and the orbit point too.
        assert (centre - camera.position) @ rotation[:, 2] > camera.near
        assert (camera.look_at - camera.position) @ rotation[:, 2] > camera.near
    client.close()


def projected_share(points: np.ndarray, position, look_at, up, fov: float, near: float, width: int, height: int) -> float:
    """Share of `points` [N, 3] a camera at `position` looking at `look_at` (`up`, vertical `fov`) shows in
    the part of a `width` x `height` canvas that viser's control panel leaves free."""
    rotation = look_rotation(np.asarray(look_at) - np.asarray(position), np.asarray(up))
    local = (points - np.asarray(position)) @ rotation
    focal = 0.5 * height / math.tan(0.5 * fov)
    depth = local[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        u = 0.5 * width + focal * local[:, 0] / depth
        v = 0.5 * height + focal * local[:, 1] / depth
    seen = (depth > near) & (u >= 0) & (u < width - CONTROL_PANEL_PX) & (v >= 0) & (v < height)
    return float(seen.mean())


def watched_centres(scene: ViewerScene) -> np.ndarray:
    """The opaque centres at least half as many training cameras see as see the best-seen one: what the
    capture looks at (the objects on the demo's floor, not the walls behind the cameras). [M, 3]"""
    points = torch.from_numpy(opaque_centres(scene)).float()
    counts = torch.zeros(len(points), dtype=torch.int64)
    for view in scene.training_views():
        index, _, _ = project_to_pixels(points, view.viewmat, view.K, view.width, view.height)
        counts[index] += 1
    return points[counts >= 0.5 * counts.max()].double().numpy()


def test_the_start_view_shows_what_the_cameras_look_at_beside_the_control_panel(app):
    initial = app.server.initial_camera
    points = watched_centres(app.document.scene)
    assert len(points) > 100
    for width, height in CANVASES:
        share = projected_share(
            points, initial.position, initial.look_at, initial.up, initial.fov, initial.near, width, height
        )
        assert share >= 0.9, f"{width}x{height}: the start view shows {share:.2f} of the watched Gaussians"
    # Not from inside the objects: they fill the view, not surround the camera.
    centre, radius = object_bounds(points)
    assert np.linalg.norm(initial.position - centre) > radius


def test_camera_counts_agree_with_the_projection_the_pipeline_uses(trained_scene):
    scene = ViewerScene.load(trained_scene)
    points = scene.gaussians.means.double().numpy()[::7]
    views = scene.training_views()[:5]
    counts = camera_counts(
        points,
        np.stack([v.viewmat.double().numpy() for v in views]),
        np.stack([v.K.double().numpy() for v in views]),
        np.array([(v.width, v.height) for v in views], dtype=np.float64),
    )
    expected = np.zeros(len(points), dtype=np.int64)
    for view in views:
        index, _, _ = project_to_pixels(torch.from_numpy(points).float(), view.viewmat, view.K, view.width, view.height)
        expected[index.numpy()] += 1
    assert (counts != expected).mean() < 0.002  # float32 vs float64 at the image border


def test_overview_pose_puts_a_sphere_in_the_free_part_of_the_canvas():
    rng = np.random.default_rng(0)
    centre, radius = np.array([1.0, -2.0, 0.5]), 2.0
    points = rng.normal(size=(4000, 3))
    directions = points / np.linalg.norm(points, axis=1, keepdims=True)
    points = centre + radius * directions * rng.uniform(0, 1, (4000, 1)) ** (1 / 3)  # uniform in the ball
    up, fov, (width, height) = np.array([0.0, 0.0, 1.0]), math.radians(50), CANVASES[1]
    towards = np.array([0.0, 5.0, 0.0])
    position, look_at = overview_pose(centre, radius, up, towards, fov, width / height, CONTROL_PANEL_PX / width)
    assert projected_share(points, position, look_at, up, fov, 1e-3, width, height) == 1.0
    assert position[2] > centre[2] and position[1] > centre[1]  # from above, on the side asked for
    # The sphere's centre sits left of the canvas centre (the panel is on the right).
    rotation = look_rotation(look_at - position, up)
    assert ((centre - position) @ rotation)[0] < 0


# --- 3. hotkeys --------------------------------------------------------------------------------------
def test_the_panel_says_how_to_get_the_hotkeys_back(app):
    client = ViserTestClient(f"ws://127.0.0.1:{app.server.get_port()}")
    client.wait_for(
        lambda m: HOTKEY_HINT in (m.get("props", {}).get("_markdown", ""), m.get("updates", {}).get("_markdown", ""))
    )
    client.wait_for(lambda m: m["type"] == "RegisterCommandMessage" and m["props"]["hotkey"] == "escape")
    client.close()


def sent_splats(server: viser.ViserServer) -> dict[str, int]:
    """Splats per splat node the browser holds now (nodes removed since are dropped)."""
    counts: dict[str, int] = {}
    for message in scene_messages(server):
        if message["type"] == "GaussianSplatsMessage":
            counts[message["name"]] = len(message["props"]["buffer"].reshape(-1, 8))
        elif message["type"] == "RemoveSceneNodeMessage":
            counts.pop(message["name"], None)
    return counts


def test_over_the_splat_budget_the_browser_gets_what_is_visible(trained_scene):
    scene = ViewerScene.load(trained_scene)
    budget = len(scene.gaussians) // 4
    server = start_viser_server("127.0.0.1", free_port(), (), label="test")
    app = None
    try:
        document = SceneDocument(scene, torch.device("cpu"))
        app = ViewerApp(server, document, ViewerOptions(max_splats=budget))
        assert app.nodes.budgeted and sum(sent_splats(server).values()) == budget
        labels = document.labels(document.model.state)
        largest = int(np.bincount(labels[labels > 0]).argmax())
        document.model.click(largest)
        document.model.isolate_selected()  # an isolated object arrives whole
        whole = int((drawable(app.nodes.splats) & (labels == largest)).sum())
        assert sent_splats(server) == {f"/splats/instance_{largest}": min(whole, budget)}
        document.model.show_all()
        counts = sent_splats(server)
        assert len(counts) > 2 and sum(counts.values()) == budget
    finally:
        if app is not None:
            app.stop()
        else:
            server.stop()


@pytest.mark.parametrize("extent, spacing", [(0.5, 0.05), (5.0, 0.4), (150.0, 3.0), (5000.0, 400.0)])
def test_the_near_plane_stays_in_front_of_visers_background_plane(extent, spacing):
    """viser draws server frames on a plane VISER_BACKGROUND_DISTANCE in front of the camera: a near plane
    beyond it hid the segmentation of real captures in SfM units (a statue at 6 units, near plane 1.2). In any
    units the near plane stays closer, and still beyond the photo of a frustum the camera jumped behind."""
    centers = np.stack([np.arange(20) * spacing, np.zeros(20), np.zeros(20)], axis=1)
    depth = frustum_depth_for(centers, extent)
    near = near_plane(depth, extent)
    assert 0.0 < near < VISER_BACKGROUND_DISTANCE
    assert near > (1.0 + BEHIND_FRUSTUM) * depth  # the jumped-behind frustum's image plane is clipped
