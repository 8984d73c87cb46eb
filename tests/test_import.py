"""`protosaga import` (protosaga_core/imports/): Gaussians trained elsewhere, segmented without training.

A scene the project trains is written out as the INRIA code writes its output folder
(point_cloud/iteration_N/point_cloud.ply, cameras.json as scene/__init__.py's camera_to_JSON writes it,
cfg_args as train.py writes the repr of its argparse Namespace) and imported back; the real INRIA PLY of
../shared/data goes through the bare-PLY path.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from numpy.lib import recfunctions
from plyfile import PlyData, PlyElement
from scipy.spatial.transform import Rotation

from protosaga_core.cli import main
from protosaga_core.datasets import load_scene
from protosaga_core.datasets.similarity import (
    Similarity,
    SimilarityError,
    similarity_from_json,
)
from protosaga_core.gaussians import Gaussians
from protosaga_core.imports.inria import read_cfg_args
from protosaga_core.imports.sources import find_source
from protosaga_core.io.exports import SourceRows, export_instances
from protosaga_core.io.ply import write_ply
from protosaga_core.io.scene_dir import SceneDir

INRIA_PLY = Path(__file__).resolve().parents[2] / "shared" / "data" / "inria_ply" / "point_cloud.ply"
STATUE = Path(__file__).resolve().parents[2] / "shared" / "data" / "statue_colmap"
ANGLE = 30.0
"""Degrees the moved copy of the scene is turned about z (a similarity with scale SCALE and a shift)."""
SCALE = 2.0
SHIFT = (0.5, -1.0, 3.0)


# --- helpers: a trained scene written out as the INRIA code's output folder ------------------------------


def similarity() -> Similarity:
    """x' = SCALE·Rz(ANGLE)·x + SHIFT."""
    a = math.radians(ANGLE)
    matrix = torch.eye(4, dtype=torch.float64)
    matrix[:3, :3] = SCALE * torch.tensor([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    matrix[:3, 3] = torch.tensor(SHIFT, dtype=torch.float64)
    return Similarity(matrix)


def moved(gaussians: Gaussians, sim: Similarity) -> Gaussians:
    """Gaussians of SH degree 0 moved by a similarity: centres, log-scales + log s, and each rotation composed
    with R (wxyz quaternions, q_R ⊗ q); SH of higher degree would have to be rotated too."""
    assert gaussians.sh_degree == 0
    x, y, z, w = Rotation.from_matrix(sim.rotation.numpy()).as_quat()
    rw, rx, ry, rz = (torch.tensor(v, dtype=torch.float64) for v in (w, x, y, z))
    qw, qx, qy, qz = gaussians.quats.double().unbind(-1)
    quats = torch.stack([
        rw * qw - rx * qx - ry * qy - rz * qz, rw * qx + rx * qw + ry * qz - rz * qy,
        rw * qy - rx * qz + ry * qw + rz * qx, rw * qz + rx * qy - ry * qx + rz * qw,
    ], dim=-1)
    return Gaussians(
        means=sim.apply_points(gaussians.means.double()).float(),
        scales=gaussians.scales + math.log(sim.scale),
        quats=quats.float(),
        opacities=gaussians.opacities,
        sh0=gaussians.sh0,
        shN=gaussians.shN,
        features=gaussians.features[:, :0],
    )


def write_inria_folder(scene: Path, folder: Path, iterations: dict[int, Gaussians], sim: Similarity | None = None) -> Path:
    """The INRIA output folder of a scene trained here: a PLY per iteration, cameras.json of every view of
    its dataset (test cameras first, as scene/__init__.py lists them) and cfg_args, in the frame `sim` moves
    the dataset's world into (None: the dataset's own frame, as the INRIA code trains)."""
    sim = sim or Similarity.identity()
    meta = SceneDir(scene).read_meta()
    for iteration, gaussians in iterations.items():
        write_ply(folder / "point_cloud" / f"iteration_{iteration}" / "point_cloud.ply", gaussians, plain=True)
    dataset = load_scene(meta.dataset)
    cameras = []
    for index, view in enumerate(dataset.split("test") + dataset.split("train")):
        world_to_camera = sim.apply_viewmats(view.viewmat.double())
        camera_to_world = torch.linalg.inv(world_to_camera)  # what camera_to_JSON calls W2C
        cameras.append({
            "id": index, "img_name": view.name, "width": view.width, "height": view.height,
            "position": camera_to_world[:3, 3].tolist(), "rotation": camera_to_world[:3, :3].tolist(),
            "fy": float(view.K[1, 1]), "fx": float(view.K[0, 0]),
        })
    (folder / "cameras.json").write_text(json.dumps(cameras))
    (folder / "cfg_args").write_text(
        f"Namespace(sh_degree=0, source_path={meta.dataset!r}, model_path={str(folder)!r}, images='images', depths='', "
        "resolution=-1, white_background=False, train_test_exp=False, data_device='cuda', eval=False)"
    )
    return folder


def shuffled(gaussians: Gaussians) -> Gaussians:
    """The same Gaussians with their centres dealt out at random: the colours of the scene in the wrong places."""
    order = torch.randperm(len(gaussians), generator=torch.Generator().manual_seed(0))
    return Gaussians(**{**gaussians.tensors(), "means": gaussians.means[order], "features": gaussians.features[:, :0]})


@pytest.fixture(scope="module")
def original(trained_scene_readonly) -> SceneDir:
    return SceneDir(trained_scene_readonly)


@pytest.fixture(scope="module")
def inria_folder(original, tmp_path_factory) -> Path:
    """iteration_300: the trained Gaussians; iteration_7: the same, shuffled (an early, unfinished model)."""
    gaussians = original.read_gaussians()
    return write_inria_folder(original.root, tmp_path_factory.mktemp("inria") / "model", {7: shuffled(gaussians), 300: gaussians})


def run_ok(args: list[str], capsys) -> str:
    code = main(args)
    out = capsys.readouterr()
    assert code == 0, out.err
    return out.out + out.err


def refused(args: list[str], capsys) -> str:
    """The one-line error of a command that must fail with exit 2."""
    code = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err, err
    return err[-1]


# --- the INRIA folder, imported and segmented --------------------------------------------------------------


@pytest.fixture(scope="module")
def segmented_import(inria_folder, tmp_path_factory) -> tuple[Path, str, str]:
    """The INRIA folder imported (its dataset found through cfg_args) and `protosaga run SCENE` on it: the
    scene, the import's output and the run's."""
    scene = tmp_path_factory.mktemp("segmented") / "scene"
    outputs = []
    for args in (["import", str(inria_folder), "-o", str(scene)], ["run", str(scene)]):
        with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.redirect_stderr(io.StringIO()) as err:
            code = main(args)
        assert code == 0, err.getvalue()[-2000:]
        outputs.append(out.getvalue() + err.getvalue())
    return scene, outputs[0], outputs[1]


def test_an_inria_folder_imports_and_segments_exactly_as_the_original(original, inria_folder, segmented_import):
    """Same Gaussians (float32 both ways), same masks, same frame: association and lifted labels are equal."""
    scene, import_out, run_out = segmented_import
    assert "iteration 300 of 7, 300" in import_out and "cfg_args' source_path" in import_out
    imported = SceneDir(scene)
    meta = imported.read_meta()
    assert meta.world_transform is None and meta.configs["import"]["iteration"] == 300
    assert meta.configs["import"]["alignment"]["gain_db"] > 5.0
    assert imported.gaussians_path.read_bytes() == (inria_folder / "point_cloud" / "iteration_300" / "point_cloud.ply").read_bytes()

    # masks -> associate -> prototypes -> eval, without training
    assert "train: none: an imported scene" in run_out and "proto skipped" in run_out and "protosaga features" in run_out
    assert meta.stages == ["import", "associate", "refine", "prototypes", "eval"]
    np.testing.assert_array_equal(imported.read_labels(), original.read_labels())
    for png in sorted(original.association_dir.glob("*.png")):
        assert (imported.association_dir / png.name).read_bytes() == png.read_bytes(), png.name
    assert [(r.id, r.num_gaussians, r.num_views) for r in imported.read_meta().instances] == [
        (r.id, r.num_gaussians, r.num_views) for r in original.read_meta().instances
    ]
    metrics = json.loads((imported.eval_dir / "metrics.json").read_text())
    assert metrics["objects_3d"] == json.loads((original.eval_dir / "metrics.json").read_text())["objects_3d"]


def test_iteration_picks_its_folder_and_an_unfinished_one_is_refused(inria_folder, tmp_path, capsys):
    scene = tmp_path / "early"
    error = refused(["import", str(inria_folder), "--iteration", "7", "-o", str(scene)], capsys)
    assert "iteration_7" in error and "refused, nothing written" in error and "--iteration 300" in error
    assert not scene.exists()
    error = refused(["import", str(inria_folder), "--iteration", "5", "-o", str(scene)], capsys)
    assert "no iteration_5; it holds iterations 7, 300" in error
    run_ok(["import", str(inria_folder), "--iteration", "300", "-o", str(scene), "--skip-alignment-check"], capsys)
    assert SceneDir(scene).read_meta().configs["import"]["iteration"] == 300


def test_a_wrong_dataset_is_refused_and_nothing_is_written(inria_folder, tmp_path, capsys):
    """The real statue photos (../shared/data) for the room: other names in cameras.json, other pictures."""
    scene = tmp_path / "scene"
    error = refused(["import", str(inria_folder), "--dataset", str(STATUE), "-o", str(scene)], capsys)
    assert "refused, nothing written" in error and "cameras.json names none of the dataset" in error and "worse than a flat colour" in error
    assert not scene.exists()


def test_a_similarity_round_trip_segments_as_the_original(original, tmp_path, capsys):
    """The Gaussians moved by a known similarity (turned, scaled x2, shifted), imported with the transform
    as nerfstudio's dataparser_transforms.json writes one: the cameras follow them into their frame."""
    sim = similarity()
    folder = write_inria_folder(original.root, tmp_path / "model", {300: moved(original.read_gaussians(), sim)}, sim)
    scene = tmp_path / "imported"

    error = refused(["import", str(folder), "-o", str(scene)], capsys)  # no transform: the frames differ
    assert "cameras.json" in error and "--transform" in error and not scene.exists()
    wrong = tmp_path / "wrong.json"  # the rotation and scale right, the shift not
    wrong.write_text(json.dumps({"transform": [row[:3] + [0.0] for row in (sim.matrix[:3] / SCALE).tolist()], "scale": SCALE}))
    error = refused(["import", str(folder), "--transform", str(wrong), "-o", str(scene)], capsys)
    assert "--transform" in error and not scene.exists()
    ply = folder / "point_cloud" / "iteration_300" / "point_cloud.ply"  # no cameras.json: the renders alone
    dataset = original.read_meta().dataset
    error = refused(["import", str(ply), "--dataset", dataset, "--transform", str(wrong), "-o", str(scene)], capsys)
    assert "worse than a flat colour" in error and "--transform" in error and not scene.exists()
    right = tmp_path / "dataparser_transforms.json"
    right.write_text(json.dumps({"transform": (sim.matrix[:3] / SCALE).tolist(), "scale": SCALE}))  # x' = scale·(T·x)
    out = run_ok(["import", str(folder), "--transform", str(right), "-o", str(scene)], capsys)
    assert "refused" not in out
    imported = SceneDir(scene)
    torch.testing.assert_close(torch.tensor(imported.read_meta().world_transform, dtype=torch.float64), sim.matrix)

    out = run_ok(["run", str(scene)], capsys)
    assert "refine: not done yet: none: the imported scene has no features yet" in out  # lifted labels need none
    same = float((imported.read_labels() == original.read_labels()).mean())
    assert same > 0.995, f"{same:.4f} of the labels agree"  # measured: all (float32 rounding could flip a rare tie)
    ours = json.loads((imported.eval_dir / "metrics.json").read_text())["objects_3d"]  # GT depths scaled by s
    theirs = json.loads((original.eval_dir / "metrics.json").read_text())["objects_3d"]
    assert abs(ours["miou"] - theirs["miou"]) < 0.02 and ours["num_pred"] == theirs["num_pred"]


# --- stages that need features ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["associate", "{scene}", "--grouping", "bank"],
        ["prototypes", "{scene}", "--gaussian-labels", "features"],
        ["segment", "{scene}", "--method", "proto"],
        ["segment", "{scene}", "--method", "cls"],
    ],
)
def test_what_needs_features_names_the_training_that_adds_them(segmented_import, args, capsys):
    scene = segmented_import[0]
    before = (scene / "scene.json").read_bytes()
    error = refused([arg.format(scene=scene) for arg in args], capsys)
    assert "no per-Gaussian features" in error or "has none yet" in error
    assert "protosaga features" in error
    assert (scene / "scene.json").read_bytes() == before


