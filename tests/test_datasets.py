"""Dataset loaders: every format's axis convention pinned by projecting known points, splits, and errors.

The synthetic rig defines each camera by its axes (right, down, forward) in world coordinates; every writer below
expresses those axes in its format's own documented convention, and the expected pixel of a point is computed
from the axes directly, so a loader that mixes up an axis cannot project to it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.spatial.transform import Rotation

from protosaga_core.datasets import DatasetConfig, DatasetError, View, detect_format, load_scene
from protosaga_core.metrics.instances import resize_nearest

STATUE = Path(__file__).resolve().parents[2] / "shared" / "data" / "statue_colmap"

WIDTH, HEIGHT = 64, 48
FX, FY, CX, CY = 50.0, 55.0, 30.0, 22.0  # non-square, off-centre: a swapped or defaulted value shows
POINTS = np.array([[0.0, 0.0, 0.0], [0.5, 0.0, 0.0], [0.0, 0.0, 0.5], [-0.4, 0.3, -0.2], [0.2, -0.5, 0.4]])


@dataclass(frozen=True)
class Rig:
    """Cameras given by their centres and axes in world coordinates. All [C, 3]."""

    centres: np.ndarray
    right: np.ndarray
    down: np.ndarray
    forward: np.ndarray

    def rotations(self) -> np.ndarray:
        """World-to-camera rotations (rows are the camera axes). [C, 3, 3]"""
        return np.stack([self.right, self.down, self.forward], axis=1)


def make_rig(count: int = 4) -> Rig:
    """Cameras at distance 4 around the origin in the z = 0 plane, looking at it, world +z up; camera 0 is at
    (0, -4, 0) looking along +y."""
    angles = -math.pi / 2 + 2 * math.pi * np.arange(count) / count
    centres = 4.0 * np.stack([np.cos(angles), np.sin(angles), np.zeros(count)], axis=1)
    forward = -centres / np.linalg.norm(centres, axis=1, keepdims=True)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right, axis=1, keepdims=True)
    return Rig(centres, right, np.cross(forward, right), forward)


def expected_pixels(rig: Rig, fx: float, fy: float, cx: float, cy: float) -> np.ndarray:
    """Pinhole projection of POINTS from the camera axes. [C, P, 2]"""
    offsets = POINTS[None] - rig.centres[:, None]
    depth = (offsets * rig.forward[:, None]).sum(-1)
    u = cx + fx * (offsets * rig.right[:, None]).sum(-1) / depth
    v = cy + fy * (offsets * rig.down[:, None]).sum(-1) / depth
    return np.stack([u, v], axis=-1)


def project(view: View, points: np.ndarray) -> np.ndarray:
    """World points [P, 3] through a loaded view's K and viewmat to pixels [P, 2]."""
    viewmat = view.viewmat.double().numpy()
    camera = points @ viewmat[:3, :3].T + viewmat[:3, 3]
    pixels = camera @ view.K.double().numpy().T
    return pixels[:, :2] / pixels[:, 2:]


def assert_projects(views: list[View], rig: Rig, intrinsics: tuple[float, float, float, float], scale=(1, 1)):
    expected = expected_pixels(rig, *intrinsics) * np.asarray(scale)
    for view, pixels in zip(views, expected):
        np.testing.assert_allclose(project(view, POINTS), pixels, atol=1e-3, err_msg=view.name)


def write_images(folder: Path, names: list[str], size=(WIDTH, HEIGHT)) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        Image.new("RGB", size, (200, 100, 50)).save(folder / name)


def write_label_map(path: Path, size=(WIDTH, HEIGHT)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0]), 300, dtype=np.uint16)).save(path)


def nerf_frame(rig: Rig, index: int, file_path: str) -> dict:
    """A frame whose transform_matrix is camera-to-world in OpenGL axes: columns right, up, backwards, centre."""
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2] = rig.right[index], -rig.down[index], -rig.forward[index]
    c2w[:3, 3] = rig.centres[index]
    return {"file_path": file_path, "transform_matrix": c2w.tolist()}


