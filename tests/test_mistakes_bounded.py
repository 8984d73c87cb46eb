"""Bounded inputs (issue 21): what a user's files may hold is checked where they are read, with one line naming
the file, and every input and existing output comes out byte-identical.

- masks with more ids than a view's masks may hold (a depth map copied into masks/), or ids outside uint16;
- a number of masks whose view-consensus arrays would not fit in memory;
- JSON nested deeper than the limit or larger than it (scene.json, edits.json, association.json,
  transforms.json);
- `.npy` / `.npz` headers announcing more data than the file holds (labels.npy, prototypes.npz, LLFF's
  poses_bounds.npy), and a PLY count beyond int64;
- 16-bit greyscale photos scaled to [0, 1], other modes refused;
- temporaries of killed mask writes swept; scene.json's version given as a string.
"""

from __future__ import annotations

import io
import json
import os
import re
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from builders import random_gaussians
from numpy.lib import format as npy_format
from PIL import Image
from test_mistakes_inputs import HEIGHT, NAMES, WIDTH, snapshot, write_masks, write_nerf

from protosaga_core.cli import main
from protosaga_core.datasets import DatasetError, load_scene
from protosaga_core.io.labelmaps import save_label_map
from protosaga_core.io.scene_dir import SceneDir, SceneDirError
from protosaga_core.method import consensus
from protosaga_core.method.consensus import (
    ConsensusSettings,
    check_consensus_fits,
    consensus_bytes,
)
from protosaga_core.method.prototypes import Prototypes

DEEP = "[" * 200_000 + "]" * 200_000
"""200k brackets: Python's json parser raises RecursionError on it."""


def fails(argv: list[str], capsys) -> str:
    """Run the command line; it must exit 2 with one line on stderr (no traceback). Returns that line."""
    assert main(argv) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("[protosaga] sharing")]
    assert len(lines) == 1, lines
    return lines[0]


