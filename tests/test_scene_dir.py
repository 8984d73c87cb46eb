"""`protosaga_core.io.scene_dir`: the trained-scene directory's files, read back as written, and every
malformed or missing file reported as a SceneDirError naming it.

Covers scene.json (SceneMeta with its InstanceInfo table, `mark_done`, `is_done`, `config_record`),
gaussians.ply, classifiers.pt, labels.npy, atomic writes and `sweep`. Files are made by hand in tmp_path;
nothing is trained or rendered.
"""

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from builders import random_gaussians

from protosaga_core.io.ply import write_ply
from protosaga_core.io.scene_dir import (
    SCENE_FORMAT,
    SCENE_VERSION,
    Classifiers,
    InstanceInfo,
    SceneDir,
    SceneDirError,
    SceneMeta,
    config_record,
)


def meta(**changes) -> SceneMeta:
    values = dict(dataset="/data/room", dataset_format="colmap", downscale=2, split_rule="holdout", train_views=["a", "b"])
    return SceneMeta(**{**values, **changes})


def raw_meta(scene_dir: SceneDir) -> dict:
    return json.loads(scene_dir.meta_path.read_text())


@pytest.fixture()
def scene_dir(tmp_path) -> SceneDir:
    scene_dir = SceneDir(tmp_path / "scene")
    scene_dir.write_meta(meta())
    return scene_dir


def temporaries(folder: Path) -> list[Path]:
    return list(folder.glob(".*.tmp"))


# --- layout --------------------------------------------------------------------------------------------


def test_paths_follow_the_documented_layout(tmp_path):
    scene_dir = SceneDir(str(tmp_path))  # a str root is accepted
    assert scene_dir.root == tmp_path
    assert [p.relative_to(tmp_path).as_posix() for p in (
        scene_dir.meta_path, scene_dir.gaussians_path, scene_dir.classifiers_path, scene_dir.association_dir,
        scene_dir.association_json, scene_dir.prototypes_path, scene_dir.labels_path, scene_dir.eval_dir,
        scene_dir.checkpoints_dir,
    )] == ["scene.json", "gaussians.ply", "classifiers.pt", "association", "association/association.json",
           "prototypes.npz", "labels.npy", "eval", "checkpoints"]


# --- scene.json ----------------------------------------------------------------------------------------


def test_meta_round_trips_with_its_instance_table(scene_dir):
    written = meta(
        stages=["train", "associate"],
        configs={"train": {"iterations": 30, "lrs": [1.0, 2.0]}},
        instances=[InstanceInfo(3, (255, 0, 10), 40, 2, "chair"), InstanceInfo(8, (1, 2, 3), 0, 1)],
    )
    scene_dir.write_meta(written)
    read = scene_dir.read_meta()
    assert read == written
    assert isinstance(read.instances[0], InstanceInfo) and read.instances[0].color == (255, 0, 10)  # a tuple again
    raw = raw_meta(scene_dir)
    assert raw["format"] == SCENE_FORMAT and raw["version"] == SCENE_VERSION
    assert raw["instances"][1] == {"id": 8, "color": [1, 2, 3], "num_gaussians": 0, "num_views": 1, "name": ""}


def test_meta_rows_may_omit_the_optional_fields(scene_dir):
    raw = {k: v for k, v in raw_meta(scene_dir).items() if k not in ("stages", "configs", "instances")}
    raw["instances"] = [{"id": 2, "color": [9, 9, 9], "num_gaussians": 1, "num_views": 1}]  # no name
    scene_dir.meta_path.write_text(json.dumps(raw))
    read = scene_dir.read_meta()
    assert read.stages == [] and read.configs == {} and read.instances == [InstanceInfo(2, (9, 9, 9), 1, 1, "")]


