"""Exports of a segmented scene, and the records of the viewer's edits.

`protosaga export SCENE --instances 3,7 -o obj.ply` (`export_scene`) and the viewer's export button both end
in `export_instances`. `Edit` is how the viewer's merges, splits, names of split instances, deletions and
hiding are written down (the app's edit_log.py converts them from and to `method.label_edits`).

Exports are plain INRIA PLYs (DESIGN §7: they open in SuperSplat and the INRIA viewer); the only extra
column ever written is `instance`, and only on request. An imported scene's exports are the source PLY's own
rows of the Gaussians kept, byte for byte, with every property it has (`SourceRows`, io/source_ply.py).
Beside each PLY lies its record (same stem, `.json`, `ExportRecord`): the instances it holds and the viewer's edits it includes, so a file found later
still says what it is. The viewer saves its edits as `Edit`s in SCENE/edits.json, tied to the labels they
were made on by a `LabelsFingerprint`; this command exports the computed labels and applies none of them.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from ..gaussians import Gaussians
from .atomic import atomic_write_bytes
from .outputs import check_output_file
from .ply import write_ply
from .scene_dir import SceneDir, SceneDirError
from .scene_lock import is_inside, writes_scene
from .source_ply import write_source_rows

EXPORTS_DIR = "exports"
EDITS_FILE = "edits.json"
"""The viewer's saved edits, in the scene directory (protosaga_app/edit_log.py)."""
MAX_IDS_IN_NAME = 8
"""Ids spelled out in a generated file name; more are summarised, so names stay far below NAME_MAX."""
RECORD_FORMAT = "protosaga-export"
RECORD_VERSION = 1


class ExportError(ValueError):
    """An export that cannot be done as asked (unknown ids, nothing selected)."""


EditOp = Literal["merge", "split", "name", "delete", "hide"]


@dataclass(frozen=True)
class LabelsFingerprint:
    """Which per-Gaussian labels instance ids refer to: an edit or export made on one labelling means
    nothing on another (running `protosaga prototypes` again may renumber or regroup every instance).

    Attributes:
        gaussians: N, the number of labels.
        sha256: hex digest of the labels as little-endian int64 (independent of the .npy header and dtype).
    """

    gaussians: int
    sha256: str

    @classmethod
    def of(cls, labels: np.ndarray) -> "LabelsFingerprint":
        """The fingerprint of labels [N] (integers)."""
        data = np.ascontiguousarray(labels, dtype="<i8")
        return cls(len(data), hashlib.sha256(data.tobytes()).hexdigest())

    @classmethod
    def from_json(cls, raw: Any) -> "LabelsFingerprint":
        """The inverse of `dataclasses.asdict`; raises ValueError saying what is malformed."""
        if not isinstance(raw, dict) or not _is_count(raw.get("gaussians")) or not isinstance(raw.get("sha256"), str):
            raise ValueError(f'"labels" must be {{"gaussians": count, "sha256": hex digest}}, got {_short(raw)}')
        return cls(raw["gaussians"], raw["sha256"])


@dataclass(frozen=True)
class Edit:
    """One edit made in the viewer, as its saved edits and export records list it.

    Attributes:
        op: "merge": the Gaussians of instance ids[1] join instance ids[0], and ids[1] ceases to exist;
            "split": the Gaussians `gaussians` form the new instance ids[0];
            "name": the instance ids[0], made by a split, is called `name` (the scene's own instances are
            named in scene.json);
            "delete" / "hide": the instances `ids` are deleted / hidden.
        ids: instance ids (> 0): (keep, absorb) for a merge, (new id,) for a split or a name.
        gaussians: a split's Gaussian indices, sorted; () for the other edits.
        name: a name's text; "" for the other edits.
    """

    op: EditOp
    ids: tuple[int, ...]
    gaussians: tuple[int, ...] = ()
    name: str = ""

    def to_json(self) -> dict[str, Any]:
        if self.op == "merge":
            return {"op": "merge", "keep": self.ids[0], "absorb": self.ids[1]}
        if self.op == "split":
            return {"op": "split", "id": self.ids[0], "gaussians": list(self.gaussians)}
        if self.op == "name":
            return {"op": "name", "id": self.ids[0], "name": self.name}
        return {"op": self.op, "ids": list(self.ids)}

    @classmethod
    def from_json(cls, raw: Any) -> "Edit":
        """The inverse of `to_json`; raises ValueError saying what is malformed."""
        op = raw.get("op") if isinstance(raw, dict) else None
        ids: tuple[Any, ...] = ()
        gaussians: tuple[Any, ...] = ()
        name = ""
        if op == "merge" and set(raw) == {"op", "keep", "absorb"}:
            ids = (raw["keep"], raw["absorb"])
        elif op == "split" and set(raw) == {"op", "id", "gaussians"} and isinstance(raw["gaussians"], list):
            ids, gaussians = (raw["id"],), tuple(raw["gaussians"])
            if not gaussians or not all(_is_count(i) for i in gaussians) or list(gaussians) != sorted(set(gaussians)):
                raise ValueError(f'malformed edit {_short(raw)}: a split\'s "gaussians" must be increasing Gaussian indices')
        elif op == "name" and set(raw) == {"op", "id", "name"}:
            ids, name = (raw["id"],), raw["name"]
            if not isinstance(name, str) or not name.strip():
                raise ValueError(f'malformed edit {_short(raw)}: a name must be a non-empty string')
        elif op in ("delete", "hide") and set(raw) == {"op", "ids"} and isinstance(raw["ids"], list):
            ids = tuple(raw["ids"])
        if not ids or not all(_is_count(i) and i > 0 for i in ids) or len(set(ids)) != len(ids):
            raise ValueError(
                f'malformed edit {_short(raw)}: expected {{"op": "merge", "keep": id, "absorb": another id}}, '
                f'{{"op": "split", "id": new id, "gaussians": [indices]}}, {{"op": "name", "id": id, "name": text}} or '
                f'{{"op": "delete" or "hide", "ids": [distinct ids]}}, ids being positive integers'
            )
        return cls(op, ids, gaussians, name)


