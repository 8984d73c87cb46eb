import os
from datetime import datetime

import numpy as np
import pytest
import torch
import tyro

from protosaga_core.cli import Export, parse_instance_ids
from protosaga_core.gaussians import Gaussians
from protosaga_core.io.exports import (
    ExportError,
    export_instances,
    safe_export_name,
)
from protosaga_core.io.ply import property_groups, read_ply
from protosaga_core.io.scene_dir import InstanceInfo, SceneDir, SceneMeta

NOW = datetime(2026, 11, 24, 10, 45, 12)
INRIA_COLUMNS = [name for names in property_groups(1, 0).values() for name in names]


def _scene(tmp_path, with_labels=True):
    """A tiny trained scene: 30 Gaussians labelled 3 (10), 7 (12), 0 (8)."""
    gaussians = Gaussians.random_box(30, sh_degree=1, feature_dim=4, generator=torch.Generator().manual_seed(0))
    labels = np.array([3] * 10 + [7] * 12 + [0] * 8, dtype=np.int64)
    scene_dir = SceneDir(tmp_path / "scene")
    scene_dir.root.mkdir()
    scene_dir.write_gaussians(gaussians)
    instances = [InstanceInfo(3, (255, 0, 0), 10, 2, "chair"), InstanceInfo(7, (0, 255, 0), 12, 3, "table")]
    scene_dir.write_meta(SceneMeta("data", "nerf", 1, "all", ["a", "b"], ["train", "prototypes"], {}, instances))
    if with_labels:
        scene_dir.write_labels(labels)
    return scene_dir, gaussians, labels


def _column_names(path):
    from plyfile import PlyData

    return [prop.name for prop in PlyData.read(str(path))["vertex"].properties]


def test_export_selected_instances_plain_round_trip(tmp_path):
    _, gaussians, labels = _scene(tmp_path)
    path = tmp_path / "obj.ply"
    assert export_instances(gaussians, labels, {3}, path) == 10
    contents = read_ply(path)
    assert contents.instance_ids is None and contents.gaussians.feature_dim == 0
    assert _column_names(path) == INRIA_COLUMNS
    torch.testing.assert_close(contents.gaussians.means, gaussians.means[:10])
    torch.testing.assert_close(contents.gaussians.shN, gaussians.shN[:10])


def test_export_with_instance_column_and_whole_scene(tmp_path):
    _, gaussians, labels = _scene(tmp_path)
    path = tmp_path / "both.ply"
    assert export_instances(gaussians, labels, {3, 7}, path, with_instance_ids=True) == 22
    contents = read_ply(path)
    assert _column_names(path) == INRIA_COLUMNS + ["instance"]
    assert contents.instance_ids.tolist() == [3] * 10 + [7] * 12
    assert export_instances(gaussians, None, None, tmp_path / "all.ply") == 30  # unassigned ones included
    assert len(read_ply(tmp_path / "all.ply").gaussians) == 30


def test_export_errors_name_unknown_ids_and_refuse_empty_selections(tmp_path):
    _, gaussians, labels = _scene(tmp_path)
    with pytest.raises(ExportError, match=r"unknown instance id\(s\) 4, 99; the scene has 3, 7"):
        export_instances(gaussians, labels, {3, 4, 99}, tmp_path / "x.ply")
    with pytest.raises(ExportError, match="no instance selected"):
        export_instances(gaussians, labels, set(), tmp_path / "x.ply")
    with pytest.raises(ExportError, match="0"):
        export_instances(gaussians, labels, {0}, tmp_path / "x.ply")  # unassigned is not an instance
    with pytest.raises(ExportError, match="labels"):
        export_instances(gaussians, None, {3}, tmp_path / "x.ply")
    with pytest.raises(ExportError, match="shape"):
        export_instances(gaussians, labels[:-1], {3}, tmp_path / "x.ply")
    assert not (tmp_path / "x.ply").exists()


def test_safe_export_names_are_generated_unique_and_inside_exports(tmp_path):
    scene_dir, _, _ = _scene(tmp_path)
    exports = scene_dir.root / "exports"
    first = safe_export_name(scene_dir, [7, 3, 3], now=NOW)
    assert first == exports / "instances_3_7_20261124-104512.ply" and first.exists()
    assert safe_export_name(scene_dir, {3, 7}, now=NOW).name == "instances_3_7_20261124-104512_2.ply"
    assert safe_export_name(scene_dir.root, None, now=NOW).name == "scene_20261124-104512.ply"
    many = safe_export_name(scene_dir, range(1, 21), now=NOW)
    assert many.name == "instances_1_2_3_4_5_6_7_8_and_12_more_20261124-104512.ply"
    for weird in (["../../etc/passwd"], ["3/../x"], [-1], [1.5], [True], ["3"]):
        with pytest.raises(ValueError):
            safe_export_name(scene_dir, weird, now=NOW)
    assert all(p.parent == exports for p in exports.iterdir())
    assert sorted(os.listdir(tmp_path)) == ["scene"]


def test_export_command_as_in_the_issue(tmp_path, monkeypatch, capsys):
    """`protosaga export SCENE --instances 3,7 -o obj.ply` (parsed by tyro, as cli.py would)."""
    scene_dir, gaussians, _ = _scene(tmp_path)
    monkeypatch.chdir(tmp_path)
    config = tyro.cli(Export, args=[str(scene_dir.root), "--instances", "3,7", "-o", "obj.ply"])
    assert config.instances == (3, 7)
    assert config.run().name == "obj.ply"
    assert len(read_ply(tmp_path / "obj.ply").gaussians) == 22
    assert "wrote obj.ply: 22 Gaussians of instances 3, 7 (plain INRIA columns)" in capsys.readouterr().out
    assert tyro.cli(Export, args=["S", "--instances", "3", "7"]).instances == (3, 7)


def test_export_command_defaults_to_a_generated_name(tmp_path, capsys):
    scene_dir, _, _ = _scene(tmp_path)
    path = Export(scene_dir.root, with_instance_ids=True).run()
    assert path.parent == scene_dir.root / "exports" and path.name.startswith("scene_")
    assert read_ply(path).instance_ids.tolist() == [3] * 10 + [7] * 12 + [0] * 8
    with pytest.raises(ExportError, match="unknown"):
        Export(scene_dir.root, instances=(5,)).run()
    assert sorted((scene_dir.root / "exports").iterdir()) == [path.with_suffix(".json"), path]  # the failed export left no file


def test_whole_scene_export_needs_no_labels(tmp_path, capsys):
    scene_dir, _, _ = _scene(tmp_path, with_labels=False)
    assert len(read_ply(Export(scene_dir.root).run()).gaussians) == 30
    with pytest.raises(ValueError, match="labels.npy"):
        Export(scene_dir.root, instances=(3,)).run()


def test_parse_instance_ids():
    assert parse_instance_ids(["3,7"]) == (3, 7)
    assert parse_instance_ids(["3,", "7", " 9 "]) == (3, 7, 9)
    for bad in (["a"], ["3,0"], ["-2"]):
        with pytest.raises(ValueError):
            parse_instance_ids(bad)
