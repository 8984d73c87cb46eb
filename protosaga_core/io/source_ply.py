"""Splat PLYs trained elsewhere, kept verbatim: what `protosaga import` accepts, and the exports that copy
their rows byte for byte.

An imported scene's gaussians.ply is the source PLY as it was (io/scene_dir.py), so every property another
trainer stored (normals, extra channels, SH of any degree, float64 columns a reader would not take) is kept.
An export of some of its Gaussians writes the same vertex rows, every byte of each, under a header naming
the same properties, encoding and comments; `protosaga export` of the whole scene gives back the source
file (for a file whose header plyfile writes as it reads it, as the INRIA code's). Columns that a later
stage adds (feat_* from learnt features) are not the source's and are left out; other elements than
`vertex` (faces, say, whose vertex indices a subset would break) are not exported.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from numpy.lib import recfunctions
from plyfile import PlyData, PlyElement, PlyListProperty, PlyProperty

from .atomic import atomic_open
from .ply import INSTANCE, VERTEX, PlyFormatError, _read_plydata, _vertex_element


@dataclass(frozen=True)
class SourcePly:
    """What matters of a source PLY for keeping it verbatim.

    Attributes:
        path: the file.
        properties: the vertex properties, in the file's order.
        count: vertices.
        byte_order: "<" or ">" (ASCII files are refused: their rows are text that plyfile rewrites).
        other_elements: names of elements other than `vertex` (never exported).
    """

    path: str
    properties: tuple[str, ...]
    count: int
    byte_order: str
    other_elements: tuple[str, ...]


def inspect_source_ply(path: str | os.PathLike) -> SourcePly:
    """Check that a splat PLY can be kept verbatim: binary, its vertex properties scalars (read_ply checks
    the Gaussian columns themselves).

    Raises:
        PlyFormatError: naming the file: an ASCII file, a list property among the vertex's, no vertex element.
    """
    ply = _read_plydata(path)
    vertex = _vertex_element(path, ply)
    if ply.text:
        raise PlyFormatError(
            path, "an ASCII PLY: its rows cannot be copied byte for byte; save it as binary (e.g. plyfile: "
            "PlyData.read(path) with .text = False, written again)"
        )
    lists = [prop.name for prop in vertex.properties if isinstance(prop, PlyListProperty)]
    if lists:
        raise PlyFormatError(path, f"vertex property '{lists[0]}' is a list; a splat PLY has one value per property")
    others = tuple(element.name for element in ply.elements if element is not vertex)
    return SourcePly(os.fspath(path), tuple(prop.name for prop in vertex.properties), vertex.count, ply.byte_order, others)


def write_source_rows(
    path: str | os.PathLike,
    properties: tuple[str, ...] | list[str],
    rows: np.ndarray,
    output: str | os.PathLike,
    instance_ids: np.ndarray | None = None,
) -> int:
    """Write the vertex rows `rows` of the PLY `path`, restricted to `properties` (the source's), byte for
    byte, as a new PLY (atomically), with the source's encoding, comments and property types; optionally an
    `int instance` column after them. Returns the rows written.

    Args:
        rows: vertex indices, in the order to write. [M] integers
        instance_ids: one id per written row. [M] integers within int32

    Raises:
        PlyFormatError: `path` lacks one of `properties` (it is no longer the imported file) or already holds
            an `instance` column when `instance_ids` are asked for.
    """
    ply = _read_plydata(path)
    vertex = _vertex_element(path, ply)
    present = {prop.name: prop for prop in vertex.properties}
    missing = [name for name in properties if name not in present]
    if missing:
        raise PlyFormatError(path, f"lacks the imported property '{missing[0]}'; it is no longer the PLY that was imported")
    if instance_ids is not None and INSTANCE in properties:
        raise PlyFormatError(path, f"already has its own '{INSTANCE}' column; export without instance ids")
    rows = np.asarray(rows, dtype=np.int64)
    # Fields picked by name keep their bytes and the file's byte order; repacking drops the others' gaps.
    data = recfunctions.repack_fields(vertex.data[list(properties)][rows])
    props = [PlyProperty(name, present[name].val_dtype) for name in properties]
    if instance_ids is not None:
        ids = np.asarray(instance_ids, dtype=np.int64)
        if ids.shape != rows.shape or (len(ids) and (ids.min() < np.iinfo(np.int32).min or ids.max() > np.iinfo(np.int32).max)):
            raise ValueError(f"instance ids must be {len(rows)} integers within int32")
        order = ply.byte_order if ply.byte_order in "<>" else "="
        widened = np.empty(len(rows), dtype=data.dtype.descr + [(INSTANCE, f"{order}i4")])
        for name in properties:
            widened[name] = data[name]
        widened[INSTANCE] = ids
        data = widened
        props.append(PlyProperty(INSTANCE, "i4"))
    element = PlyElement(VERTEX, props, len(rows), vertex.comments)
    element.data = data
    out = PlyData([element], text=False, byte_order=ply.byte_order, comments=ply.comments, obj_info=ply.obj_info)
    with atomic_open(output) as handle:
        out.write(handle)
    return len(rows)