@dataclass(frozen=True)
class ExportSource:
    """Where an export comes from, as its record tells it.

    Attributes:
        scene: the trained scene directory (absolute, so that the record still finds it elsewhere).
        labels: its computed per-Gaussian labels; None where it has none yet (before `protosaga prototypes`).
        names: instance names by id (the instance table of scene.json, and the viewer's names of split instances).
        edits: the viewer's edits in the labels handed to the export: merges, splits and, for a
            whole-scene export, deletions (hiding changes no export); () for none.
    """

    scene: Path
    labels: LabelsFingerprint | None
    names: Mapping[int, str]
    edits: tuple[Edit, ...] = ()


@dataclass(frozen=True)
class SourceRows:
    """The verbatim source PLY of an imported scene (`protosaga import`): exports copy its rows, every byte.

    Attributes:
        ply: the scene's gaussians.ply (the source PLY as it was imported).
        properties: the source's vertex properties (later columns such as feat_* are left out).
        rows: the row in `ply` of each Gaussian handed to the export; None: Gaussian i is row i. [N] int64
    """

    ply: Path
    properties: tuple[str, ...]
    rows: np.ndarray | None = None

    @classmethod
    def of(cls, scene_dir: SceneDir, rows: np.ndarray | None = None) -> "SourceRows | None":
        """An imported scene's source rows; None for a scene trained here (its PLY is written from the Gaussians)."""
        properties = scene_dir.source_properties()
        return None if properties is None else cls(scene_dir.gaussians_path, tuple(properties), rows)


@dataclass(frozen=True)
class ExportedInstance:
    """An instance in an export: its id (after the export's merges), name and number of Gaussians."""

    id: int
    name: str
    gaussians: int


@dataclass(frozen=True)
class ExportRecord:
    """What an exported PLY holds, written beside it as JSON (same stem, `record_path`).

    Attributes:
        ply: the PLY's file name.
        scene: the trained scene it was exported from.
        gaussians: Gaussians in the PLY.
        with_instance_ids: whether the PLY has the `instance` column.
        edits: the viewer's edits it includes (see `ExportSource.edits`); () for none.
        labels: the computed labels the ids refer to; None where the scene had none.
        instances: the instances in the PLY, by id; None without labels.
        unassigned: Gaussians of no instance in the PLY; None without labels.
    """

    ply: str
    scene: str
    gaussians: int
    with_instance_ids: bool
    edits: tuple[Edit, ...]
    labels: LabelsFingerprint | None
    instances: tuple[ExportedInstance, ...] | None
    unassigned: int | None

    @classmethod
    def of(cls, ply: Path, source: ExportSource, count: int, exported: np.ndarray | None, with_instance_ids: bool) -> "ExportRecord":
        """The record of `count` Gaussians written to `ply`, whose labels were `exported` ([count] or None)."""
        instances = unassigned = None
        if exported is not None:
            ids, counts = np.unique(exported, return_counts=True)
            instances = tuple(
                ExportedInstance(int(i), source.names.get(int(i)) or f"instance {int(i)}", int(c))
                for i, c in zip(ids, counts) if i > 0
            )
            unassigned = int(counts[ids == 0].sum())
        return cls(Path(ply).name, str(source.scene), count, with_instance_ids, tuple(source.edits), source.labels, instances, unassigned)

    def to_json(self) -> dict[str, Any]:
        return {"format": RECORD_FORMAT, "version": RECORD_VERSION, **asdict(self), "edits": [e.to_json() for e in self.edits]}