def write_llff(root: Path, rig: Rig, names: list[str], focal: float) -> None:
    """poses_bounds.npy rows: 3x5 [down, right, backwards, centre, (H, W, focal)] then near/far, images sorted."""
    poses = np.stack([rig.down, rig.right, -rig.forward, rig.centres], axis=-1)
    hwf = np.broadcast_to(np.array([HEIGHT, WIDTH, focal])[None, :, None], (len(names), 3, 1))
    rows = np.concatenate([np.concatenate([poses, hwf], axis=-1).reshape(len(names), 15),
                           np.tile([[0.5, 10.0]], (len(names), 1))], axis=1)
    np.save(root / "poses_bounds.npy", rows)
    write_images(root / "images", names)


def write_colmap_text(sparse: Path, rig: Rig, names: list[str], model: str = "PINHOLE",
                      params: tuple[float, ...] = (FX, FY, CX, CY)) -> None:
    """COLMAP's documented text format: one camera, images with quaternion (w, x, y, z) and t = -R c, points."""
    sparse.mkdir(parents=True, exist_ok=True)
    (sparse / "cameras.txt").write_text(f"# CAMERA_ID MODEL WIDTH HEIGHT PARAMS[]\n1 {model} {WIDTH} {HEIGHT} "
                                        + " ".join(map(str, params)) + "\n")
    rotations = rig.rotations()
    lines = ["# IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME, then POINTS2D[] as (X, Y, POINT3D_ID)"]
    for image_id, (name, rotation, centre) in enumerate(zip(names, rotations, rig.centres), start=1):
        qx, qy, qz, qw = Rotation.from_matrix(rotation).as_quat()
        t = -rotation @ centre
        lines += [f"{image_id} {qw} {qx} {qy} {qz} {t[0]} {t[1]} {t[2]} 1 {name}", ""]
    (sparse / "images.txt").write_text("\n".join(lines) + "\n")
    points = [f"{i + 1} {x} {y} {z} 255 0 51 0.5" for i, (x, y, z) in enumerate(POINTS)]
    (sparse / "points3D.txt").write_text("# POINT3D_ID X Y Z R G B ERROR TRACK[]\n" + "\n".join(points) + "\n")


def write_colmap(root: Path, rig: Rig, names: list[str], **camera) -> None:
    write_colmap_text(root / "sparse" / "0", rig, names, **camera)
    write_images(root / "images", names)


# --- the synthetic rig itself --------------------------------------------------------------------------------


def test_expected_pixels_match_a_hand_computed_camera():
    # Camera 0 sits at (0, -4, 0) looking along +y with +z up: world +x is image right, world +z image up.
    pixels = expected_pixels(make_rig(), FX, FY, CX, CY)[0]
    np.testing.assert_allclose(pixels[0], [CX, CY])
    np.testing.assert_allclose(pixels[1], [CX + FX * 0.5 / 4, CY])
    np.testing.assert_allclose(pixels[2], [CX, CY - FY * 0.5 / 4])


# --- the real COLMAP scene -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def statue():
    if not STATUE.is_dir():
        pytest.skip(f"{STATUE} not present")
    import pycolmap  # a dependency of the loaders themselves: its absence must fail, not skip

    return pycolmap.Reconstruction(STATUE / "sparse" / "0")


