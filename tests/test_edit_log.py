"""Edits persist (issue 12): SCENE/edits.json follows every change, is replayed on opening, is set aside
when it does not fit the scene; discarding returns to the computed labels; exports record their edits."""

import dataclasses
import json
import logging
from datetime import datetime

import numpy as np
import pytest
import torch
from viser_client import ViserTestClient, free_port, until

from protosaga_app.document import SceneDocument
from protosaga_app.edit_log import describe, edits_of, read_edit_log, replay, set_aside
from protosaga_app.scene import ViewerScene
from protosaga_app.selection import EditModel, EditState, apply_action
from protosaga_app.viewer import ViewerConfig, serve
from protosaga_core.cli import Export
from protosaga_core.io.exports import Edit, LabelsFingerprint
from protosaga_core.io.ply import read_ply
from protosaga_core.method.label_edits import Merge, Split

INSTANCES = frozenset(range(1, 9))


def open_document(root) -> SceneDocument:
    return SceneDocument(ViewerScene.load(root), torch.device("cpu"))


def largest(document: SceneDocument, count: int) -> list[int]:
    """The `count` instances with the most Gaussians (so every edit below moves many of them)."""
    counts = np.bincount(document.scene.labels)
    counts[0] = 0
    return [int(i) for i in np.argsort(-counts)[:count]]


def saved_state(document: SceneDocument) -> EditState:
    """What edits.json holds now (EditState() without a file)."""
    log = document.edit_log
    return read_edit_log(log.path, log.labels, document.model.instances) if log.path.exists() else EditState()


def record_of(ply) -> dict:
    return json.loads(ply.with_suffix(".json").read_text())


# --- the state as edits, without a scene -------------------------------------------------------------
def test_every_state_of_a_session_is_rebuilt_by_replaying_its_edits():
    model = EditModel(INSTANCES)
    states = []
    model.subscribe(states.append)
    model.merge(1, 2)
    model.select_many([3, 4])
    model.hide_selected()
    model.click(1)
    model.merge(1, 5)
    model.click(6)
    model.delete_selected()
    model.split(Split.of(model.new_instance_id(), [40, 3, 17]))  # instance 9, selected
    model.name_instance(9, " lid ")
    model.merge(9, 7)
    model.click(9)
    model.isolate_selected()  # hides every live instance but 9, 1 (the merge of 1, 2, 5) among them
    model.undo()
    model.redo()
    model.discard_edits()
    model.undo()
    assert model.state.label_edits == (Merge(1, 2), Merge(1, 5), Split.of(9, [3, 17, 40]), Merge(9, 7))
    assert model.state.deleted == {6} and model.state.hidden == {1, 3, 4, 8} and model.state.name_of(9) == "lid"
    for state in states:
        edits = edits_of(state)
        assert [Edit.from_json(json.loads(json.dumps(edit.to_json()))) for edit in edits] == list(edits)
        assert replay(edits, INSTANCES, num_gaussians=41) == state.edits_only()
    assert [edit.to_json() for edit in edits_of(model.state)] == [
        {"op": "merge", "keep": 1, "absorb": 2},
        {"op": "merge", "keep": 1, "absorb": 5},
        {"op": "split", "id": 9, "gaussians": [3, 17, 40]},
        {"op": "merge", "keep": 9, "absorb": 7},
        {"op": "name", "id": 9, "name": "lid"},
        {"op": "delete", "ids": [6]},
        {"op": "hide", "ids": [1, 3, 4, 8]},
    ]
    assert describe(model.state) == "3 merges, 1 split, 1 name, 1 deleted, 4 hidden" and describe(EditState()) == "none"