def record_path(ply: str | os.PathLike) -> Path:
    """Where the record of the export `ply` lies: beside it, with the same stem and `.json`."""
    return Path(ply).with_suffix(".json")


def export_with_record(
    gaussians: Gaussians,
    labels: np.ndarray | None,
    instance_ids: set[int] | None,
    path: str | os.PathLike,
    source: ExportSource,
    with_instance_ids: bool = False,
    verbatim: SourceRows | None = None,
) -> ExportRecord:
    """`export_instances`, then its record beside the PLY (both atomic); returns the record.

    Args: as `export_instances`; `labels` are the ones the export uses (after `source.edits`).

    Raises:
        ExportError: as `export_instances`; nothing is written then.
    """
    count = export_instances(gaussians, labels, instance_ids, path, with_instance_ids, verbatim)
    exported = None if labels is None else labels if instance_ids is None else labels[np.isin(labels, sorted(instance_ids))]
    record = ExportRecord.of(Path(path), source, count, exported, with_instance_ids)
    try:
        atomic_write_bytes(record_path(path), (json.dumps(record.to_json(), indent=1) + "\n").encode())
    except BaseException:
        Path(path).unlink(missing_ok=True)  # a PLY without its record would pass for a complete export
        raise
    return record


@writes_scene("export", only_if=lambda scene_dir, output, **_: output is None or is_inside(output, scene_dir.root))
def export_scene(
    scene_dir: SceneDir, instances: Iterable[int] = (), output: Path | None = None, with_instance_ids: bool = False, overwrite: bool = False
) -> tuple[Path, ExportRecord]:
    """`protosaga export`: the given instances (none: the whole scene) as a PLY with its record beside it.

    Args:
        output: the PLY to write; None: a new generated name under SCENE/exports/.
        overwrite: replace an existing `output` and its record.

    Returns:
        the PLY's path and its record.
    """
    if output is not None:
        for path in (output, record_path(output)):  # first: a path in a scene is refused as such
            check_output_file(path, overwrite, free=(EXPORTS_DIR,))
        if output.suffix.lower() == ".json":
            raise ValueError(f"{output}: give the PLY another suffix; its record is written beside it as .json")
    gaussians = scene_dir.read_gaussians()
    selection = set(instances) or None
    if selection is not None or with_instance_ids:
        labels = scene_dir.read_labels()
    else:  # a whole-scene export needs no labels, so it works before `prototypes`; they name its instances
        labels = _current_labels(scene_dir, len(gaussians))
    fingerprint = None if labels is None else LabelsFingerprint.of(labels)
    source = ExportSource(scene_dir.root.resolve(), fingerprint, _instance_names(scene_dir))
    path = output if output is not None else safe_export_name(scene_dir, selection)
    try:
        record = export_with_record(gaussians, labels, selection, path, source, with_instance_ids, SourceRows.of(scene_dir))
    except BaseException:
        if output is None:  # drop the name safe_export_name reserved
            path.unlink(missing_ok=True)
        raise
    return path, record


def _current_labels(scene_dir: SceneDir, num_gaussians: int) -> np.ndarray | None:
    """labels.npy where it labels these Gaussians, else None (not computed yet, or left from an old training)."""
    try:
        return scene_dir.read_labels(num_gaussians)
    except (OSError, ValueError):  # SceneDirError included
        return None


def _instance_names(scene_dir: SceneDir) -> dict[int, str]:
    """Instance names from scene.json, for the record; a scene whose table cannot be read still exports."""
    try:
        return {row.id: row.name for row in scene_dir.read_meta().instances}
    except (OSError, SceneDirError):
        return {}