def test_training_into_an_imported_scene_is_refused_naming_features(segmented_import, original, capsys):
    scene = segmented_import[0]
    before = (scene / "gaussians.ply").read_bytes()
    error = refused(["train", original.read_meta().dataset, "-o", str(scene), "--preset", "cpu"], capsys)
    assert "imported" in error and "protosaga features" in error and "interrupted" not in error
    assert (scene / "gaussians.ply").read_bytes() == before


def test_run_paper_on_an_imported_scene_learns_the_features_first(segmented_import, inria_folder, tmp_path, capsys):
    """`protosaga run SCENE --paper` chains `features` (on the frozen Gaussians) before the memory bank and
    Eq. 19; the Gaussians and the source rows an export copies stay as imported."""
    scene = Path(shutil.copytree(segmented_import[0], tmp_path / "scene"))
    out = run_ok(["run", str(scene), "--paper"], capsys)
    assert "features: not done yet" in out and "memory bank" in out
    assert "refine: not done yet: none (--refine.passes 0)" in out and not SceneDir(scene).refined_features_path.exists()
    imported = SceneDir(scene)
    meta = imported.read_meta()
    assert "features" in meta.stages and meta.configs["prototypes"]["gaussian_labels"] == "features"
    gaussians = imported.read_gaussians()
    assert gaussians.feature_dim == 16
    torch.testing.assert_close(gaussians.means, SceneDir(segmented_import[0]).read_gaussians().means, rtol=0, atol=0)
    whole = tmp_path / "whole.ply"
    run_ok(["export", str(scene), "-o", str(whole)], capsys)
    assert whole.read_bytes() == (inria_folder / "point_cloud" / "iteration_300" / "point_cloud.ply").read_bytes()


