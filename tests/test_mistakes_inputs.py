"""Mistaken inputs fail with a message naming the file and what is wrong, and change nothing (issue 11).

- per-view maps (SAM masks, GT instance and depth maps) of another size than the view are refused, not
  stretched; maps at the original image's resolution still fit a downscaled view;
- `protosaga metrics` refuses missing frames (unless --allow-missing, which warns) and predictions of another
  size, and names fake or truncated PNGs;
- a truncated dataset image is named;
- an LLFF scene that ships only images_8/ trains at the factor --max-width picks, shrinking from images_8/.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from protosaga_core.cli import main
from protosaga_core.datasets import DatasetConfig, DatasetError, load_scene
from protosaga_core.io.labelmaps import save_label_map
from protosaga_core.method.train import PRESETS, TrainConfig, train
from protosaga_core.metrics.instances import resize_nearest

WIDTH, HEIGHT = 160, 120
NAMES = [f"r_{i}" for i in range(4)]  # the "auto" split holds r_0 out as the test view


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under root by relative path: the inputs must come out byte-identical."""
    return {path.relative_to(root).as_posix(): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


def write_rgb(path: Path, size: tuple[int, int], seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def write_labels(path: Path, size: tuple[int, int], seed: int = 0) -> np.ndarray:
    """Random ids 0..5 as a uint16 PNG of (width, height) size. Returns them. [H, W]"""
    labels = np.random.default_rng(seed).integers(0, 6, size=(size[1], size[0]))
    save_label_map(path, labels)
    return labels


def truncate(path: Path) -> None:
    """Cut a file in half, as an interrupted copy does (the PNG header survives)."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def write_nerf(root: Path, depth: dict[str, Path] | None = None) -> Path:
    """A NeRF layout of WIDTH x HEIGHT images r_0..r_3, cameras side by side looking down -z (OpenGL)."""
    frames = []
    for i, name in enumerate(NAMES):
        write_rgb(root / "images" / f"{name}.png", (WIDTH, HEIGHT), seed=i)
        c2w = np.eye(4)
        c2w[:3, 3] = [0.5 * i, 0.0, 4.0]
        frame = {"file_path": f"images/{name}.png", "transform_matrix": c2w.tolist()}
        if depth and name in depth:
            frame["depth_file_path"] = depth[name].relative_to(root).as_posix()
        frames.append(frame)
    meta = {"fl_x": 100.0, "w": WIDTH, "h": HEIGHT, "frames": frames}
    (root / "transforms.json").write_text(json.dumps(meta))
    return root


def write_masks(root: Path, sizes: dict[str, tuple[int, int]]) -> None:
    for i, (name, size) in enumerate(sizes.items()):
        write_labels(root / "masks" / f"{name}.png", size, seed=10 + i)


def quick(**overrides) -> TrainConfig:
    """The cpu preset, cut down to a few iterations: these tests are about inputs, not training."""
    return replace(PRESETS["cpu"], iterations=2, sh_degree=0, checkpoint_every=0, random_init_points=300, **overrides)


# --- case 5: maps of another size are refused, not stretched ---------------------------------------------------


def test_mask_of_another_size_is_refused_before_training_writes_anything(tmp_path):
    root = write_nerf(tmp_path / "data")
    write_masks(root, {"r_1": (WIDTH, HEIGHT), "r_2": (WIDTH, HEIGHT), "r_3": (100, 80)})
    before = snapshot(root)
    out = tmp_path / "scene"
    with pytest.raises(ValueError, match=r"masks/r_3\.png: 100x80 label map for a 160x120 view \(.*images/r_3\.png\); "
                                         r"it must have the view's size"):
        train(DatasetConfig(root), out, quick())
    assert not out.exists() and snapshot(root) == before
    # the view itself refuses it too, whatever stage asks
    view = {v.name: v for v in load_scene(root).views}["r_3"]
    with pytest.raises(ValueError, match=r"r_3\.png: 100x80 label map for a 160x120 view"):
        view.load_mask()
    assert snapshot(root) == before


def test_full_resolution_maps_fit_a_downscaled_view_and_other_sizes_do_not(tmp_path):
    root = write_nerf(tmp_path / "data")
    full = write_labels(root / "masks" / "r_1.png", (WIDTH, HEIGHT))
    write_labels(root / "masks" / "r_2.png", (100, 80))  # another aspect ratio
    write_labels(root / "masks" / "r_3.png", (WIDTH // 4, HEIGHT // 4))  # coarser than the view
    before = snapshot(root)
    views = {v.name: v for v in load_scene(root, downscale=2).views}
    # made at full resolution (the masks stage without --downscale): brought to the 80x60 view
    mask = views["r_1"].load_mask()
    assert tuple(mask.shape) == (HEIGHT // 2, WIDTH // 2)
    np.testing.assert_array_equal(mask.numpy(), resize_nearest(full, HEIGHT // 2, WIDTH // 2))
    with pytest.raises(ValueError, match=r"masks/r_2\.png: 100x80 label map for a 80x60 view \(.*images/r_2\.png\); "
                                         r"it must have the view's size, or be the view's 160x120 original image"):
        views["r_2"].load_mask()
    with pytest.raises(ValueError, match=r"masks/r_3\.png: 40x30 label map for a 80x60 view"):
        views["r_3"].load_mask()  # labels are never enlarged
    assert snapshot(root) == before


def test_gt_instance_and_depth_maps_of_another_aspect_ratio_are_refused(tmp_path):
    root = tmp_path / "data"
    depths = {"r_0": root / "depths" / "r_0.png", "r_1": root / "depths" / "r_1.png"}
    write_nerf(root, depths)
    write_labels(root / "instances" / "r_0.png", (100, 80))
    for path, size in ((depths["r_0"], (WIDTH, 100)), (depths["r_1"], (WIDTH // 2, HEIGHT // 2))):
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((size[1], size[0]), 1500, dtype=np.uint16)).save(path)
    before = snapshot(root)
    views = {v.name: v for v in load_scene(root).views}
    with pytest.raises(ValueError, match=r"instances/r_0\.png: 100x80 instance map for a 160x120 view \(.*r_0\.png\)"):
        views["r_0"].load_instances()
    with pytest.raises(ValueError, match=r"depths/r_0\.png: 160x100 depth map for a 160x120 view"):
        views["r_0"].load_depth()
    # a coarser depth sensor of the same aspect ratio is fine (nearest neighbour, as before)
    depth = views["r_1"].load_depth()
    assert tuple(depth.shape) == (HEIGHT, WIDTH) and torch.allclose(depth, torch.tensor(1.5))
    assert snapshot(root) == before


# --- case 8 (metrics): missing frames, other sizes, fake and truncated PNGs ------------------------------------


def metrics_folders(root: Path, frames: int = 12, predicted: int = 3) -> tuple[Path, Path]:
    gt, pred = root / "gt", root / "pred"
    for i in range(frames):
        labels = write_labels(gt / f"{i:03d}.png", (16, 12), seed=i)
        if i < predicted:
            save_label_map(pred / f"{i:03d}.png", labels)
    return gt, pred


def test_metrics_refuses_missing_frames_unless_allowed_and_then_says_how_many(tmp_path, capsys):
    gt, pred = metrics_folders(tmp_path)
    before = snapshot(tmp_path)
    assert main(["metrics", "--gt", str(gt), "--pred", str(pred), "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "9 of 12 GT frames" in captured.err and "003.png" in captured.err and "--allow-missing" in captured.err
    assert main(["metrics", "--gt", str(gt), "--pred", str(pred), "--json", "--allow-missing"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["num_frames"] == 3  # stdout stays one JSON object
    assert "warning: scored 3 of 12 GT frames" in captured.err
    assert snapshot(tmp_path) == before


def test_metrics_refuses_a_prediction_of_another_size_even_with_allow_missing(tmp_path, capsys):
    gt, pred = metrics_folders(tmp_path, frames=3, predicted=3)
    save_label_map(pred / "001.png", np.ones((24, 32), dtype=np.int64))
    before = snapshot(tmp_path)
    for extra in ([], ["--allow-missing"]):
        assert main(["metrics", "--gt", str(gt), "--pred", str(pred), *extra]) == 2
        err = capsys.readouterr().err
        assert "pred/001.png: 32x24 prediction for a 16x12 GT label map" in err and "gt/001.png" in err
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("damage", ["text", "truncated"])
def test_metrics_names_a_fake_or_truncated_png(tmp_path, capsys, damage):
    gt, pred = metrics_folders(tmp_path, frames=2, predicted=2)
    broken = pred / "001.png"
    save_label_map(broken, np.random.default_rng(0).integers(0, 65536, size=(120, 160)))
    save_label_map(gt / "001.png", np.zeros((120, 160), dtype=np.int64))
    if damage == "text":
        broken.write_text("this is not a PNG\n")
    else:
        truncate(broken)
    before = snapshot(tmp_path)
    assert main(["metrics", "--gt", str(gt), "--pred", str(pred)]) == 2
    err = capsys.readouterr().err
    assert f"{broken}: " in err and "Traceback" not in err
    assert ("not a readable" if damage == "text" else "damaged or truncated") in err
    assert snapshot(tmp_path) == before


# --- case 9: a truncated dataset image; LLFF shipping only images_8/ -------------------------------------------


def test_truncated_dataset_image_is_named(tmp_path):
    root = write_nerf(tmp_path / "data")
    write_masks(root, {name: (WIDTH, HEIGHT) for name in NAMES[1:]})
    truncate(root / "images" / "r_2.png")
    before = snapshot(root)
    out = tmp_path / "scene"
    with pytest.raises(ValueError, match=r"images/r_2\.png: image file is damaged or truncated"):
        train(DatasetConfig(root), out, quick())
    assert not out.exists() and snapshot(root) == before


LLFF_SIZE = (4032, 3024)  # a phone camera, as in the LLFF scenes; hwf is stated at this size
SHIPPED = (504, 378)  # its images_8/


def write_llff_images_8_only(root: Path, count: int = 3) -> None:
    """poses_bounds.npy (cameras side by side, looking at the origin along +z) and images_8/ only."""
    rows = []
    for i in range(count):
        # LLFF columns: down, right, backwards (world), centre, then (H, W, focal) at full size.
        down, right, backwards = [0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]
        centre = [0.3 * i, 0.0, -4.0]
        pose = np.array([down, right, backwards, centre, [LLFF_SIZE[1], LLFF_SIZE[0], 3000.0]]).T  # [3, 5]
        rows.append(np.concatenate([pose.reshape(15), [0.5, 10.0]]))
    root.mkdir(parents=True, exist_ok=True)
    np.save(root / "poses_bounds.npy", np.array(rows))
    for i in range(count):
        write_rgb(root / "images_8" / f"IMG_{i}.png", SHIPPED, seed=i)


def test_llff_shipping_only_images_8_trains_at_the_max_width_factor(tmp_path):
    root = tmp_path / "llff"
    write_llff_images_8_only(root)
    # the masks stage ran with --downscale 8: masks of the images_8/ size (the "auto" split holds IMG_0 out)
    write_masks(root, {"IMG_1": SHIPPED, "IMG_2": SHIPPED})
    before = snapshot(root)
    # --preset cpu's --max-width 320 turns --downscale 8 into 13, a factor no LLFF scene ships
    factor = math.ceil(LLFF_SIZE[0] / PRESETS["cpu"].max_width)
    assert factor == 13
    view = load_scene(root, downscale=factor).views[1]
    assert view.image_path.parent.name == "images_8" and (view.width, view.height) == (310, 232)
    assert tuple(view.load_image().shape) == (232, 310, 3) and tuple(view.load_mask().shape) == (232, 310)
    assert view.K[0, 0].item() == pytest.approx(3000.0 * 310 / 4032, rel=1e-6)
    scene_dir = train(DatasetConfig(root, downscale=8), tmp_path / "scene", quick())
    assert scene_dir.read_meta().downscale == 13
    assert snapshot(root) == before


def test_llff_without_a_fine_enough_image_folder_lists_the_folders(tmp_path):
    root = tmp_path / "llff"
    write_llff_images_8_only(root)
    (root / "images_16").mkdir()
    with pytest.raises(DatasetError, match=r"llff: no image folder to load downscale 4 from: needs images/ or "
                                           r"images_N/ with N <= 4 .*; found: images_8/, images_16/"):
        load_scene(root, downscale=4)
