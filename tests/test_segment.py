"""`protosaga_core.method.segment`: where it writes, what each method's label maps are, what it refuses.

Checked against the functions the methods are defined by: `lifted` maps are `lifting.render_label_maps` of
labels.npy, `proto` maps are Eq. 19 (`prototypes.classify`) of the rendered features, `kmeans` needs only the
consistent masks. The scene is built directly (no training): two blobs of Gaussians seen by five cameras
(two of them test views) against an empty background. Each blob's feature is a one-hot channel; labels.npy,
the prototypes and the consistent masks give the blobs three different pairs of ids, so each map shows
which file it was made from. tests/test_evaluate.py covers segmentation quality against GT and the cls
baseline; tests/test_mistakes.py the command line.
"""

import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from protosaga_core.cameras import Cameras, intrinsics, look_at
from protosaga_core.gaussians import Gaussians, rgb_to_sh0
from protosaga_core.io.labelmaps import load_label_map, save_label_map
from protosaga_core.io.scene_dir import SceneDir, SceneDirError, SceneMeta
from protosaga_core.method.baselines import ClsSettings
from protosaga_core.method.lifting import render_label_maps
from protosaga_core.method.prototypes import Prototypes, classify
from protosaga_core.method.segment import METHODS, SegmentConfig, output_dir, predictions_current, segment
from protosaga_core.render import render
from protosaga_core.stages import render_features

WIDTH, HEIGHT = 24, 20
NAMES = [f"v{i}" for i in range(5)]
TEST_NAMES = ("v1", "v3")
LABEL_IDS = (7, 12)  # labels.npy: blob 0, blob 1 (every fourth Gaussian unassigned)
PROTO_IDS = (9, 3)  # prototypes.npz: blob 0's channel, blob 1's channel
MASK_IDS = (1, 2)  # association/: blob 0, blob 1


def blobs() -> tuple[Gaussians, torch.Tensor]:
    """Two opaque blobs side by side; feature = one-hot(blob) over 8 channels plus a little noise."""
    generator = torch.Generator().manual_seed(0)
    per_blob = 150
    blob = torch.arange(2).repeat_interleave(per_blob)
    direction = torch.nn.functional.normalize(torch.randn(len(blob), 3, generator=generator), dim=1)
    means = torch.tensor([[-0.5, 0.0, 0.0], [0.5, 0.0, 0.0]])[blob] + 0.35 * torch.rand(len(blob), 1, generator=generator) * direction
    n = len(means)
    gaussians = Gaussians(
        means=means,
        scales=torch.full((n, 3), 0.07).log(),
        quats=torch.tensor([1.0, 0.0, 0.0, 0.0]).repeat(n, 1),
        opacities=torch.full((n,), 4.0),
        sh0=rgb_to_sh0(torch.tensor([[0.9, 0.2, 0.1], [0.1, 0.3, 0.9]])[blob])[:, None, :],
        shN=torch.zeros(n, 0, 3),
        features=torch.nn.functional.one_hot(blob, 8).float() + 0.05 * torch.randn(n, 8, generator=generator),
    )
    return gaussians, blob


def cameras() -> Cameras:
    angle = torch.linspace(-0.4, 0.4, len(NAMES))
    eye = torch.stack([3 * torch.sin(angle), -3 * torch.cos(angle), torch.full_like(angle, 0.3)], 1)
    viewmats = look_at(eye, torch.zeros_like(eye), torch.tensor([0.0, 0.0, 1.0]))
    return Cameras(viewmats, intrinsics(22.0, 22.0, WIDTH / 2, HEIGHT / 2, count=len(NAMES)), WIDTH, HEIGHT)


def write_transforms(path: Path, cams: Cameras, names: list[str]) -> None:
    """NeRF layout: shared intrinsics, OpenGL camera-to-world per frame."""
    opencv_to_opengl = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0]))
    K = cams.Ks[0]
    frames = [
        {"file_path": f"images/{name}.png", "transform_matrix": (torch.linalg.inv(cams.viewmats[NAMES.index(name)]) @ opencv_to_opengl).tolist()}
        for name in names
    ]
    payload = {"fl_x": float(K[0, 0]), "fl_y": float(K[1, 1]), "cx": float(K[0, 2]), "cy": float(K[1, 2]), "w": WIDTH, "h": HEIGHT, "frames": frames}
    path.write_text(json.dumps(payload))


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> SceneDir:
    """Dataset and a scene directory holding every stage's files: Gaussians, masks, prototypes, labels."""
    root = tmp_path_factory.mktemp("segment")
    gaussians, blob = blobs()
    cams = cameras()
    with torch.no_grad():
        out = render(gaussians, cams, extras=torch.nn.functional.one_hot(blob + 1, 3).float())
    masks = out.extras.argmax(-1)
    masks[out.alphas[..., 0] < 0.5] = 0
    dataset = root / "dataset"
    (dataset / "images").mkdir(parents=True)
    for i, name in enumerate(NAMES):
        Image.fromarray((out.colors[i].clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)).save(dataset / "images" / f"{name}.png")
    train = [name for name in NAMES if name not in TEST_NAMES]
    write_transforms(dataset / "transforms_train.json", cams, train)
    write_transforms(dataset / "transforms_test.json", cams, list(TEST_NAMES))

    scene_dir = SceneDir(root / "scene")
    scene_dir.root.mkdir()
    scene_dir.write_gaussians(gaussians)
    for name in train:
        save_label_map(scene_dir.association_dir / f"{name}.png", masks[NAMES.index(name)])
    labels = torch.tensor(LABEL_IDS)[blob]
    labels[::4] = 0
    scene_dir.write_labels(labels.numpy())
    Prototypes(torch.tensor(PROTO_IDS), torch.eye(8)[:2], torch.tensor([3, 3])).save(scene_dir.prototypes_path)
    scene_dir.write_meta(SceneMeta(
        dataset=str(dataset), dataset_format="nerf", downscale=1, split_rule="auto", train_views=train,
        stages=["train", "associate", "prototypes"], configs={"prototypes": {"temperature": 10.0}},
    ))
    return scene_dir


