"""Gaussian splat PLY files in the INRIA (graphdeco gaussian-splatting) layout.

One `vertex` element, binary little endian, every property a float32, in this order::

    x y z nx ny nz f_dc_0 f_dc_1 f_dc_2 f_rest_0 .. f_rest_{3K-1} opacity scale_0..2 rot_0..3

All values are raw (pre-activation), normals are zeros, and `f_rest` is channel-major: the K
higher-order coefficients of red, then of green, then of blue (shN [N, K, 3] transposed to [N, 3, K]).
The SH degree (0..3) follows from the number of `f_rest` properties (0, 9, 24 or 45).

Our own files append `feat_0 .. feat_{D-1}` (float32) and optionally `int instance` (int32, so ids stay
exact: a float32 column would round ids above 2^24). `plain=True` writes the INRIA columns only, which
SuperSplat and the INRIA viewer open; such files read back with features of shape [N, 0].

Reading goes by property name, so order does not matter and unknown properties (and elements) are
ignored; normals are not required. ASCII and big-endian files are accepted since plyfile decodes them
to the same values, but plyfile parses ASCII row by row in Python, so large ASCII files read slowly.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
from plyfile import PlyData, PlyElement, PlyElementParseError, PlyListProperty, PlyParseError, PlyProperty
from torch import Tensor

from protosaga_core.gaussians import Gaussians, num_sh_rest
from protosaga_core.io.atomic import atomic_open

VERTEX = "vertex"
INSTANCE = "instance"
NORMALS = "normals"
"""Pseudo-field for nx, ny, nz: written as zeros, never read back."""

FIELD_ORDER = ("means", NORMALS, "sh0", "shN", "opacities", "scales", "quats", "features")
"""Gaussians fields (and the normals) in the order their columns appear in a file."""

_PLY_TYPE_NAMES = {"i1": "char", "u1": "uchar", "i2": "short", "u2": "ushort", "i4": "int", "u4": "uint",
                   "f4": "float", "f8": "double"}
_INTEGER_TYPES = {"i1", "u1", "i2", "u2", "i4", "u4"}
_INT32 = np.iinfo(np.int32)


class PlyFormatError(ValueError):
    """A file that is not a valid Gaussian splat PLY; the message names the file and the problem."""

    def __init__(self, path: str | os.PathLike, problem: str) -> None:
        super().__init__(f"{os.fspath(path)}: {problem}")
        self.path = os.fspath(path)
        self.problem = problem


@dataclass
class PlyContents:
    """What a splat PLY holds.

    Attributes:
        gaussians: float32 on CPU; features [N, 0] when the file has no feat_* columns.
        instance_ids: the `instance` column, or None when the file has none. [N] int64
    """

    gaussians: Gaussians
    instance_ids: Tensor | None


def property_groups(sh_degree: int, feature_dim: int) -> dict[str, list[str]]:
    """PLY property names per entry of `FIELD_ORDER`, for an SH degree and a feature dimension D."""
    return {
        "means": ["x", "y", "z"],
        NORMALS: ["nx", "ny", "nz"],
        "sh0": [f"f_dc_{i}" for i in range(3)],
        "shN": [f"f_rest_{i}" for i in range(3 * num_sh_rest(sh_degree))],
        "opacities": ["opacity"],
        "scales": [f"scale_{i}" for i in range(3)],
        "quats": [f"rot_{i}" for i in range(4)],
        "features": [f"feat_{i}" for i in range(feature_dim)],
    }


# --- writing -------------------------------------------------------------------------------------


def write_ply(
    path: str | os.PathLike,
    gaussians: Gaussians,
    *,
    plain: bool = False,
    instance_ids: Tensor | None = None,
) -> None:
    """Write Gaussians as a splat PLY, atomically (a failed write leaves any old file untouched).

    Args:
        path: target file; its folder is created if missing.
        gaussians: N Gaussians on any device, may require grad; stored as float32.
        plain: write the INRIA columns only (no feat_*, no instance), for other viewers.
        instance_ids: optional per-Gaussian ids within int32 range, stored as `int instance`. [N]

    Raises:
        ValueError: `plain` together with `instance_ids`, bad `instance_ids`, or NaN/inf values.
    """
    if plain and instance_ids is not None:
        raise ValueError("plain=True writes INRIA columns only; it cannot store instance_ids")
    gaussians = gaussians.map(lambda t: t.detach().to(device="cpu", dtype=torch.float32))
    groups = property_groups(gaussians.sh_degree, 0 if plain else gaussians.feature_dim)
    columns = _field_columns(gaussians)
    names = [name for field in FIELD_ORDER for name in groups[field]]
    matrix = torch.cat([columns[field] for field in FIELD_ORDER if groups[field]], dim=1).numpy()
    problem = _non_finite_problem(names, matrix)
    if problem:
        raise ValueError(f"cannot write {os.fspath(path)}: {problem}")
    ints = None if instance_ids is None else _instance_column(instance_ids, len(gaussians))
    ply = PlyData([PlyElement.describe(_vertex_array(names, matrix, ints), VERTEX)], byte_order="<")
    with atomic_open(path) as handle:
        ply.write(handle)


def _field_columns(gaussians: Gaussians) -> dict[str, Tensor]:
    """Each entry of `FIELD_ORDER` as a [N, width] block of columns, in file layout."""
    n = len(gaussians)
    return {
        "means": gaussians.means,
        NORMALS: torch.zeros(n, 3, dtype=gaussians.means.dtype),
        "sh0": gaussians.sh0.reshape(n, 3),
        # INRIA stores f_rest channel-major: [N, K, 3] -> [N, 3, K] -> [N, 3K].
        "shN": gaussians.shN.transpose(1, 2).reshape(n, -1),
        "opacities": gaussians.opacities[:, None],
        "scales": gaussians.scales,
        "quats": gaussians.quats,
        "features": gaussians.features,
    }


def _instance_column(instance_ids: Tensor, n: int) -> np.ndarray:
    """Validated instance ids as int32. [N] -> [N]"""
    ids = instance_ids.detach().cpu()
    if tuple(ids.shape) != (n,):
        raise ValueError(f"instance_ids must have shape [{n}], got {list(ids.shape)}")
    if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
        raise ValueError(f"instance_ids must be an integer tensor, got {ids.dtype}")
    ids = ids.to(torch.int64)
    if n and (ids.min() < _INT32.min or ids.max() > _INT32.max):
        raise ValueError("instance_ids must fit in int32 (the PLY `int` type)")
    return ids.numpy().astype(np.int32)


def _vertex_array(names: list[str], matrix: np.ndarray, instance_ids: np.ndarray | None) -> np.ndarray:
    """A structured array of '<f4' fields `names` (plus '<i4' instance), from float32 [N, P] and [N]."""
    fields = [(name, "<f4") for name in names] + ([(INSTANCE, "<i4")] if instance_ids is not None else [])
    dtype = np.dtype(fields)
    vertices = np.empty(len(matrix), dtype=dtype)
    # The float fields are packed from offset 0, so one overlapping [N, P] view fills them in a single
    # vectorised copy instead of P strided ones.
    block = np.dtype({"names": ["block"], "formats": [("<f4", (len(names),))], "offsets": [0],
                      "itemsize": dtype.itemsize})
    vertices.view(block)["block"] = matrix
    if instance_ids is not None:
        vertices[INSTANCE] = instance_ids
    return vertices


def write_features(path: str | os.PathLike, features: Tensor) -> None:
    """Replace the feat_* columns of the splat PLY `path` (or add them), atomically, keeping every other
    property of every element, their order, the comments and the encoding as they are: the geometry and
    anything another trainer stored stay bit for bit. New columns go where the old ones were, else
    before `instance`, else last.

    Args:
        features: one row per vertex, any device, stored as float32. [N, D]

    Raises:
        PlyFormatError: as `read_ply`, for a file that is not a splat PLY.
        ValueError: `features` of another length than the file's vertices, or NaN/inf values.
    """
    ply = _read_plydata(path)
    vertex = _vertex_element(path, ply)
    matrix = features.detach().to(device="cpu", dtype=torch.float32).numpy()
    if matrix.ndim != 2 or matrix.shape[0] != vertex.count:
        raise ValueError(f"cannot write features {list(matrix.shape)} into {os.fspath(path)}: it holds {vertex.count} Gaussians")
    names = [f"feat_{i}" for i in range(matrix.shape[1])]
    problem = _non_finite_problem(names, matrix)
    if problem:
        raise ValueError(f"cannot write {os.fspath(path)}: {problem}")
    old = list(vertex.properties)
    is_feature = [prop.name.startswith("feat_") and prop.name[5:].isdigit() for prop in old]
    kept = [prop for prop, feature in zip(old, is_feature) if not feature]
    at = is_feature.index(True) if any(is_feature) else next((i for i, p in enumerate(old) if p.name == INSTANCE), len(old))
    at -= sum(is_feature[:at])  # the position among the kept properties
    properties = kept[:at] + [PlyProperty(name, "float") for name in names] + kept[at:]
    data = np.empty(vertex.count, dtype=[(p.name, vertex.data.dtype[p.name] if p.name not in names else "<f4") for p in properties])
    for prop in kept:
        data[prop.name] = vertex.data[prop.name]
    for index, name in enumerate(names):
        data[name] = matrix[:, index]
    replaced = PlyElement(vertex.name, properties, vertex.count, vertex.comments)
    replaced.data = data
    elements = [replaced if element is vertex else element for element in ply.elements]
    updated = PlyData(elements, text=ply.text, byte_order=ply.byte_order, comments=ply.comments, obj_info=ply.obj_info)
    with atomic_open(path) as handle:
        updated.write(handle)


# --- reading -------------------------------------------------------------------------------------


def read_ply(path: str | os.PathLike) -> PlyContents:
    """Read a splat PLY written by us, the INRIA code, or any tool using the same names.

    Returns:
        Gaussians as float32 CPU tensors (features [N, 0] without feat_* columns) and the instance ids
        ([N] int64) or None.

    Raises:
        PlyFormatError: unparsable or truncated file, no `vertex` element or no vertices, missing or mistyped
            property, an f_rest count matching no SH degree 0..3, or NaN/inf values.
        OSError: the file cannot be opened.
    """
    vertex = _vertex_element(path, _read_plydata(path))
    if vertex.count == 0:
        raise PlyFormatError(path, "holds no Gaussians (element vertex 0)")
    properties = {prop.name: prop for prop in vertex.properties}
    groups = property_groups(_sh_degree(path, properties), _count_indexed(path, properties, "feat_"))
    del groups[NORMALS]
    names = [name for field_names in groups.values() for name in field_names]
    for name in names:
        # Only float32 is accepted: silently narrowing doubles would hide a lossy conversion.
        _expect_type(path, properties, name, {"f4"}, "float")
    has_instance = INSTANCE in properties
    if has_instance:
        _expect_type(path, properties, INSTANCE, _INTEGER_TYPES, "an integer type")
    data = vertex.data
    # Copying out of plyfile's memory map also converts big-endian files to native floats.
    matrix = np.stack([np.asarray(data[name], dtype=np.float32) for name in names], axis=1)
    problem = _non_finite_problem(names, matrix)
    if problem:
        raise PlyFormatError(path, problem)
    widths = [len(field_names) for field_names in groups.values()]
    blocks = np.split(matrix, np.cumsum(widths)[:-1], axis=1)
    gaussians = _gaussians_from_blocks(dict(zip(groups, blocks)))
    instance_ids = torch.from_numpy(np.asarray(data[INSTANCE], dtype=np.int64)) if has_instance else None
    return PlyContents(gaussians=gaussians, instance_ids=instance_ids)


def _read_plydata(path: str | os.PathLike) -> PlyData:
    """Parse with plyfile (memory-mapped, so the body is read without a loop over rows)."""
    try:
        return PlyData.read(os.fspath(path))
    except PlyElementParseError as error:  # the header parsed, the body is shorter than it declares
        raise PlyFormatError(path, f"truncated or malformed data ({error})") from error
    except (PlyParseError, ValueError, OverflowError) as error:  # bad text/duplicates; counts beyond int64
        raise PlyFormatError(path, f"not a readable PLY file ({error})") from error


def _vertex_element(path: str | os.PathLike, ply: PlyData) -> PlyElement:
    """The `vertex` element of a parsed file."""
    for element in ply.elements:
        if element.name == VERTEX:
            return element
    found = ", ".join(repr(element.name) for element in ply.elements) or "none"
    raise PlyFormatError(path, f"no '{VERTEX}' element (elements: {found})")


def _count_indexed(path: str | os.PathLike, properties: dict, prefix: str) -> int:
    """M for properties `prefix`0 .. `prefix`{M-1}; raises if one in that run is missing."""
    count = sum(1 for name in properties if name.startswith(prefix) and name[len(prefix):].isdigit())
    missing = [f"{prefix}{i}" for i in range(count) if f"{prefix}{i}" not in properties]
    if missing:
        raise PlyFormatError(path, f"missing property '{missing[0]}' ({count} {prefix}* properties found)")
    return count


def _sh_degree(path: str | os.PathLike, properties: dict) -> int:
    """The SH degree implied by the number of f_rest_* properties."""
    degrees = {3 * num_sh_rest(degree): degree for degree in range(4)}
    count = _count_indexed(path, properties, "f_rest_")
    if count not in degrees:
        expected = ", ".join(map(str, degrees))
        raise PlyFormatError(path, f"{count} f_rest properties match no SH degree 0..3 (expected one of {expected})")
    return degrees[count]


def _expect_type(path: str | os.PathLike, properties: dict, name: str, types: set[str], expected: str) -> None:
    """Raise unless property `name` exists as a scalar whose numpy type code ('f4', 'i4', ...) is in `types`."""
    if name not in properties:
        raise PlyFormatError(path, f"missing property '{name}' in element '{VERTEX}'")
    prop = properties[name]
    code = np.dtype(prop.val_dtype).str[1:]
    type_name = _PLY_TYPE_NAMES.get(code, code)
    if isinstance(prop, PlyListProperty):
        raise PlyFormatError(path, f"property '{name}' is a list of {type_name}, expected a scalar {expected}")
    if code not in types:
        raise PlyFormatError(path, f"property '{name}' has type {type_name}, expected {expected}")


def _non_finite_problem(names: list[str], matrix: np.ndarray) -> str | None:
    """Which columns of [N, P] `matrix` hold NaN or inf, and in how many rows; None if all finite."""
    bad_rows = (~np.isfinite(matrix)).sum(axis=0)
    bad = [f"{name} ({count} row{'s' if count != 1 else ''})" for name, count in zip(names, bad_rows) if count]
    return f"NaN or inf values in {', '.join(bad)}" if bad else None


def _gaussians_from_blocks(blocks: dict[str, np.ndarray]) -> Gaussians:
    """Inverse of `_field_columns` (without normals), from float32 [N, width] blocks."""
    n = len(blocks["means"])
    shN = blocks["shN"].reshape(n, 3, -1).transpose(0, 2, 1)  # channel-major [N, 3, K] -> [N, K, 3]
    tensors = {
        "means": blocks["means"],
        "scales": blocks["scales"],
        "quats": blocks["quats"],
        "opacities": blocks["opacities"][:, 0],
        "sh0": blocks["sh0"].reshape(n, 1, 3),
        "shN": shN,
        "features": blocks["features"],
    }
    return Gaussians(**{name: torch.from_numpy(np.ascontiguousarray(a)) for name, a in tensors.items()})