def npy_claiming(shape: tuple[int, ...], dtype: str = "<i8", data: bytes = b"\0" * 64) -> bytes:
    """A .npy file whose header announces `shape` but holds only `data`."""
    buffer = io.BytesIO()
    npy_format.write_array_header_1_0(buffer, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buffer.getvalue() + data


# --- masks: thousands of ids, ids out of range ----------------------------------------------------------------


def test_a_depth_map_in_masks_is_refused_naming_the_file_the_count_and_the_cap(tmp_path, capsys):
    root = write_nerf(tmp_path / "data")
    write_masks(root, {name: (WIDTH, HEIGHT) for name in NAMES[1:]})
    depth_like = (np.arange(WIDTH * HEIGHT) % 3000 + 500).reshape(HEIGHT, WIDTH)  # millimetres, 3,000 values
    save_label_map(root / "masks" / "r_2.png", depth_like)
    before = snapshot(root)
    out = tmp_path / "scene"
    line = fails(["train", str(root), "-o", str(out), "--iterations", "2", "--sh-degree", "0",
                  "--random-init-points", "300"], capsys)
    assert line == (
        f"protosaga train: {root / 'masks' / 'r_2.png'}: 3,000 mask ids in one view, more than the 1,000 a view's "
        "masks may hold (SAM gives 50-150): a depth map or another image rather than a label map? Delete it and run "
        "`protosaga masks` to make it again"
    )
    assert not out.exists() and snapshot(root) == before


def test_the_masks_stage_never_writes_a_mask_that_later_stages_would_refuse(tmp_path, monkeypatch):
    from protosaga_core.masks import MasksConfig, generate
    from protosaga_core.masks.generate import generate_masks

    root = write_nerf(tmp_path / "data")
    before = snapshot(root)
    many = (np.arange(WIDTH * HEIGHT) % 1001 + 1).reshape(HEIGHT, WIDTH).astype(np.uint16)
    monkeypatch.setattr(generate, "build_source", lambda config, views: lambda view: many)  # SAM with very many prompts
    with pytest.raises(ValueError, match=re.escape(
        f"{root / 'images' / 'r_1.png'}: fallback gave 1,001 masks, more than the 1,000 a view may hold; use fewer "
        "prompts (--points-per-side) or a higher --pred-iou-thresh"
    )):
        generate_masks(load_scene(root), MasksConfig(method="fallback"), progress=False)
    assert snapshot(root) == before


def test_mask_ids_outside_uint16_are_refused(tmp_path):
    root = write_nerf(tmp_path / "data")
    write_masks(root, {name: (WIDTH, HEIGHT) for name in NAMES[1:]})
    ids = np.random.default_rng(0).integers(0, 6, size=(HEIGHT, WIDTH)).astype(np.int32)
    ids[0, 0], ids[0, 1] = -3, 70_000
    Image.fromarray(ids).save(root / "masks" / "r_1.png", format="TIFF")  # 32-bit integers (mode I)
    before = snapshot(root)
    view = {v.name: v for v in load_scene(root).views}["r_1"]
    with pytest.raises(ValueError, match=re.escape(
        f"{root / 'masks' / 'r_1.png'}: label map ids must lie in 0..65535 (a uint16 PNG, 0 = none), found -3..70000"
    )):
        view.load_mask()
    assert snapshot(root) == before


# --- association: a number of masks whose arrays would not fit ---------------------------------------------------


def test_association_refuses_more_masks_than_its_arrays_fit_in_memory(monkeypatch):
    # 121,314 masks (the depth maps of issue 21) once asked ~1 TB of masks x masks arrays; clustering now
    # holds arrays of masks x views and one block of candidate pairs: well under a GiB for two views
    assert consensus_bytes(121_314, 2) < 2**30
    monkeypatch.setattr(consensus, "available_memory", lambda: 100 << 20)  # 100 MiB free
    with pytest.raises(ValueError, match=(
        r"^view-consensus association of 121,314 masks over 200 views needs about [\d,.]+ GiB \(arrays of masks x "
        r"views\), more than the 100.0 MiB free here; use fewer training views or masks, or the memory bank "
        r"\(`--grouping bank`; `--associate.grouping bank` in run\)$"
    )):
        check_consensus_fits(121_314, 200)


def test_association_refuses_them_before_lifting_any_view_naming_the_masks_folder(tmp_path, monkeypatch):
    root = write_nerf(tmp_path / "data")
    write_masks(root, {name: (WIDTH, HEIGHT) for name in NAMES[1:]})
    before = snapshot(root)
    monkeypatch.setattr(consensus, "available_memory", lambda: 1_000)  # 1 kB free
    lifted = []
    monkeypatch.setattr(consensus, "transpose_labels", lambda *args, **kwargs: lifted.append(1))
    views = load_scene(root).split("train")
    with pytest.raises(ValueError, match=re.escape(f"{root / 'masks'}: view-consensus association of 15 masks over 3 views")):
        consensus_of(views)
    assert not lifted and snapshot(root) == before


def consensus_of(views):
    from protosaga_core.method.association import associate_by_consensus

    return associate_by_consensus(random_gaussians(50, feature_dim=4), views, ConsensusSettings(), progress=False)


# --- JSON: depth and size limits ------------------------------------------------------------------------------


def scene_with_meta(root: Path, text: str) -> Path:
    root.mkdir(parents=True)
    (root / "scene.json").write_text(text)
    return root


def test_a_deeply_nested_scene_json_is_one_line_naming_it(tmp_path, capsys):
    scene = scene_with_meta(tmp_path / "scene", DEEP)
    before = snapshot(scene)
    line = fails(["segment", str(scene)], capsys)
    assert line == (
        f"protosaga segment: {scene / 'scene.json'}: arrays and objects nested 200,000 deep, more than the 64 a JSON "
        "file read here may nest; the file is damaged or not the one expected"
    )
    assert snapshot(scene) == before


def test_a_deeply_nested_edits_json_is_set_aside_by_the_viewers_loader(tmp_path):
    from protosaga_app.edit_log import EditLog
    from protosaga_app.selection import EditState
    from protosaga_core.io.exports import LabelsFingerprint

    path = tmp_path / "edits.json"
    path.write_text(DEEP)
    log = EditLog(path, LabelsFingerprint.of(np.array([1, 2, 2])))
    assert log.replay(frozenset({1, 2}), lambda state: None) == EditState()
    (aside,) = tmp_path.glob("edits.set-aside-*.json")
    assert aside.read_text() == DEEP and not path.exists()
    assert log.notice.startswith(f"{path}: arrays and objects nested 200,000 deep, more than the 64")


def test_a_deeply_nested_association_json_is_named(tmp_path):
    from protosaga_core.method.association import read_association

    scene = SceneDir(tmp_path)
    scene.association_dir.mkdir()
    scene.association_json.write_text(DEEP)
    before = snapshot(tmp_path)
    with pytest.raises(SceneDirError, match=re.escape(f"{scene.association_json}: arrays and objects nested 200,000 deep")):
        read_association(scene)
    assert snapshot(tmp_path) == before


def test_a_deeply_nested_transforms_json_is_named(tmp_path):
    (tmp_path / "transforms.json").write_text(DEEP)
    before = snapshot(tmp_path)
    with pytest.raises(DatasetError, match=re.escape(f"{tmp_path / 'transforms.json'}: arrays and objects nested 200,000 deep")):
        load_scene(tmp_path)
    assert snapshot(tmp_path) == before


def test_a_json_file_over_the_size_limit_is_named_before_it_is_parsed(tmp_path, monkeypatch):
    from protosaga_core.io import bounded

    monkeypatch.setattr(bounded, "MAX_JSON_BYTES", 64)
    text = json.dumps({"format": "protosaga-scene", "version": 1, "pad": "x" * 1000})
    scene = scene_with_meta(tmp_path / "scene", text)
    before = snapshot(scene)
    with pytest.raises(SceneDirError, match=re.escape(f"{scene / 'scene.json'}: {len(text):,} bytes, more than the 64 a JSON file")):
        SceneDir(scene).read_meta()
    assert snapshot(scene) == before


# --- .npy / .npz headers and PLY counts against the file's size ------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "claimed"),
    [((10**12,), "[1000000000000] of int64 (8,000,000,000,000 bytes)"),  # MemoryError before
     ((10**12, 10**12), "[1000000000000, 1000000000000] of int64")],  # numpy's "array is too big" before
)
def test_a_labels_npy_whose_header_claims_more_than_the_file_holds_is_named(tmp_path, shape, claimed):
    scene = SceneDir(tmp_path)
    scene.labels_path.write_bytes(npy_claiming(shape))
    before = snapshot(tmp_path)
    with pytest.raises(SceneDirError, match=re.escape(
        f"{scene.labels_path}: its header announces shape {claimed}"
    )) as error:
        scene.read_labels()
    assert str(error.value).endswith("but the file holds 64 bytes of data: damaged, cut short or not a NumPy array "
                                     "file; run protosaga prototypes again")
    assert snapshot(tmp_path) == before


