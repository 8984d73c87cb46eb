"""The running viewer driven over its websocket, as a browser drives it (no browser needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from protosaga_app.browser_camera import camera_from_pose, pose_from_camera
from protosaga_app.viewer import ViewerConfig, main, serve
from protosaga_core.ply import read_ply
from protosaga_core.render import render

from viser_client import ViserTestClient, free_port, until

WIDTH, HEIGHT = 256, 192


@pytest.fixture()
def app(trained_scene):
    app = serve(ViewerConfig(trained_scene, port=free_port(), open_browser=False))
    yield app
    app.server.stop()


def connect(app, view) -> ViserTestClient:
    """A tab whose camera looks through a training view at WIDTH x HEIGHT."""
    client = ViserTestClient(f"ws://127.0.0.1:{app.server.get_port()}")
    pose = pose_from_camera(view.viewmat, view.K, view.width, view.height)
    look_at = pose.position + camera_from_pose(pose, WIDTH, HEIGHT).viewmats[0, 2, :3].double().numpy()
    client.send(
        "ViewerCameraMessage",
        wxyz=tuple(map(float, pose.wxyz)), position=tuple(map(float, pose.position)), fov=pose.fov,
        near=0.01, far=100.0, image_height=HEIGHT, image_width=WIDTH,
        look_at=tuple(map(float, look_at)), up_direction=(0.0, 0.0, 1.0),
    )
    until(lambda: any(c.camera.update_timestamp > 0 for c in app.server.get_clients().values()))
    return client


def dominant_instance_pixel(app, view) -> tuple[int, float, float]:
    """An instance and a pixel where it contributes most, found with the rasterizer alone (one-hot
    instance channels), independent of the picking code."""
    scene = app.document.scene
    labels = torch.from_numpy(scene.labels)
    one_hot = torch.nn.functional.one_hot(labels, int(labels.max()) + 1).float()
    pose = pose_from_camera(view.viewmat, view.K, view.width, view.height)
    with torch.no_grad():
        weights = render(scene.gaussians, camera_from_pose(pose, WIDTH, HEIGHT), rgb=False, extras=one_hot).extras[0]
    weights[..., 0] = 0.0
    owner = weights.argmax(-1)
    ids, counts = torch.unique(owner[weights.max(-1).values > 0.5], return_counts=True)
    chosen = int(ids[counts.argmax()])
    share = torch.where(owner == chosen, weights[..., chosen], torch.zeros(()))
    row, column = divmod(int(share.flatten().argmax()), WIDTH)
    return chosen, (column + 0.5) / WIDTH, (row + 0.5) / HEIGHT


def click(client: ViserTestClient, x: float, y: float, modifier: str | None = None) -> None:
    client.send(
        "ScenePointerMessage", event_type="click", ray_origin=(0.0, 0.0, 0.0), ray_direction=(0.0, 0.0, 1.0),
        screen_pos=((float(x), float(y)),), modifier=modifier,
    )


def test_click_isolate_undo_and_a_second_tab_share_one_state(app):
    view = app.document.scene.training_views()[0]
    first = connect(app, view)
    instance, x, y = dominant_instance_pixel(app, view)
    click(first, x, y)
    until(lambda: app.document.model.state.selected == frozenset({instance}))

    second = connect(app, view)
    second.wait_for(lambda m: f"{instance}: " in m.get("props", {}).get("_markdown", "") or f"{instance}: " in str(m.get("updates", {})))
    start = len(first.messages)
    second.trigger_command("Isolate selection", "I")
    until(lambda: app.document.model.visible_instances() == frozenset({instance}))
    # The first tab is told to hide every other instance's splat node.
    other = next(i for i in app.document.model.instances if i != instance)
    first.wait_for(
        lambda m: m["type"] == "SetSceneNodeVisibilityMessage" and m["name"] == f"/splats/instance_{other}" and not m["visible"],
        start=start,
    )
    first.trigger_command("Undo", "Z")
    until(lambda: app.document.model.visible_instances() == app.document.model.live_instances())
    assert app.document.model.state.selected == frozenset({instance})
    first.close()
    second.close()


def test_segmentation_mode_sends_frames_and_clicks_read_the_label_map(app):
    view = app.document.scene.training_views()[1]
    client = connect(app, view)
    client.set_value("Render mode", "Segmentation (per pixel)")
    client.wait_for(lambda m: m["type"] == "BackgroundImageMessage" and m.get("rgb_data") is not None)
    live = next(iter(app._views.values()))
    until(lambda: live.current_frame() is not None and live.current_frame().camera.width == 640)
    frame = live.current_frame()
    # A pixel well inside one label region: the click must select exactly that label.
    labels = frame.labels
    interior = (labels[1:-1, 1:-1] == labels[:-2, 1:-1]) & (labels[1:-1, 1:-1] == labels[2:, 1:-1])
    interior &= (labels[1:-1, 1:-1] == labels[1:-1, :-2]) & (labels[1:-1, 1:-1] == labels[1:-1, 2:]) & (labels[1:-1, 1:-1] > 0)
    rows, columns = np.nonzero(interior)
    row, column = rows[len(rows) // 2] + 1, columns[len(columns) // 2] + 1
    click(client, (column + 0.5) / frame.camera.width, (row + 0.5) / frame.camera.height)
    until(lambda: app.document.model.state.selected == frozenset({int(labels[row, column])}))
    client.close()


def test_export_button_downloads_a_plain_ply_and_saves_it_under_exports(app, trained_scene):
    view = app.document.scene.training_views()[0]
    client = connect(app, view)
    instance, x, y = dominant_instance_pixel(app, view)
    click(client, x, y)
    until(lambda: app.document.model.state.selected == frozenset({instance}))
    client.click_button("Export selection")
    start = client.wait_for(lambda m: m["type"] == "FileTransferStartDownload")
    parts = [
        client.wait_for(lambda m, i=i: m["type"] == "FileTransferPart" and m["transfer_uuid"] == start["transfer_uuid"] and m["part_index"] == i)
        for i in range(start["part_count"])
    ]
    content = b"".join(part["content"] for part in parts)
    saved = trained_scene / "exports" / start["filename"]
    assert saved.read_bytes() == content and start["filename"].startswith(f"instances_{instance}_")
    exported = read_ply(saved)
    assert len(exported.gaussians) == int((app.document.scene.labels == instance).sum())
    assert exported.gaussians.feature_dim == 0 and exported.instance_ids is None
    client.close()


def test_the_command_line_refuses_a_folder_that_is_not_a_scene(tmp_path, capsys):
    assert main([str(tmp_path), "--port", str(free_port()), "--no-open-browser"]) == 2
    assert "scene.json" in capsys.readouterr().err


def test_the_server_binds_localhost_by_default(app):
    assert app.server.get_host() == "127.0.0.1"
    assert ViewerConfig(Path("x")).host == "127.0.0.1"


def test_inspector_shows_a_view_and_merging_from_it_is_undoable(app):
    view = app.document.scene.training_views()[2]
    client = connect(app, view)
    client.set_value("Training view", view.name)
    client.wait_for(lambda m: view.name in str(m.get("updates", {})) and "disagree" in str(m.get("updates", {})))
    counts = np.bincount(app.document.scene.labels)
    keep, absorb = (int(i) for i in np.argsort(-counts)[:2])
    app.document.model.select_many([keep, absorb])
    client.click_button("Merge the two selected instances")
    until(lambda: app.document.model.state.merged == ((keep, absorb),))
    assert absorb not in app.document.prototypes().ids.tolist()
    assert not (app.document.labels() == absorb).any()
    client.trigger_command("Undo", "Z")
    until(lambda: app.document.model.state.merged == ())
    assert absorb in app.document.prototypes().ids.tolist()
    client.close()