def test_the_viewer_opens_an_imported_scene_without_its_feature_modes(segmented_import, tmp_path):
    scene_root = Path(shutil.copytree(segmented_import[0], tmp_path / "scene"))  # the viewer saves its edits
    from viser_client import free_port

    from protosaga_app.document import SceneDocument
    from protosaga_app.scene import ViewerScene
    from protosaga_app.viewer import ViewerConfig, serve

    scene = ViewerScene.load(scene_root)
    assert scene.gaussians.feature_dim == 0 and len(scene.prototypes) == len(scene.instances) > 0
    document = SceneDocument(scene, torch.device("cpu"))
    view = scene.training_views()[0]
    np.testing.assert_array_equal(document.predict_view(view), document.predict_view(view))  # lifted labels render
    keep, absorb = sorted(scene.instances, key=lambda row: -row.num_gaussians)[0].id, scene.instances[-1].id
    document.merge(keep, absorb)  # prototypes of empty features follow the merge
    assert absorb not in set(document.labels().tolist())
    for mode in ("pca", "prototypes"):
        with pytest.raises(ValueError, match=f"--mode {mode}: .*protosaga features"):
            serve(ViewerConfig(scene_root, port=free_port(), open_browser=False, mode=mode))
    app = serve(ViewerConfig(scene_root, port=free_port(), open_browser=False))
    try:
        assert app.document.scene.scene_dir.root == scene_root
    finally:
        app.stop()