def observations(reconstruction) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per image stem: observed keypoints [M, 2] and the 3D points they observe [M, 3]."""
    result = {}
    for image in reconstruction.images.values():
        observed = [p for p in image.points2D if p.has_point3D()]
        keypoints = np.array([p.xy for p in observed])
        points = np.array([reconstruction.points3D[p.point3D_id].xyz for p in observed])
        result[Path(image.name).stem] = (keypoints, points)
    return result


def test_statue_colmap_loads_with_observations_reprojecting(statue):
    scene = load_scene(STATUE)
    names = [view.name for view in scene.views]
    assert scene.format == "colmap" and len(names) == 23 and names == sorted(names)
    assert [view.split for view in scene.views] == ["test" if i % 8 == 0 else "train" for i in range(23)]
    assert scene.points.shape == (1443, 3) and scene.point_colors.shape == (1443, 3)
    assert 0 <= scene.point_colors.min() and scene.point_colors.max() <= 1
    for view in scene.views:
        assert view.width == 1000 and 656 <= view.height <= 662
        assert 1500 < view.K[0, 0] < 2500 and 1500 < view.K[1, 1] < 2500
        assert abs(view.K[0, 2] - 500) < 1 and abs(view.K[1, 2] - view.height / 2) < 1
        assert view.image_path.is_file() and view.mask_path is None and view.instance_path is None
    views = {view.name: view for view in scene.views}
    for name, (keypoints, points) in observations(statue).items():
        errors = np.linalg.norm(project(views[name], points) - keypoints, axis=1)
        assert errors.max() < 2.0, f"{name}: reprojection error up to {errors.max():.2f} px"
        # The whole cloud, not only this image's observations, should mostly fall inside the frame.
        view = views[name]
        viewmat = view.viewmat.double().numpy()
        in_front = (scene.points.double().numpy() @ viewmat[:3, :3].T + viewmat[:3, 3])[:, 2] > 0
        pixels = project(view, scene.points.double().numpy()[in_front])
        inside = (pixels >= 0).all(1) & (pixels[:, 0] < view.width) & (pixels[:, 1] < view.height)
        assert inside.mean() > 0.9


def test_statue_downscale_2_halves_the_projections(statue):
    full = {view.name: view for view in load_scene(STATUE).views}
    half = load_scene(STATUE, downscale=2)
    views = {view.name: view for view in half.views}
    for name, (keypoints, points) in observations(statue).items():
        view = views[name]
        assert (view.width, view.height) == (500, full[name].height // 2) and view.downscale == 2
        ratio = np.array([view.width / full[name].width, view.height / full[name].height])
        assert np.abs(project(view, points) - keypoints * ratio).max() < 1.0
        assert np.abs(project(view, points) - keypoints / 2).max() < 1.5
    assert tuple(half.views[0].load_image().shape) == (half.views[0].height, 500, 3)


# --- NeRF transforms.json ------------------------------------------------------------------------------------


@pytest.mark.parametrize("intrinsics", ["shared", "per_frame", "field_of_view"])
def test_nerf_transforms_project_known_points(tmp_path, intrinsics):
    rig = make_rig()
    names = [f"frame_{i:03d}.png" for i in range(4)]
    write_images(tmp_path / "images", names)
    frames = [nerf_frame(rig, i, f"images/{name}") for i, name in enumerate(names)]
    camera = {"fl_x": FX, "fl_y": FY, "cx": CX, "cy": CY, "w": WIDTH, "h": HEIGHT}
    expected = (FX, FY, CX, CY)
    if intrinsics == "per_frame":
        frames = [{**frame, **camera} for frame in frames]
        meta = {"frames": frames}
    elif intrinsics == "shared":
        meta = {**camera, "frames": frames}
    else:  # size from the image header, principal point at the centre
        meta = {"camera_angle_x": 2 * math.atan(WIDTH / (2 * FX)), "frames": frames,
                "camera_angle_y": 2 * math.atan(HEIGHT / (2 * FY))}
        expected = (FX, FY, WIDTH / 2, HEIGHT / 2)
    (tmp_path / "transforms.json").write_text(json.dumps(meta))
    scene = load_scene(tmp_path)
    assert scene.format == "nerf" and [view.name for view in scene.views] == [Path(n).stem for n in names]
    assert scene.points is None
    assert_projects(scene.views, rig, expected)


def test_nerf_split_files_blender_layout(tmp_path):
    # Blender: file_path without suffix, train/r_0 and test/r_0 share a stem, camera_angle_x only.
    rig = make_rig(4)
    write_images(tmp_path / "train", ["r_0.png", "r_1.png"], size=(WIDTH, WIDTH))
    write_images(tmp_path / "test", ["r_0.png", "r_1.png"], size=(WIDTH, WIDTH))
    fov = 2 * math.atan(WIDTH / (2 * FX))
    for split, indices in (("train", (0, 1)), ("test", (2, 3))):
        frames = [nerf_frame(rig, i, f"./{split}/r_{k}") for k, i in enumerate(indices)]
        (tmp_path / f"transforms_{split}.json").write_text(json.dumps({"camera_angle_x": fov, "frames": frames}))
    write_label_map(tmp_path / "instances" / "test_r_1.png", size=(WIDTH, WIDTH))
    scene = load_scene(tmp_path)
    by_name = {view.name: view for view in scene.views}
    assert sorted(by_name) == ["test_r_0", "test_r_1", "train_r_0", "train_r_1"]
    assert {name: view.split for name, view in by_name.items()} == {
        "test_r_0": "test", "test_r_1": "test", "train_r_0": "train", "train_r_1": "train"}
    assert by_name["test_r_1"].instance_path == tmp_path / "instances" / "test_r_1.png"
    assert by_name["train_r_0"].instance_path is None
    assert tuple(by_name["test_r_1"].load_instances().shape) == (WIDTH, WIDTH)
    ordered = [by_name[name] for name in ("train_r_0", "train_r_1", "test_r_0", "test_r_1")]
    assert_projects(ordered, rig, (FX, FX, WIDTH / 2, WIDTH / 2))


def write_depth(path: Path, stored: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(stored.astype(np.uint16)).save(path)


def test_nerf_depth_round_trip_with_nerfstudio_keys_and_downscale(tmp_path):
    rig = make_rig(4)
    names = [f"frame_{i}.png" for i in range(4)]
    write_images(tmp_path / "images", names)
    rng = np.random.default_rng(0)
    stored = {name: rng.integers(0, 65536, size=(HEIGHT, WIDTH)) for name in names[:2]}
    stored["frame_2.png"] = rng.integers(0, 65536, size=(HEIGHT // 2, WIDTH // 2))  # a half-resolution sensor
    for name, values in stored.items():
        write_depth(tmp_path / "depths" / name, values)
    frames = [nerf_frame(rig, i, f"images/{name}") for i, name in enumerate(names)]
    for frame, name in zip(frames[:3], names):
        frame["depth_file_path"] = f"depths/{name}"
    frames[1]["depth_unit_scale_factor"] = 2e-3  # a frame's own scale overrides the shared one
    meta = {"fl_x": FX, "fl_y": FY, "cx": CX, "cy": CY, "w": WIDTH, "h": HEIGHT, "depth_unit_scale_factor": 5e-4,
            "frames": frames}
    (tmp_path / "transforms.json").write_text(json.dumps(meta))
    scales = {"frame_0": 5e-4, "frame_1": 2e-3, "frame_2": 5e-4}
    for downscale in (1, 2):
        views = {view.name: view for view in load_scene(tmp_path, downscale=downscale).views}
        assert views["frame_3"].depth_path is None and views["frame_3"].load_depth() is None
        for name, scale in scales.items():
            view = views[name]
            assert view.depth_path == tmp_path / "depths" / f"{name}.png" and view.depth_scale == scale
            depth = view.load_depth()
            assert depth.dtype == torch.float32 and tuple(depth.shape) == (view.height, view.width)
            expected = resize_nearest(stored[f"{name}.png"], view.height, view.width) * scale
            np.testing.assert_allclose(depth.numpy(), expected, rtol=1e-6)
    # Without a scale anywhere, nerfstudio's default: millimetres.
    del meta["depth_unit_scale_factor"], frames[1]["depth_unit_scale_factor"]
    (tmp_path / "transforms.json").write_text(json.dumps(meta))
    view = load_scene(tmp_path).views[0]
    assert view.depth_scale == 1e-3
    np.testing.assert_allclose(view.load_depth().numpy(), stored["frame_0.png"] * 1e-3, rtol=1e-6)


def test_error_nerf_depth_file_missing_or_scale_invalid(tmp_path):
    rig = make_rig(2)
    write_images(tmp_path / "images", ["a.png", "b.png"])
    write_depth(tmp_path / "depths" / "a.png", np.ones((HEIGHT, WIDTH)))
    frames = [nerf_frame(rig, i, f"images/{name}") for i, name in enumerate(("a.png", "b.png"))]
    frames[0]["depth_file_path"], frames[1]["depth_file_path"] = "depths/a.png", "depths/b.png"
    meta = {"fl_x": FX, "frames": frames}
    (tmp_path / "transforms.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match=r"transforms.json: frame 1: depth file .*depths/b.png missing"):
        load_scene(tmp_path)
    del frames[1]["depth_file_path"]
    meta["depth_unit_scale_factor"] = 0
    (tmp_path / "transforms.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match=r"transforms.json: frame 0: 'depth_unit_scale_factor' must be positive"):
        load_scene(tmp_path)


# --- LLFF poses_bounds.npy -----------------------------------------------------------------------------------


def test_llff_poses_bounds_project_known_points(tmp_path):
    rig = make_rig()
    write_llff(tmp_path, rig, [f"IMG_{i}.JPG" for i in range(4)], focal=FX)
    scene = load_scene(tmp_path)
    assert scene.format == "llff" and [view.name for view in scene.views] == [f"IMG_{i}" for i in range(4)]
    assert_projects(scene.views, rig, (FX, FX, WIDTH / 2, HEIGHT / 2))


def test_llff_uses_images_n_and_falls_back_to_resizing(tmp_path):
    rig = make_rig()
    names = [f"IMG_{i}.JPG" for i in range(4)]
    write_llff(tmp_path, rig, names, focal=FX)
    # 64 x 48 // 5 = 12 x 9: K follows the actual ratios 12/64 and 9/48, not 1/5.
    resized = load_scene(tmp_path, downscale=5)
    assert all(view.image_path.parent.name == "images" for view in resized.views)
    assert {(view.width, view.height) for view in resized.views} == {(12, 9)}
    assert_projects(resized.views, rig, (FX, FX, WIDTH / 2, HEIGHT / 2), scale=(12 / WIDTH, 9 / HEIGHT))
    # LLFF's shrunk copies are PNGs of the JPEGs, rounded up by the resizing tool.
    write_images(tmp_path / "images_3", [f"IMG_{i}.png" for i in range(4)], size=(22, 16))
    shrunk = load_scene(tmp_path, downscale=3)
    assert all(view.image_path.parent.name == "images_3" for view in shrunk.views)
    assert {(view.width, view.height) for view in shrunk.views} == {(22, 16)}
    assert_projects(shrunk.views, rig, (FX, FX, WIDTH / 2, HEIGHT / 2), scale=(22 / WIDTH, 16 / HEIGHT))


# --- COLMAP text models and Replica ---------------------------------------------------------------------------


def test_colmap_text_model_projects_known_points_and_finds_masks(tmp_path):
    rig = make_rig()
    names = [f"view_{i}.jpg" for i in range(4)]
    write_colmap(tmp_path, rig, names)
    write_label_map(tmp_path / "masks" / "view_2.png")
    scene = load_scene(tmp_path)
    assert scene.format == "colmap"
    assert_projects(scene.views, rig, (FX, FY, CX, CY))
    np.testing.assert_allclose(scene.points.numpy(), POINTS, atol=1e-6)
    np.testing.assert_allclose(scene.point_colors[0].numpy(), [1.0, 0.0, 0.2], atol=1e-6)
    assert [view.mask_path is not None for view in scene.views] == [False, False, True, False]
    assert int(scene.views[2].load_mask().max()) == 300


def test_colmap_simple_pinhole(tmp_path):
    rig = make_rig()
    write_colmap(tmp_path, rig, [f"{i}.png" for i in range(4)], model="SIMPLE_PINHOLE", params=(FX, CX, CY))
    assert_projects(load_scene(tmp_path).views, rig, (FX, FX, CX, CY))


def test_replica_layout_split_by_prefix_with_gaga_instance_names(tmp_path):
    rig = make_rig()
    names = ["train_rgb_0000.png", "test_rgb_0002.png", "train_rgb_0005.png", "test_rgb_0007.png"]
    write_colmap(tmp_path, rig, names)
    write_label_map(tmp_path / "semantic_instance" / "test_semantic_instance_0002.png")
    write_label_map(tmp_path / "semantic_instance" / "train_rgb_0005.png")
    scene = load_scene(tmp_path)
    assert scene.format == "replica"
    by_name = {view.name: view for view in scene.views}
    assert [view.name for view in scene.views] == sorted(by_name)
    assert {name: view.split for name, view in by_name.items()} == {
        "train_rgb_0000": "train", "test_rgb_0002": "test", "train_rgb_0005": "train", "test_rgb_0007": "test"}
    assert by_name["test_rgb_0002"].instance_path.name == "test_semantic_instance_0002.png"
    assert by_name["train_rgb_0005"].instance_path.name == "train_rgb_0005.png"
    assert by_name["train_rgb_0000"].instance_path is None and by_name["test_rgb_0007"].instance_path is None
    assert_projects([by_name[Path(name).stem] for name in names], rig, (FX, FY, CX, CY))


# --- detection, forcing, splits -------------------------------------------------------------------------------


def test_detection_and_forcing_on_a_folder_with_two_layouts(tmp_path):
    # Mip-NeRF 360 style: a COLMAP model and poses_bounds.npy describing the same cameras.
    rig = make_rig()
    names = [f"IMG_{i}.JPG" for i in range(4)]
    write_colmap(tmp_path, rig, names, model="SIMPLE_PINHOLE", params=(FX, WIDTH / 2, HEIGHT / 2))
    write_llff(tmp_path, rig, names, focal=FX)
    assert detect_format(tmp_path) == "colmap"
    colmap, llff = load_scene(tmp_path), load_scene(tmp_path, format="llff")
    assert (colmap.format, llff.format) == ("colmap", "llff") and llff.points is None
    for scene in (colmap, llff):
        assert_projects(scene.views, rig, (FX, FX, WIDTH / 2, HEIGHT / 2))
    with pytest.raises(DatasetError, match="transforms.json: transforms file missing"):
        load_scene(tmp_path, format="nerf")
    # A shipped images_2/ serves the COLMAP reader too, even with another suffix than the model lists.
    write_images(tmp_path / "images_2", [f"IMG_{i}.png" for i in range(4)], size=(WIDTH // 2, HEIGHT // 2))
    half = load_scene(tmp_path, downscale=2)
    assert [view.image_path.relative_to(tmp_path).as_posix() for view in half.views] == [
        f"images_2/IMG_{i}.png" for i in range(4)]
    assert_projects(half.views, rig, (FX, FX, WIDTH / 2, HEIGHT / 2), scale=0.5)


def test_dataset_config_loads_and_parses_as_cli(tmp_path):
    import tyro
    write_llff(tmp_path, make_rig(), [f"{i}.png" for i in range(4)], focal=FX)
    config = tyro.cli(DatasetConfig, args=[str(tmp_path), "--format", "llff", "--downscale", "2"])
    assert config == DatasetConfig(tmp_path, "llff", 2)
    assert config.load().views[0].width == WIDTH // 2


@pytest.fixture
def nine_views(tmp_path) -> Path:
    rig = make_rig(9)
    write_llff(tmp_path, rig, [f"v{i}.png" for i in range(9)], focal=FX)
    return tmp_path


def splits_of(root: Path, rule="auto") -> dict[str, str]:
    return {view.name: view.split for view in load_scene(root, split=rule).views}


def test_split_rules(nine_views):
    holdout = splits_of(nine_views)
    assert [name for name, split in holdout.items() if split == "test"] == ["v0", "v8"]
    assert set(splits_of(nine_views, "train-only").values()) == {"train"}
    (nine_views / "test.txt").write_text("v3\nv4.png\n\n# a comment\n")
    only_test = splits_of(nine_views)
    assert [name for name, split in only_test.items() if split == "test"] == ["v3", "v4"]
    assert splits_of(nine_views, "holdout") == holdout
    (nine_views / "train.txt").write_text("\n".join(f"v{i}" for i in (0, 1, 2, 5, 6, 7)))
    with pytest.raises(DatasetError, match=r"neither train.txt nor test.txt: \['v8'\]"):
        load_scene(nine_views)
    (nine_views / "train.txt").write_text("v0\nv99\n")
    with pytest.raises(DatasetError, match=r"train.txt: lists names that are not views.*v99"):
        load_scene(nine_views)
    (nine_views / "train.txt").write_text("v3\n")
    with pytest.raises(DatasetError, match="both train.txt and test.txt"):
        load_scene(nine_views)


def test_forced_split_rules_fail_loudly(nine_views):
    with pytest.raises(DatasetError, match="split 'files' needs train.txt"):
        load_scene(nine_views, split="files")
    with pytest.raises(DatasetError, match="split 'prefix' needs every name"):
        load_scene(nine_views, split="prefix")
    with pytest.raises(DatasetError, match="unknown split rule 'every8'"):
        load_scene(nine_views, split="every8")
    with pytest.raises(DatasetError, match="downscale must be a positive integer, got 0"):
        load_scene(nine_views, downscale=0)


# --- errors name the file and the problem ---------------------------------------------------------------------


def test_error_missing_image(tmp_path):
    write_colmap(tmp_path, make_rig(), [f"{i}.png" for i in range(4)])
    (tmp_path / "images" / "2.png").unlink()
    with pytest.raises(DatasetError, match=r"images/2.png: image file missing \(listed in .*sparse/0\)"):
        load_scene(tmp_path)


def test_error_image_size_differs_from_camera(tmp_path):
    write_colmap(tmp_path, make_rig(), [f"{i}.png" for i in range(4)])
    write_images(tmp_path / "images", ["1.png"], size=(WIDTH, HEIGHT + 2))
    with pytest.raises(DatasetError, match=rf"images/1.png: image is {WIDTH}x{HEIGHT + 2} but its camera .* "
                                           rf"is {WIDTH}x{HEIGHT}"):
        load_scene(tmp_path)


def test_error_nan_pose(tmp_path):
    write_llff(tmp_path, make_rig(), [f"{i}.png" for i in range(4)], focal=FX)
    rows = np.load(tmp_path / "poses_bounds.npy")
    rows[1, 3] = np.nan
    np.save(tmp_path / "poses_bounds.npy", rows)
    with pytest.raises(DatasetError, match=r"poses_bounds.npy: camera of '1': pose contains NaN or inf"):
        load_scene(tmp_path)


def test_error_nan_intrinsics(tmp_path):
    write_images(tmp_path / "images", ["a.png"])
    meta = {"fl_x": float("nan"), "frames": [nerf_frame(make_rig(), 0, "images/a.png")]}
    (tmp_path / "transforms.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match=r"transforms.json: frame 0: 'fl_x' must be finite, got nan"):
        load_scene(tmp_path)
    # Values that pass the reader are checked once more, whatever the format.
    llff = tmp_path / "llff"
    llff.mkdir()
    write_llff(llff, make_rig(1), ["b.png"], focal=FX)
    rows = np.load(llff / "poses_bounds.npy")
    rows[0, 14] = -1.0  # the focal length
    np.save(llff / "poses_bounds.npy", rows)
    with pytest.raises(DatasetError, match=r"poses_bounds.npy: camera of 'b': focal lengths must be positive"):
        load_scene(llff)
    rows[0, 14] = np.inf
    np.save(llff / "poses_bounds.npy", rows)
    with pytest.raises(DatasetError, match=r"poses_bounds.npy: the image size or focal length .* NaN or inf"):
        load_scene(llff)


def test_error_distorted_colmap_camera_refused_with_undistortion_hint(tmp_path):
    write_colmap(tmp_path, make_rig(), [f"{i}.png" for i in range(4)], model="SIMPLE_RADIAL",
                 params=(FX, CX, CY, 0.01))
    with pytest.raises(DatasetError, match=r"cameras.txt: camera 1 .* SIMPLE_RADIAL .*"
                                           r"colmap image_undistorter --image_path images --input_path sparse/0"):
        load_scene(tmp_path)


def test_error_distorted_nerf_camera_refused(tmp_path):
    write_images(tmp_path / "images", ["a.png"])
    meta = {"fl_x": FX, "k1": 0.02, "frames": [nerf_frame(make_rig(), 0, "images/a.png")]}
    (tmp_path / "transforms.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match=r"transforms.json: frame 0: lens distortion \{'k1': 0.02\}"):
        load_scene(tmp_path)


def test_error_unreadable_json(tmp_path):
    (tmp_path / "transforms.json").write_text('{"frames": [')
    with pytest.raises(DatasetError, match=r"transforms.json: unreadable JSON \(Expecting value: line 1"):
        load_scene(tmp_path)


def test_error_empty_folder_and_no_images(tmp_path):
    with pytest.raises(DatasetError, match="no dataset layout recognised"):
        load_scene(tmp_path)
    with pytest.raises(DatasetError, match="does not exist"):
        load_scene(tmp_path / "nowhere")
    (tmp_path / "transforms.json").write_text('{"fl_x": 50, "frames": []}')
    with pytest.raises(DatasetError, match="transforms.json: no images"):
        load_scene(tmp_path)
    with pytest.raises(DatasetError, match=r"sparse/0: COLMAP model folder missing"):
        load_scene(tmp_path, format="colmap")
