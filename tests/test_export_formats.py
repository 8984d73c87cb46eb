"""Exports in the formats gsplat's exporter writes (`protosaga export --format`, issue 22): SuperSplat's
compressed PLY and the `.splat` of web viewers, read back by readers written here from the formats'
descriptions (PlayCanvas's compressed PLY, antimatter15's splat records), never by gsplat's code, and
compared with the Gaussians they came from within each format's quantisation step. `ply` stays what it was.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree

from protosaga_core.cli import main
from protosaga_core.gaussians import SH_C0, Gaussians
from protosaga_core.io.exports import ExportError, export_instances, record_path
from protosaga_core.io.ply import write_ply
from protosaga_core.io.scene_dir import InstanceInfo, SceneDir, SceneMeta

DEMO = Path(__file__).resolve().parents[1] / "assets" / "demo"
KEPT = 513
"""Gaussians every format keeps: two full chunks of 256 in the compressed PLY and one of a single splat."""
TRANSPARENT = 20
"""Gaussians of opacity below 1/255, which the compressed PLY leaves out."""
CHUNK = 256


def splats(sh_degree: int = 3, seed: int = 0) -> Gaussians:
    """KEPT + TRANSPARENT + 1 Gaussians of random raw values: the transparent ones last but one, and a last
    one with a non-finite centre (every gsplat format leaves it out)."""
    n = KEPT + TRANSPARENT + 1
    generator = torch.Generator().manual_seed(seed)
    opacities = (torch.randn(n, generator=generator) * 2).clamp(min=-5.0)  # logits; sigmoid(-5) = 0.0067 > 1/255
    opacities[KEPT:] = -8.0  # sigmoid(-8) = 3.4e-4 < 1/255
    means = torch.rand(n, 3, generator=generator) * 4 - 2
    means[-1, 1] = float("nan")
    rest = (sh_degree + 1) ** 2 - 1
    return Gaussians(
        means=means,
        scales=torch.rand(n, 3, generator=generator) * 4 - 6,  # log-scales
        quats=torch.randn(n, 4, generator=generator),  # wxyz, unnormalised
        opacities=opacities,
        sh0=torch.randn(n, 1, 3, generator=generator) * 0.8,
        shN=torch.rand(n, rest, 3, generator=generator) * 7.8 - 3.9,  # inside the compressed range [-4, 4)
        features=torch.zeros(n, 0),
    )


def unit_quats(quats: torch.Tensor) -> np.ndarray:
    return torch.nn.functional.normalize(quats.double(), dim=-1).numpy()


# --- readers written from the formats' descriptions ---------------------------------------------------------


def read_splat(data: bytes) -> dict[str, np.ndarray]:
    """antimatter15's .splat: 32-byte records of 3 float32 position, 3 float32 scale (linear), RGBA as 4
    uint8 (alpha = opacity), and a unit wxyz quaternion as 4 uint8 (q·128 + 128)."""
    assert len(data) % 32 == 0
    record = np.dtype([("position", "<f4", 3), ("scale", "<f4", 3), ("rgba", "u1", 4), ("rotation", "u1", 4)])
    assert record.itemsize == 32
    rows = np.frombuffer(data, record)
    return {
        "means": rows["position"].astype(np.float64),
        "scales": rows["scale"].astype(np.float64),
        "colors": rows["rgba"][:, :3] / 255.0,
        "opacities": rows["rgba"][:, 3] / 255.0,
        "quats": (rows["rotation"].astype(np.float64) - 128) / 128,
    }


PLY_TYPES = {"float": "<f4", "uint": "<u4", "uchar": "u1"}


def read_binary_ply(data: bytes) -> dict[str, tuple[int, dict[str, np.ndarray]]]:
    """Each element of a little-endian binary PLY: (count, its columns by property name)."""
    end = data.index(b"end_header\n") + len(b"end_header\n")
    lines = data[:end].decode("ascii").splitlines()
    assert lines[:2] == ["ply", "format binary_little_endian 1.0"] and lines[-1] == "end_header"
    layout: list[tuple[str, int, list[tuple[str, str]]]] = []
    for words in (line.split() for line in lines[2:-1]):
        if words[0] == "element":
            layout.append((words[1], int(words[2]), []))
        else:
            assert words[0] == "property" and words[1] in PLY_TYPES, words
            layout[-1][2].append((words[2], PLY_TYPES[words[1]]))
    elements, offset = {}, end
    for name, count, properties in layout:
        columns = {}
        if properties:
            rows = np.frombuffer(data, np.dtype(properties), count, offset)
            offset += rows.nbytes
            columns = {prop: rows[prop] for prop, _ in properties}
        elements[name] = (count, columns)
    assert offset == len(data), "bytes after the last element"
    return elements


def unorm(packed: np.ndarray, shift: int, bits: int) -> np.ndarray:
    """The `bits`-bit field at `shift` as a value in [0, 1]."""
    top = (1 << bits) - 1
    return ((packed.astype(np.int64) >> shift) & top) / top


def lerp3(chunk: dict[str, np.ndarray], name: str, axes: str, which: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The chunk bounds min_{name}{axis}..max_{name}{axis} of the chunks `which` [M], interpolated by t [M, 3];
    also the bounds' extent (what a unit of t spans). [M, 3] each"""
    low = np.stack([chunk[f"min_{name}{axis}"][which] for axis in axes], axis=1).astype(np.float64)
    high = np.stack([chunk[f"max_{name}{axis}"][which] for axis in axes], axis=1).astype(np.float64)
    return low + (high - low) * t, high - low


