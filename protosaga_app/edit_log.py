"""The viewer's saved edits: SCENE/edits.json, kept equal to the edit model's state and replayed on opening.

Every change of the edits (merge, split, naming a split's instance, delete, hide, isolate, show all, discard,
and their undo and redo)
rewrites the file atomically, so after a restart, a crash or a killed viewer the scene opens with the
edits as they were at the last change. The selection is not saved: it is not an edit, and clicks should
not write files. A state without edits has no file, so a scene nobody edited stays as it was.

The file is versioned JSON, like scene.json:

    {"format": "protosaga-edits", "version": 1,
     "labels": {"gaussians": 6123, "sha256": "9f2c..."},
     "edits": [{"op": "merge", "keep": 3, "absorb": 7}, {"op": "split", "id": 25, "gaussians": [17, 18, 240]},
               {"op": "name", "id": 25, "name": "lid"},
               {"op": "delete", "ids": [4]}, {"op": "hide", "ids": [9, 12]}]}

`edits` spells the state as steps that rebuild it from the computed labels: the merges and splits in the
order they were made (a split lists its Gaussians by index in gaussians.ply), then the names given to
instances that splits made (the scene's own instances are named in scene.json), then the deleted
instances, then the hidden ones (`edits_of`); `replay` applies them by the edit model's rules and
refuses a step those rules forbid. `labels` is the fingerprint of the labels the
ids refer to (labels.npy): when `protosaga prototypes` runs again and changes them, or the scene is
trained again, old ids may mean other objects, so the edits are not applied.

A file that cannot be replayed (unreadable, malformed, made for other labels, naming unknown instances,
or holding merges or splits whose prototypes cannot be recomputed because the dataset is gone) must neither stop
the viewer nor be lost: it is set aside (renamed to `edits.set-aside-<time>.json`) with a warning, and
the viewer starts from the computed labels.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path

import numpy as np

from protosaga_core.io.atomic import atomic_write_bytes
from protosaga_core.io.exports import Edit, EditOp, LabelsFingerprint
from protosaga_core.io.scene_dir import SceneDirError, read_versioned_json
from protosaga_core.io.scene_lock import scene_lock
from protosaga_core.method.label_edits import LabelEdit, Merge, Split, new_instance_id

from .selection import EditState

logger = logging.getLogger(__name__)

EDITS_FORMAT = "protosaga-edits"
EDITS_VERSION = 1
SAVE_WAIT_S = 2.0
"""How long a save waits for another writer of the scene (another viewer's save takes milliseconds); past it
the edits are not saved, and the save is retried at the next change."""


# --- the state as edits, and back --------------------------------------------------------------------
def edit_record(edit: LabelEdit) -> Edit:
    """How a merge or split is written down."""
    if isinstance(edit, Merge):
        return Edit("merge", (edit.keep, edit.absorb))
    return Edit("split", (edit.id,), tuple(edit.index.tolist()))


def label_edit(edit: Edit) -> LabelEdit:
    """The merge or split a written-down edit records."""
    if edit.op == "merge":
        return Merge(*edit.ids)
    if edit.op == "split":
        return Split.of(edit.ids[0], np.asarray(edit.gaussians, dtype=np.int64))
    raise ValueError(f"a {edit.op} edit changes no label")


def edits_of(state: EditState) -> tuple[Edit, ...]:
    """The edits that rebuild `state` (its selection aside) from the computed labels, in `replay`'s order."""
    label_edits = tuple(map(edit_record, state.label_edits))
    names = tuple(Edit("name", (instance_id,), name=name) for instance_id, name in state.names)
    sets = tuple(Edit(op, tuple(sorted(ids))) for op, ids in (("delete", state.deleted), ("hide", state.hidden)) if ids)
    return label_edits + names + sets


def export_edits(state: EditState, selection_only: bool) -> tuple[Edit, ...]:
    """The edits an export at `state` includes: the merges and splits (they decide which Gaussians an id
    covers), the names of split instances and, for the whole scene, the deletions; hiding changes no
    export, deleting none of selected instances."""
    deleted = frozenset() if selection_only else state.deleted
    return edits_of(EditState(deleted=deleted, label_edits=state.label_edits, names=state.names))


def replay(edits: Iterable[Edit], instances: frozenset[int], num_gaussians: int) -> EditState:
    """The state that `edits` make from the computed labels of a scene whose instances are `instances`.

    Raises:
        ValueError: an edit names an instance the scene lacks, or one that the edit model would not let
            it name at that step (merged away or deleted; a deletion also needs it not hidden); a split
            names a Gaussian beyond `num_gaussians` or makes an instance under another id than the
            model would give it.
    """
    state = EditState()
    for number, edit in enumerate(edits, 1):
        where = f"edit {number} ({_short_json(edit)})"
        ids = frozenset(edit.ids)
        made = {split.id for split in state.label_edits if isinstance(split, Split)}
        if edit.op == "split":
            expected = new_instance_id(instances, state.label_edits)
            if edit.ids[0] != expected:
                raise ValueError(f"{where}: a split at this step makes instance {expected}, not {edit.ids[0]}")
            if edit.gaussians[-1] >= num_gaussians:
                raise ValueError(f"{where}: Gaussian {edit.gaussians[-1]} is beyond the scene's {num_gaussians:,}")
        elif edit.op == "name":  # a name outlives a merge that absorbs its instance: only its split must come first
            if not ids <= made:
                raise ValueError(f"{where}: instance {_ids(ids)} was not made by an earlier split (only those are named here)")
        else:
            unknown = ids - instances - made
            unavailable = ids - _available(state, instances, edit.op) - unknown
            if unknown:
                raise ValueError(f"{where}: the scene has no instance {_ids(unknown)}")
            if unavailable:
                raise ValueError(f"{where}: instance {_ids(unavailable)} is merged away, deleted or hidden by then")
        state = _apply(state, edit)
    return state


MESSAGE_CHARS = 80
"""The most characters of a file's value that a message quotes (an instance's name may be megabytes long)."""


def _short_json(edit: Edit) -> str:
    """An edit for a message: a split's Gaussians summarised, and cut to MESSAGE_CHARS with an ellipsis."""
    if edit.op == "split":
        return _cut(json.dumps({"op": "split", "id": edit.ids[0], "gaussians": f"{len(edit.gaussians):,} indices"}))
    return _cut(json.dumps(edit.to_json()))


def _cut(text: str, limit: int = MESSAGE_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _available(state: EditState, instances: frozenset[int], op: EditOp) -> frozenset[int]:
    """The instances the edit model lets `op` name at `state`: existing ones; for a deletion visible ones
    too, since the model deletes the selection and only visible instances can be selected."""
    live = state.live(instances)
    return live - state.hidden if op == "delete" else live


def _apply(state: EditState, edit: Edit) -> EditState:
    """One edit, with the edit model's effect (a merge unhides the absorbed instance along with it)."""
    ids = frozenset(edit.ids)
    if edit.op in ("merge", "split"):
        hidden = state.hidden - {edit.ids[1]} if edit.op == "merge" else state.hidden
        return replace(state, hidden=hidden, label_edits=(*state.label_edits, label_edit(edit)))
    if edit.op == "name":
        return state.named(edit.ids[0], edit.name)
    if edit.op == "delete":
        return replace(state, deleted=state.deleted | ids)
    return replace(state, hidden=state.hidden | ids)


def describe(state: EditState) -> str:
    """The edits of `state` in a few words, e.g. "2 merges, 1 deleted, 3 hidden"; "none" without any."""
    merges = sum(isinstance(edit, Merge) for edit in state.label_edits)
    splits = len(state.label_edits) - merges
    counts = (("merge", merges), ("split", splits), ("name", len(state.names)))
    parts = [f"{count} {what}{'' if count == 1 else 's'}" for what, count in counts if count]
    parts += [f"{len(ids)} {what}" for what, ids in (("deleted", state.deleted), ("hidden", state.hidden)) if ids]
    return ", ".join(parts) or "none"


def _ids(ids: Iterable[int]) -> str:
    """Ids for a message: the first five, and how many in all (a file may list millions, or huge ones)."""
    ordered = sorted(ids)
    shown = ", ".join(map(str, ordered[:5])) + (f", ... ({len(ordered):,} in all)" if len(ordered) > 5 else "")
    return _cut(shown)


# --- the file ----------------------------------------------------------------------------------------
def encode_edit_log(labels: LabelsFingerprint, edits: Iterable[Edit]) -> bytes:
    """The file's contents: the edits and the fingerprint of the labels they were made on."""
    raw = {"format": EDITS_FORMAT, "version": EDITS_VERSION, "labels": asdict(labels), "edits": [e.to_json() for e in edits]}
    return (json.dumps(raw, indent=1) + "\n").encode()


def read_edit_log(path: Path, labels: LabelsFingerprint, instances: frozenset[int]) -> EditState:
    """The state saved in `path`, checked against the scene it is opened with (its labels and instances).

    Raises:
        SceneDirError naming the file: unreadable or malformed, made for other labels, or edits that the
            scene's instances cannot take. Whatever else reading the file raises (RecursionError for deep
            nesting, MemoryError, TypeError...) becomes one too, so that any damaged file is set aside and
            the scene still opens.
    """
    try:
        raw = read_versioned_json(path, EDITS_FORMAT, EDITS_VERSION, "expected the viewer's saved edits")
    except SceneDirError:
        raise
    except OSError as error:
        raise SceneDirError(f"{path}: unreadable ({error})") from error
    except Exception as error:  # a reader without limits: RecursionError, MemoryError, ...
        raise SceneDirError(f"{path}: unreadable ({_unreadable(error)})") from error
    try:
        saved = LabelsFingerprint.from_json(raw.get("labels"))
        if not isinstance(raw.get("edits"), list):
            raise ValueError(f'"edits" must be a list of edits, got {type(raw.get("edits")).__name__}')
        edits = [Edit.from_json(edit) for edit in raw["edits"]]
        _check_labels(saved, labels)
        return replay(edits, instances, labels.gaussians)
    except ValueError as error:
        raise SceneDirError(f"{path}: {error}") from error
    except Exception as error:  # a value of a type no check foresaw
        raise SceneDirError(f"{path}: malformed ({_unreadable(error)})") from error


def _unreadable(error: Exception) -> str:
    """Why a file could not be read, in a few words."""
    if isinstance(error, RecursionError):
        return "arrays or objects nested too deeply to read"
    if isinstance(error, MemoryError):
        return "too large to read into memory"
    return _cut(f"{type(error).__name__}: {error}", 2 * MESSAGE_CHARS)


def _check_labels(saved: LabelsFingerprint, current: LabelsFingerprint) -> None:
    """Refuse edits made on other labels: their ids may name other objects now."""
    if saved.gaussians != current.gaussians:
        raise ValueError(
            f"saved for a scene of {saved.gaussians:,} Gaussians, but this one has {current.gaussians:,} (trained again since?)"
        )
    if saved.sha256 != current.sha256:
        raise ValueError(
            "saved for other per-Gaussian labels: labels.npy has changed since (protosaga prototypes ran again?), "
            "so its instance ids may name other objects now"
        )


def file_signature(path: Path) -> tuple[int, int, int] | None:
    """What tells one version of a file from another without reading it (inode, size, mtime); None: no file."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


def set_aside(path: Path, now: datetime | None = None) -> Path:
    """Rename `path` to a new name beside it, `<stem>.set-aside-<time>[_<n>]<suffix>`, never over another file."""
    stamp = (now or datetime.now()).strftime("%Y%m%d-%H%M%S")
    counter = 1
    while True:
        aside = path.with_name(f"{path.stem}.set-aside-{stamp}{'' if counter == 1 else f'_{counter}'}{path.suffix}")
        try:
            os.close(os.open(aside, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))  # reserve the name
        except FileExistsError:
            counter += 1
            continue
        try:
            os.replace(path, aside)
        except BaseException:
            aside.unlink(missing_ok=True)
            raise
        return aside


@dataclass
class EditLog:
    """SCENE/edits.json for one viewer session: `replay` it once, then `save` after every change.

    Attributes:
        path: the file.
        labels: the fingerprint of the scene's computed labels, written into the file.
        notice: what happened to the file when it was opened (set aside, and why); None if nothing.
        save_error: why the last save failed; None once one succeeds.
        writable: False where a file that could not be replayed could not be set aside either: saving
            would replace it, so nothing is saved this session.
    """

    path: Path
    labels: LabelsFingerprint
    notice: str | None = None
    save_error: str | None = None
    writable: bool = True
    _saved: EditState = field(default=EditState(), init=False)  # what the file holds: no selection, ever
    _on_disk: tuple[int, int, int] | None = field(default=None, init=False)
    """The file as this session last read or wrote it (`file_signature`); None: no file."""

    def replay(self, instances: frozenset[int], prepare: Callable[[EditState], object]) -> EditState:
        """The saved state for the edit model to start from; EditState() where there is none, or where it
        cannot be replayed (the file is then set aside, with a warning).

        Args:
            instances: the scene's instances.
            prepare: computes what the state needs before it is drawn (prototypes after its merges and splits);
                raises OSError or ValueError where it cannot.
        """
        if not self.path.exists():
            return EditState()
        try:
            state = self._load(instances, prepare)
        except SceneDirError as error:
            self._set_aside(str(error))
            return EditState()
        self._saved = state
        self._on_disk = file_signature(self.path)
        return state

    def save(self, state: EditState) -> None:
        """Make the file hold the edits of `state`; none: no file. An EditModel listener, so it runs under
        the model's lock in the order of the changes. A failed write, or a scene that another process is
        writing (the scene lock: `protosaga run`, another viewer's save), is warned about, kept in
        `save_error` and retried at the next change."""
        edits = state.edits_only()
        if not self.writable or edits == self._saved:
            return
        try:
            with scene_lock(self.path.parent, "protosaga-view", wait=SAVE_WAIT_S):
                self._keep_other_writers_file()
                if edits == EditState():
                    self.path.unlink(missing_ok=True)
                else:
                    atomic_write_bytes(self.path, encode_edit_log(self.labels, edits_of(edits)))
                self._on_disk = file_signature(self.path)
        except OSError as error:  # SceneLockedError included
            self.save_error = f"{self.path}: edits not saved ({error})"
            logger.warning("%s", self.save_error)
            return
        self._saved = edits
        self.save_error = None

    def _keep_other_writers_file(self) -> None:
        """Set the file aside when something else wrote it since this session last did (another viewer of the
        same scene, an editor): this session's save must not destroy those edits."""
        current = file_signature(self.path)
        if current is None or current == self._on_disk:
            return
        aside = set_aside(self.path)
        self.notice = (
            f"{self.path.name} was changed by another program (another protosaga-view of this scene?) after this "
            f"viewer read it: that version is kept as {aside.name}, and this viewer's edits are saved in {self.path.name}"
        )
        logger.warning("%s", self.notice)

    def _load(self, instances: frozenset[int], prepare: Callable[[EditState], object]) -> EditState:
        state = read_edit_log(self.path, self.labels, instances)
        try:
            prepare(state)
        except (OSError, ValueError) as error:
            raise SceneDirError(f"{self.path}: its merges and splits cannot be replayed ({error})") from error
        return state

    def _set_aside(self, reason: str) -> None:
        try:
            aside = set_aside(self.path)
            self.notice = f"{reason}; set aside as {aside.name}, and the viewer starts from the computed labels"
        except OSError as error:
            self.writable = False
            self.notice = (
                f"{reason}; it cannot be set aside ({error}), so the viewer starts from the computed labels "
                "and saves no edits this session (that would replace the file)"
            )
        logger.warning("%s", self.notice)