def test_a_prototypes_npz_whose_member_claims_more_than_it_holds_is_named(tmp_path):
    path = tmp_path / "prototypes.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("ids.npy", npy_claiming((10**12,)))
        archive.writestr("vectors.npy", npy_claiming((2, 4), "<f4", b"\0" * 32))
        archive.writestr("num_views.npy", npy_claiming((2,), "<i8", b"\0" * 16))
    before = snapshot(tmp_path)
    with pytest.raises(SceneDirError, match=re.escape(
        f"{path}: member ids.npy: its header announces shape [1000000000000] of int64"
    )):
        Prototypes.load(path)
    assert snapshot(tmp_path) == before


def test_an_llff_poses_bounds_npy_whose_header_claims_more_than_it_holds_is_named(tmp_path):
    (tmp_path / "poses_bounds.npy").write_bytes(npy_claiming((10**12, 17), "<f8"))
    before = snapshot(tmp_path)
    with pytest.raises(DatasetError, match=re.escape(
        f"{tmp_path / 'poses_bounds.npy'}: its header announces shape [1000000000000, 17] of float64"
    )):
        load_scene(tmp_path)
    assert snapshot(tmp_path) == before


def test_a_ply_whose_vertex_count_is_beyond_int64_is_one_line(tmp_path, capsys):
    from protosaga_core.gaussians import Gaussians
    from protosaga_core.io.ply import write_ply

    path = tmp_path / "g.ply"
    write_ply(path, Gaussians.random_box(10, feature_dim=2))
    path.write_bytes(re.sub(rb"element vertex \d+", b"element vertex " + b"9" * 20, path.read_bytes(), count=1))
    before = snapshot(tmp_path)
    assert fails(["info", str(path)], capsys).startswith(f"protosaga info: {path}: not a readable PLY file")
    assert snapshot(tmp_path) == before


# --- 16-bit photos ----------------------------------------------------------------------------------------------


def grey16(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 65536, size=(HEIGHT, WIDTH)).astype(np.uint16)