# --- the real INRIA PLY: bare-PLY path, verbatim export -------------------------------------------------------


def test_the_real_inria_ply_imports_and_exports_byte_for_byte(original, tmp_path, capsys):
    dataset = original.read_meta().dataset  # a dataset it was not trained on: only with the check skipped
    scene = tmp_path / "scene"
    error = refused(["import", str(INRIA_PLY), "--dataset", dataset, "-o", str(scene)], capsys)
    assert "refused, nothing written" in error and not scene.exists()

    out = run_ok(["import", str(INRIA_PLY), "--dataset", dataset, "-o", str(scene), "--skip-alignment-check"], capsys)
    assert "NOT checked" in out and "wrong Gaussians" in out
    imported = SceneDir(scene)
    assert imported.gaussians_path.read_bytes() == INRIA_PLY.read_bytes()
    gaussians = imported.read_gaussians()
    assert len(gaussians) == 9080 and gaussians.sh_degree == 3 and gaussians.feature_dim == 0

    whole = tmp_path / "whole.ply"
    run_ok(["export", str(scene), "-o", str(whole)], capsys)
    assert whole.read_bytes() == INRIA_PLY.read_bytes()  # header and every record

    source = PlyData.read(str(INRIA_PLY))["vertex"].data
    rows = np.arange(1, len(gaussians), 3)
    labels = np.zeros(len(gaussians), dtype=np.int64)
    labels[rows] = 5
    part = tmp_path / "part.ply"
    count = export_instances(gaussians, labels, {5}, part, True, SourceRows.of(imported))
    written = PlyData.read(str(part))["vertex"].data
    assert count == len(rows) and written.dtype.names == source.dtype.names + ("instance",)
    records = recfunctions.repack_fields(written[list(source.dtype.names)])
    assert records.tobytes() == source[rows].tobytes()  # each record, byte for byte
    assert (written["instance"] == 5).all()


def test_an_inria_ply_with_extra_properties_keeps_them(original, tmp_path, capsys):
    """Properties the project does not know (another trainer's extra channel, a float64 column) are kept in
    the scene and in its exports, byte for byte."""
    ply = PlyData.read(str(INRIA_PLY))
    data = ply["vertex"].data
    extra = np.empty(len(data), dtype=data.dtype.descr + [("confidence", "<f8"), ("segment", "<u2")])
    for name in data.dtype.names:
        extra[name] = data[name]
    extra["confidence"] = np.linspace(0, 1, len(data))
    extra["segment"] = np.arange(len(data)) % 7
    source = tmp_path / "extra.ply"
    PlyData([PlyElement.describe(extra, "vertex")], byte_order="<", comments=["made by another trainer"]).write(str(source))
    scene = tmp_path / "scene"
    run_ok(["import", str(source), "--dataset", original.read_meta().dataset, "-o", str(scene), "--skip-alignment-check"], capsys)
    whole = tmp_path / "whole.ply"
    run_ok(["export", str(scene), "-o", str(whole)], capsys)
    assert whole.read_bytes() == source.read_bytes()


