"""What a command may write over: never a trained scene's own files, and an existing output only when the
user says --overwrite. Checked before any work, so a refused command has changed nothing."""

from __future__ import annotations

from pathlib import Path


def check_output_file(path: Path, overwrite: bool, scene: Path | None = None, free: tuple[str, ...] = ()) -> None:
    """Refuse to write the file `path` over a folder, over an existing file without `overwrite`, or over
    anything of the trained scene `scene` outside its subfolders `free` (e.g. exports/)."""
    if path.is_dir():
        raise ValueError(f"{path}: is a folder; give the file to write")
    _check_outside_scene(path, scene, free)
    if path.exists() and not overwrite:
        raise ValueError(f"{path}: exists; add --overwrite to replace it, or choose another name")


def check_output_dir(path: Path, overwrite: bool, scene: Path | None = None, free: tuple[str, ...] = ()) -> None:
    """Refuse to write into `path` when it is a file, when it already holds files without `overwrite`, or
    when it lies in the trained scene `scene` outside its subfolders `free`."""
    if path.exists() and not path.is_dir():
        raise ValueError(f"{path}: exists and is not a folder")
    _check_outside_scene(path, scene, free)
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise ValueError(f"{path}: already holds files; add --overwrite to write over them, or choose an empty folder")


def _check_outside_scene(path: Path, scene: Path | None, free: tuple[str, ...]) -> None:
    if scene is None:
        return
    target, root = path.resolve(), scene.resolve()
    if target == root or root in target.parents and not any(root / f in (target, *target.parents) for f in free):
        where = " or ".join(f"{scene / f}/" for f in free) or "another folder"
        raise ValueError(f"{path}: is inside the trained scene {scene}, whose files it would replace; write to {where} or outside the scene")
