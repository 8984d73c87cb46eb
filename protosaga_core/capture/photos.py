"""What a capture input is: a video file, or a folder of plain photos (no poses, no dataset layout)."""

from __future__ import annotations

from pathlib import Path

from ..datasets.common import IMAGE_SUFFIXES
from ..io.labelmaps import image_size
from .errors import CaptureError
from .video import is_video

MIN_PHOTOS = 3
"""Incremental mapping starts from a pair and needs a third view to check it."""


def photo_names(folder: Path) -> list[str]:
    """The image files directly in `folder`, sorted by name."""
    return sorted(path.name for path in folder.iterdir() if path.is_file() and path.suffix in IMAGE_SUFFIXES)


def photo_folder(path: Path) -> Path | None:
    """The folder of plain photos `path` stands for: itself, or its `images/` when only that holds photos;
    None when it holds no photos or is already a posed dataset (a layout protosaga reads)."""
    from ..datasets import DatasetError, detect_format

    if not path.is_dir():
        return None
    try:
        detect_format(path)
        return None
    except DatasetError:
        pass
    for folder in (path, path / "images"):
        if folder.is_dir() and photo_names(folder):
            return folder
    return None


def is_capture(path: Path) -> bool:
    """Whether `path` is a video or a folder of unposed photos, which `protosaga colmap` poses first."""
    return is_video(path) or photo_folder(path) is not None


def check_photos(folder: Path, names: list[str]) -> None:
    """Enough readable photos to map, with names COLMAP can list.

    Raises:
        CaptureError: fewer than MIN_PHOTOS, a name with a space, or a file whose header cannot be read
            (naming it).
    """
    if len(names) < MIN_PHOTOS:
        raise CaptureError(f"{folder}: holds {len(names)} photo(s); posing needs at least {MIN_PHOTOS} that overlap")
    spaced = [name for name in names if any(character.isspace() for character in name)]
    if spaced:  # COLMAP's list of pairs to match separates the two names by a space
        raise CaptureError(f"{folder / spaced[0]}: photo names with spaces cannot be matched by COLMAP; rename "
                           f"the {len(spaced)} such photo(s) (e.g. spaces to underscores)")
    for name in names:
        try:
            image_size(folder / name)
        except (OSError, ValueError) as err:  # the message names the file
            raise CaptureError(str(err)) from None


def one_size(folder: Path, names: list[str]) -> bool:
    """Whether every photo has the same width and height (then one camera can hold them all)."""
    return len({image_size(folder / name) for name in names}) == 1
