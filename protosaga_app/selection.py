"""The one selection/edit model of the viewer (DESIGN §8), free of any viser import.

GUI buttons, hotkeys and clicks all call `apply_action` or an `EditModel` method, so they share one
code path and one undo stack; every browser tab subscribes to the same model, so all tabs see one state.

Decisions:
- The state is an immutable `EditState` snapshot; undo/redo swap snapshots, so an undo can never leave
  a half-applied edit behind.
- Selection changes are undoable too (as in SuperSplat): undoing a delete should bring back the selection
  it deleted, and a user who mis-clicks expects Ctrl+Z to restore the previous selection.
- An edit that changes nothing (hiding with nothing selected, clicking the selected instance again) is
  not recorded and notifies nobody, so undo never appears to do nothing.
- Merges and splits are `label_edits`, kept in the order they were made: a split may take Gaussians of a
  merged instance, and a merge may absorb a split one. A split's new instance is selected, so the next
  key press (H, Del, a merge) acts on it.
- Delete is a soft delete (a set of ids), so undo restores it; an export of the edited scene keeps every
  Gaussian whose label, after merges, is not deleted (`EditState.kept`).
- Listeners run while the lock is held, so every tab receives the states in the order they happened.
- Buttons, hotkeys (`KEY_BINDINGS`, which also name the buttons) and clicks all end in `apply_action` or
  an `EditModel` method.
- The edits of a state (all of it but the selection) are saved to the scene (edit_log.py) and restored as
  the model's `initial` state; *discard edits* returns to the computed labels as one more undoable edit,
  so a mistaken discard is one Ctrl+Z away.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Literal, get_args

import numpy as np

from protosaga_core.method.label_edits import LabelEdit, Merge, Split, apply_label_edits, instances_after, new_instance_id

logger = logging.getLogger(__name__)

Action = Literal[
    "delete", "hide", "isolate", "show_all", "clear_selection", "invert_selection", "discard_edits", "undo", "redo"
]
ACTIONS: tuple[str, ...] = get_args(Action)
DEFAULT_HISTORY_LIMIT = 1000
"""Undo steps kept; snapshots are small sets of ids, so this bounds memory only for endless sessions."""


@dataclass(frozen=True)
class EditState:
    """One snapshot of the edits. Ids are instance ids (> 0).

    Attributes:
        selected: selected instances (always visible ones).
        hidden: instances hidden from view (undone by show all).
        deleted: instances removed from the scene (undone only by undo).
        label_edits: merges and splits in the order they were made; an id merged away no longer exists
            and appears in none of the sets, and a split's id exists from it on.
        names: (id, name) of instances made by splits that were named, by id (the scene's own instances
            are named in scene.json, outside the edits).
    """

    selected: frozenset[int] = frozenset()
    hidden: frozenset[int] = frozenset()
    deleted: frozenset[int] = frozenset()
    label_edits: tuple[LabelEdit, ...] = ()
    names: tuple[tuple[int, str], ...] = ()

    def effective_labels(self, labels: np.ndarray) -> np.ndarray:
        """Per-Gaussian labels after the merges and splits. [N] -> [N]"""
        return apply_label_edits(labels, self.label_edits)

    def kept(self, labels: np.ndarray) -> np.ndarray:
        """Which Gaussians the edited scene still holds (unassigned ones included). [N] -> [N] bool"""
        return ~np.isin(self.effective_labels(labels), np.fromiter(self.deleted, dtype=np.int64))

    def live(self, instances: frozenset[int]) -> frozenset[int]:
        """The instances that exist in this state: `instances` and those split off, less the ones merged
        away or deleted."""
        return instances_after(instances, self.label_edits) - self.deleted

    def name_of(self, instance_id: int) -> str | None:
        """The name given to an instance made by a split; None if it has none."""
        return dict(self.names).get(instance_id)

    def named(self, instance_id: int, name: str | None) -> "EditState":
        """This state with `instance_id` called `name` (None: unnamed)."""
        names = {**dict(self.names), instance_id: name}
        return replace(self, names=tuple(sorted((i, n) for i, n in names.items() if n is not None)))

    def edits_only(self) -> "EditState":
        """This state without its selection: what is saved to the scene, and what discarding clears."""
        return replace(self, selected=frozenset())


Listener = Callable[[EditState], None]


@dataclass
class EditModel:
    """The edit state of one scene with undo/redo, shared by every tab; all methods are thread-safe.

    Args:
        instance_ids: the scene's instances (e.g. the ids of its instance table); 0 is never one.
        initial: the state to start from (the scene's saved edits), with nothing to undo before it.
    """

    instance_ids: Iterable[int]
    history_limit: int = DEFAULT_HISTORY_LIMIT
    initial: EditState = EditState()
    _instances: frozenset[int] = field(init=False)
    _state: EditState = field(init=False)
    _undo: list[EditState] = field(init=False, default_factory=list)
    _redo: list[EditState] = field(init=False, default_factory=list)
    _listeners: list[Listener] = field(init=False, default_factory=list)
    # Re-entrant: a listener may read the model (e.g. visible_instances) while being notified.
    _lock: threading.RLock = field(init=False, default_factory=threading.RLock)

    def __post_init__(self) -> None:
        if self.history_limit < 1:
            raise ValueError(f"history_limit must be at least 1, got {self.history_limit}")
        self._instances = frozenset(int(i) for i in self.instance_ids if int(i) > 0)
        self._state = self.initial

    # --- reading -------------------------------------------------------------------------------------
    @property
    def state(self) -> EditState:
        with self._lock:
            return self._state

    @property
    def instances(self) -> frozenset[int]:
        """Every instance of the scene, whatever its state."""
        return self._instances

    def live_instances(self, state: EditState | None = None) -> frozenset[int]:
        """Instances that exist in `state` (default: the current one): not absorbed by a merge, not deleted."""
        with self._lock:
            return (state or self._state).live(self._instances)

    def visible_instances(self, state: EditState | None = None) -> frozenset[int]:
        """Instances drawn in `state` (default: the current one): live and not hidden."""
        with self._lock:
            state = state or self._state
            return self.live_instances(state) - state.hidden

    def can_undo(self) -> bool:
        with self._lock:
            return bool(self._undo)

    def can_redo(self) -> bool:
        with self._lock:
            return bool(self._redo)

    # --- listeners -----------------------------------------------------------------------------------
    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call `listener(state)` after every change; returns a function that unsubscribes it."""
        with self._lock:
            self._listeners.append(listener)

        def unsubscribe() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return unsubscribe

    # --- selection -----------------------------------------------------------------------------------
    def click(self, instance_id: int, additive: bool = False) -> None:
        """A click on `instance_id` (0: background). Shift-click (`additive`) adds to the selection;
        a plain click replaces it, and a plain click on the background clears it."""
        with self._lock:
            if instance_id in self.visible_instances():
                self.select_many([instance_id], additive)
            elif not additive:
                self.clear_selection()

    def select_many(self, ids: Iterable[int], additive: bool = False) -> None:
        """Select the visible instances among `ids` (a rectangle), adding to the selection if `additive`."""
        with self._lock:
            picked = frozenset(int(i) for i in ids) & self.visible_instances()
            self._commit(selected=(self._state.selected | picked) if additive else picked)

    def clear_selection(self) -> None:
        with self._lock:
            self._commit(selected=frozenset())

    def invert_selection(self) -> None:
        """Select every visible instance that is not selected, and deselect the rest."""
        with self._lock:
            self._commit(selected=self.visible_instances() - self._state.selected)

    # --- visibility and deletion ---------------------------------------------------------------------
    def hide_selected(self) -> None:
        """Hide the selection; hidden instances cannot stay selected."""
        with self._lock:
            state = self._state
            if state.selected:
                self._commit(hidden=state.hidden | state.selected, selected=frozenset())

    def isolate_selected(self) -> None:
        """Hide every live instance except the selected ones."""
        with self._lock:
            if self._state.selected:
                self._commit(hidden=self.live_instances() - self._state.selected)

    def show_all(self) -> None:
        """Unhide every instance; deleted ones stay deleted."""
        with self._lock:
            self._commit(hidden=frozenset())

    def delete_selected(self) -> None:
        """Delete the selection (undo brings it back, selected as before)."""
        with self._lock:
            state = self._state
            if state.selected:
                self._commit(deleted=state.deleted | state.selected, selected=frozenset())

    def merge(self, keep: int, absorb: int) -> None:
        """Merge instance `absorb` into `keep`; `absorb` leaves every set and `keep` keeps its own flags.

        Raises:
            ValueError: either id is not a live instance, or both are the same.
        """
        keep, absorb = int(keep), int(absorb)  # plain ints, like every id of the state: it is saved as JSON
        with self._lock:
            live = self.live_instances()
            if keep == absorb or keep not in live or absorb not in live:
                raise ValueError(f"merge needs two different live instances, got {keep} and {absorb}")
            state = self._state
            self._commit(
                selected=state.selected - {absorb},
                hidden=state.hidden - {absorb},
                label_edits=(*state.label_edits, Merge(keep, absorb)),
            )

    def new_instance_id(self) -> int:
        """The id the next split gets (`label_edits.new_instance_id`)."""
        with self._lock:
            return new_instance_id(self._instances, self._state.label_edits)

    def split(self, split: Split) -> None:
        """Make `split` (its id from `new_instance_id`) and select the new instance.

        Raises:
            ValueError: the split's id is not `new_instance_id()`.
        """
        with self._lock:
            expected = self.new_instance_id()
            if split.id != expected:
                raise ValueError(f"a split now makes instance {expected}, got {split.id}")
            # An id an undone split named goes to this new instance without that name.
            names = self._state.named(split.id, None).names
            self._commit(selected=frozenset({split.id}), label_edits=(*self._state.label_edits, split), names=names)

    def name_instance(self, instance_id: int, name: str) -> None:
        """Name an instance made by a split (undoable, saved with the edits)."""
        name = name.strip()
        with self._lock:
            made = {edit.id for edit in self._state.label_edits if isinstance(edit, Split)}
            if instance_id not in made & self.live_instances() or not name:
                raise ValueError(f"only a live instance made by a split takes a name here, not {instance_id} ({name!r})")
            self._commit(names=self._state.named(instance_id, name).names)

    def discard_edits(self) -> None:
        """Return to the computed labels: no merge, split, deletion or hiding (undoable); the selection
        stays, less instances made by splits."""
        with self._lock:
            self._commit(
                selected=self._state.selected & self._instances, hidden=frozenset(), deleted=frozenset(), label_edits=(), names=()
            )

    # --- history -------------------------------------------------------------------------------------
    def undo(self) -> None:
        with self._lock:
            if self._undo:
                self._redo.append(self._state)
                self._set(self._undo.pop())

    def redo(self) -> None:
        with self._lock:
            if self._redo:
                self._undo.append(self._state)
                self._set(self._redo.pop())

    # --- internals -----------------------------------------------------------------------------------
    def _commit(self, **changes) -> None:
        """Record a new state built from the current one; a new edit forgets the redo stack."""
        new = replace(self._state, **changes)
        if new == self._state:
            return
        self._undo.append(self._state)
        del self._undo[: -self.history_limit]
        self._redo.clear()
        self._set(new)

    def _set(self, state: EditState) -> None:
        self._state = state
        for listener in list(self._listeners):
            # One failing listener (a tab whose connection just closed) must not starve the others.
            try:
                listener(state)
            except Exception:
                logger.exception("edit listener %r failed", listener)


@dataclass(frozen=True)
class KeyBinding:
    """A hotkey: viser's key name and modifier (e.g. "Z", "cmd/ctrl+shift"), the command palette's label,
    and the action it runs."""

    label: str
    key: str
    modifier: str | None
    action: Action

    def text(self) -> str:
        """How a button names it, e.g. "Ctrl+Shift+Z", "Del"."""
        modifiers = {None: "", "cmd/ctrl": "Ctrl+", "cmd/ctrl+shift": "Ctrl+Shift+"}[self.modifier]
        return modifiers + {"delete": "Del", "escape": "Esc"}.get(self.key, self.key.upper())


KEY_BINDINGS: tuple[KeyBinding, ...] = (
    KeyBinding("Delete selection", "delete", None, "delete"),
    KeyBinding("Delete selection", "backspace", None, "delete"),
    KeyBinding("Hide selection", "H", None, "hide"),
    KeyBinding("Isolate selection", "I", None, "isolate"),
    KeyBinding("Clear selection", "escape", None, "clear_selection"),
    KeyBinding("Undo", "Z", "cmd/ctrl", "undo"),
    KeyBinding("Redo", "Z", "cmd/ctrl+shift", "redo"),
    KeyBinding("Redo", "Y", "cmd/ctrl", "redo"),
)
"""The viewer's hotkeys: the server registers them as viser commands and the buttons show the first one of
their action."""


def button_label(name: str, action: Action) -> str:
    """A button's text with its action's first hotkey, e.g. "Undo (Ctrl+Z)"; just `name` without one."""
    binding = next((b for b in KEY_BINDINGS if b.action == action), None)
    return name if binding is None else f"{name} ({binding.text()})"


def apply_action(model: EditModel, action: Action) -> None:
    """Run a named action: the single path for GUI buttons and hotkeys."""
    methods: dict[str, Callable[[], None]] = {
        "delete": model.delete_selected,
        "hide": model.hide_selected,
        "isolate": model.isolate_selected,
        "show_all": model.show_all,
        "clear_selection": model.clear_selection,
        "invert_selection": model.invert_selection,
        "discard_edits": model.discard_edits,
        "undo": model.undo,
        "redo": model.redo,
    }
    if action not in methods:
        raise ValueError(f"unknown action {action!r}; expected one of {', '.join(ACTIONS)}")
    methods[action]()
