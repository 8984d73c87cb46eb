import sys
import threading

import numpy as np
import pytest

from protosaga_app.panels import EDIT_BUTTONS
from protosaga_app.selection import ACTIONS, KEY_BINDINGS, EditModel, EditState, apply_action, button_label


def _model():
    return EditModel([0, 1, 2, 3, 4])  # 0 is never an instance


def test_clicks_select_replace_add_and_clear():
    model = _model()
    model.click(2)
    assert model.state.selected == {2}
    model.click(3)
    assert model.state.selected == {3}
    model.click(1, additive=True)
    assert model.state.selected == {1, 3}
    model.click(0, additive=True)  # shift-click on the background keeps the selection
    assert model.state.selected == {1, 3}
    model.click(99)  # not an instance: like the background
    assert model.state.selected == set()
    model.select_many([2, 4, 0, 42])
    assert model.state.selected == {2, 4}
    model.select_many([1], additive=True)
    assert model.state.selected == {1, 2, 4}
    model.invert_selection()
    assert model.state.selected == {3}
    apply_action(model, "clear_selection")
    assert model.state.selected == set()


def test_hide_isolate_show_all_delete():
    model = _model()
    model.select_many([1, 2])
    model.hide_selected()
    assert model.state.hidden == {1, 2} and model.state.selected == set()
    assert model.visible_instances() == {3, 4}
    model.click(1)  # hidden instances cannot be picked
    assert model.state.selected == set()
    model.show_all()
    assert model.visible_instances() == {1, 2, 3, 4}
    model.click(3)
    model.isolate_selected()
    assert model.visible_instances() == {3} and model.state.selected == {3}
    model.invert_selection()  # among visible instances only
    assert model.state.selected == set()
    model.show_all()
    model.select_many([3, 4])
    model.delete_selected()
    assert model.state.deleted == {3, 4} and model.state.selected == set()
    assert model.visible_instances() == {1, 2}
    model.show_all()  # does not bring back deleted instances
    assert model.visible_instances() == {1, 2}
    model.select_many([3])
    assert model.state.selected == set()


def test_undo_redo_sequences():
    model = _model()
    assert not model.can_undo() and not model.can_redo()
    model.undo()  # nothing to undo: no error, no change
    model.click(1)
    model.click(2, additive=True)
    model.delete_selected()
    assert model.state == EditState(deleted=frozenset({1, 2}))
    model.undo()
    assert model.state == EditState(selected=frozenset({1, 2}))  # the deleted selection comes back
    model.undo()
    model.undo()
    assert model.state == EditState() and not model.can_undo() and model.can_redo()
    model.redo()
    model.redo()
    model.redo()
    assert model.state.deleted == {1, 2} and not model.can_redo()
    model.undo()
    model.click(4)  # a new edit forgets the redo stack
    assert not model.can_redo()
    model.hide_selected()
    model.hide_selected()  # no-op edits are not recorded
    model.undo()
    assert model.state.selected == {4} and model.state.hidden == set()


def test_history_limit():
    model = EditModel([1, 2], history_limit=3)
    for _ in range(5):
        model.click(1)
        model.click(2)
    for _ in range(3):
        model.undo()
    assert not model.can_undo()
    with pytest.raises(ValueError):
        EditModel([1], history_limit=0)


def test_merge_and_undo_and_the_edited_scene():
    model = _model()
    model.select_many([2, 3])
    model.merge(keep=2, absorb=3)
    assert model.state.selected == {2} and model.visible_instances() == {1, 2, 4}
    labels = np.array([0, 1, 2, 3, 3, 4])
    assert model.state.effective_labels(labels).tolist() == [0, 1, 2, 2, 2, 4]
    model.click(2)
    model.delete_selected()
    # The export of the edited scene: every Gaussian whose merged label is not deleted.
    assert model.state.kept(labels).tolist() == [True, True, False, False, False, True]
    with pytest.raises(ValueError):
        model.merge(1, 3)  # 3 no longer exists
    with pytest.raises(ValueError):
        model.merge(1, 1)
    model.undo()
    model.undo()
    assert model.state.kept(labels).all()
    model.undo()
    assert model.state.label_edits == () and model.visible_instances() == {1, 2, 3, 4}
    assert model.state.effective_labels(labels).tolist() == labels.tolist()


