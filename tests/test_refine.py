"""The refine stage: features learnt against the consistent masks with one shared prototype classifier, kept
beside training's, read by the stages after it, and what Eq. 19 makes of them."""

import numpy as np
import pytest
import torch

from protosaga_core.cli import main
from protosaga_core.io.scene_dir import SceneDir, SceneDirError
from protosaga_core.method.association import AssociateConfig, associate
from protosaga_core.method.prototypes import classify, collect_view_prototypes, ensemble_prototypes
from protosaga_core.method.refine import RefineConfig, instance_targets, refine_features
from protosaga_core.method.train import IGNORE
from protosaga_core.stages import read_consistent_mask, render_features


def test_instance_targets_are_rows_of_the_ids_and_ignore_the_rest():
    ids = torch.tensor([2, 5, 9])
    mask = torch.tensor([[0, 2, 5], [9, 7, 12]])
    assert instance_targets(mask, ids).tolist() == [[IGNORE, 0, 1], [2, IGNORE, IGNORE]]
    assert (instance_targets(mask, torch.zeros(0, dtype=torch.int64)) == IGNORE).all()


def eq19_agreement(scene_dir: SceneDir) -> float:
    """The share of the training views' labelled pixels whose Eq. 19 label (prototypes of the scene's current
    features, rendered) is their consistent mask's id."""
    gaussians, scene = scene_dir.read_gaussians(), scene_dir.load_dataset()
    per_view = collect_view_prototypes(scene_dir, gaussians, scene, progress=False)
    prototypes = ensemble_prototypes([p[0] for p in per_view], [p[1] for p in per_view])
    hits = total = 0
    for view, features in render_features(gaussians, scene, scene.split("train"), progress=False):
        mask = read_consistent_mask(scene_dir, view)
        labelled = mask > 0
        hits += int((classify(features, prototypes)[labelled] == mask[labelled]).sum())
        total += int(labelled.sum())
    return hits / total


def test_refined_features_carry_the_consistent_masks_and_are_kept_beside_trainings(trained_scene):
    scene_dir = SceneDir(trained_scene)
    refine_features(scene_dir, RefineConfig(passes=0), progress=False)
    trained = scene_dir.read_gaussians().features.clone()
    before = eq19_agreement(scene_dir)
    ply_bytes = scene_dir.gaussians_path.read_bytes()

    result = refine_features(scene_dir, RefineConfig(), progress=False)

    views = len(scene_dir.load_dataset().split("train"))
    assert result.instances > 1 and len(result.losses) == min(RefineConfig.passes * views, RefineConfig.max_iterations)
    assert np.mean(result.losses[-10:]) < np.mean(result.losses[:10])
    assert scene_dir.gaussians_path.read_bytes() == ply_bytes  # training's features stay in gaussians.ply
    assert torch.equal(scene_dir.read_gaussians(refined=False).features, trained)
    refined = scene_dir.read_gaussians().features
    assert refined.shape == trained.shape and not torch.equal(refined, trained)
    after = eq19_agreement(scene_dir)
    assert after > before + 0.03 and after > 0.88, (before, after)


def test_no_refinement_removes_the_file_and_a_new_association_forgets_the_stage(trained_scene):
    scene_dir = SceneDir(trained_scene)
    trained = scene_dir.read_gaussians(refined=False).features
    refine_features(scene_dir, RefineConfig(passes=1), progress=False)
    assert scene_dir.refined_features_path.exists() and scene_dir.is_done("refine")
    associate(scene_dir, AssociateConfig(), progress=False)
    assert not scene_dir.is_done("refine")
    assert torch.equal(scene_dir.read_gaussians().features, trained)  # the file is stale: not read
    refine_features(scene_dir, RefineConfig(passes=0), progress=False)
    assert scene_dir.is_done("refine") and not scene_dir.refined_features_path.exists()
    assert torch.equal(scene_dir.read_gaussians().features, trained)


@pytest.mark.parametrize(
    "array, message",
    [
        (np.zeros((3, 16), np.float32), "expected float32 features of shape"),
        (None, "float32"),
        (np.full((1, 1), np.nan, np.float32), "non-finite"),
    ],
)
def test_a_malformed_refined_features_file_is_named(trained_scene, array, message):
    scene_dir = SceneDir(trained_scene)
    refine_features(scene_dir, RefineConfig(passes=1), progress=False)
    shape = scene_dir.read_gaussians(refined=False).features.shape
    if array is None:
        array = np.zeros(tuple(shape), np.float64)
    elif array.shape == (1, 1):
        array = np.full(tuple(shape), np.nan, np.float32)
    np.save(scene_dir.refined_features_path, array)
    with pytest.raises(SceneDirError, match=f"refined_features.npy: .*{message}"):
        scene_dir.read_gaussians()


def test_the_command_refines_and_names_the_next_step(trained_scene, capsys):
    assert main(["refine", str(trained_scene), "--passes", "2"]) == 0
    out = capsys.readouterr().out
    assert "refine: features against the consistent masks, 2 iterations per training view (at most 600)" in out
    assert "refined_features.npy" in out and f"next: protosaga prototypes {trained_scene}" in out
    assert main(["refine", str(trained_scene), "--passes", "-1"]) != 0
    assert main(["refine", str(trained_scene), "--max-iterations", "0"]) != 0


def test_iterations_stop_at_the_cap(trained_scene):
    result = refine_features(SceneDir(trained_scene), RefineConfig(passes=10, max_iterations=7), progress=False)
    assert len(result.losses) == 7