@pytest.mark.parametrize("downscale", [1, 2])
def test_a_16_bit_greyscale_photo_is_scaled_to_0_1_not_white(tmp_path, downscale):
    root = write_nerf(tmp_path / "data")
    stored = grey16()
    Image.fromarray(stored).save(root / "images" / "r_1.png")  # mode I;16
    assert Image.open(root / "images" / "r_1.png").mode == "I;16"
    before = snapshot(root)
    image = {v.name: v for v in load_scene(root, downscale=downscale).views}["r_1"].load_image()
    expected = stored.astype(np.float64).reshape(HEIGHT // downscale, downscale, WIDTH // downscale, downscale).mean((1, 3)) / 65535
    assert image.shape == (HEIGHT // downscale, WIDTH // downscale, 3) and image.dtype == torch.float32
    np.testing.assert_allclose(image.numpy(), np.repeat(expected[:, :, None], 3, axis=2), atol=1e-6)
    assert snapshot(root) == before


def test_32_bit_integer_photos_holding_16_bit_values_are_scaled_and_others_refused(tmp_path):
    root = write_nerf(tmp_path / "data")
    stored = grey16(1).astype(np.int32)
    Image.fromarray(stored).save(root / "images" / "r_1.png", format="TIFF")  # mode I, as older Pillows read PNGs
    beyond = stored.copy()
    beyond[5, 5], beyond[6, 6] = 70_000, 0
    Image.fromarray(beyond).save(root / "images" / "r_2.png", format="TIFF")
    before = snapshot(root)
    views = {v.name: v for v in load_scene(root).views}
    np.testing.assert_allclose(views["r_1"].load_image()[..., 1].numpy(), stored / 65535, atol=1e-6)
    with pytest.raises(ValueError, match=re.escape(
        f"{root / 'images' / 'r_2.png'}: images must be 8-bit (greyscale, palette, RGB or RGBA, with or without "
        "alpha) or 16-bit (greyscale, or colour PNG read at 8 bits); convert it to an 8- or 16-bit PNG (got 32-bit "
        "integers 0..70000)"
    )):
        views["r_2"].load_image()
    assert snapshot(root) == before


def test_a_float_photo_is_refused_naming_the_file_and_mode(tmp_path):
    root = write_nerf(tmp_path / "data")
    Image.fromarray(grey16().astype(np.float32) / 65535).save(root / "images" / "r_1.png", format="TIFF")  # mode F
    before = snapshot(root)
    view = {v.name: v for v in load_scene(root).views}["r_1"]
    with pytest.raises(ValueError, match=re.escape(f"{root / 'images' / 'r_1.png'}: images must be 8-bit")) as error:
        view.load_image()
    assert str(error.value).endswith("convert it to an 8- or 16-bit PNG (got mode F)")
    assert snapshot(root) == before


# --- small ones -------------------------------------------------------------------------------------------------


def test_the_masks_stage_sweeps_label_maps_a_killed_run_was_writing_and_nothing_else(tmp_path, capsys):
    root = write_nerf(tmp_path / "data")
    write_masks(root, {name: (WIDTH, HEIGHT) for name in NAMES[1:]})
    masks = root / "masks"
    stale = masks / ".r_2.png.k1ll3d_x.tmp"  # what atomic_open leaves when kill -9 hits save_label_map
    stale.write_bytes(b"half a label map")
    live = masks / ".r_3.png.w0rk1ng_.tmp"  # young: may belong to a masks run still going
    live.write_bytes(b"being written")
    mine = masks / ".notes.tmp"  # the user's own file, however old
    mine.write_bytes(b"mine")
    an_hour_ago = time.time() - 3600
    for path in (stale, mine):
        os.utime(path, (an_hour_ago, an_hour_ago))
    before = snapshot(root)
    assert main(["masks", str(root), "--method", "fallback"]) == 0
    assert not stale.exists() and live.exists() and mine.exists()
    del before[f"masks/{stale.name}"]
    assert snapshot(root) == before


def test_a_version_given_as_a_string_says_it_must_be_the_integer(tmp_path):
    scene = scene_with_meta(tmp_path / "scene", '{"format": "protosaga-scene", "version": "1"}')
    before = snapshot(scene)
    with pytest.raises(SceneDirError) as error:
        SceneDir(scene).read_meta()
    assert str(error.value) == f'{scene / "scene.json"}: version "1" is a string; the version must be the integer 1'
    assert snapshot(scene) == before