# --- inputs, one line each ----------------------------------------------------------------------------------


def test_bad_inputs_are_one_line_naming_the_file(inria_folder, original, tmp_path, capsys):
    dataset = original.read_meta().dataset
    error = refused(["import", str(tmp_path / "nothing"), "--dataset", dataset, "-o", str(tmp_path / "s")], capsys)
    assert "nothing: no such file or folder" in error
    error = refused(["import", str(INRIA_PLY), "--iteration", "7", "--dataset", dataset, "-o", str(tmp_path / "s")], capsys)
    assert "this is a single PLY" in error
    error = refused(["import", str(INRIA_PLY), "-o", str(tmp_path / "s")], capsys)
    assert "--dataset DATASET" in error
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"transform": [[1, 0, 0, 0], [0, 2, 0, 0], [0, 0, 1, 0]]}))  # stretches y
    error = refused(["import", str(inria_folder), "--transform", str(bad), "-o", str(tmp_path / "s")], capsys)
    assert "bad.json" in error and "uniform scale" in error
    broken = tmp_path / "broken"
    shutil.copytree(inria_folder, broken)
    (broken / "cameras.json").write_text('[{"img_name": "a"}]')
    error = refused(["import", str(broken), "-o", str(tmp_path / "s")], capsys)
    assert "cameras.json: camera 0 is malformed" in error
    (broken / "cameras.json").unlink()
    (broken / "cfg_args").write_text("__import__('os').system('true')")
    error = refused(["import", str(broken), "-o", str(tmp_path / "s")], capsys)
    assert "cfg_args: not an INRIA cfg_args" in error
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("mine")
    error = refused(["import", str(inria_folder), "-o", str(occupied)], capsys)
    assert "already holds files" in error
    error = refused(["import", str(inria_folder), "-o", str(original.root / "inside")], capsys)
    assert "inside the trained scene" in error
    assert not (tmp_path / "s").exists()
    error = refused(["run", str(original.root)], capsys)  # a scene trained here: its flags are needed
    assert "protosaga run DATASET -o SCENE" in error
    error = refused(["run", dataset], capsys)
    assert "is no scene" in error and "-o SCENE" in error


def test_an_interrupted_import_leaves_nothing(inria_folder, tmp_path, monkeypatch):
    from protosaga_core.imports import importer

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(importer.SceneDir, "mark_done", interrupted)  # after gaussians.ply was copied
    with pytest.raises(KeyboardInterrupt):
        importer.import_scene(inria_folder, None, tmp_path / "scene")
    assert not (tmp_path / "scene").exists()


def test_cfg_args_and_latest_iteration(inria_folder):
    found = find_source(inria_folder)
    assert found.iteration == 300 and found.iterations == (7, 300) and found.white_background is False
    assert read_cfg_args(inria_folder / "cfg_args")["sh_degree"] == 0
    assert len(found.cameras) == 48 and found.cameras[0].rotation.shape == (3, 3)


# --- the similarity itself ------------------------------------------------------------------------------------


def test_a_similarity_keeps_every_pixel_and_scales_depths():
    sim = similarity()
    scene = load_scene(Path(__file__).resolve().parents[1] / "assets" / "demo")
    view = scene.views[3]
    points = torch.randn(50, 3, dtype=torch.float64) + view.cameras.centers[0].double()

    def project(viewmat, xyz):
        cam = xyz @ viewmat[:3, :3].T.double() + viewmat[:3, 3].double()
        return (cam[:, :2] / cam[:, 2:]) @ view.K[:2, :2].T.double() + view.K[:2, 2].double(), cam[:, 2]

    pixels, depths = project(view.viewmat.double(), points)
    moved_view = sim.apply_scene(scene).views[3]
    moved_pixels, moved_depths = project(moved_view.viewmat.double(), sim.apply_points(points))
    torch.testing.assert_close(moved_pixels, pixels, atol=1e-2, rtol=0)  # pixels; viewmats are float32
    torch.testing.assert_close(moved_depths, SCALE * depths, atol=1e-4, rtol=1e-5)
    rotation = moved_view.viewmat[:3, :3].double()
    torch.testing.assert_close(rotation @ rotation.T, torch.eye(3, dtype=torch.float64), atol=1e-6, rtol=0)
    assert moved_view.depth_scale == pytest.approx(SCALE * view.depth_scale)
    torch.testing.assert_close(sim.apply_scene(scene).points, sim.apply_points(scene.points), atol=1e-5, rtol=0)


