"""Editing a segmented scene without a viewer: exporting instances and merging labels.

`protosaga export SCENE --instances 3,7 -o obj.ply` and the viewer's export button both end in
`export_instances`; the viewer's merge and the model behind its undo stack use `merge_labels`.

Exports are plain INRIA PLYs (DESIGN §7: they open in SuperSplat and the INRIA viewer); the only extra
column ever written is `instance`, and only on request.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
import tyro

from .gaussians import Gaussians
from .outputs import check_output_file
from .ply import write_ply
from .scene_dir import SceneDir

EXPORTS_DIR = "exports"
MAX_IDS_IN_NAME = 8
"""Ids spelled out in a generated file name; more are summarised, so names stay far below NAME_MAX."""


class ExportError(ValueError):
    """An export that cannot be done as asked (unknown ids, nothing selected)."""


def parse_instance_ids(args: list[str]) -> tuple[int, ...]:
    """`["3,7"]`, `["3", "7"]` or `["3,", "7"]` -> (3, 7): the command line accepts either spelling."""
    parts = [part.strip() for arg in args for part in arg.split(",") if part.strip()]
    try:
        ids = tuple(int(part) for part in parts)
    except ValueError as error:
        raise ValueError(f"instance ids must be integers separated by commas or spaces, got {' '.join(args)!r}") from error
    if any(i <= 0 for i in ids):
        raise ValueError(f"instance ids are positive (0 means unassigned), got {list(ids)}")
    return ids


InstanceIds = Annotated[
    tuple[int, ...],
    tyro.constructors.PrimitiveConstructorSpec(
        nargs="*",
        metavar="ID[,ID...]",
        instance_from_str=parse_instance_ids,
        is_instance=lambda value: isinstance(value, tuple) and all(isinstance(i, int) for i in value),
        str_from_instance=lambda ids: [",".join(map(str, ids))] if ids else [],
    ),
]
"""A tuple of instance ids that tyro parses from `3,7` as well as from `3 7`."""


@dataclass
class ExportConfig:
    """Export instances (or the whole scene) as a plain INRIA PLY that opens in SuperSplat."""

    scene: tyro.conf.Positional[Path]
    """the trained scene directory"""
    instances: InstanceIds = ()
    """instance ids to export, e.g. 3,7; none: every Gaussian of the scene"""
    output: Annotated[Path | None, tyro.conf.arg(aliases=("-o",))] = None
    """the PLY to write; default: a new generated name under SCENE/exports/"""
    with_instance_ids: bool = False
    """add an integer `instance` column (other viewers ignore it)"""
    overwrite: bool = False
    """replace an existing --output file"""

    def run(self) -> Path:
        """Write the PLY, print what was written and return its path."""
        scene_dir = SceneDir(self.scene)
        if self.output is not None:
            check_output_file(self.output, self.overwrite, scene_dir.root, free=(EXPORTS_DIR,))
        gaussians = scene_dir.read_gaussians()
        selection = set(self.instances) or None
        # A whole-scene export without the id column needs no labels, so it works before `prototypes`.
        labels = scene_dir.read_labels() if selection is not None or self.with_instance_ids else None
        path = self.output if self.output is not None else safe_export_name(scene_dir, selection)
        try:
            count = export_instances(gaussians, labels, selection, path, self.with_instance_ids)
        except BaseException:
            if self.output is None:  # drop the name safe_export_name reserved
                path.unlink(missing_ok=True)
            raise
        what = "the whole scene" if selection is None else f"instances {', '.join(map(str, sorted(selection)))}"
        columns = "INRIA columns + instance" if self.with_instance_ids else "plain INRIA columns"
        print(f"wrote {path}: {count:,} Gaussians of {what} ({columns})")
        return path


def export_instances(
    gaussians: Gaussians,
    labels: np.ndarray | None,
    instance_ids: set[int] | None,
    path: str | os.PathLike,
    with_instance_ids: bool = False,
) -> int:
    """Write the Gaussians of some instances as a plain INRIA PLY; returns how many were written.

    Args:
        gaussians: the scene's N Gaussians (features are never exported).
        labels: per-Gaussian instance id, 0 = unassigned. [N] integers; may be None only when
            `instance_ids` is None and `with_instance_ids` is False.
        instance_ids: the instances to export; None exports every Gaussian (unassigned ones included).
        path: the PLY to write (atomically).
        with_instance_ids: add the `int instance` column holding each Gaussian's label.

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
    `_2`, `_3`, ... suffix keeps it unique. The file is created empty (O_EXCL) to reserve the name, so
    two exports in the same second (two browser tabs) never get the same one; the export replaces it.

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


def merge_labels(labels: np.ndarray, keep: int, absorb: int) -> np.ndarray:
    """Instance `absorb` becomes part of `keep`: a relabelled copy of labels [N] (the input is untouched)."""
    if keep == absorb or keep <= 0 or absorb <= 0:
        raise ValueError(f"merge needs two different positive instance ids, got {keep} and {absorb}")
    labels = np.asarray(labels)
    return np.where(labels == absorb, np.asarray(keep, dtype=labels.dtype), labels)
