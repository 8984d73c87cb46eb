"""Atomic file writes: a crash never leaves a half-written file under the final name."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import BinaryIO, Iterator


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Open a temporary file beside `path` for binary writing; rename it over `path` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    # mkstemp creates 0600; give the file the permissions a plain open() would.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_name, 0o666 & ~umask)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path) as handle:
        handle.write(data)


STALE_AFTER_S = 300.0
"""A temporary file of `atomic_open` untouched this long has no writer left: writes stream continuously."""


def remove_stale_temporaries(folder: str | os.PathLike, now: float | None = None, pattern: str = ".*.tmp") -> list[Path]:
    """Delete the temporaries that `atomic_open` left in `folder` when its process was killed (kill -9,
    power loss) mid-write; younger ones may belong to a live writer and are kept. Returns the removed.

    `pattern`: the names to consider, narrower than `atomic_open`'s `.<name>.<random>.tmp` in a folder that
    holds the user's own files too (`.*.png.*.tmp` for the label maps of DATASET/masks/).
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    now = time.time() if now is None else now
    removed = []
    for path in folder.glob(pattern):
        with contextlib.suppress(FileNotFoundError):
            if path.is_file() and now - path.stat().st_mtime > STALE_AFTER_S:
                path.unlink()
                removed.append(path)
    return removed


def replace_dir(staged: Path, target: Path) -> None:
    """Put the completely written folder `staged` in place of `target` (which may not exist).

    Two renames with the old folder parked beside `target` in between; `recover_dir` undoes a crash
    between them, so readers find either the old folder or the new one, never a mix of their files.
    """
    parked = _parked(target)
    if parked.exists():
        shutil.rmtree(parked)
    if target.exists():
        os.replace(target, parked)
    os.replace(staged, target)
    shutil.rmtree(parked, ignore_errors=True)


def recover_dir(target: Path) -> None:
    """Finish or undo a `replace_dir` that a crash interrupted, and drop an abandoned staging folder."""
    parked = _parked(target)
    if parked.exists():
        if target.exists():
            shutil.rmtree(parked, ignore_errors=True)
        else:
            os.replace(parked, target)
    shutil.rmtree(staging_dir(target), ignore_errors=True)


def staging_dir(target: Path) -> Path:
    """Where a new version of the folder `target` is written before `replace_dir` puts it in place."""
    return target.with_name(f".{target.name}.partial")


def _parked(target: Path) -> Path:
    return target.with_name(f".{target.name}.old")