def test_similarity_files_are_validated():
    assert similarity_from_json({"transform": np.eye(4)[:3].tolist(), "scale": 0.5}, "f").scale == pytest.approx(0.5)
    assert similarity_from_json(np.eye(4).tolist(), "f").is_identity()
    for raw, problem in [
        ({"transform": np.diag([1.0, 1.0, -1.0, 1.0]).tolist()}, "mirrors"),
        ({"transform": [[1, 0.3, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]]}, "uniform scale"),
        ({"transform": np.eye(4).tolist(), "scale": -1}, "positive scale"),
        ({"transform": [[1, 0, 0], [0, 1, 0]]}, "3x4 or 4x4"),
        ({"scale": 2}, "dataparser_transforms.json"),
    ]:
        with pytest.raises(SimilarityError, match=problem):
            similarity_from_json(raw, "f")


# --- nerfstudio and gsplat: their layouts and frames -------------------------------------------------------

APPLIED = [[0.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, -1.0, 0.0]]
"""The applied_transform ns-process-data records for a COLMAP capture: transforms.json stores the capture's
frames turned by it."""
NERFSTUDIO_CONFIG = """!!python/object:nerfstudio.engine.trainer.TrainerConfig
_target: !!python/name:nerfstudio.engine.trainer.Trainer ''
data: null
method_name: splatfacto
pipeline: !!python/object:nerfstudio.pipelines.base_pipeline.VanillaPipelineConfig
  datamanager: !!python/object:nerfstudio.data.datamanagers.full_images_datamanager.FullImageDatamanagerConfig
    data: null
    dataparser: !!python/object:nerfstudio.data.dataparsers.nerfstudio_dataparser.NerfstudioDataParserConfig
      _target: !!python/name:nerfstudio.data.dataparsers.nerfstudio_dataparser.Nerfstudio ''
      auto_scale_poses: true
      data: !!python/object/apply:pathlib.PosixPath
      - {data}
      orientation_method: up
  model: !!python/object:nerfstudio.models.splatfacto.SplatfactoModelConfig
    sh_degree: 0
"""
"""config.yml as nerfstudio's yaml.dump writes it (abridged): Python tags, the dataset a relative PosixPath."""
GSPLAT_CONFIG = """data_dir: {data}
data_factor: 1
normalize_world_space: {normalized}
result_dir: results/demo
save_ply: true
strategy: !!python/object:gsplat.strategy.default.DefaultStrategy
  absgrad: false
  prune_opa: 0.005
test_every: 8
"""
"""cfg.yml as gsplat's simple_trainer writes it with yaml.dump(vars(cfg)) (abridged)."""


def nerfstudio_dataset(dataset: Path, folder: Path) -> Path:
    """The dataset as ns-process-data leaves a COLMAP capture: every frame turned by APPLIED, which its
    transforms files record (the point cloud left out: nothing here reads it)."""
    shutil.copytree(dataset, folder)
    applied = np.eye(4)
    applied[:3] = APPLIED
    for name in ("transforms_train.json", "transforms_test.json"):
        meta = json.loads((folder / name).read_text())
        for frame in meta["frames"]:
            frame["transform_matrix"] = (applied @ np.array(frame["transform_matrix"])).tolist()
        meta["applied_transform"] = APPLIED
        meta.pop("ply_file_path", None)
        (folder / name).write_text(json.dumps(meta))
    return folder


