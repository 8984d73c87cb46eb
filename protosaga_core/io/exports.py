"""Exports of a segmented scene, and the records of the viewer's edits.

`protosaga export SCENE --instances 3,7 -o obj.ply` (`export_scene`) and the viewer's export button both end
in `export_instances`. `Edit` is how the viewer's merges, splits, names of split instances, deletions and
hiding are written down (the app's edit_log.py converts them from and to `method.label_edits`).

Exports are plain INRIA PLYs by default (DESIGN §7: they open in SuperSplat and the INRIA viewer); the only
extra column ever written is `instance`, and only on request. An imported scene's exports are the source PLY's
own rows of the Gaussians kept, byte for byte, with every property it has (`SourceRows`, io/source_ply.py).
Two other formats (`ExportFormat`) are written by gsplat's exporter, not here: SuperSplat's compressed PLY and
the `.splat` of web viewers (antimatter15's); both are quantised, and keep the INRIA parameters only.
Beside each export lies its record (same stem, `.json`, `ExportRecord`): the instances it holds and the viewer's edits it includes, so a file found later
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
"""Version 1 records written before the export formats lack `file_format` and `left_out` (a PLY, nothing
left out); the two keys were added without a new version, as no reader of the records needs them."""

ExportFormat = Literal["ply", "ply_compressed", "splat"]
"""ply: INRIA PLY, every property (written here); ply_compressed: SuperSplat's compressed PLY; splat: the
32-byte records of web viewers, SH degree 0 only (both written by `gsplat.exporter`)."""
EXPORT_FORMATS: tuple[ExportFormat, ...] = ("ply", "ply_compressed", "splat")
GENERATED_SUFFIXES: dict[ExportFormat, str] = {"ply": ".ply", "ply_compressed": ".compressed.ply", "splat": ".splat"}
"""How generated names end: SuperSplat tells a compressed PLY by `.compressed.ply` when it saves one."""
MIN_COMPRESSED_OPACITY = 1 / 255
"""gsplat's compressed writer drops the splats whose opacity is not above this (their alpha would be 0)."""
LEFT_OUT: dict[ExportFormat, str] = {
    "ply": "",
    "ply_compressed": "non-finite or nearly transparent (opacity <= 1/255)",
    "splat": "non-finite",
}
"""The Gaussians each format leaves out (gsplat's writers drop them)."""


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
    """What an export holds, written beside it as JSON (same stem, `record_path`).

    Attributes:
        ply: the exported file's name, whatever its format (the key is older than the other formats).
        file_format: the file's format.
        scene: the trained scene it was exported from.
        gaussians: Gaussians in the file.
        left_out: Gaussians of the selection that the format left out (`LEFT_OUT`); always 0 for ply.
        with_instance_ids: whether the PLY has the `instance` column.
        edits: the viewer's edits it includes (see `ExportSource.edits`); () for none.
        labels: the computed labels the ids refer to; None where the scene had none.
        instances: the instances in the file, by id; None without labels.
        unassigned: Gaussians of no instance in the file; None without labels.
    """

    ply: str
    file_format: ExportFormat
    scene: str
    gaussians: int
    left_out: int
    with_instance_ids: bool
    edits: tuple[Edit, ...]
    labels: LabelsFingerprint | None
    instances: tuple[ExportedInstance, ...] | None
    unassigned: int | None

    @classmethod
    def of(
        cls, ply: Path, source: ExportSource, written: Written, exported: np.ndarray | None, with_instance_ids: bool, file_format: ExportFormat
    ) -> "ExportRecord":
        """The record of the export `written` to `ply`, whose Gaussians' labels were `exported` ([count] or None)."""
        instances = unassigned = None
        if exported is not None:
            ids, counts = np.unique(exported, return_counts=True)
            instances = tuple(
                ExportedInstance(int(i), source.names.get(int(i)) or f"instance {int(i)}", int(c))
                for i, c in zip(ids, counts) if i > 0
            )
            unassigned = int(counts[ids == 0].sum())
        return cls(
            Path(ply).name, file_format, str(source.scene), written.count, written.left_out, with_instance_ids,
            tuple(source.edits), source.labels, instances, unassigned,
        )

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
    file_format: ExportFormat = "ply",
) -> ExportRecord:
    """`export_instances`, then its record beside the file (both atomic); returns the record.

    Args: as `export_instances`; `labels` are the ones the export uses (after `source.edits`).

    Raises:
        ExportError: as `export_instances`; nothing is written then.
    """
    written = write_export(gaussians, labels, instance_ids, path, with_instance_ids, verbatim, file_format)
    exported = None if labels is None else np.asarray(labels)[written.rows]
    record = ExportRecord.of(Path(path), source, written, exported, with_instance_ids, file_format)
    try:
        atomic_write_bytes(record_path(path), (json.dumps(record.to_json(), indent=1) + "\n").encode())
    except BaseException:
        Path(path).unlink(missing_ok=True)  # a file without its record would pass for a complete export
        raise
    return record