def test_only_instances_made_by_splits_are_named_as_edits_and_a_reused_id_loses_the_name():
    model = EditModel(INSTANCES)
    with pytest.raises(ValueError, match="made by a split"):
        model.name_instance(3, "chair")  # the scene's own instances are named in scene.json
    model.split(Split.of(model.new_instance_id(), [1, 2]))
    with pytest.raises(ValueError, match="made by a split"):
        model.name_instance(9, "   ")
    model.name_instance(9, "lid")
    model.merge(3, 9)  # absorbed: the name stays in the edits, and replays
    assert replay(edits_of(model.state), INSTANCES, 100) == model.state.edits_only()
    for _ in range(3):
        model.undo()  # merge, name, split
    assert model.state == EditState(selected=frozenset())
    model.split(Split.of(model.new_instance_id(), [5]))  # id 9 again, for other Gaussians
    assert model.state.name_of(9) is None
    with pytest.raises(ValueError, match="edit 1 .*not made by an earlier split"):
        replay([Edit("name", (3,), name="chair")], INSTANCES, 100)


def test_replay_refuses_what_the_edit_model_would_not_do():
    with pytest.raises(ValueError, match="edit 1 .*no instance 99"):
        replay([Edit("delete", (3, 99))], INSTANCES, 100)
    with pytest.raises(ValueError, match="edit 2 .*instance 2 is merged away"):
        replay([Edit("merge", (1, 2)), Edit("merge", (3, 2))], INSTANCES, 100)
    with pytest.raises(ValueError, match="edit 2 .*instance 4"):
        replay([Edit("hide", (4,)), Edit("delete", (4,))], INSTANCES, 100)  # only visible instances can be deleted
    with pytest.raises(ValueError, match="edit 2 .*instance 4"):
        replay([Edit("delete", (4,)), Edit("hide", (4,))], INSTANCES, 100)
    with pytest.raises(ValueError, match="edit 1 .*makes instance 9, not 12"):
        replay([Edit("split", (12,), (1, 2))], INSTANCES, 100)  # ids of splits are the model's
    with pytest.raises(ValueError, match="edit 1 .*Gaussian 100 is beyond the scene's 100"):
        replay([Edit("split", (9,), (1, 100))], INSTANCES, 100)
    with pytest.raises(ValueError, match="edit 2 .*no instance 10"):
        replay([Edit("split", (9,), (1, 2)), Edit("merge", (9, 10))], INSTANCES, 100)
    assert replay([Edit("split", (9,), (1, 2)), Edit("merge", (9, 8))], INSTANCES, 100).live(INSTANCES) == set(range(1, 8)) | {9}
    for malformed in (
        {"op": "merge", "keep": 1, "absorb": 1},
        {"op": "merge", "keep": 1},
        {"op": "delete", "ids": []},
        {"op": "delete", "ids": [3, 3]},
        {"op": "hide", "ids": [0]},
        {"op": "hide", "ids": [True]},
        {"op": "hide", "ids": [[1]]},
        {"op": "split", "id": 9},
        {"op": "split", "id": 0, "gaussians": [1]},
        {"op": "split", "id": 9, "gaussians": "1,2"},
        {"op": "split", "id": 9, "gaussians": [2, 1]},
        {"op": "split", "id": 9, "gaussians": []},
        {"op": "hide", "ids": [2.0]},
        {"op": "explode", "ids": [1]},
        {"op": "name", "id": 9, "name": ""},
        {"op": "name", "id": 9, "name": 7},
        {"op": "name", "id": 9},
        [1, 2],
    ):
        with pytest.raises(ValueError, match="malformed edit"):
            Edit.from_json(malformed)


def test_setting_aside_never_replaces_a_file(tmp_path):
    now = datetime(2026, 11, 30, 1, 40, 0)
    first, second = tmp_path / "edits.json", tmp_path / "edits.set-aside-20261130-014000.json"
    second.write_text("an earlier one")
    first.write_text("this one")
    aside = set_aside(first, now)
    assert aside.name == "edits.set-aside-20261130-014000_2.json" and aside.read_text() == "this one"
    assert second.read_text() == "an earlier one" and not first.exists()


