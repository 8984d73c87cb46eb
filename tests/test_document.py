"""The edited scene: what is on screen, prototypes after merges and splits (Eq. 17-18 exactly), export."""

import json
import re

import numpy as np
import pytest
import torch

from protosaga_app.document import SceneDocument
from protosaga_app.scene import ViewerScene
from protosaga_core.io.exports import ExportError
from protosaga_core.io.ply import read_ply
from protosaga_core.io.scene_dir import SceneDirError
from protosaga_core.method.lifting import render_label_maps
from protosaga_core.method.prototypes import ensemble_prototypes, view_prototypes
from protosaga_core.stages import read_consistent_mask, render_features


@pytest.fixture()
def document(trained_scene) -> SceneDocument:
    return SceneDocument(ViewerScene.load(trained_scene), torch.device("cpu"))


def two_largest(document: SceneDocument) -> tuple[int, int]:
    counts = np.bincount(document.scene.labels)
    first, second = np.argsort(-counts)[:2]
    return int(first), int(second)


def test_visible_gaussians_follow_hide_delete_and_undo(document):
    model = document.model
    a, b = two_largest(document)
    everything = document.visible()
    assert len(everything.index) == len(document.scene.labels)
    model.click(a)
    model.hide_selected()
    hidden = document.visible()
    assert a not in hidden.labels and len(hidden.index) == int((document.scene.labels != a).sum())
    np.testing.assert_array_equal(hidden.labels, document.scene.labels[hidden.index])
    model.click(b)
    model.delete_selected()
    assert set(np.unique(document.visible().labels)) == set(np.unique(document.scene.labels)) - {a, b}
    model.undo()
    model.undo()  # the click on b
    model.undo()  # the hide
    assert len(document.visible().index) == len(document.scene.labels)


def test_merged_prototypes_equal_eq_17_18_on_the_merged_masks(document):
    a, b = two_largest(document)
    document.merge(a, b)
    merged = document.prototypes()
    # The reference: render every training view again and apply Eq. 17-18 to the relabelled masks.
    scene = document.scene
    views = scene.dataset.split("train")
    gaussians = scene.gaussians
    per_view = [
        view_prototypes(features, relabelled(read_consistent_mask(scene.scene_dir, view), b, a))
        for view, features in render_features(gaussians, scene.dataset, views, progress=False)
    ]
    expected = ensemble_prototypes([p[0] for p in per_view], [p[1] for p in per_view])
    assert b not in merged.ids.tolist()
    torch.testing.assert_close(merged.ids, expected.ids)
    torch.testing.assert_close(merged.num_views, expected.num_views)
    torch.testing.assert_close(merged.vectors, expected.vectors, atol=1e-5, rtol=1e-4)
    assert (document.labels() == b).sum() == 0
    assert (document.labels() == a).sum() == ((scene.labels == a) | (scene.labels == b)).sum()
    document.model.undo()
    assert document.prototypes() is scene.prototypes
    np.testing.assert_array_equal(document.labels(), scene.labels)


def relabelled(mask: torch.Tensor, old: int, new: int) -> torch.Tensor:
    return torch.where(mask == old, new, mask)


def test_split_prototypes_and_labels_equal_a_full_recomputation(document):
    """Merge two instances, split the merged one along x, and merge another instance into the split-off
    part: prototypes, labels and the inspector's masks equal Eq. 17-18 recomputed from scratch (every view
    rendered again, the edited masks rebuilt from the rendered labels)."""
    scene, model = document.scene, document.model
    counts = np.bincount(scene.labels)
    counts[0] = 0
    a, b, c = (int(i) for i in np.argsort(-counts)[:3])
    document.merge(a, b)
    members = np.flatnonzero(document.labels() == a)
    x = scene.gaussians.means[members, 0].numpy()
    part = members[x < np.median(x)]  # one side of the merged instance
    split = document.split(part)
    assert model.state.selected == {split.id} and split.id == max(model.instances) + 1
    after_split = model.state
    document.merge(split.id, c)

    labels = document.labels()
    expected_labels = np.where(np.isin(scene.labels, [a, b]), a, scene.labels)
    expected_labels[part] = split.id
    expected_labels[expected_labels == c] = split.id
    np.testing.assert_array_equal(labels, expected_labels)

    views = scene.dataset.split("train")
    split_labels = torch.from_numpy(document.labels(after_split))
    ids = torch.unique(split_labels[split_labels > 0])
    per_view, moved_pixels = [], 0
    for view, features in render_features(scene.gaussians, scene.dataset, views, progress=False):
        mask = relabelled(read_consistent_mask(scene.scene_dir, view), b, a)
        rendered = render_label_maps(scene.gaussians, view.cameras, split_labels, ids)[0]
        region = (rendered == split.id) & (mask == a)
        moved_pixels += int(region.sum())
        mask = relabelled(torch.where(region, split.id, mask), c, split.id)
        np.testing.assert_array_equal(document.consistent_mask(view).numpy(), mask.numpy())
        per_view.append(view_prototypes(features, mask))
    expected = ensemble_prototypes([p[0] for p in per_view], [p[1] for p in per_view])
    assert moved_pixels > 0
    got = document.prototypes()
    torch.testing.assert_close(got.ids, expected.ids)
    torch.testing.assert_close(got.num_views, expected.num_views)
    torch.testing.assert_close(got.vectors, expected.vectors, atol=1e-5, rtol=1e-4)
    assert {a, split.id} <= set(got.ids.tolist()) and not {b, c} & set(got.ids.tolist())

    model.undo()  # the second merge
    model.undo()  # the split
    assert model.state.label_edits == after_split.label_edits[:1]
    np.testing.assert_array_equal(document.labels(), np.where(scene.labels == b, a, scene.labels))
    with pytest.raises(ValueError, match="nothing to split off"):
        document.split(np.flatnonzero(document.labels() == a))