@writes_scene("export", only_if=lambda scene_dir, output, **_: output is None or is_inside(output, scene_dir.root))
def export_scene(
    scene_dir: SceneDir,
    instances: Iterable[int] = (),
    output: Path | None = None,
    with_instance_ids: bool = False,
    overwrite: bool = False,
    file_format: ExportFormat = "ply",
) -> tuple[Path, ExportRecord]:
    """`protosaga export`: the given instances (none: the whole scene) as a file of `file_format` with its
    record beside it.

    Args:
        output: the file to write; None: a new generated name under SCENE/exports/.
        overwrite: replace an existing `output` and its record.

    Returns:
        the file's path and its record.
    """
    if output is not None:
        for path in (output, record_path(output)):  # first: a path in a scene is refused as such
            check_output_file(path, overwrite, free=(EXPORTS_DIR,))
        if output.suffix.lower() == ".json":
            raise ValueError(f"{output}: give the export another suffix; its record is written beside it as .json")
    check_export(output, file_format, with_instance_ids)  # before reading the scene
    gaussians = scene_dir.read_gaussians()
    selection = set(instances) or None
    if selection is not None or with_instance_ids:
        labels = scene_dir.read_labels()
    else:  # a whole-scene export needs no labels, so it works before `prototypes`; they name its instances
        labels = _current_labels(scene_dir, len(gaussians))
    fingerprint = None if labels is None else LabelsFingerprint.of(labels)
    source = ExportSource(scene_dir.root.resolve(), fingerprint, _instance_names(scene_dir))
    path = output if output is not None else safe_export_name(scene_dir, selection, file_format=file_format)
    try:
        record = export_with_record(gaussians, labels, selection, path, source, with_instance_ids, SourceRows.of(scene_dir), file_format)
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
    file_format: ExportFormat = "ply",
) -> int:
    """Write the Gaussians of some instances as a file of `file_format`; returns how many the file holds.

    Args:
        gaussians: the scene's N Gaussians (features are never exported).
        labels: per-Gaussian instance id, 0 = unassigned. [N] integers; may be None only when
            `instance_ids` is None and `with_instance_ids` is False.
        instance_ids: the instances to export; None exports every Gaussian (unassigned ones included).
        path: the file to write (atomically); its suffix must be the format's (`check_export`).
        with_instance_ids: add the `int instance` column holding each Gaussian's label (ply only).
        verbatim: for an imported scene, the source PLY whose rows are written byte for byte (every property
            the source has, in its encoding) instead of INRIA columns written from `gaussians`. Only `ply`
            keeps them: the other formats are written from `gaussians`, the scene's Gaussians as read.
        file_format: "ply" (an INRIA PLY); "ply_compressed" or "splat", written by gsplat's exporter, which
            quantises, reorders the Gaussians and leaves some out (`ExportRecord.left_out`).

    Raises:
        ExportError: unknown ids (named, with the valid ones), an empty selection, missing labels, a suffix
            that is not the format's, instance ids asked for in a format without a place for them.
    """
    return write_export(gaussians, labels, instance_ids, path, with_instance_ids, verbatim, file_format).count


@dataclass(frozen=True)
class Written:
    """What an export wrote.

    Attributes:
        rows: the Gaussians in the file, as indices into those handed to the export, increasing (the file's
            order may differ). [M] int64
        left_out: Gaussians selected but not in the file (see `ExportRecord.left_out`).
    """

    rows: np.ndarray
    left_out: int

    @property
    def count(self) -> int:
        return len(self.rows)