def test_a_missing_scene_json_is_named_with_a_hint(tmp_path):
    with pytest.raises(SceneDirError, match="missing; is .* a trained scene \\(protosaga train\\)") as error:
        SceneDir(tmp_path).read_meta()
    assert str(tmp_path / "scene.json") in str(error.value)
    assert not SceneDir(tmp_path).is_done("train")  # no scene.json: nothing is done, and no error


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"format": "protosaga-scene", ', "unreadable JSON"),
        ("[1, 2]", "not a protosaga-scene file"),
        ('{"format": "nerfstudio", "version": 1}', "not a protosaga-scene file"),
        ('{"format": "protosaga-scene", "version": 2}', "version 2 is not the supported 1"),
        ('{"format": "protosaga-scene"}', "version None is not the supported 1"),
    ],
)
def test_unreadable_or_foreign_scene_json_is_named(scene_dir, text, message):
    scene_dir.meta_path.write_text(text)
    with pytest.raises(SceneDirError, match=message) as error:
        scene_dir.read_meta()
    assert str(error.value).startswith(f"{scene_dir.meta_path}: ")


def test_scene_json_that_is_not_utf8_is_named(scene_dir):
    scene_dir.meta_path.write_bytes(b'{"format": "\xff\xfe"}')
    with pytest.raises(SceneDirError, match="unreadable JSON") as error:
        scene_dir.read_meta()
    assert str(scene_dir.meta_path) in str(error.value)


@pytest.mark.parametrize(
    "change",
    [
        lambda raw: raw.pop("dataset"),
        lambda raw: raw.update(colour_scheme="dark"),
        lambda raw: raw.update(instances=[{"id": 1, "num_gaussians": 1, "num_views": 1}]),
        lambda raw: raw.update(instances=[{"id": 1, "color": [1, 2, 3], "num_gaussians": 1, "num_views": 1, "size": 3}]),
        lambda raw: raw.update(instances=[[1, [1, 2, 3], 1, 1]]),
        lambda raw: raw.update(instances=7),
    ],
    ids=["missing-field", "unknown-field", "row-without-color", "row-unknown-field", "row-not-object", "table-not-list"],
)
def test_scene_json_with_wrong_fields_is_malformed_and_named(scene_dir, change):
    raw = raw_meta(scene_dir)
    change(raw)
    scene_dir.meta_path.write_text(json.dumps(raw))
    with pytest.raises(SceneDirError, match="malformed") as error:
        scene_dir.read_meta()
    assert str(error.value).startswith(f"{scene_dir.meta_path}: ")


def test_scene_json_with_a_string_for_stages_is_malformed(scene_dir):
    raw = raw_meta(scene_dir)
    raw["stages"] = "trainassociate"
    scene_dir.meta_path.write_text(json.dumps(raw))
    with pytest.raises(SceneDirError, match="scene.json"):
        scene_dir.is_done("train")


@dataclass
class StageConfig:
    path: Path = Path("/x/y")
    sizes: tuple[int, ...] = (1, 2)
    nested: dict = field(default_factory=lambda: {1: (Path("a"), 2.5)})


def test_config_record_turns_paths_tuples_and_keys_into_json_values():
    record = config_record(StageConfig())
    assert record == {"path": "/x/y", "sizes": [1, 2], "nested": {"1": ["a", 2.5]}}
    assert json.loads(json.dumps(record)) == record


def test_mark_done_records_the_stage_and_forgets_the_later_ones(scene_dir):
    for stage in ("train", "associate", "prototypes", "eval"):
        scene_dir.mark_done(stage, StageConfig(sizes=(len(stage),)))
    assert scene_dir.read_meta().stages == ["train", "associate", "prototypes", "eval"]
    assert scene_dir.is_done("eval")
    scene_dir.mark_done("associate", StageConfig(path=Path("/again")))
    read = scene_dir.read_meta()
    assert read.stages == ["train", "associate"]
    assert set(read.configs) == {"train", "associate"}
    assert read.configs["associate"]["path"] == "/again" and read.configs["train"]["sizes"] == [5]
    assert not scene_dir.is_done("prototypes") and not scene_dir.is_done("eval")
    assert read.dataset == meta().dataset  # the rest of scene.json is kept


def test_mark_done_writes_the_given_meta_in_the_same_write(scene_dir):
    new = meta(downscale=4, instances=[InstanceInfo(1, (1, 1, 1), 2, 1)], stages=["train", "prototypes"])
    scene_dir.mark_done("associate", StageConfig(), new)
    read = scene_dir.read_meta()
    assert read.downscale == 4 and read.instances == new.instances
    assert read.stages == ["train", "associate"]  # the given meta's later stage is forgotten too
    assert temporaries(scene_dir.root) == []