def test_every_subscriber_sees_every_change_once():
    model = _model()
    seen_a, seen_b, seen_c = [], [], []
    model.subscribe(seen_a.append)
    unsubscribe_b = model.subscribe(seen_b.append)

    def failing(state):  # e.g. a tab whose connection just closed
        raise RuntimeError("gone")

    model.subscribe(failing)
    model.subscribe(lambda state: seen_c.append(model.visible_instances()))  # re-entrant read
    model.click(1)
    model.hide_selected()
    model.hide_selected()  # no change, no notification
    unsubscribe_b()
    model.undo()
    assert seen_a == [EditState(selected=frozenset({1})), EditState(hidden=frozenset({1})), EditState(selected=frozenset({1}))]
    assert seen_b == seen_a[:2]
    assert seen_c == [{1, 2, 3, 4}, {2, 3, 4}, {1, 2, 3, 4}]


def test_concurrent_clicks_keep_the_state_consistent():
    model = EditModel(range(1, 201))
    states = []
    model.subscribe(states.append)

    def clicker(offset):
        for i in range(1, 101):
            model.click(offset + i, additive=True)

    threads = [threading.Thread(target=clicker, args=(offset,)) for offset in (0, 100)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible, to interleave the clicks
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    assert model.state.selected == set(range(1, 201))
    # Each notification adds exactly one id to the one before: no lost or torn update.
    sizes = [len(state.selected) for state in states]
    assert sizes == list(range(1, 201))
    for _ in range(200):
        model.undo()
    assert model.state == EditState() and not model.can_undo()


def action_for_key(key: str, modifier: str | None = None) -> str | None:
    """What the server's table (the one it registers with viser) does for a key."""
    return next((b.action for b in KEY_BINDINGS if b.key.lower() == key.lower() and b.modifier == modifier), None)


def test_one_table_binds_the_keys_and_names_the_buttons():
    assert action_for_key("delete") == action_for_key("backspace") == "delete"
    assert action_for_key("h") == "hide" and action_for_key("i") == "isolate"
    assert action_for_key("escape") == "clear_selection"
    assert action_for_key("z", "cmd/ctrl") == "undo"
    assert action_for_key("z", "cmd/ctrl+shift") == action_for_key("y", "cmd/ctrl") == "redo"
    assert action_for_key("z") is None and action_for_key("h", "cmd/ctrl") is None and action_for_key("q") is None
    assert all(binding.action in ACTIONS for binding in KEY_BINDINGS)
    labels = [button_label(name, action) for name, action in EDIT_BUTTONS]
    assert labels == [
        "Hide (H)", "Isolate (I)", "Show all", "Delete (Del)", "Invert selection", "Clear selection (Esc)",
        "Undo (Ctrl+Z)", "Redo (Ctrl+Shift+Z)",
    ]


def test_hotkeys_and_buttons_share_one_path():
    model = _model()
    model.click(1)
    apply_action(model, action_for_key("h"))
    assert model.visible_instances() == {2, 3, 4}
    apply_action(model, action_for_key("z", "cmd/ctrl"))
    assert model.state.selected == {1} and model.state.hidden == set()
    apply_action(model, action_for_key("y", "cmd/ctrl"))
    apply_action(model, "show_all")
    model.click(2)
    apply_action(model, "isolate")
    assert model.visible_instances() == {2}
    apply_action(model, "invert_selection")
    apply_action(model, action_for_key("delete"))  # nothing selected: nothing deleted
    assert model.state.deleted == set()
    with pytest.raises(ValueError, match="unknown action"):
        apply_action(model, "explode")
