"""Label maps on disk: single-channel uint16 PNGs, 0 = unlabeled (uint8 cannot hold > 255 instances).

Also the two rules every per-view map (SAM mask, GT instance map, GT depth) and every image read shares:

- A file PIL cannot decode (text named .png, another format, a PNG cut short) raises a ValueError naming the
  file, never PIL's own exception types.
- Maps are never stretched: a map is brought to its view's size only when it is the view's size already or
  the view's original image scaled by one factor (see `map_size_problem`).
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from .atomic import atomic_open

MAX_LABEL = np.iinfo(np.uint16).max
MAX_MASK_IDS = 1_000
"""The most mask ids one view's SAM label map may hold. SAM's automatic masks give 50-150 a view (Gaga's
settings), a few hundred in cluttered views with 64 prompts per side; the fallback keeps segments of at least
0.2 % of the image. 1,000 leaves a wide margin above those while refusing what is not a mask: a depth map or a
photo copied into masks/ holds thousands of values (about 2,950 a view measured), and association's cost grows
with the square of the total number of masks."""
LABEL_MODES = ("I;16", "I;16B", "I;16L", "I", "L", "P")
DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I")
# What PIL raises for a file that is not an image or is damaged: UnidentifiedImageError (an OSError), OSError
# ("image file is truncated"), SyntaxError ("broken PNG file"), ValueError, EOFError, and the codec's own errors.
UNREADABLE = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error)

Size = tuple[int, int]  # (width, height), PIL's order


@contextmanager
def decoded_image(path: str | os.PathLike, what: str = "image") -> Iterator[Image.Image]:
    """The image at `path`, fully decoded (so a truncated file fails here), closed on exit.

    Raises:
        FileNotFoundError: no file at `path`.
        ValueError: a file PIL cannot decode, naming it and what PIL said.
    """
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: {what} file missing")
    try:
        img = Image.open(path)
    except UNREADABLE as err:
        raise ValueError(f"{path}: not a readable {what} ({type(err).__name__}: {err})") from err
    with img:
        try:
            img.load()
        except UNREADABLE as err:
            raise ValueError(f"{path}: {what} file is damaged or truncated ({type(err).__name__}: {err})") from err
        yield img


def image_size(path: str | os.PathLike, what: str = "image") -> Size:
    """(width, height) from the file's header only (the pixels are not decoded); errors as `decoded_image`."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: {what} file missing")
    try:
        with Image.open(path) as img:
            return img.size
    except UNREADABLE as err:
        raise ValueError(f"{path}: not a readable {what} ({type(err).__name__}: {err})") from err


def check_mode(img: Image.Image, path: str | os.PathLike, modes: tuple[str, ...], what: str) -> None:
    """Refuse an image whose PIL mode is not one of `modes` (e.g. an RGB picture given as a label map)."""
    if img.mode in modes:
        return
    if modes == DEPTH_MODES:
        raise ValueError(f"{path}: depth maps must be single-channel 16- or 32-bit integer PNGs, got mode {img.mode}")
    raise ValueError(f"{path}: {what}s must be single-channel integer PNGs, got mode {img.mode}")


def read_label_map(path: str | os.PathLike) -> Tensor:
    """A uint8/uint16 label PNG as it is on disk. [H, W] int64"""
    with decoded_image(path, "label map") as img:
        check_mode(img, path, LABEL_MODES, "label map")
        return torch.from_numpy(np.asarray(img).astype(np.int64))


def load_label_map(path: str | os.PathLike, width: int | None = None, height: int | None = None) -> Tensor:
    """A uint8/uint16 label PNG as int64 [H, W]; with a size given, the file must have exactly that size.

    Label maps are never resized here: a view's maps go through `read_map_for_view`, which states what sizes
    may be brought to the view's.
    """
    labels = read_label_map(path)
    if width is not None and height is not None and tuple(labels.shape) != (height, width):
        raise ValueError(
            f"{path}: {labels.shape[1]}x{labels.shape[0]} label map where {width}x{height} is expected; "
            "label maps are not resized"
        )
    return labels


def scales_evenly(size: Size, full: Size) -> bool:
    """Whether `size` is `full` shrunk (or kept) by one factor s <= 1, up to a resize's rounding.

    True when some s <= 1 gives |w - s W| < 1 and |h - s H| < 1: an integer downscale (W // d, H // d), a
    shipped images_N/ file rounded either way, a depth sensor of the same aspect ratio. Another aspect ratio, a
    crop or a larger map are False.
    """
    (w, h), (full_w, full_h) = size, full
    if w < 1 or h < 1 or w > full_w or h > full_h:
        return False
    low = max((w - 1) / full_w, (h - 1) / full_h)
    high = min((w + 1) / full_w, (h + 1) / full_h)
    return low < high