def test_is_done_reports_stages_of_scene_json(scene_dir):
    assert not scene_dir.is_done("train")
    scene_dir.mark_done("train", StageConfig())
    assert scene_dir.is_done("train") and not scene_dir.is_done("associate")


# --- gaussians.ply -------------------------------------------------------------------------------------


def test_gaussians_round_trip(scene_dir):
    written = random_gaussians(6, feature_dim=3, seed=6)
    scene_dir.write_gaussians(written)
    read = scene_dir.read_gaussians()
    for name in ("means", "scales", "quats", "opacities", "sh0", "features"):
        torch.testing.assert_close(getattr(read, name), getattr(written, name))
    assert temporaries(scene_dir.root) == []


def test_missing_or_featureless_gaussians_are_named(scene_dir):
    with pytest.raises(SceneDirError, match=r"missing; run protosaga train \(or protosaga import\) first") as error:
        scene_dir.read_gaussians()
    assert str(scene_dir.gaussians_path) in str(error.value)
    write_ply(scene_dir.gaussians_path, random_gaussians(5), plain=True)  # an INRIA file: no feat_* columns
    with pytest.raises(SceneDirError, match="no feat_\\* columns; it was not trained by protosaga") as error:
        scene_dir.read_gaussians()
    assert str(scene_dir.gaussians_path) in str(error.value)


# --- classifiers.pt ------------------------------------------------------------------------------------


def test_classifiers_round_trip_and_for_view(scene_dir):
    labels = [torch.tensor([0, 4, 9]), torch.tensor([2])]
    weights = [torch.randn(3, 4, dtype=torch.float64, requires_grad=True), torch.randn(1, 4)]
    scene_dir.write_classifiers(Classifiers(["b", "a"], labels, weights))
    read = scene_dir.read_classifiers()
    assert read.view_names == ["b", "a"]
    view_labels, view_weights = read.for_view("a")
    assert torch.equal(view_labels, labels[1]) and torch.equal(view_weights, weights[1])
    assert all(w.dtype == torch.float32 for w in read.weights)  # stored as float32
    torch.testing.assert_close(read.for_view("b")[1], weights[0].detach().float())
    with pytest.raises(ValueError):
        read.for_view("c")


def test_missing_or_foreign_classifiers_are_named(scene_dir):
    with pytest.raises(SceneDirError, match="missing; run protosaga train first") as error:
        scene_dir.read_classifiers()
    assert str(scene_dir.classifiers_path) in str(error.value)
    scene_dir.classifiers_path.write_text("not torch")
    with pytest.raises(SceneDirError, match="not a classifiers file") as error:
        scene_dir.read_classifiers()
    assert str(scene_dir.classifiers_path) in str(error.value)
    torch.save({"view_names": ["a"]}, scene_dir.classifiers_path)  # no labels or weights
    with pytest.raises(SceneDirError, match="not a classifiers file"):
        scene_dir.read_classifiers()


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"view_names": ["a", "b"], "labels": [torch.tensor([1])], "weights": [torch.zeros(1, 4)]}, "differ in length"),
        ({"view_names": ["a"], "labels": [torch.tensor([1, 2])], "weights": [torch.zeros(3, 4)]}, "view a has shape \\[3, 4\\] for \\[2\\] labels"),
        ({"view_names": ["a"], "labels": [torch.tensor([1])], "weights": [torch.zeros(4)]}, "view a has shape \\[4\\]"),
    ],
)
def test_inconsistent_classifiers_are_named(scene_dir, payload, message):
    torch.save(payload, scene_dir.classifiers_path)
    with pytest.raises(SceneDirError, match=message) as error:
        scene_dir.read_classifiers()
    assert str(error.value).startswith(f"{scene_dir.classifiers_path}: ")


# --- labels.npy ----------------------------------------------------------------------------------------