def test_export_selection_and_edited_scene(document):
    a, b = two_largest(document)
    document.model.select_many([a, b])
    export = document.export(selection_only=True, with_instance_ids=True)
    assert export.path.parent == document.scene.scene_dir.root / "exports"
    contents = read_ply(export.path)
    assert export.count == len(contents.gaussians) == int(np.isin(document.scene.labels, [a, b]).sum())
    assert set(contents.instance_ids.tolist()) == {a, b}
    document.model.delete_selected()
    whole = document.export(selection_only=False)
    plain = read_ply(whole.path)
    assert plain.instance_ids is None and plain.gaussians.feature_dim == 0
    assert len(plain.gaussians) == int((~np.isin(document.scene.labels, [a, b])).sum())


def test_export_in_the_formats_gsplat_writes(document):
    exports = document.scene.scene_dir.root / "exports"
    compressed = document.export(selection_only=False, file_format="ply_compressed")
    assert compressed.path.parent == exports and compressed.path.name.endswith(".compressed.ply")
    record = json.loads(compressed.record.read_text())
    transparent = int((torch.sigmoid(document.scene.gaussians.opacities) <= 1 / 255).sum())
    assert record["file_format"] == "ply_compressed" and record["left_out"] == compressed.left_out == transparent
    header = compressed.path.read_bytes().split(b"end_header")[0].decode()
    assert int(re.search(r"element vertex (\d+)", header)[1]) == compressed.count == len(document.scene.labels) - transparent
    a, _ = two_largest(document)
    document.model.click(a)
    splat = document.export(selection_only=True, file_format="splat")
    assert splat.path.suffix == ".splat" and splat.path.stat().st_size == 32 * splat.count
    assert splat.count == int((document.scene.labels == a).sum()) and splat.left_out == 0
    with pytest.raises(ExportError, match="no place for instance ids"):
        document.export(selection_only=True, with_instance_ids=True, file_format="splat")
    assert len(list(exports.iterdir())) == 4  # two exports and their records: nothing of the refused one


def test_exporting_an_empty_selection_fails_and_leaves_no_file(document):
    with pytest.raises(ValueError, match="no instance selected"):
        document.export(selection_only=True)
    assert list((document.scene.scene_dir.root / "exports").glob("*.ply")) == []


def test_predict_view_renders_the_gaussian_labels_of_a_lifted_scene(document):
    assert document.lifted  # the default labelling rule
    view = document.scene.training_views()[0]
    prediction = document.predict_view(view)
    assert prediction.shape == (view.height, view.width)
    labels = torch.from_numpy(document.labels())
    expected = render_label_maps(document.scene.gaussians, view.cameras, labels, torch.unique(labels[labels > 0]))[0]
    np.testing.assert_array_equal(prediction, expected.numpy())
    assert set(np.unique(prediction)) - {0} <= set(document.scene.prototypes.ids.tolist())


def test_loading_names_what_is_missing(trained_scene, tmp_path):
    with pytest.raises(SceneDirError, match="not a directory"):
        ViewerScene.load(tmp_path / "nowhere")
    with pytest.raises(SceneDirError, match="scene.json"):
        ViewerScene.load(tmp_path)
    np.save(trained_scene / "labels.npy", np.zeros(3, dtype=np.int64))
    with pytest.raises(SceneDirError, match="labels.npy: expected"):
        ViewerScene.load(trained_scene)
    (trained_scene / "prototypes.npz").unlink()
    meta = (trained_scene / "scene.json").read_text().replace('"prototypes",', "").replace(', "prototypes"', "")
    (trained_scene / "scene.json").write_text(meta)
    with pytest.raises(SceneDirError, match="prototypes stage has not run"):
        ViewerScene.load(trained_scene)


def test_renaming_is_saved_to_scene_json(trained_scene):
    scene = ViewerScene.load(trained_scene)
    first = scene.instances[0].id
    scene.rename(first, "  chair ")
    assert ViewerScene.load(trained_scene).instance(first).name == "chair"