def map_size_problem(size: Size, view: Size, full: Size, coarser: bool = False) -> str | None:
    """Why a map of `size` cannot serve a view of `view` shrunk from an original image of `full`; None if it can.

    Accepted: the view's size, or `full` scaled evenly (`scales_evenly`) to no less than the view: masks made at
    full resolution, or at a smaller --downscale than training's --max-width picked. With `coarser` (depth
    sensors), also evenly scaled maps smaller than the view.
    """
    not_smaller = size[0] >= view[0] and size[1] >= view[1]
    if size == view or (scales_evenly(size, full) and (coarser or not_smaller)):
        return None
    if full == view:
        return "it must have the view's size" + (", or that size shrunk evenly (same aspect ratio)" if coarser else "")
    bound = "" if coarser else " to no less than the view"
    return (
        f"it must have the view's size, or be the view's {full[0]}x{full[1]} original image shrunk evenly "
        f"(same aspect ratio){bound}, e.g. {full[0]}x{full[1]} itself"
    )


def read_map_for_view(
    path: Path,
    kind: str,
    modes: tuple[str, ...],
    view: Size,
    full: Size,
    image_path: Path | None,
    coarser: bool = False,
) -> np.ndarray:
    """A per-view single-channel integer map at the view's size, by nearest neighbour (ids and depths are not
    blended) from any size `map_size_problem` accepts. [H, W] of the file's integer dtype

    Args:
        path: the map file.
        kind: what it is ("label map", "instance map", "depth map"), named in errors.
        modes: the PIL modes accepted.
        view: the view's (width, height).
        full: the (width, height) of the original image the view was shrunk from (the view's own when it was not).
        image_path: the view's image, named in errors.
        coarser: accept evenly scaled maps smaller than the view (depth sensors).

    Raises:
        ValueError: an unreadable file, another mode, or a size that is not accepted (naming the file and sizes).
    """
    with decoded_image(path, kind) as img:
        check_mode(img, path, modes, kind)
        problem = map_size_problem(img.size, view, full, coarser)
        if problem is not None:
            of_image = f" ({image_path})" if image_path is not None else ""
            raise ValueError(f"{path}: {img.size[0]}x{img.size[1]} {kind} for a {view[0]}x{view[1]} view{of_image}; {problem}")
        if img.size == view:
            return np.asarray(img)
        with img.resize(view, Image.Resampling.NEAREST) as resized:
            return np.asarray(resized)


def check_label_range(labels: np.ndarray, path: str | os.PathLike, kind: str) -> None:
    """Refuse ids outside 0..MAX_LABEL (a 32-bit integer map): label maps are uint16, 0 = none."""
    if labels.size and (labels.dtype.itemsize > 2 or labels.dtype.kind == "i"):
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high > MAX_LABEL:
            raise ValueError(
                f"{path}: {kind} ids must lie in 0..{MAX_LABEL} (a uint16 PNG, 0 = none), found {low}..{high}: "
                f"not a {kind}? Replace it with one"
            )


def check_mask_ids(labels: np.ndarray, path: str | os.PathLike) -> None:
    """Refuse a SAM label map of more than MAX_MASK_IDS ids (after `check_label_range`): not a mask."""
    count = int(np.count_nonzero(np.bincount(labels.ravel().astype(np.int64), minlength=1)[1:])) if labels.size else 0
    if count > MAX_MASK_IDS:
        raise ValueError(
            f"{path}: {count:,} mask ids in one view, more than the {MAX_MASK_IDS:,} a view's masks may hold (SAM "
            "gives 50-150): a depth map or another image rather than a label map? Delete it and run "
            "`protosaga masks` to make it again"
        )


def save_label_map(path: str | os.PathLike, labels: Tensor | np.ndarray) -> None:
    """Write integer labels [H, W] in 0..65535 as a uint16 PNG, atomically."""
    array = labels.detach().cpu().numpy() if isinstance(labels, Tensor) else np.asarray(labels)
    if array.ndim != 2:
        raise ValueError(f"{path}: a label map must be [H, W], got shape {list(array.shape)}")
    if array.size and (array.min() < 0 or array.max() > MAX_LABEL):
        raise ValueError(f"{path}: labels must lie in 0..{MAX_LABEL}, got {array.min()}..{array.max()}")
    with atomic_open(path) as handle:
        Image.fromarray(array.astype(np.uint16)).save(handle, format="PNG")
