"""The viewer's panels on their own: a scene document, a viser GUI and the few viewer controls they may use
(no ViewerApp), driven over the websocket as a browser tab drives them."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
import viser
from viser_client import ViserTestClient, free_port, until

from protosaga_app.document import SceneDocument
from protosaga_app.panels import EDIT_BUTTONS, NO_SELECTION, ViewerControls, build
from protosaga_app.scene import ViewerScene
from protosaga_app.selection import button_label


@dataclass
class Recorded:
    """Controls that write down what the panels asked for."""

    calls: list[tuple] = field(default_factory=list)

    def controls(self) -> ViewerControls:
        return ViewerControls(
            set_mode=lambda mode: self.calls.append(("set_mode", mode)),
            show_frustums=lambda shown: self.calls.append(("show_frustums", shown)),
            go_to_view=lambda client, name: self.calls.append(("go_to_view", name)),
            redraw=lambda: self.calls.append(("redraw",)),
            set_rectangle_splits=lambda on: self.calls.append(("rectangle_splits", on)),
        )


@pytest.fixture()
def panels(trained_scene):
    """(panels, document, recorded controls, a connected tab)."""
    document = SceneDocument(ViewerScene.load(trained_scene), torch.device("cpu"))
    server = viser.ViserServer(host="127.0.0.1", port=free_port(), verbose=False)
    recorded = Recorded()
    gui = build(server.gui, document, recorded.controls(), "rgb")
    document.model.subscribe(gui.refresh)
    gui.refresh(document.model.state)
    tab = ViserTestClient(f"ws://127.0.0.1:{server.get_port()}")
    tab.announce_camera()
    until(lambda: len(server.get_clients()) == 1)
    yield gui, document, recorded, tab
    tab.close()
    server.stop()


def largest_instances(document: SceneDocument, count: int) -> list[int]:
    counts = document.instance_counts()
    return sorted(counts, key=lambda i: -counts[i])[:count]


def test_the_edit_buttons_are_named_with_their_hotkeys_and_act_on_the_document(panels):
    gui, document, _, tab = panels
    a, b = largest_instances(document, 2)
    document.model.click(a)
    tab.click_button(button_label("Hide", "hide"))
    until(lambda: a not in document.model.visible_instances())
    assert b in document.model.visible_instances()
    assert not gui.undo.disabled and gui.redo.disabled
    tab.click_button(button_label("Undo", "undo"))
    until(lambda: a in document.model.visible_instances())
    assert not gui.redo.disabled
    assert all("(" in button_label(name, action) for name, action in EDIT_BUTTONS if action in ("hide", "undo", "delete"))


def test_view_controls_reach_the_viewer_only_through_its_callbacks(panels):
    _, document, recorded, tab = panels
    shown = document.show_unassigned
    tab.set_value("Render mode", "Segmentation (per pixel)")
    tab.set_value("Training cameras", False)
    tab.set_value("Ctrl+drag splits", True)
    tab.set_value("Unassigned Gaussians", not shown)
    until(lambda: len(recorded.calls) == 4)
    assert recorded.calls == [("set_mode", "segmentation"), ("show_frustums", False), ("rectangle_splits", True), ("redraw",)]
    assert document.show_unassigned is (not shown)


def test_selection_text_table_and_list_follow_the_edit_state(panels):
    gui, document, _, _ = panels
    live = sorted(document.model.live_instances())
    assert "nothing" in gui.selection.content and gui.pick.value == NO_SELECTION
    assert gui.instance_table.content.count("data-instance=") == len(live)
    assert gui.pick.options == (NO_SELECTION, *(f"{i}: {document.instance_name(i)}" for i in live))
    chosen = largest_instances(document, 1)[0]
    document.model.click(chosen)
    assert gui.pick.value == f"{chosen}: {document.instance_name(chosen)}"
    assert f"{document.instance_counts()[chosen]:,} Gaussians" in gui.selection.content
    assert f'font-weight:bold" data-instance="{chosen}"' in gui.instance_table.content.replace(";opacity:1", "")
    assert not gui.name.disabled and gui.name.value == document.instance_name(chosen)
    document.model.delete_selected()
    assert gui.instance_table.content.count("data-instance=") == len(live) - 1
    assert f"{chosen}: " not in " ".join(gui.pick.options)
    assert "1 deleted" in gui.edits.content and not gui.discard.disabled


def test_choosing_from_the_list_selects_and_renaming_names_the_instance(panels):
    gui, document, _, tab = panels
    chosen = largest_instances(document, 2)[1]
    tab.set_value("Select", f"{chosen}: {document.instance_name(chosen)}")
    until(lambda: document.model.state.selected == frozenset({chosen}))
    tab.set_value("Name", "teapot")
    until(lambda: document.instance_name(chosen) == "teapot")
    until(lambda: "teapot" in gui.instance_table.content)
    assert gui.pick.value == f"{chosen}: teapot"


def test_discard_edits_returns_to_the_computed_labels_and_is_undoable(panels):
    gui, document, _, tab = panels
    a, b = largest_instances(document, 2)
    before = document.labels().copy()
    document.merge(a, b)
    assert not np.array_equal(document.labels(), before)
    tab.click_button("Discard edits")
    until(lambda: gui.discard.disabled)
    np.testing.assert_array_equal(document.labels(), before)
    assert "none" in gui.edits.content
    document.model.undo()
    assert (document.labels() == a).sum() == (before == a).sum() + (before == b).sum()


def test_an_instance_made_by_a_split_is_named_as_an_undoable_edit(panels):
    gui, document, _, tab = panels
    a = largest_instances(document, 1)[0]
    members = np.flatnonzero(document.labels() == a)
    split = document.split(members[: len(members) // 2])  # selected
    assert not gui.name.disabled and gui.name.value == f"instance {split.id}"
    table_before = [(row.id, row.name) for row in document.scene.instances]
    tab.set_value("Name", "left half")
    until(lambda: document.instance_name(split.id) == "left half")
    assert document.model.state.name_of(split.id) == "left half" and "1 name" in gui.edits.content
    assert [(row.id, row.name) for row in document.scene.instances] == table_before  # not a scene.json row
    until(lambda: "left half" in gui.instance_table.content)
    document.model.undo()
    assert document.instance_name(split.id) == f"instance {split.id}"


def test_the_export_format_dropdown_picks_the_file_and_clears_the_id_column(panels, trained_scene):
    _, document, _, tab = panels
    tab.set_value("Add instance-id column", True)
    tab.set_value("Format", ".splat (web viewers)")
    checkbox = tab.gui_uuid("Add instance-id column")
    tab.wait_for(lambda m: m["type"] == "GuiUpdateMessage" and m["uuid"] == checkbox and m["updates"].get("disabled") is True)
    tab.click_button("Export edited scene")
    start = tab.wait_for(lambda m: m["type"] == "FileTransferStartDownload")
    saved = trained_scene / "exports" / start["filename"]
    assert start["filename"].startswith("scene_") and saved.suffix == ".splat"
    assert start["size_bytes"] == saved.stat().st_size == 32 * len(document.scene.labels)  # 32-byte records
    record = json.loads(saved.with_suffix(".json").read_text())
    assert record["file_format"] == "splat" and record["with_instance_ids"] is False