def export_instances(
    gaussians: Gaussians,
    labels: np.ndarray | None,
    instance_ids: set[int] | None,
    path: str | os.PathLike,
    with_instance_ids: bool = False,
    verbatim: SourceRows | None = None,
) -> int:
    """Write the Gaussians of some instances as a plain INRIA PLY; returns how many were written.

    Args:
        gaussians: the scene's N Gaussians (features are never exported).
        labels: per-Gaussian instance id, 0 = unassigned. [N] integers; may be None only when
            `instance_ids` is None and `with_instance_ids` is False.
        instance_ids: the instances to export; None exports every Gaussian (unassigned ones included).
        path: the PLY to write (atomically).
        with_instance_ids: add the `int instance` column holding each Gaussian's label.
        verbatim: for an imported scene, the source PLY whose rows are written byte for byte (every property
            the source has, in its encoding) instead of INRIA columns written from `gaussians`.

    Raises:
        ExportError: unknown ids (named, with the valid ones), an empty selection, or missing labels.
    """
    if labels is None:
        if instance_ids is not None or with_instance_ids:
            raise ExportError("selecting instances or writing instance ids needs the per-Gaussian labels")
        keep = np.ones(len(gaussians), dtype=bool)
    else:
        labels = np.asarray(labels)
        if labels.shape != (len(gaussians),) or not np.issubdtype(labels.dtype, np.integer):
            raise ExportError(f"labels must be integers of shape [{len(gaussians)}], got {labels.dtype} {list(labels.shape)}")
        keep = np.ones(len(gaussians), dtype=bool) if instance_ids is None else _instance_mask(labels, instance_ids)
    if not keep.any():
        raise ExportError("nothing to export: the selection holds no Gaussians")
    if verbatim is not None:
        rows = np.flatnonzero(keep) if verbatim.rows is None else np.asarray(verbatim.rows)[keep]
        ids = labels[keep].astype(np.int64) if with_instance_ids else None
        return write_source_rows(verbatim.ply, verbatim.properties, rows, path, ids)
    selected = gaussians.select(torch.from_numpy(keep).to(gaussians.device))
    if with_instance_ids:
        # plain=False with zero feature columns: exactly the INRIA columns followed by `instance`.
        without_features = Gaussians(**{**selected.tensors(), "features": selected.features[:, :0]})
        write_ply(path, without_features, instance_ids=torch.from_numpy(labels[keep].astype(np.int64)))
    else:
        write_ply(path, selected, plain=True)
    return int(keep.sum())


def _instance_mask(labels: np.ndarray, instance_ids: set[int]) -> np.ndarray:
    """Which Gaussians belong to `instance_ids`. [N] bool; raises ExportError for ids with no Gaussian."""
    if not instance_ids:
        raise ExportError("nothing to export: no instance selected")
    valid = np.unique(labels[labels > 0])
    unknown = sorted(set(instance_ids) - set(valid.tolist()))
    if unknown:
        shown = ", ".join(map(str, valid[:50].tolist())) + (", ..." if len(valid) > 50 else "")
        raise ExportError(f"unknown instance id(s) {', '.join(map(str, unknown))}; the scene has {shown or 'none'}")
    return np.isin(labels, np.fromiter(instance_ids, dtype=np.int64))


def safe_export_name(scene_dir: SceneDir | str | os.PathLike, instance_ids: Iterable[int] | None, now: datetime | None = None) -> Path:
    """A new file under SCENE/exports/, named only from integers and the time; never from user text.

    e.g. `instances_3_7_20261124-104512.ply`, or `scene_20261124-104512.ply` for the whole scene; a
    `_2`, `_3`, ... suffix keeps it unique, and free for the export's record (`record_path`) too. The file
    is created empty (O_EXCL) to reserve the name, so two exports in the same second (two browser tabs)
    never get the same one; the export replaces it.

    Raises:
        ValueError: an id that is not a non-negative integer (e.g. "../x").
    """
    root = scene_dir.root if isinstance(scene_dir, SceneDir) else Path(scene_dir)
    folder = root / EXPORTS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    stamp = (now or datetime.now()).strftime("%Y%m%d-%H%M%S")
    if instance_ids is None:
        stem = f"scene_{stamp}"
    else:
        ids = sorted({_as_id(i) for i in instance_ids})
        shown = "_".join(map(str, ids[:MAX_IDS_IN_NAME]))
        more = f"_and_{len(ids) - MAX_IDS_IN_NAME}_more" if len(ids) > MAX_IDS_IN_NAME else ""
        stem = f"instances_{shown}{more}_{stamp}"
    counter = 1
    while True:
        path = folder / (f"{stem}.ply" if counter == 1 else f"{stem}_{counter}.ply")
        try:
            if record_path(path).exists():  # the export's record must not replace another file either
                raise FileExistsError(record_path(path))
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            return path
        except FileExistsError:
            counter += 1


def _as_id(value: object) -> int:
    """An instance id as a plain int; strings, floats and bools are refused, not coerced."""
    if isinstance(value, (bool, float, str, bytes)) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"instance ids must be integers, got {value!r}")
    if value < 0:
        raise ValueError(f"instance ids must be non-negative, got {value}")
    return int(value)


def _is_count(value: object) -> bool:
    """A non-negative JSON integer (JSON's true/false are not counts)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _short(value: object) -> str:
    """A value from a malformed file, cut short for an error message."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