# --- on a trained scene ------------------------------------------------------------------------------
def test_an_edit_sequence_is_saved_and_a_fresh_document_replays_it_exactly(trained_scene):
    document = open_document(trained_scene)
    model = document.model
    log = document.edit_log
    a, b, c, d = largest(document, 4)
    assert not log.path.exists()  # nothing edited, nothing written
    document.merge(a, b)
    assert saved_state(document) == model.state.edits_only()
    written = log.path.stat().st_ino
    model.click(c)  # a selection is not an edit: the file is not rewritten
    assert log.path.stat().st_ino == written
    model.hide_selected()
    model.click(d)
    model.delete_selected()
    document.scene.rename(a, "table")
    model.show_all()
    assert saved_state(document) == model.state.edits_only()
    model.undo()  # c hidden again
    assert model.state.edits_only() == EditState(hidden=frozenset({c}), deleted=frozenset({d}), label_edits=(Merge(a, b),))
    assert saved_state(document) == model.state.edits_only()
    raw = json.loads(log.path.read_text())
    assert raw["format"] == "protosaga-edits" and raw["version"] == 1
    assert raw["labels"] == dataclasses.asdict(LabelsFingerprint.of(document.scene.labels))
    assert raw["edits"] == [{"op": "merge", "keep": a, "absorb": b}, {"op": "delete", "ids": [d]}, {"op": "hide", "ids": [c]}]

    written_last = log.path.stat().st_ino
    fresh = open_document(trained_scene)  # a restart
    assert fresh.model.state == model.state.edits_only()
    assert fresh.edit_log.notice is None and not fresh.model.can_undo()
    np.testing.assert_array_equal(fresh.labels(), document.labels())
    np.testing.assert_array_equal(fresh.model.state.kept(fresh.scene.labels), model.state.kept(document.scene.labels))
    np.testing.assert_array_equal(fresh.visible().index, document.visible().index)
    assert fresh.model.visible_instances() == model.visible_instances()
    assert fresh.scene.instance(a).name == "table"
    torch.testing.assert_close(fresh.prototypes().vectors, document.prototypes().vectors)
    assert fresh.edit_log.path.stat().st_ino == written_last  # opening does not rewrite the file
    fresh.model.show_all()
    assert saved_state(fresh) == fresh.model.state.edits_only() and not fresh.model.state.hidden


def test_two_viewers_of_one_scene_never_destroy_each_others_saved_edits(trained_scene):
    first, second = open_document(trained_scene), open_document(trained_scene)
    a, b = largest(first, 2)
    first.model.click(a)
    first.model.hide_selected()
    saved_by_first = first.edit_log.path.read_bytes()
    second.model.click(b)
    second.model.delete_selected()  # the file changed since the second viewer read it (it had none)
    assert saved_state(second) == EditState(deleted=frozenset({b}))
    kept = [p for p in trained_scene.iterdir() if p.name.startswith("edits.set-aside-")]
    assert len(kept) == 1 and kept[0].read_bytes() == saved_by_first
    assert kept[0].name in second.edit_log.notice and "another" in second.edit_log.notice
    second.model.undo()  # its own file again: nothing more is set aside
    assert len([p for p in trained_scene.iterdir() if p.name.startswith("edits.set-aside-")]) == 1
    assert first.edit_log.notice is None


def test_discarding_returns_to_the_computed_labels_and_persists_that(trained_scene):
    document = open_document(trained_scene)
    model = document.model
    a, b, c = largest(document, 3)
    document.merge(a, b)
    model.click(c)
    model.delete_selected()
    model.click(a)
    edited = model.state
    apply_action(model, "discard_edits")  # the Discard edits button
    assert model.state == EditState(selected=frozenset({a}))  # the selection stays
    np.testing.assert_array_equal(document.labels(), document.scene.labels)
    assert model.state.kept(document.scene.labels).all() and model.visible_instances() == model.instances
    assert not document.edit_log.path.exists()
    assert open_document(trained_scene).model.state == EditState()
    model.undo()  # discarding is undoable, and the undo is saved again
    assert model.state == edited and saved_state(document) == edited.edits_only()
    model.discard_edits()
    assert open_document(trained_scene).model.state == EditState()


