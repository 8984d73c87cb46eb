"""The running viewer driven over its websocket, as a browser drives it (no browser needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from viser_client import ViserTestClient, free_port, until

from protosaga_app.browser_camera import camera_from_pose, pose_from_camera
from protosaga_app.viewer import ViewerConfig, main, serve
from protosaga_core.io.ply import read_ply
from protosaga_core.method.label_edits import Merge
from protosaga_core.render import render

WIDTH, HEIGHT = 256, 192


@pytest.fixture()
def app(trained_scene):
    app = serve(ViewerConfig(trained_scene, port=free_port(), open_browser=False))
    yield app
    app.stop()


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
    # The click is acknowledged where it was made, then named there with its size; the other nodes dim.
    first.wait_for(lambda m: m.get("name") == "/click/mark")
    count = int((app.document.labels() == instance).sum())
    label = first.wait_for(lambda m: m.get("name") == "/click/label" and f"{count:,} Gaussians" in str(m.get("props", {}).get("text")))
    assert label["props"]["text"].startswith(app.document.instance_name(instance))

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


def rectangle(client: ViserTestClient, corner0: tuple[float, float], corner1: tuple[float, float], modifier: str) -> None:
    client.send(
        "ScenePointerMessage", event_type="rect-select", ray_origin=None, ray_direction=None,
        screen_pos=(corner0, corner1), modifier=modifier,
    )


def centres_inside(app, view, members: np.ndarray, corner0, corner1) -> np.ndarray:
    """The Gaussians among `members` whose centres project inside a screen rectangle of `view`'s camera at
    WIDTH x HEIGHT, in front of it (pinhole arithmetic in numpy, apart from the viewer's code)."""
    camera = camera_from_pose(pose_from_camera(view.viewmat, view.K, view.width, view.height), WIDTH, HEIGHT)
    viewmat, K = camera.viewmats[0].double().numpy(), camera.Ks[0].double().numpy()
    local = app.document.scene.gaussians.means[members].double().numpy() @ viewmat[:3, :3].T + viewmat[:3, 3]
    u = np.floor(K[0, 0] * local[:, 0] / local[:, 2] + K[0, 2])
    v = np.floor(K[1, 1] * local[:, 1] / local[:, 2] + K[1, 2])
    (x0, y0), (x1, y1) = corner0, corner1
    inside = (local[:, 2] > 0.01) & (u >= np.floor(x0 * WIDTH)) & (u <= np.floor(x1 * WIDTH))
    inside &= (v >= np.floor(y0 * HEIGHT)) & (v <= np.floor(y1 * HEIGHT)) & (u < WIDTH) & (v < HEIGHT)
    return members[inside]


def test_alt_drag_splits_the_selection_into_a_new_instance_and_undo_joins_it_again(app):
    view = app.document.scene.training_views()[0]
    client = connect(app, view)
    instance, x, y = dominant_instance_pixel(app, view)
    app.document.model.click(instance)
    corner0, corner1 = (max(x - 0.15, 0.0), max(y - 0.15, 0.0)), (x + 0.02, y + 0.02)
    expected = centres_inside(app, view, np.flatnonzero(app.document.labels() == instance), corner0, corner1)
    assert 0 < len(expected) < int((app.document.labels() == instance).sum())
    start = len(client.messages)
    rectangle(client, corner0, corner1, "alt")
    until(lambda: len(app.document.model.state.label_edits) == 1)
    split = app.document.model.state.label_edits[0]
    np.testing.assert_array_equal(split.index, expected)
    assert app.document.model.state.selected == {split.id}
    np.testing.assert_array_equal(np.flatnonzero(app.document.labels() == split.id), expected)
    assert split.id in app.document.prototypes().ids.tolist()
    # The tab gets the new instance's node and is told the split happened.
    client.wait_for(lambda m: m.get("name") == f"/splats/instance_{split.id}", start=start)
    client.wait_for(lambda m: "are now instance" in str(m), start=start)
    client.trigger_command("Undo", "Z")
    until(lambda: app.document.model.state.label_edits == ())
    client.wait_for(lambda m: m["type"] == "RemoveSceneNodeMessage" and m["name"] == f"/splats/instance_{split.id}", start=start)
    assert app.document.model.state.selected == {instance}
    # The panel's toggle makes Ctrl+drag split too.
    client.set_value("Ctrl+drag splits", True)
    until(lambda: app.rectangle_splits)
    rectangle(client, corner0, corner1, "cmd/ctrl")
    until(lambda: len(app.document.model.state.label_edits) == 1)
    client.close()


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
    until(lambda: app.document.model.state.label_edits == (Merge(keep, absorb),))
    assert absorb not in app.document.prototypes().ids.tolist()
    assert not (app.document.labels() == absorb).any()
    client.trigger_command("Undo", "Z")
    until(lambda: app.document.model.state.label_edits == ())
    assert absorb in app.document.prototypes().ids.tolist()
    client.close()


def test_a_click_does_not_rank_the_suspects_again_a_merge_does(app, monkeypatch):
    from protosaga_app import inspector_panel

    ranked = []
    find_suspects = inspector_panel.find_suspects
    monkeypatch.setattr(inspector_panel, "find_suspects", lambda *args, **kwargs: ranked.append(1) or find_suspects(*args, **kwargs))
    counts = np.bincount(app.document.scene.labels)
    keep, absorb = (int(i) for i in np.argsort(-counts)[:2])
    app.document.model.click(keep)
    app.document.model.click(absorb, additive=True)
    assert app.document.model.state.selected == frozenset({keep, absorb}) and ranked == []
    app.document.model.merge(keep, absorb)
    assert app.document.model.state.label_edits == (Merge(keep, absorb),) and ranked == [1]
