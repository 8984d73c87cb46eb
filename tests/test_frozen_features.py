"""Features and classifiers learnt on frozen geometry (`protosaga features`, method/frozen_features.py)."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from plyfile import PlyData, PlyElement

from protosaga_core.cli import main
from protosaga_core.evaluate import EvalConfig, evaluate
from protosaga_core.io.ply import read_ply, write_ply
from protosaga_core.io.scene_dir import SceneDir, SceneDirError
from protosaga_core.method import frozen_features as module
from protosaga_core.method.association import AssociateConfig, associate
from protosaga_core.method.frozen_features import FeatureConfig, initial_state, train_features
from protosaga_core.method.prototypes import PrototypesConfig, compute_prototypes
from protosaga_core.method.train import classification_loss, prepare_views
from protosaga_core.render import render
from protosaga_core.render.sparse import WeightsCache

GEOMETRY = ("means", "scales", "quats", "opacities", "sh0", "shN")
CPU = torch.device("cpu")


def columns(path: Path) -> dict[str, bytes]:
    """Every vertex property of a PLY file, as raw bytes."""
    vertex = PlyData.read(str(path))["vertex"]
    return {prop.name: np.ascontiguousarray(vertex.data[prop.name]).tobytes() for prop in vertex.properties}


@torch.no_grad()
def mean_cross_entropy(scene_dir: SceneDir, features: torch.Tensor, classifiers: list[torch.Tensor]) -> float:
    """L_CE of `features` and `classifiers` over every training view, rendered by the rasterizer."""
    geometry = read_ply(scene_dir.gaussians_path).gaussians
    views = prepare_views(scene_dir.load_dataset(), unlabeled_as_class=False)
    total = 0.0
    for sample, classifier in zip(views, classifiers):
        rendered = render(geometry, sample.cameras, rgb=False, extras=features).extras[0]
        total += float(classification_loss(rendered, classifier, sample.target, 10.0))
    return total / len(views)


def strip_features(scene: Path) -> None:
    """Make `scene` look like one whose Gaussians another trainer made: gaussians.ply in the plain INRIA
    layout plus a property of that trainer's own, and no classifiers."""
    scene_dir = SceneDir(scene)
    write_ply(scene_dir.gaussians_path, scene_dir.read_gaussians(), plain=True)
    ply = PlyData.read(str(scene_dir.gaussians_path))
    data = ply["vertex"].data
    extended = np.empty(len(data), dtype=data.dtype.descr + [("their_own", "<f4")])
    for name in data.dtype.names:
        extended[name] = data[name]
    extended["their_own"] = np.arange(len(data), dtype=np.float32) * 0.5
    PlyData([PlyElement.describe(extended, "vertex")], byte_order="<").write(str(scene_dir.gaussians_path))
    scene_dir.classifiers_path.unlink()


def test_only_the_features_learn_and_the_cross_entropy_falls(trained_scene):
    scene_dir = SceneDir(trained_scene)
    raw_before = columns(scene_dir.gaussians_path)
    before = read_ply(scene_dir.gaussians_path).gaussians
    config = FeatureConfig(iterations=60, fresh=True, checkpoint_every=0)
    views = prepare_views(scene_dir.load_dataset(), unlabeled_as_class=False)
    start, why = initial_state(scene_dir, before, views, config, CPU)  # where the stage starts: same seed
    assert why == "new (--fresh)"
    at_start = mean_cross_entropy(scene_dir, start.features, start.classifiers)

    result = train_features(scene_dir, config, device=CPU, progress=False)

    after = read_ply(scene_dir.gaussians_path).gaussians
    for name in GEOMETRY:
        assert torch.equal(getattr(after, name), getattr(before, name)), name
    raw_after = columns(scene_dir.gaussians_path)
    assert list(raw_after) == list(raw_before)
    changed = [name for name in raw_before if raw_before[name] != raw_after[name]]
    assert changed == [f"feat_{i}" for i in range(16)]  # every feature column, and nothing else
    classifiers = scene_dir.read_classifiers()
    assert classifiers.view_names == [v.view.name for v in views]
    assert mean_cross_entropy(scene_dir, after.features, classifiers.weights) < 0.75 * at_start
    assert len(result.losses) == 60
    meta = scene_dir.read_meta()
    assert meta.stages == ["train", "features"]  # associate, prototypes and eval must be redone
    assert meta.configs["features"]["iterations"] == 60 and meta.configs["train"]["iterations"] == 300