def write_log(root, edits, made_on=None, **changes) -> bytes:
    """An edits.json for the scene at `root`, made on labels `made_on` (default: its current ones), with
    top-level `changes`."""
    made_on = np.load(root / "labels.npy") if made_on is None else made_on
    raw = {"format": "protosaga-edits", "version": 1, "labels": dataclasses.asdict(LabelsFingerprint.of(made_on)), "edits": edits}
    data = json.dumps({**raw, **changes}).encode()
    (root / "edits.json").write_bytes(data)
    return data


def renumbered_labels(root) -> bytes:
    """A log made before `protosaga prototypes` ran again: the labels now swap two instances' ids."""
    labels = np.load(root / "labels.npy")
    first, second = (int(i) for i in np.unique(labels[labels > 0])[:2])
    data = write_log(root, [{"op": "delete", "ids": [first]}], labels)
    np.save(root / "labels.npy", np.where(labels == first, second, np.where(labels == second, first, labels)))
    return data


def other_gaussian_count(root) -> bytes:
    count = len(np.load(root / "labels.npy"))
    return write_log(root, [], labels={"gaussians": count + 1, "sha256": "0" * 64})


def cut_short(root) -> bytes:
    """A log whose write was cut short by something other than the viewer (whose writes are atomic)."""
    data = write_log(root, [])[:20]
    (root / "edits.json").write_bytes(data)
    return data


FOREIGN_LOGS = {
    "not JSON": (cut_short, "unreadable JSON"),
    "another format": (lambda root: write_log(root, [], format="protosaga-scene"), "not a protosaga-edits file"),
    "a newer version": (lambda root: write_log(root, [], version=2), "version 2"),
    "malformed edits": (lambda root: write_log(root, [{"op": "delete", "ids": "3"}]), "malformed edit"),
    "unknown instance": (lambda root: write_log(root, [{"op": "delete", "ids": [99999]}]), "no instance 99999"),
    "other labels": (renumbered_labels, "labels.npy has changed"),
    "other Gaussian count": (other_gaussian_count, "Gaussians, but this one has"),
}


@pytest.mark.parametrize("case", FOREIGN_LOGS)
def test_a_corrupt_or_foreign_log_is_set_aside_and_the_viewer_starts_clean(trained_scene, case, caplog):
    make, reason = FOREIGN_LOGS[case]
    data = make(trained_scene)
    with caplog.at_level(logging.WARNING):
        document = open_document(trained_scene)
    assert document.model.state == EditState()
    np.testing.assert_array_equal(document.labels(), document.scene.labels)
    (aside,) = trained_scene.glob("edits.set-aside-*.json")
    assert aside.read_bytes() == data and not (trained_scene / "edits.json").exists()
    warning = next(r.getMessage() for r in caplog.records if r.name == "protosaga_app.edit_log")
    assert str(trained_scene / "edits.json") in warning and reason in warning and aside.name in warning
    assert document.edit_log.notice == warning
    document.model.click(largest(document, 1)[0])
    document.model.hide_selected()  # the session's edits are saved as usual
    assert saved_state(document) == document.model.state.edits_only()


def test_merges_that_cannot_be_recomputed_are_set_aside(trained_scene, caplog):
    a, b = largest(open_document(trained_scene), 2)
    data = write_log(trained_scene, [{"op": "merge", "keep": a, "absorb": b}])
    scene = dataclasses.replace(ViewerScene.load(trained_scene), dataset=None)  # the dataset has moved
    with caplog.at_level(logging.WARNING):
        document = SceneDocument(scene, torch.device("cpu"))
    assert document.model.state == EditState()
    assert "its merges and splits cannot be replayed" in document.edit_log.notice
    assert next(trained_scene.glob("edits.set-aside-*.json")).read_bytes() == data