def test_a_nerfstudio_run_imports_in_its_dataparser_frame_and_segments_as_the_original(original, tmp_path, capsys, monkeypatch):
    """The trained Gaussians exported as splatfacto would (INRIA columns, in the dataparser frame: turned,
    scaled x2, shifted from the capture's frame) beside dataparser_transforms.json, whose transform starts from
    the capture's original frame, not from the transforms.json frame the dataset is read in."""
    sim = similarity()
    data = nerfstudio_dataset(Path(original.read_meta().dataset), tmp_path / "ns_data")
    run = tmp_path / "outputs" / "ns_data" / "splatfacto" / "2026-12-05_120000"
    write_ply(run / "splat.ply", moved(original.read_gaussians(), sim), plain=True)
    (run / "dataparser_transforms.json").write_text(json.dumps({"transform": (sim.matrix[:3] / SCALE).tolist(), "scale": SCALE}))
    (run / "config.yml").write_text(NERFSTUDIO_CONFIG.format(data="ns_data"))
    monkeypatch.chdir(run)  # config.yml's path is relative to where ns-train ran: found above the run folder
    scene = tmp_path / "imported"

    out = run_ok(["import", str(run), "-o", str(scene)], capsys)
    assert "(config.yml's dataparser data)" in out and "after the dataset's applied_transform" in out
    imported = SceneDir(scene)
    applied = torch.eye(4, dtype=torch.float64)
    applied[:3] = torch.tensor(APPLIED)
    expected = sim.matrix @ torch.linalg.inv(applied)  # the transforms.json frame -> the capture's -> theirs
    torch.testing.assert_close(torch.tensor(imported.read_meta().world_transform, dtype=torch.float64), expected)
    assert imported.read_meta().configs["import"]["kind"] == "nerfstudio"
    assert imported.gaussians_path.read_bytes() == (run / "splat.ply").read_bytes()

    out = run_ok(["run", str(scene)], capsys)
    assert "refine: not done yet: none: the imported scene has no features yet" in out  # lifted labels need none
    same = float((imported.read_labels() == original.read_labels()).mean())
    assert same > 0.995, f"{same:.4f} of the labels agree"

    wrong = tmp_path / "wrong.json"  # the rotation and scale right, the shift not
    wrong.write_text(json.dumps({"transform": [row[:3] + [0.0] for row in (sim.matrix[:3] / SCALE).tolist()], "scale": SCALE}))
    error = refused(["import", str(run), "--transform", str(wrong), "-o", str(tmp_path / "no")], capsys)
    assert "none of the 2 frames tried" in error and "--transform" in error and not (tmp_path / "no").exists()
    (run / "splat.ply").rename(run / "other.ply")
    (run / "more.ply").write_bytes(b"")
    error = refused(["import", str(run), "-o", str(tmp_path / "no")], capsys)
    assert "without splat.ply" in error and "other.ply" in error


def gsplat_reference(scene) -> np.ndarray:
    """gsplat's normalize_world_space for a dataset, written out step by step and camera by camera as its
    examples/datasets (normalize.py, colmap.py's Parser) describe it: an independent reference for frames.py."""
    c2ws = [np.linalg.inv(view.viewmat.double().numpy()) for view in scene.views]
    up = sum(c2w[:3, :3] @ np.array([0.0, -1.0, 0.0]) for c2w in c2ws) / len(c2ws)
    up /= np.linalg.norm(up)
    target = np.array([0.0, -1.0, 0.0])
    align = Rotation.align_vectors([target], [up])[0].as_matrix()  # the shortest turn of `up` onto target
    nearest = []
    for c2w in c2ws:
        centre, forward = align @ c2w[:3, 3], align @ c2w[:3, 2]
        nearest.append(centre - (forward @ centre) * forward)
    translate = -np.median(np.array(nearest), axis=0)
    scale = 1.0 / np.median([np.linalg.norm(align @ c2w[:3, 3] + translate) for c2w in c2ws])
    t1 = np.eye(4)
    t1[:3, :3], t1[:3, 3] = scale * align, scale * translate
    points = np.array([t1[:3, :3] @ p + t1[:3, 3] for p in scene.points.double().numpy()])
    centroid = np.median(points, axis=0)
    variances, axes = np.linalg.eigh(np.cov((points - centroid).T))
    axes = axes[:, ::-1]
    axes[:, 0] *= np.sign(np.linalg.det(axes))
    t2 = np.eye(4)
    t2[:3, :3], t2[:3, 3] = axes.T, -axes.T @ centroid
    moved_points = points @ t2[:3, :3].T + t2[:3, 3]
    flip = np.diag([1.0, -1.0, -1.0, 1.0]) if np.median(moved_points[:, 2]) > np.mean(moved_points[:, 2]) else np.eye(4)
    return flip @ t2 @ t1


def write_gsplat_result(folder: Path, gaussians: Gaussians, data: str, normalized: bool, ranks: int = 0) -> Path:
    """A gsplat simple_trainer result folder at step 299: cfg.yml and ply/point_cloud_299.ply (--save-ply,
    written by gsplat's exporter as the trainer does), or with `ranks`, only ckpts/ckpt_299_rank{r}.pt holding
    each rank's share."""
    from gsplat.exporter import export_splats

    folder.mkdir(parents=True)
    (folder / "cfg.yml").write_text(GSPLAT_CONFIG.format(data=data, normalized=str(normalized).lower()))
    tensors = {"means": gaussians.means, "scales": gaussians.scales, "quats": gaussians.quats,
               "opacities": gaussians.opacities, "sh0": gaussians.sh0, "shN": gaussians.shN}
    if not ranks:
        (folder / "ply").mkdir()
        export_splats(**tensors, format="ply", save_to=str(folder / "ply" / "point_cloud_299.ply"))
        return folder
    (folder / "ckpts").mkdir()
    for rank, rows in enumerate(torch.arange(len(gaussians)).tensor_split(ranks)):
        torch.save({"step": 299, "splats": {key: value[rows].clone() for key, value in tensors.items()}}, folder / "ckpts" / f"ckpt_299_rank{rank}.pt")
    return folder