def test_an_imported_scene_gets_features_that_prototype_segmentation_uses(trained_scene):
    scene_dir = SceneDir(trained_scene)
    strip_features(trained_scene)
    raw_before = columns(scene_dir.gaussians_path)
    with pytest.raises(SceneDirError, match="no feat_"):
        scene_dir.read_gaussians()  # what every later stage would say now

    result = train_features(scene_dir, FeatureConfig(checkpoint_every=0), device=CPU, progress=False)

    assert result.start == "new (the scene's Gaussians have no features)"
    assert len(result.losses) == 3 * len(scene_dir.read_meta().train_views)  # the default: 3 per view
    assert scene_dir.read_meta().configs["features"]["iterations"] == len(result.losses)  # recorded as run
    raw_after = columns(scene_dir.gaussians_path)
    assert [n for n in raw_after if n not in raw_before] == [f"feat_{i}" for i in range(16)]
    assert all(raw_after[n] == raw_before[n] for n in raw_before)  # their own property too, bit for bit
    associate(scene_dir, AssociateConfig(), progress=False)
    compute_prototypes(scene_dir, PrototypesConfig(), progress=False)
    proto = evaluate(scene_dir, EvalConfig(methods=("proto",)), progress=False).segmentation["proto"]
    # Features after 1 iteration score 0.17 here (nearly as drawn), after the default 108 0.44.
    assert proto.miou > 0.3


def test_an_interrupted_run_leaves_the_scene_as_it_was_and_resumes_bit_for_bit(trained_scene, tmp_path, monkeypatch):
    straight = SceneDir(shutil.copytree(trained_scene, tmp_path / "straight"))
    config = FeatureConfig(iterations=16, fresh=True, checkpoint_every=0)
    train_features(straight, config, device=CPU, progress=False)

    scene_dir = SceneDir(trained_scene)
    files_before = {name: (trained_scene / name).read_bytes() for name in ("gaussians.ply", "classifiers.pt", "scene.json")}
    original, calls = module.classification_loss, {"n": 0}

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 7:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C during iteration 7, which still completes
        return original(*args, **kwargs)

    monkeypatch.setattr(module, "classification_loss", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train_features(scene_dir, config, device=CPU, progress=False)
    monkeypatch.undo()
    assert all((trained_scene / name).read_bytes() == data for name, data in files_before.items())
    assert torch.load(scene_dir.checkpoints_dir / "features.pt", weights_only=True)["iteration"] == 7

    result = train_features(scene_dir, config, resume=True, device=CPU, progress=False)
    assert result.start == "resumed at iteration 7" and len(result.losses) == 9
    assert torch.equal(scene_dir.read_gaussians().features, straight.read_gaussians().features)
    for a, b in zip(scene_dir.read_classifiers().weights, straight.read_classifiers().weights):
        assert torch.equal(a, b)


def test_the_rasterizer_path_learns_what_the_sparse_path_learns(trained_scene, tmp_path, gsplat_emulated):
    """On a GPU (and for views whose weights exceed the budget) every iteration rasterizes; here through
    `render`'s gsplat path with the torch rasterizer standing in."""
    config = FeatureConfig(iterations=6, fresh=True, checkpoint_every=0)
    rasterized_scene = SceneDir(shutil.copytree(trained_scene, tmp_path / "rasterized"))
    sparse = train_features(SceneDir(trained_scene), config, device=CPU, progress=False)
    rasterized = train_features(rasterized_scene, config, device=CPU, progress=False, weights=WeightsCache(0))  # keeps no weights
    assert sparse.losses == pytest.approx(rasterized.losses, rel=1e-4)
    assert sparse.losses[-1] != sparse.losses[0]


def test_the_command_continues_the_scene_features_and_keeps_training_recorded(trained_scene, capsys):
    scene_dir = SceneDir(trained_scene)
    recorded = scene_dir.read_meta().configs["train"]
    assert main(["features", str(trained_scene), "--iterations", "3", "--checkpoint-every", "0"]) == 0
    out = capsys.readouterr().out
    assert "continued from the scene's features and classifiers" in out and "protosaga associate" in out
    meta = scene_dir.read_meta()
    assert meta.configs["features"]["iterations"] == 3 and meta.configs["features"]["fresh"] is False
    assert meta.configs["train"] == recorded  # so `protosaga run` reuses the geometry instead of retraining it


def test_a_missing_scene_is_refused_with_what_the_command_needs(tmp_path, trained_scene, capsys):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="no such scene folder.*protosaga train or protosaga import"):
        train_features(SceneDir(missing), FeatureConfig(iterations=1), progress=False)
    assert main(["features", str(missing)]) == 2
    assert "no such scene folder" in capsys.readouterr().err
    assert not missing.exists()  # nothing is created there

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SceneDirError, match="scene.json: missing, so .* is not a scene"):
        train_features(SceneDir(empty), FeatureConfig(iterations=1), progress=False)

    (trained_scene / "gaussians.ply").unlink()
    with pytest.raises(SceneDirError, match="gaussians.ply: missing"):
        train_features(SceneDir(trained_scene), FeatureConfig(iterations=1), progress=False)
