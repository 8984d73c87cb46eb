"""Bounded reads of files a user hands in or may have edited: JSON with a size and nesting limit, and NumPy
`.npy` / `.npz` files whose headers are checked against the bytes the file holds before anything is
allocated. Every problem raises `BoundedReadError` (a ValueError) with one line naming the file, where
Python's own parsers give a RecursionError or a MemoryError traceback.
"""

from __future__ import annotations

import ast
import json
import math
import os
import re
import struct
import zipfile
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from numpy.lib import format as npy_format

MAX_JSON_BYTES = 256 * 2**20
"""The largest JSON file read (256 MiB). The largest the project writes or reads are edits.json of a scene of
millions of Gaussians after splits (a split lists its Gaussians, ~8 bytes each: tens of MB) and transforms.json
of a capture of 10,000 frames (~10 MB); parsed, JSON takes up to ~20x its size in memory."""
MAX_JSON_DEPTH = 64
"""The deepest nesting of arrays and objects read. The files the project reads nest 5 levels at most
(transforms.json: frames, a frame, its matrix, a row); 64 leaves room for other tools' extra keys and stays
far below the depth at which Python's parser raises RecursionError (about 1,000)."""
DEFLATE_MAX_RATIO = 1032
"""The most that deflate can expand a stream (zlib's limit), which bounds what an `.npz` member may claim."""

NPY_MAX_HEADER = 10_000
"""numpy's own limit on the header of a `.npy` file it reads without `max_header_size`."""

_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")
_DEPTH_CHUNK = 1 << 24


class BoundedReadError(ValueError):
    """A file over a reader's limits, or whose header claims more data than it holds; the message names it."""


def read_json(path: str | os.PathLike, max_bytes: int | None = None, max_depth: int | None = None) -> Any:
    """The JSON value in `path`, read only when it is at most `max_bytes` long (default MAX_JSON_BYTES) and
    nests at most `max_depth` (default MAX_JSON_DEPTH).

    Raises:
        OSError: the file cannot be read (FileNotFoundError for a missing one), as `open` raises it.
        BoundedReadError: too large, nested too deep, not UTF-8 or not JSON: `<path>: unreadable JSON (...)`
            for the last two, as the project has always said.
    """
    path = Path(path)
    max_bytes = MAX_JSON_BYTES if max_bytes is None else max_bytes
    max_depth = MAX_JSON_DEPTH if max_depth is None else max_depth
    size = path.stat().st_size
    if size > max_bytes:
        raise BoundedReadError(
            f"{path}: {size:,} bytes, more than the {max_bytes:,} a JSON file read here may hold; is it the right file?"
        )
    with path.open("rb") as handle:
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:  # grew since stat
        raise BoundedReadError(f"{path}: more than the {max_bytes:,} bytes a JSON file read here may hold; is it the right file?")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise BoundedReadError(f"{path}: unreadable JSON ({error})") from error
    depth = json_depth(data)
    if depth > max_depth:
        raise BoundedReadError(
            f"{path}: arrays and objects nested {depth:,} deep, more than the {max_depth} a JSON file read here may "
            "nest; the file is damaged or not the one expected"
        )
    try:
        return json.loads(text)
    except RecursionError as error:  # unbalanced brackets can hide depth from json_depth
        raise BoundedReadError(f"{path}: arrays and objects nested deeper than Python's parser reads") from error
    except ValueError as error:  # JSONDecodeError, and integers of more digits than Python converts
        raise BoundedReadError(f"{path}: unreadable JSON ({error})") from error


def json_depth(data: bytes) -> int:
    """The deepest nesting of `[` and `{` in JSON text, brackets inside strings not counted; linear time, no
    recursion (the answer for text that is not JSON is a bound the parser then reports on)."""
    brackets = _JSON_STRING.sub(b"", data).translate(None, _NOT_BRACKET)
    steps = np.frombuffer(brackets, dtype=np.uint8)
    deepest = level = 0
    for start in range(0, len(steps), _DEPTH_CHUNK):
        chunk = steps[start : start + _DEPTH_CHUNK]
        depth = level + np.cumsum(np.where((chunk == ord("[")) | (chunk == ord("{")), 1, -1), dtype=np.int64)
        deepest, level = max(deepest, int(depth.max())), int(depth[-1])
    return deepest