def test_exports_record_the_edits_they_include(trained_scene, capsys):
    document = open_document(trained_scene)
    model = document.model
    a, b, c, d = largest(document, 4)
    plain = document.export(selection_only=False)
    assert plain.record == plain.path.with_suffix(".json") and record_of(plain.path)["edits"] == []

    document.merge(a, b)
    model.click(d)
    model.delete_selected()
    model.click(c)
    model.hide_selected()  # hiding changes no export
    model.click(a)
    selection = document.export(selection_only=True)
    record = record_of(selection.path)
    assert record["format"] == "protosaga-export" and record["version"] == 1
    assert record["ply"] == selection.path.name and record["scene"] == str(trained_scene.resolve())
    assert record["edits"] == [{"op": "merge", "keep": a, "absorb": b}]
    merged_count = int(np.isin(document.scene.labels, [a, b]).sum())
    name = document.scene.instance(a).name
    assert record["instances"] == [{"id": a, "name": name, "gaussians": merged_count}] and record["unassigned"] == 0
    assert record["gaussians"] == selection.count == merged_count == len(read_ply(selection.path).gaussians)
    assert record["labels"] == dataclasses.asdict(document.edit_log.labels)

    scene = document.export(selection_only=False)
    record = record_of(scene.path)
    assert record["edits"] == [{"op": "merge", "keep": a, "absorb": b}, {"op": "delete", "ids": [d]}]
    kept = document.labels()[model.state.kept(document.scene.labels)]
    assert {row["id"]: row["gaussians"] for row in record["instances"]} == {
        int(i): int((kept == i).sum()) for i in np.unique(kept[kept > 0])
    }
    assert record["unassigned"] == int((kept == 0).sum()) and record["gaussians"] == len(kept) == scene.count

    # A split's instance, named in the viewer, is exported under its name, and its record says so.
    members = np.flatnonzero(document.labels() == a)
    split = document.split(members[: len(members) // 2])
    document.rename(split.id, "left half")
    record = record_of(document.export(selection_only=True).path)
    assert record["instances"] == [{"id": split.id, "name": "left half", "gaussians": len(members) // 2}]
    assert record["edits"][-1] == {"op": "name", "id": split.id, "name": "left half"}

    # The command line exports the computed labels: no edits applied, and it says so.
    path = Export(trained_scene, instances=(a,)).run()
    record = record_of(path)
    assert record["edits"] == [] and record["instances"] == [
        {"id": a, "name": name, "gaussians": int((document.scene.labels == a).sum())}
    ]
    out = capsys.readouterr().out
    assert f"its record: {path.with_suffix('.json').name}" in out and "saved edits" in out and "not applied" in out


def test_the_command_line_never_replaces_a_record(trained_scene, tmp_path):
    (tmp_path / "obj.json").write_text("someone's file")
    with pytest.raises(ValueError, match="obj.json: exists"):
        Export(trained_scene, output=tmp_path / "obj.ply").run()
    assert not (tmp_path / "obj.ply").exists()
    with pytest.raises(ValueError, match="another suffix"):
        Export(trained_scene, output=tmp_path / "obj.json", overwrite=True).run()
    assert (tmp_path / "obj.json").read_text() == "someone's file"
    Export(trained_scene, output=tmp_path / "obj.ply", overwrite=True).run()
    assert record_of(tmp_path / "obj.ply")["ply"] == "obj.ply"



def test_the_viewer_opens_with_the_saved_edits_and_its_panel_discards_them(trained_scene):
    a, b = largest(open_document(trained_scene), 2)
    write_log(trained_scene, [{"op": "delete", "ids": [a]}, {"op": "hide", "ids": [b]}])
    app = serve(ViewerConfig(trained_scene, port=free_port(), open_browser=False))
    try:
        assert app.document.model.state == EditState(hidden=frozenset({b}), deleted=frozenset({a}))
        assert "1 deleted, 1 hidden" in app.gui.edits.content and not app.gui.discard.disabled
        client = ViserTestClient(f"ws://127.0.0.1:{app.server.get_port()}")
        client.announce_camera()
        until(lambda: len(app.server.get_clients()) == 1)
        client.click_button("Discard edits")
        until(lambda: app.document.model.state == EditState())
        assert not (trained_scene / "edits.json").exists()
        assert "none" in app.gui.edits.content and app.gui.discard.disabled
        client.close()
    finally:
        app.stop()