@pytest.fixture()
def own_scene(scene, tmp_path) -> SceneDir:
    """A private copy of the scene directory, for tests that change its files."""
    return SceneDir(shutil.copytree(scene.root, tmp_path / "scene"))


def read_maps(folder: Path) -> dict[str, torch.Tensor]:
    return {path.stem: load_label_map(path) for path in sorted(folder.iterdir())}


def test_output_dir_is_the_option_or_scene_segment_method_split(tmp_path):
    scene_dir = SceneDir(tmp_path / "s")
    assert output_dir(scene_dir, SegmentConfig()) == tmp_path / "s" / "segment" / "lifted" / "test"
    assert output_dir(scene_dir, SegmentConfig(method="kmeans", split="train")) == tmp_path / "s" / "segment" / "kmeans" / "train"
    assert output_dir(scene_dir, SegmentConfig(method="proto", output=tmp_path / "mine")) == tmp_path / "mine"


def test_cls_settings_carry_every_cls_option_and_the_seed():
    config = SegmentConfig(cls_iterations=17, cls_lr_features=0.25, cls_lr_classifier=0.125, cls_reg3d_lambda=3.5, seed=9)
    settings = config.cls_settings()
    assert isinstance(settings, ClsSettings)
    assert asdict(settings) == {"iterations": 17, "lr_features": 0.25, "lr_classifier": 0.125, "reg3d_lambda": 3.5, "seed": 9}
    # The defaults agree, so `protosaga segment --method cls` trains as the baseline documents.
    assert SegmentConfig().cls_settings() == ClsSettings()


def test_lifted_maps_are_the_rendered_labels_of_labels_npy(scene):
    folder = segment(scene, SegmentConfig(), progress=False)
    maps = read_maps(folder)
    assert sorted(maps) == sorted(TEST_NAMES)  # one map per test view, nothing else
    gaussians, labels = scene.read_gaussians(), torch.from_numpy(scene.read_labels())
    dataset = scene.load_dataset()
    views = dataset.split("test")
    expected = render_label_maps(gaussians, dataset.cameras(views), labels, torch.tensor(LABEL_IDS))
    for view, want in zip(views, expected):
        assert torch.equal(maps[view.name], want)
    values = set(torch.cat([m.flatten() for m in maps.values()]).tolist())
    assert values == {0, *LABEL_IDS}  # labels.npy's ids, and 0 on the empty background


def test_lifted_maps_follow_labels_npy_not_the_features(own_scene, tmp_path):
    before = read_maps(segment(own_scene, SegmentConfig(output=tmp_path / "before"), progress=False))
    labels = own_scene.read_labels()
    swapped = np.where(labels == LABEL_IDS[0], LABEL_IDS[1], np.where(labels == LABEL_IDS[1], LABEL_IDS[0], labels))
    own_scene.write_labels(swapped)
    after = read_maps(segment(own_scene, SegmentConfig(output=tmp_path / "after"), progress=False))
    a, b = LABEL_IDS
    for name, old in before.items():
        assert torch.equal(after[name], torch.where(old == a, b, torch.where(old == b, a, old)))


def test_proto_maps_are_eq_19_on_the_rendered_features(scene, tmp_path):
    folder = segment(scene, SegmentConfig(method="proto", output=tmp_path / "proto"), progress=False)
    maps = read_maps(folder)
    assert sorted(maps) == sorted(TEST_NAMES)
    dataset, prototypes = scene.load_dataset(), Prototypes.load(scene.prototypes_path)
    for view, features in render_features(scene.read_gaussians(), dataset, dataset.split("test"), progress=False):
        assert torch.equal(maps[view.name], classify(features, prototypes, 10.0))
        assert (maps[view.name] > 0).all()  # a feature method labels every pixel, background included
    # Blob 0 (labels.npy's 7) has feature channel 0, whose prototype is 9.
    lifted = read_maps(segment(scene, SegmentConfig(output=tmp_path / "lifted"), progress=False))
    for name in TEST_NAMES:
        on_blob0 = lifted[name] == LABEL_IDS[0]
        assert on_blob0.any() and (maps[name][on_blob0] == PROTO_IDS[0]).float().mean() > 0.95