def npy_header_problem(handle: BinaryIO, available: int) -> str | None:
    """Why the `.npy` stream at `handle` (positioned at its start) cannot be the array its header announces,
    given the `available` bytes from its start; None when the data fits. Leaves `handle` past the header.

    A header that cannot be parsed is left to numpy's loader, which names the problem.
    """
    start = handle.tell()
    try:
        version = npy_format.read_magic(handle)
        if version == (1, 0):
            shape, _, dtype = npy_format.read_array_header_1_0(handle)
        elif version == (2, 0):
            shape, _, dtype = npy_format.read_array_header_2_0(handle)
        else:  # 3.0: 2.0's layout with a UTF-8 header, which numpy reads with no public function
            (length,) = struct.unpack("<I", handle.read(4))
            if length > NPY_MAX_HEADER:
                return f"its header is {length:,} bytes long, more than a NumPy header takes"
            header = ast.literal_eval(handle.read(length).decode("utf-8"))
            shape, dtype = tuple(header["shape"]), npy_format.descr_to_dtype(header["descr"])
    except (ValueError, OSError, EOFError, SyntaxError, TypeError, KeyError, struct.error, UnicodeDecodeError, MemoryError, RecursionError):
        return None
    if dtype.hasobject:  # pickled objects: refused by allow_pickle=False before any allocation
        return None
    claimed = math.prod(int(n) for n in shape) * dtype.itemsize
    holds = available - (handle.tell() - start)
    if claimed > holds:
        return (
            f"its header announces shape {[int(n) for n in shape]} of {dtype} ({claimed:,} bytes) but the file holds "
            f"{max(holds, 0):,} bytes of data: damaged, cut short or not a NumPy array file"
        )
    return None


def load_npy(path: str | os.PathLike) -> np.ndarray:
    """`np.load(path, allow_pickle=False)` of a `.npy` file, once its header is checked against its size.

    Raises:
        BoundedReadError: the header announces more data than the file holds (before anything is allocated).
        OSError, ValueError, EOFError: as `np.load` raises them for other damage.
    """
    path = Path(path)
    with path.open("rb") as handle:
        problem = npy_header_problem(handle, os.fstat(handle.fileno()).st_size)
    if problem is not None:
        raise BoundedReadError(f"{path}: {problem}")
    return np.load(path, allow_pickle=False)


def load_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every array of an `.npz` archive (`np.savez` or `np.savez_compressed`), each member's header checked
    against the bytes its zip entry holds and each entry's size against what its compressed data can expand to.

    Raises:
        BoundedReadError: a member that announces more than it can hold, naming the archive and the member.
        OSError, ValueError, EOFError: as `np.load` raises them for other damage (zipfile.BadZipFile included).
    """
    path = Path(path)
    archive_size = path.stat().st_size
    if not zipfile.is_zipfile(path):
        raise ValueError("not an .npz archive (no zip directory)")
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                limit = info.compress_size * (1 if info.compress_type == zipfile.ZIP_STORED else DEFLATE_MAX_RATIO)
                if info.compress_size > archive_size or info.file_size > limit + 64:
                    raise BoundedReadError(
                        f"{path}: member {info.filename} claims {info.file_size:,} bytes from {info.compress_size:,} "
                        "stored: damaged or not a NumPy archive"
                    )
                if not info.filename.endswith(".npy"):
                    continue
                with archive.open(info) as member:
                    problem = npy_header_problem(member, info.file_size)
                if problem is not None:
                    raise BoundedReadError(f"{path}: member {info.filename}: {problem}")
    except zipfile.BadZipFile as error:
        raise ValueError(f"not an .npz archive ({error})") from error
    with np.load(path, allow_pickle=False) as archive:
        return {key: archive[key] for key in archive.files}