def read_compressed_ply(data: bytes) -> dict[str, np.ndarray]:
    """PlayCanvas's compressed PLY (SuperSplat): splats in chunks of 256, each chunk with the bounds of its
    centres, log-scales and colours (18 floats); per splat 4 uints: centre 11-10-11 bits and log-scale
    11-10-11 bits within the chunk's bounds, the colour 8-8-8 within its bounds and the opacity in 8 bits, the
    rotation as the index of its largest component (2 bits) and the other three (10 bits each, in
    [-1/√2, 1/√2]); higher SH coefficients as uchar f_rest_j, v = (q + 0.5)/256·8 - 4.

    Also returned: the worst quantisation error of each value (half a step of its field), for the checks."""
    elements = read_binary_ply(data)
    (chunks, chunk), (count, vertex), (sh_count, sh) = elements["chunk"], elements["vertex"], elements["sh"]
    assert list(elements) == ["chunk", "vertex", "sh"] and sh_count == count and chunks == math.ceil(count / CHUNK)
    which = np.arange(count) // CHUNK
    position, rotation = vertex["packed_position"], vertex["packed_rotation"]
    scale, color = vertex["packed_scale"], vertex["packed_color"]
    steps_111011 = np.array([2047, 1023, 2047])
    t = np.stack([unorm(position, 21, 11), unorm(position, 11, 10), unorm(position, 0, 11)], axis=1)
    means, extent = lerp3(chunk, "", "xyz", which, t)
    t = np.stack([unorm(scale, 21, 11), unorm(scale, 11, 10), unorm(scale, 0, 11)], axis=1)
    log_scales, scale_extent = lerp3(chunk, "scale_", "xyz", which, t)
    t = np.stack([unorm(color, 24, 8), unorm(color, 16, 8), unorm(color, 8, 8)], axis=1)
    colors, color_extent = lerp3(chunk, "", "rgb", which, t)
    largest = rotation.astype(np.int64) >> 30
    others = np.stack([(unorm(rotation, shift, 10) - 0.5) * math.sqrt(2) for shift in (20, 10, 0)], axis=1)
    quats = np.zeros((count, 4))
    for index in range(4):
        rows = largest == index
        quats[rows] = np.insert(others[rows], index, np.sqrt(np.maximum(0.0, 1 - (others[rows] ** 2).sum(axis=1))), axis=1)
    rest = np.stack([sh[f"f_rest_{j}"] for j in range(len(sh))], axis=1) if sh else np.zeros((count, 0), np.uint8)
    shN = ((rest.astype(np.float64) + 0.5) / 256 * 8 - 4).reshape(count, 3, len(sh) // 3).transpose(0, 2, 1)  # channel-major
    return {
        "means": means, "means_error": extent / steps_111011 / 2,
        "scales": log_scales, "scales_error": scale_extent / steps_111011 / 2,
        "colors": colors, "colors_error": color_extent / 255 / 2,
        "opacities": unorm(color, 0, 8), "quats": quats, "largest": largest, "shN": shN,
    }


def matched(written: np.ndarray, originals: np.ndarray, atol: np.ndarray | float) -> np.ndarray:
    """For each splat read back, the original whose centre it is (the writers reorder them): its nearest,
    within `atol` on each axis; each original at most once. [M] indices into `originals`"""
    _, index = cKDTree(originals).query(written)
    assert len(set(index.tolist())) == len(index), "two splats read back match one original"
    np.testing.assert_array_less(np.abs(written - originals[index]), atol + 1e-6)
    return index


# --- the formats, read back ----------------------------------------------------------------------------------


def test_splat_records_hold_the_gaussians_within_a_byte_step(tmp_path):
    gaussians = splats()
    path = tmp_path / "scene.splat"
    assert export_instances(gaussians, None, None, path, file_format="splat") == KEPT + TRANSPARENT  # the NaN one left out
    read = read_splat(path.read_bytes())
    assert len(read["means"]) == KEPT + TRANSPARENT
    finite = gaussians.select(torch.arange(KEPT + TRANSPARENT))
    index = matched(read["means"], finite.means.double().numpy(), 0.0)  # float32 positions, exact
    ordered = finite.select(torch.from_numpy(index))
    np.testing.assert_allclose(read["scales"], ordered.scales.exp().double().numpy(), rtol=1e-6)
    # colour and alpha: x·255 truncated to a byte, so each is at most one step below the value
    expected = np.clip((0.5 + SH_C0 * ordered.sh0[:, 0]).double().numpy(), 0, 1)
    assert (read["colors"] <= expected + 1e-6).all() and (expected - read["colors"] < 1 / 255 + 1e-6).all()
    alpha = torch.sigmoid(ordered.opacities).double().numpy()
    assert (read["opacities"] <= alpha + 1e-6).all() and (alpha - read["opacities"] < 1 / 255 + 1e-6).all()
    # the unit quaternion, wxyz, q·128 + 128 truncated (and 256 clamped to 255): at most 1/128 below
    quats = unit_quats(ordered.quats)
    assert (read["quats"] <= quats + 1e-6).all() and (quats - read["quats"] <= 1 / 128 + 1e-6).all()


@pytest.mark.parametrize("sh_degree", [3, 0])
def test_compressed_ply_holds_the_gaussians_within_its_quantisation(tmp_path, sh_degree):
    gaussians = splats(sh_degree)
    path = tmp_path / "scene.compressed.ply"
    assert export_instances(gaussians, None, None, path, file_format="ply_compressed") == KEPT  # transparent and NaN left out
    read = read_compressed_ply(path.read_bytes())
    kept = gaussians.select(torch.arange(KEPT))
    index = matched(read["means"], kept.means.double().numpy(), read["means_error"])
    ordered = kept.select(torch.from_numpy(index))
    np.testing.assert_array_less(np.abs(read["scales"] - ordered.scales.double().numpy()), read["scales_error"] + 1e-6)
    colors = (0.5 + SH_C0 * ordered.sh0[:, 0]).double().numpy()  # not clamped: the chunk's bounds hold any colour
    np.testing.assert_array_less(np.abs(read["colors"] - colors), read["colors_error"] + 1e-6)
    np.testing.assert_array_less(np.abs(read["opacities"] - torch.sigmoid(ordered.opacities).double().numpy()), 0.5 / 255 + 1e-6)
    # rotations up to sign: the three stored components within half a 10-bit step (·√2), the largest
    # (recomputed from them, at least 1/2) within the error that carries into it
    quats = unit_quats(ordered.quats)
    assert (read["largest"] == np.abs(quats).argmax(axis=1)).all()
    quats *= np.sign(quats[np.arange(len(quats)), read["largest"]])[:, None]
    error = np.abs(read["quats"] - quats)
    stored = np.ones_like(error, dtype=bool)
    stored[np.arange(len(error)), read["largest"]] = False
    assert error[stored].max() <= math.sqrt(2) / 1023 / 2 + 1e-6 and error.max() < 2.5e-3
    # higher SH: (v/8 + 0.5)·256 truncated, read back at the middle of its step: half a step, 1/64
    assert read["shN"].shape == ordered.shN.shape
    np.testing.assert_array_less(np.abs(read["shN"] - ordered.shN.double().numpy()), 1 / 64 + 1e-6)


# --- the command line, the record and the refusals -------------------------------------------------------------


def make_scene(root: Path, gaussians: Gaussians) -> tuple[Path, np.ndarray]:
    """A trained scene of `gaussians` (features added): instances 3 (the first 200) and 7, the rest unassigned."""
    labels = np.zeros(len(gaussians), dtype=np.int64)
    labels[:200], labels[200:400] = 3, 7
    scene_dir = SceneDir(root)
    root.mkdir()
    scene_dir.write_gaussians(Gaussians(**{**gaussians.tensors(), "features": torch.zeros(len(gaussians), 4)}))
    instances = [InstanceInfo(3, (255, 0, 0), 200, 2, "chair"), InstanceInfo(7, (0, 255, 0), 200, 3, "table")]
    scene_dir.write_meta(SceneMeta("data", "nerf", 1, "all", ["a", "b"], ["train", "prototypes"], {}, instances))
    scene_dir.write_labels(labels)
    return root, labels


@pytest.fixture()
def scene(tmp_path) -> Path:
    """A trained scene of KEPT + TRANSPARENT finite Gaussians (a PLY holds no NaN)."""
    gaussians = splats()
    return make_scene(tmp_path / "scene", gaussians.select(torch.arange(KEPT + TRANSPARENT)))[0]


def run(args: list[str], capsys) -> str:
    code = main(args)
    out = capsys.readouterr()
    assert code == 0, out.err
    return out.out


def refused(args: list[str], capsys) -> str:
    """The one-line error of a command that must fail with exit 2."""
    code = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err, err
    return err[-1]


def test_format_ply_is_the_default_byte_for_byte(scene, tmp_path, capsys):
    run(["export", str(scene), "--instances", "3", "-o", str(tmp_path / "default.ply")], capsys)
    run(["export", str(scene), "--instances", "3", "--format", "ply", "-o", str(tmp_path / "ply.ply")], capsys)
    assert (tmp_path / "default.ply").read_bytes() == (tmp_path / "ply.ply").read_bytes()
    record = json.loads((tmp_path / "ply.json").read_text())
    assert record["file_format"] == "ply" and record["gaussians"] == 200 and record["left_out"] == 0


@pytest.mark.parametrize(("file_format", "suffix"), [("ply_compressed", ".compressed.ply"), ("splat", ".splat")])
def test_the_command_line_writes_each_format_with_its_record(scene, file_format, suffix, capsys):
    out = run(["export", str(scene), "--format", file_format], capsys)
    (path,) = (scene / "exports").glob(f"scene_*{suffix}")
    record = json.loads(record_path(path).read_text())
    written = read_compressed_ply(path.read_bytes())["means"] if file_format == "ply_compressed" else read_splat(path.read_bytes())["means"]
    left_out = TRANSPARENT if file_format == "ply_compressed" else 0
    assert record["ply"] == path.name and record["file_format"] == file_format
    assert record["gaussians"] == len(written) == KEPT + TRANSPARENT - left_out and record["left_out"] == left_out
    # the instances count the Gaussians in the file: the transparent ones were unassigned
    assert [(row["id"], row["gaussians"]) for row in record["instances"]] == [(3, 200), (7, 200)]
    assert record["unassigned"] == KEPT + TRANSPARENT - 400 - left_out
    assert f"wrote {path}: {len(written):,} Gaussians" in out
    assert ("20 non-finite or nearly transparent (opacity <= 1/255) left out" in out) == (file_format == "ply_compressed")


def test_a_suffix_that_is_not_the_formats_is_refused_naming_the_file(scene, tmp_path, capsys):
    for file_format, name in (("splat", "x.ply"), ("ply_compressed", "x.splat"), ("ply", "x.splat")):
        target = tmp_path / name
        message = refused(["export", str(scene), "--format", file_format, "-o", str(target)], capsys)
        assert message.startswith(f"protosaga export: {target}: a {file_format} export must be named"), message
        assert not target.exists() and not record_path(target).exists()


def test_instance_ids_are_refused_in_the_formats_without_a_column_for_them(scene, tmp_path, capsys):
    target = tmp_path / "x.splat"
    message = refused(["export", str(scene), "--format", "splat", "--with-instance-ids", "-o", str(target)], capsys)
    assert "splat files have no place for instance ids" in message
    assert not target.exists() and not record_path(target).exists()
    with pytest.raises(ExportError, match="no place for instance ids"):
        export_instances(splats(), np.zeros(KEPT + TRANSPARENT + 1, dtype=np.int64), None, target, True, file_format="ply_compressed")


def test_nothing_left_to_write_is_refused(tmp_path):
    transparent = splats().select(torch.arange(KEPT, KEPT + TRANSPARENT))
    target = tmp_path / "x.compressed.ply"
    with pytest.raises(ExportError, match=re.escape(f"{target}: nothing to export: the 20 Gaussians selected are all non-finite or nearly transparent")):
        export_instances(transparent, None, None, target, file_format="ply_compressed")
    assert not target.exists()


def test_an_imported_scene_exports_to_splat_from_its_gaussians(tmp_path, capsys):
    """`protosaga import` of a bare PLY with a property of another trainer: the splat holds the Gaussians
    (the extra property has no place in it); ply still gives the source back byte for byte."""
    from numpy.lib import recfunctions
    from plyfile import PlyData, PlyElement

    gaussians = splats(sh_degree=1).select(torch.arange(300))
    plain = tmp_path / "plain.ply"
    write_ply(plain, gaussians, plain=True)
    vertex = PlyData.read(str(plain))["vertex"].data
    source = tmp_path / "source.ply"
    extra = np.arange(len(vertex), dtype=np.float64)
    PlyData([PlyElement.describe(recfunctions.append_fields(vertex, "confidence", extra, usemask=False), "vertex")]).write(str(source))
    scene = tmp_path / "scene"
    run(["import", str(source), "--dataset", str(DEMO), "-o", str(scene), "--skip-alignment-check"], capsys)

    run(["export", str(scene), "--format", "splat", "-o", str(tmp_path / "all.splat")], capsys)
    read = read_splat((tmp_path / "all.splat").read_bytes())
    index = matched(read["means"], gaussians.means.double().numpy(), 0.0)
    np.testing.assert_allclose(read["scales"], gaussians.scales.exp()[index].double().numpy(), rtol=1e-6)
    record = json.loads((tmp_path / "all.json").read_text())
    assert record["file_format"] == "splat" and record["gaussians"] == 300 and record["left_out"] == 0
    run(["export", str(scene), "-o", str(tmp_path / "whole.ply")], capsys)  # all.json is the splat's record
    assert (tmp_path / "whole.ply").read_bytes() == source.read_bytes()