def test_proto_uses_the_temperature_recorded_in_scene_json(own_scene, tmp_path):
    meta = own_scene.read_meta()
    meta.configs["prototypes"]["temperature"] = 0.0
    own_scene.write_meta(meta)
    with pytest.raises(ValueError, match="temperature"):
        segment(own_scene, SegmentConfig(method="proto", output=tmp_path / "out"), progress=False)


def test_kmeans_needs_only_the_consistent_masks_and_is_seeded(own_scene, tmp_path):
    own_scene.prototypes_path.unlink()
    own_scene.labels_path.unlink()
    first = read_maps(segment(own_scene, SegmentConfig(method="kmeans", output=tmp_path / "a"), progress=False))
    again = read_maps(segment(own_scene, SegmentConfig(method="kmeans", output=tmp_path / "b"), progress=False))
    assert sorted(first) == sorted(TEST_NAMES)
    assert all(torch.equal(first[name], again[name]) for name in TEST_NAMES)
    assert all(set(m.unique().tolist()) == set(MASK_IDS) for m in first.values())  # the masks' ids, no 0


def test_kmeans_names_a_missing_consistent_mask(own_scene, tmp_path):
    missing = own_scene.association_dir / "v0.png"
    missing.unlink()
    with pytest.raises(SceneDirError, match="protosaga associate") as error:
        segment(own_scene, SegmentConfig(method="kmeans", output=tmp_path / "out"), progress=False)
    assert str(missing) in str(error.value)
    assert not (tmp_path / "out").exists()  # a failed run leaves no empty folder behind


def test_an_output_folder_holding_files_is_refused_and_named(scene, tmp_path):
    out = tmp_path / "labels"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="already holds files.*--overwrite") as error:
        segment(scene, SegmentConfig(output=out), progress=False)
    assert str(out) in str(error.value)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]  # refused before writing anything
    segment(scene, SegmentConfig(output=out, overwrite=True), progress=False)
    assert sorted(p.name for p in out.iterdir()) == sorted([f"{n}.png" for n in TEST_NAMES] + ["keep.txt"])
    assert (out / "keep.txt").read_text() == "mine"


def test_the_default_folder_and_scene_segment_subfolders_are_rewritten_freely(own_scene):
    default = segment(own_scene, SegmentConfig(), progress=False)
    assert segment(own_scene, SegmentConfig(), progress=False) == default  # no --overwrite needed
    chosen = own_scene.root / "segment" / "mine"
    assert segment(own_scene, SegmentConfig(output=chosen), progress=False) == chosen
    assert sorted(p.name for p in chosen.iterdir()) == sorted(f"{n}.png" for n in TEST_NAMES)


def test_an_unknown_method_is_refused_before_any_work(scene):
    with pytest.raises(ValueError, match="unknown method 'watershed'") as error:
        segment(scene, SegmentConfig(method="watershed"), progress=False)  # type: ignore[arg-type]
    assert all(method in str(error.value) for method in METHODS)
    assert not (scene.root / "segment" / "watershed").exists()


def test_a_split_without_views_is_refused_and_names_the_dataset(own_scene, tmp_path):
    meta = own_scene.read_meta()
    meta.split_rule = "train-only"
    own_scene.write_meta(meta)
    with pytest.raises(ValueError, match="has no test views") as error:
        segment(own_scene, SegmentConfig(output=tmp_path / "out"), progress=False)
    assert meta.dataset in str(error.value)
    assert not (tmp_path / "out").exists()


def test_predictions_are_current_after_segment_until_an_input_changes(own_scene):
    folder = segment(own_scene, SegmentConfig(), progress=False)
    inputs = [own_scene.labels_path, own_scene.gaussians_path]
    assert predictions_current(folder, TEST_NAMES, inputs)
    assert not predictions_current(folder, [*TEST_NAMES, "v0"], inputs)  # a view without its map
    future = (folder / f"{TEST_NAMES[0]}.png").stat().st_mtime_ns + 10**9
    os.utime(own_scene.labels_path, ns=(future, future))
    assert not predictions_current(folder, TEST_NAMES, inputs)
    assert predictions_current(folder, TEST_NAMES, [own_scene.gaussians_path])


def test_predictions_are_stale_when_any_one_map_is_older_than_an_input(tmp_path):
    source = tmp_path / "labels.npy"
    source.write_bytes(b"x")
    for stem, stamp in (("a", 5), ("b", 1), ("c", 5)):
        (tmp_path / f"{stem}.png").write_bytes(b"x")
        os.utime(tmp_path / f"{stem}.png", ns=(stamp * 10**18, stamp * 10**18))
    os.utime(source, ns=(2 * 10**18, 2 * 10**18))
    assert not predictions_current(tmp_path, ["a", "b", "c"], [source])  # b predates the input
    assert predictions_current(tmp_path, ["a", "c"], [source])
    os.utime(source, ns=(5 * 10**18, 5 * 10**18))
    assert predictions_current(tmp_path, ["a", "c"], [source])  # as new as the input counts as current
    assert predictions_current(tmp_path, ["b"], [])  # no inputs: present is current
