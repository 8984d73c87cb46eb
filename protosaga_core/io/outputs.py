"""What a command may write over: never a trained scene's own files, and an existing output only when the
user says --overwrite. Checked before any work, so a refused command has changed nothing.

The checks find by themselves every trained scene a path lies in: each folder among the path's own and
those above it (symbolic links resolved) that holds a scene.json written by protosaga. No caller names the
scene, so none can forget to; a command says only which subfolders of a scene it may write (`free`:
export writes exports/, segment segment/ and exports/).
"""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

SCENE_FILE = "scene.json"
"""The file that makes a folder a trained scene (io/scene_dir.py writes it; this layer cannot import it)."""
_SCENE_MARK = re.compile(rb'"format"\s*:\s*"protosaga-scene"')
"""scene.json's format entry (`scene_dir.SCENE_FORMAT`), wherever it stands in the file."""


def check_output_file(path: Path, overwrite: bool, *, free: tuple[str, ...] = ()) -> None:
    """Refuse to write the file `path` over a folder, over an existing file without `overwrite`, or over
    anything of a trained scene outside its subfolders `free` (e.g. ("exports",))."""
    check_outside_scenes(path, free)
    if path.is_dir():
        raise ValueError(f"{path}: is a folder; give the file to write")
    if path.exists() and not overwrite:
        raise ValueError(f"{path}: exists; add --overwrite to replace it, or choose another name")


def check_output_dir(path: Path, overwrite: bool, *, free: tuple[str, ...] = ()) -> None:
    """Refuse to write into `path` when it is a file, when it already holds files without `overwrite`, or
    when it lies in a trained scene outside its subfolders `free`."""
    check_outside_scenes(path, free)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{path}: exists and is not a folder")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise ValueError(f"{path}: already holds files; add --overwrite to write over them, or choose an empty folder")


def check_scene_output(path: Path) -> None:
    """Refuse a scene folder to make (train, run, demo) that lies inside another trained scene; the folder
    may be a scene itself (the command's own rules say when it is continued or replaced)."""
    target = real_path(path)
    for scene in scenes_around(target.parent):
        raise ValueError(
            f"{path}: is inside the trained scene {scene}, whose files it would replace; give the new scene a "
            "folder outside it"
        )


def check_outside_scenes(path: Path, free: tuple[str, ...] = ()) -> None:
    """Refuse `path` when it is a trained scene, or lies in one other than under its subfolders `free`."""
    target = real_path(path)
    for scene in scenes_around(target):
        if any(scene / f in (target, *target.parents) for f in free):
            continue
        where = " or ".join(f"{scene / f}/" for f in free)
        what = "is the trained scene" if target == scene else "is inside the trained scene"
        raise ValueError(
            f"{path}: {what} {scene}, whose files it would replace; write {f'to {where} or ' if free else ''}outside the scene"
        )


def real_path(path: Path) -> Path:
    """`path` absolute, with every symbolic link resolved; a loop of links is a ValueError naming `path`."""
    try:
        os.stat(path)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise ValueError(f"{path}: is a loop of symbolic links (or lies under one); give another path") from None
    except ValueError:  # e.g. a NUL byte: the write names it
        pass
    try:
        return path.resolve()
    except RuntimeError:  # Python <= 3.12 says so for a loop the stat above did not reach
        raise ValueError(f"{path}: is a loop of symbolic links (or lies under one); give another path") from None


def scenes_around(target: Path) -> list[Path]:
    """The trained scenes the resolved path `target` is or lies in, nearest first."""
    return [folder for folder in (target, *target.parents) if is_trained_scene(folder)]


def is_trained_scene(folder: Path) -> bool:
    """Whether `folder` holds a scene.json that protosaga wrote (its format entry; read in blocks, so a huge
    or deeply nested file costs no memory and no recursion). An unreadable one is no scene."""
    marker = folder / SCENE_FILE
    try:
        if not marker.is_file():
            return False
        with open(marker, "rb") as handle:
            carry = b""
            for block in iter(lambda: handle.read(1 << 16), b""):
                window = carry + block
                if _SCENE_MARK.search(window):
                    return True
                carry = window[-256:]
    except OSError:
        return False
    return False