def write_export(
    gaussians: Gaussians,
    labels: np.ndarray | None,
    instance_ids: set[int] | None,
    path: str | os.PathLike,
    with_instance_ids: bool = False,
    verbatim: SourceRows | None = None,
    file_format: ExportFormat = "ply",
) -> Written:
    """`export_instances`, telling which Gaussians the file holds."""
    check_export(path, file_format, with_instance_ids)
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
    if file_format != "ply":
        selected = np.flatnonzero(keep)
        # on the CPU in float32 as gsplat computes, so that its opacity test and this one agree to the bit
        splats = gaussians.select(torch.from_numpy(selected).to(gaussians.device)).map(lambda t: t.detach().to(device="cpu", dtype=torch.float32))
        fits = _gsplat_keeps(splats, file_format)
        if not fits.any():
            raise ExportError(f"{path}: nothing to export: the {len(selected):,} Gaussians selected are all {LEFT_OUT[file_format]}")
        atomic_write_bytes(path, _gsplat_bytes(splats.select(torch.from_numpy(fits)), file_format))
        return Written(selected[fits], len(selected) - int(fits.sum()))
    rows = np.flatnonzero(keep)
    if verbatim is not None:
        source_rows = rows if verbatim.rows is None else np.asarray(verbatim.rows)[keep]
        ids = labels[keep].astype(np.int64) if with_instance_ids else None
        write_source_rows(verbatim.ply, verbatim.properties, source_rows, path, ids)
        return Written(rows, 0)
    selected = gaussians.select(torch.from_numpy(keep).to(gaussians.device))
    if with_instance_ids:
        # plain=False with zero feature columns: exactly the INRIA columns followed by `instance`.
        without_features = Gaussians(**{**selected.tensors(), "features": selected.features[:, :0]})
        write_ply(path, without_features, instance_ids=torch.from_numpy(labels[keep].astype(np.int64)))
    else:
        write_ply(path, selected, plain=True)
    return Written(rows, 0)


def check_export(path: str | os.PathLike | None, file_format: ExportFormat, with_instance_ids: bool = False) -> None:
    """Refuse an unknown format, instance ids in a format without a column for them (all but ply), and a file
    name (None: one still to generate) whose suffix is not the format's: .ply for ply and ply_compressed,
    .splat for splat."""
    if file_format not in EXPORT_FORMATS:
        raise ExportError(f"unknown export format {file_format!r}; one of {', '.join(EXPORT_FORMATS)}")
    if with_instance_ids and file_format != "ply":
        raise ExportError(f"{file_format} files have no place for instance ids; export a ply to have them")
    wanted = ".splat" if file_format == "splat" else ".ply"
    if path is not None and Path(path).suffix.lower() != wanted:
        usual = f" ({GENERATED_SUFFIXES[file_format]} by SuperSplat's custom)" if file_format == "ply_compressed" else ""
        raise ExportError(f"{path}: a {file_format} export must be named *{wanted}{usual}; rename it or pick the format its suffix names")


def _gsplat_keeps(gaussians: Gaussians, file_format: ExportFormat) -> np.ndarray:
    """Which of the Gaussians (on the CPU) gsplat's writer of `file_format` keeps (`LEFT_OUT`). [N] bool

    They are left out here first so that the record counts what the file holds, and because gsplat's own
    finiteness test reduces the opacities over the wrong axis: one non-finite opacity drops every splat, and
    its writer then fails.
    """
    keep = torch.ones(len(gaussians), dtype=torch.bool)
    for tensor in (gaussians.means, gaussians.scales, gaussians.quats, gaussians.opacities, gaussians.sh0, gaussians.shN):
        finite = torch.isfinite(tensor)
        keep &= finite.flatten(1).all(dim=1) if finite.ndim > 1 else finite
    if file_format == "ply_compressed":
        keep &= torch.sigmoid(gaussians.opacities) > MIN_COMPRESSED_OPACITY  # gsplat's test, as it writes it
    return keep.numpy()


def _gsplat_bytes(gaussians: Gaussians, file_format: ExportFormat) -> bytes:
    """The file of `gaussians` (on the CPU, float32) in a format gsplat writes (ply_compressed or splat),
    reordered along a Morton curve."""
    # Imported here: only these formats need it. `gsplat.exporter` is plain torch and numpy; importing gsplat
    # loads no CUDA kernels (gsplat.cuda._backend, which compiles them where it finds nvcc, loads at a
    # kernel's first call; device.py), so this is safe on a machine with nvcc and no GPU.
    from gsplat.exporter import export_splats

    # `Gaussians` stores what export_splats takes, unconverted: log-scales and logit opacities (it applies exp
    # and sigmoid itself), wxyz quaternions, sh0 [N, 1, 3], shN [N, K, 3] (it flattens shN channel-major, the
    # INRIA order of f_rest_*).
    g = gaussians
    return export_splats(g.means, g.scales, g.quats, g.opacities, g.sh0, g.shN, format=file_format, save_to=None)


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


def safe_export_name(
    scene_dir: SceneDir | str | os.PathLike, instance_ids: Iterable[int] | None, now: datetime | None = None, file_format: ExportFormat = "ply"
) -> Path:
    """A new file under SCENE/exports/, named only from integers and the time; never from user text.

    e.g. `instances_3_7_20261124-104512.ply`, or `scene_20261124-104512.ply` for the whole scene, ending as
    `GENERATED_SUFFIXES` says for the other formats (`scene_20261124-104512.compressed.ply`); a
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
    suffix = GENERATED_SUFFIXES[file_format]
    counter = 1
    while True:
        path = folder / (f"{stem}{suffix}" if counter == 1 else f"{stem}_{counter}{suffix}")
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