def test_gsplat_results_import_in_their_normalised_world_and_segment_as_the_original(original, tmp_path, capsys):
    """The trained Gaussians moved into the world gsplat's COLMAP parser normalises (computed by the reference
    above), saved as --save-ply saves them, and as two ranks' checkpoints only; cfg.yml names the dataset."""
    dataset = Path(original.read_meta().dataset)
    reference = gsplat_reference(load_scene(dataset))
    sim = Similarity.from_matrix(reference, "reference")
    gaussians = moved(original.read_gaussians(), sim)
    assert abs(sim.scale - 1.0) > 0.05 and not torch.allclose(sim.rotation, torch.eye(3, dtype=torch.float64), atol=0.1)

    for result in (
        write_gsplat_result(tmp_path / "ply_result", gaussians, str(dataset), normalized=True),
        write_gsplat_result(tmp_path / "ckpt_result", gaussians, str(dataset), normalized=True, ranks=2),
    ):
        scene = tmp_path / f"imported_{result.name}"
        out = run_ok(["import", str(result), "-o", str(scene)], capsys)
        assert "(cfg.yml's data_dir)" in out and "iteration 299 of 299" in out
        imported = SceneDir(scene)
        record = imported.read_meta().configs["import"]
        assert record["kind"] == "gsplat" and record["frame"].startswith("gsplat's normalised world")
        torch.testing.assert_close(torch.tensor(imported.read_meta().world_transform, dtype=torch.float64), sim.matrix)
        assert len(imported.read_gaussians()) == len(gaussians)
        run_ok(["run", str(scene)], capsys)
        same = float((imported.read_labels() == original.read_labels()).mean())
        assert same > 0.995, f"{result.name}: {same:.4f} of the labels agree"
    assert "rank0.pt" in record["ply"] and "rank1.pt" in record["ply"]

    wrong = write_gsplat_result(tmp_path / "says_not_normalised", gaussians, str(dataset), normalized=False)
    error = refused(["import", str(wrong), "-o", str(tmp_path / "no")], capsys)
    assert "refused, nothing written" in error and not (tmp_path / "no").exists()
    error = refused(["import", str(wrong), "--iteration", "7", "-o", str(tmp_path / "no")], capsys)
    assert "no step 7 saved; it holds steps 299" in error


def test_gsplat_frames_match_the_reference_in_every_sign_pattern(original):
    """frames.py's normalisation against the reference, and what it is meant to do: the points' principal axes
    on x, y, z, largest variance first."""
    from protosaga_core.imports.frames import gsplat_frames

    scene = load_scene(original.read_meta().dataset)
    frames = gsplat_frames(scene)
    reference = gsplat_reference(scene)
    assert len(frames) == 4 and any(np.allclose(frame.similarity.matrix.numpy(), reference, atol=1e-9) for frame in frames)
    points = frames[0].similarity.apply_points(scene.points.double()).numpy()
    covariance = np.cov(points.T)
    assert np.abs(covariance - np.diag(np.diag(covariance))).max() < 1e-9 * np.abs(covariance).max()
    assert covariance[0, 0] > covariance[1, 1] > covariance[2, 2]
    signs = [np.sign(np.diag(f.similarity.rotation.numpy() @ frames[0].similarity.rotation.numpy().T)) for f in frames]
    assert sorted(map(tuple, signs)) == sorted([(1, 1, 1), (1, -1, -1), (-1, 1, -1), (-1, -1, 1)])


def test_trainer_configs_are_read_without_running_their_code(tmp_path):
    from protosaga_core.imports.trainer_yaml import find_key, read_trainer_yaml

    path = tmp_path / "config.yml"
    path.write_text(NERFSTUDIO_CONFIG.format(data="data/nerfstudio/poster"))
    config = read_trainer_yaml(path)
    assert find_key(find_key(config, "dataparser"), "data") == "data/nerfstudio/poster"
    assert find_key(config, "sh_degree") == 0
    path.write_text("!!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ValueError, match="expected a mapping"):
        read_trainer_yaml(path)
    path.write_text("a: [unclosed\n")
    with pytest.raises(ValueError, match="not a readable YAML config"):
        read_trainer_yaml(path)