def test_labels_are_written_and_read_as_int64(scene_dir):
    scene_dir.write_labels(np.array([0, 3, 3, 65536], dtype=np.int32))
    assert np.load(scene_dir.labels_path).dtype == np.int64
    read = scene_dir.read_labels(4)
    assert read.dtype == np.int64 and read.tolist() == [0, 3, 3, 65536]
    np.save(scene_dir.labels_path, np.array([1, 2], dtype=np.uint8))  # another writer's dtype
    assert scene_dir.read_labels(2).dtype == np.int64
    assert temporaries(scene_dir.root) == []


def test_labels_without_a_count_are_not_checked(scene_dir):
    scene_dir.write_labels(np.array([5, 0, 1]))
    assert scene_dir.read_labels().tolist() == [5, 0, 1]
    assert scene_dir.read_labels(3).tolist() == [5, 0, 1]
    scene_dir.write_labels(np.zeros(0, dtype=np.int64))
    assert scene_dir.read_labels(0).shape == (0,)  # a scene without Gaussians has no labels


def test_missing_labels_are_named_with_the_stage_to_run(scene_dir):
    with pytest.raises(SceneDirError, match="missing; run protosaga prototypes first") as error:
        scene_dir.read_labels(3)
    assert str(scene_dir.labels_path) in str(error.value)


@pytest.mark.parametrize(
    ("labels", "shape"),
    [(np.array([1, 2]), "[2]"), (np.zeros((3, 1), dtype=np.int64), "[3, 1]"), (np.array([1, -1, 2]), "[3]")],
    ids=["too-short", "not-flat", "negative"],
)
def test_labels_of_the_wrong_shape_or_sign_are_named(scene_dir, labels, shape):
    np.save(scene_dir.labels_path, labels)
    with pytest.raises(SceneDirError) as error:
        scene_dir.read_labels(3)
    message = str(error.value)
    assert message.startswith(f"{scene_dir.labels_path}: expected 3 non-negative labels")
    assert "gaussians.ply" in message and f"got shape {shape}" in message and "run protosaga prototypes again" in message


@pytest.mark.parametrize("write", [
    lambda path: path.write_text("not numpy"),
    lambda path: np.save(path, np.array([1, "a"], dtype=object)),
], ids=["text", "object-array"])
def test_an_unreadable_labels_file_is_named(scene_dir, write):
    write(scene_dir.labels_path)
    with pytest.raises(SceneDirError, match="labels.npy"):
        scene_dir.read_labels(2)


def test_fractional_labels_are_refused(scene_dir):
    np.save(scene_dir.labels_path, np.array([1.7, 2.0]))
    with pytest.raises(SceneDirError, match="labels.npy"):
        scene_dir.read_labels(2)


# --- atomic writes and sweep ---------------------------------------------------------------------------


def test_a_failed_write_keeps_the_old_file(scene_dir):
    scene_dir.write_labels(np.array([4, 5]))
    with pytest.raises(ValueError):
        scene_dir.write_labels(np.array(["not", "ids"]))  # fails while writing: int64 conversion
    assert scene_dir.read_labels(2).tolist() == [4, 5]
    assert temporaries(scene_dir.root) == []


def test_sweep_removes_stale_temporaries_and_keeps_live_ones(scene_dir):
    scene_dir.checkpoints_dir.mkdir()
    old, young = scene_dir.checkpoints_dir / ".last.pt.abc.tmp", scene_dir.root / ".labels.npy.def.tmp"
    for path in (old, young):
        path.write_bytes(b"partial")
    an_hour_ago = time.time() - 3600
    os.utime(old, (an_hour_ago, an_hour_ago))
    scene_dir.sweep()  # also fine with association/ and eval/ absent
    assert not old.exists() and young.exists()
    assert scene_dir.read_meta() == meta()


def test_sweep_restores_an_association_folder_cut_between_renames(scene_dir):
    parked = scene_dir.root / ".association.old"
    parked.mkdir()
    (parked / "a.png").write_bytes(b"old mask")
    (scene_dir.root / ".association.partial").mkdir()
    scene_dir.sweep()
    assert (scene_dir.association_dir / "a.png").read_bytes() == b"old mask"
    assert sorted(p.name for p in scene_dir.root.iterdir()) == ["association", "scene.json"]
