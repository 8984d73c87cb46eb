"""`protosaga colmap`: photos and a video of the real statue (../shared/data) posed again from the pixels alone,
against the shipped COLMAP model up to a similarity; frame picking, pairing, resuming and refusals."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from protosaga_core.capture import CaptureError, ColmapConfig, pose_capture, posing
from protosaga_core.capture.photos import is_capture, photo_folder
from protosaga_core.capture.registration import best_matches_per_image, failure_reason
from protosaga_core.capture.video import laplacian_variance, pick_frames
from protosaga_core.datasets import load_scene
from protosaga_core.datasets.similarity import Similarity
from protosaga_core.io.labelmaps import image_size

STATUE = Path(__file__).resolve().parents[2] / "shared" / "data" / "statue_colmap"
FAST = ColmapConfig(downscales=(2,))
"""The default settings (SIFT on the 1000-px photos), one shrunk copy."""
MAX_ROTATION_DEG = 1.0
MAX_VIDEO_ROTATION_DEG = 1.5
"""The photos behind the test video were taken at focal lengths of 2003-2044 px, which the one camera a
video gets cannot model: measured 0.94-1.06° for every frame, 0.15-0.26° with a camera per frame
(--single-camera no)."""
MAX_CENTRE_ERROR, MEDIAN_CENTRE_ERROR = 0.03, 0.01
"""Camera centres within 3 % (1 % for the median) of the size of the camera path, the largest distance between
two centres. Measured on the photos (2026-12-06, defaults): rotations 0.14° median / 0.22° at most, centres
0.36 % / 1.2 %; with SIFT at 640 px 0.24° / 0.39° and 0.32 % / 2.5 %."""


@pytest.fixture(scope="module")
def statue_photos(tmp_path_factory) -> Path:
    """The statue's 23 photos alone, without the model."""
    if not STATUE.is_dir():
        pytest.skip(f"{STATUE} not present")
    folder = tmp_path_factory.mktemp("statue") / "photos"
    shutil.copytree(STATUE / "images", folder)
    return folder


def camera_poses(root: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(rotation camera-to-world [3, 3], centre [3]) of each posed view of a COLMAP dataset, by view name."""
    poses = {}
    for view in load_scene(root).views:
        rotation, translation = view.viewmat[:3, :3].double().numpy(), view.viewmat[:3, 3].double().numpy()
        poses[view.name] = (rotation.T, -rotation.T @ translation)
    return poses


def pose_errors(found: dict, reference: dict, names: dict[str, str]) -> tuple[np.ndarray, np.ndarray]:
    """Rotation errors in degrees and centre errors relative to the camera path's size, after the similarity
    that best maps the found centres onto the reference ones. names: found view -> reference view."""
    found_centres = torch.tensor(np.array([found[n][1] for n in names]))
    reference_centres = torch.tensor(np.array([reference[names[n]][1] for n in names]))
    similarity = Similarity.fit(found_centres, reference_centres)
    moved = similarity.apply_points(found_centres)
    size = float(torch.cdist(reference_centres, reference_centres).max())
    centre_errors = ((moved - reference_centres).norm(dim=1) / size).numpy()
    rotation = similarity.rotation.numpy()
    angles = []
    for name, reference_name in names.items():
        relative = reference[reference_name][0].T @ rotation @ found[name][0]
        angles.append(np.degrees(np.arccos(np.clip((np.trace(relative) - 1) / 2, -1, 1))))
    return np.array(angles), centre_errors


def test_statue_photos_posed_like_the_shipped_model(statue_photos, tmp_path):
    report = pose_capture(statue_photos, tmp_path / "posed", FAST, progress=False)
    assert len(report.registered) == 23 and not report.unregistered and not report.groups
    assert set(report.seconds) == set(posing.STEPS)
    found, reference = camera_poses(tmp_path / "posed"), camera_poses(STATUE)
    angles, centres = pose_errors(found, reference, {name: name for name in reference})
    assert angles.max() < MAX_ROTATION_DEG, angles
    assert centres.max() < MAX_CENTRE_ERROR and np.median(centres) < MEDIAN_CENTRE_ERROR, centres
    # The dataset is what protosaga reads: PINHOLE cameras, undistorted photos, a shipped images_2/.
    scene = load_scene(tmp_path / "posed", downscale=2)
    assert len(scene.views) == 23 and scene.points is not None and len(scene.points) > 1000
    assert image_size(tmp_path / "posed" / "images_2" / "DSC_5283.jpg")[0] == image_size(tmp_path / "posed" / "images" / "DSC_5283.jpg")[0] // 2


def statue_video(photos: Path, path: Path) -> None:
    """A video of the statue's photos in order, each as a blurred, a sharp and a blurred frame (motion blur
    around each photo), at one size (every photo cropped to the smallest height, about its centre)."""
    import av

    names = sorted(p.name for p in photos.iterdir())
    sizes = [image_size(photos / name) for name in names]
    width, height = min(w for w, _ in sizes) // 2 * 2, min(h for _, h in sizes) // 2 * 2
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": "18"}
        for name in names:
            with Image.open(photos / name) as image:  # centred: the principal point stays the image centre
                top = (image.height - height) // 2
                sharp = image.convert("RGB").crop((0, top, width, top + height))
            blurred = sharp.filter(ImageFilter.GaussianBlur(4))
            for picture in (blurred, sharp, blurred):
                container.mux(stream.encode(av.VideoFrame.from_image(picture)))
        container.mux(stream.encode())


def test_statue_video_picks_the_sharp_frames_and_poses_them(statue_photos, tmp_path):
    video = tmp_path / "statue.mp4"
    statue_video(statue_photos, video)
    assert is_capture(video)
    report = pose_capture(video, tmp_path / "posed", replace(FAST, frames=23), progress=False)
    # One frame from each photo's three, and the sharp one (the middle frame: index 3k + 1).
    names = sorted(STATUE.joinpath("images").iterdir())
    assert report.photos == tuple(f"frame_{3 * k + 2:05d}.jpg" for k in range(len(names)))
    assert len(report.registered) == len(names)
    found, reference = camera_poses(tmp_path / "posed"), camera_poses(STATUE)
    frames = {f"frame_{3 * k + 2:05d}": path.stem for k, path in enumerate(names)}
    angles, centres = pose_errors(found, reference, frames)
    assert angles.max() < MAX_VIDEO_ROTATION_DEG, angles
    assert centres.max() < MAX_CENTRE_ERROR and np.median(centres) < MEDIAN_CENTRE_ERROR, centres
    state = json.loads((tmp_path / "posed" / "colmap" / "state.json").read_text())
    pairs = (tmp_path / "posed" / "colmap" / "pairs.txt").read_text()
    assert state["done"] == list(posing.STEPS) and pairs  # sequential pairs for a video, matched in batches


def test_killed_run_continues_without_redoing_finished_steps(statue_photos, tmp_path, monkeypatch):
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in sorted(p.name for p in statue_photos.iterdir())[:6]:
        shutil.copy(statue_photos / name, photos / name)
    config = ColmapConfig(max_image_size=400, downscales=(2,))

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(posing, "map_photos", killed)
    with pytest.raises(KeyboardInterrupt):
        pose_capture(photos, tmp_path / "posed", config, progress=False)
    state = json.loads((tmp_path / "posed" / "colmap" / "state.json").read_text())
    assert state["done"] == ["frames", "features", "matches"]
    monkeypatch.undo()
    shutil.copy(statue_photos / "DSC_5300.jpg", photos / "DSC_5300.jpg")
    with pytest.raises(CaptureError, match="its photos changed since posing began; add --overwrite"):
        pose_capture(photos, tmp_path / "posed", config, progress=False)
    (photos / "DSC_5300.jpg").unlink()
    extracted = []
    monkeypatch.setattr(posing, "extract_features", lambda *args, **kwargs: extracted.append(args))
    report = pose_capture(photos, tmp_path / "posed", config, progress=False)
    assert extracted == [] and set(report.seconds) == {"mapping", "undistort", "downscale"}
    assert len(report.registered) >= 5


def test_refusals_name_the_input_and_what_to_do(statue_photos, tmp_path):
    with pytest.raises(CaptureError, match="neither a video .* nor a folder of photos"):
        pose_capture(STATUE, tmp_path / "a", FAST)  # already a posed dataset
    two = tmp_path / "two"
    two.mkdir()
    for name in ("DSC_5283.jpg", "DSC_5284.jpg"):
        shutil.copy(statue_photos / name, two / name)
    with pytest.raises(CaptureError, match="holds 2 photo.*at least 3"):
        pose_capture(two, tmp_path / "b", FAST)
    shutil.copy(statue_photos / "DSC_5285.jpg", two / "my photo.jpg")
    with pytest.raises(CaptureError, match="my photo.jpg: photo names with spaces"):
        pose_capture(two, tmp_path / "b", FAST)
    (two / "my photo.jpg").unlink()
    (two / "DSC_5285.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(CaptureError, match="DSC_5285.jpg"):
        pose_capture(two, tmp_path / "c", FAST)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(CaptureError, match="already holds files; add --overwrite"):
        pose_capture(statue_photos, busy, FAST)
    capture = tmp_path / "capture"  # photos in capture/images/: the dataset cannot be capture/ itself
    shutil.copytree(two, capture / "images")
    with pytest.raises(CaptureError, match="would write over the photos"):
        pose_capture(capture, capture, FAST, overwrite=True)
    with pytest.raises(CaptureError, match="--frames must be at least 1"):
        pose_capture(statue_photos, tmp_path / "d", ColmapConfig(frames=0))
    with pytest.raises(CaptureError, match="cannot be opened as a video"):
        (tmp_path / "broken.mp4").write_bytes(b"\0" * 100)
        pose_capture(tmp_path / "broken.mp4", tmp_path / "e", FAST)


def test_output_made_from_other_settings_is_not_continued(tmp_path):
    output = tmp_path / "posed"
    photos = tmp_path / "photos"
    photos.mkdir()
    for k in range(3):
        Image.fromarray(np.random.default_rng(k).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(photos / f"{k}.png")
    posing.open_state(photos, output, FAST, overwrite=False)
    with pytest.raises(CaptureError, match="with other settings; add --overwrite"):
        posing.open_state(photos, output, ColmapConfig(), overwrite=False)
    assert posing.open_state(photos, output, ColmapConfig(), overwrite=True).done == []
    (output / "colmap" / "state.json").write_text("{")
    with pytest.raises(CaptureError, match="state.json: is damaged"):
        posing.open_state(photos, output, ColmapConfig(), overwrite=False)


def test_photo_folder_is_the_folder_or_its_images(tmp_path):
    (tmp_path / "capture" / "images").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "capture" / "images" / "a.jpg")
    assert photo_folder(tmp_path / "capture") == tmp_path / "capture" / "images"
    assert photo_folder(tmp_path / "capture" / "images") == tmp_path / "capture" / "images"
    assert photo_folder(tmp_path) is None and not is_capture(tmp_path / "none.mp4")


def test_pick_frames_takes_the_sharpest_of_equal_stretches():
    sharpness = np.array([1, 5, 2, 9, 3, 3, 0, 7, 1, 2], dtype=float)
    assert pick_frames(sharpness, 2).tolist() == [3, 7]
    assert pick_frames(sharpness, 5).tolist() == [1, 3, 4, 7, 9]
    assert pick_frames(sharpness[:3], 5).tolist() == [0, 1, 2]


def test_laplacian_variance_ranks_a_blurred_image_below_the_sharp_one():
    sharp = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8))
    blurred = sharp.filter(ImageFilter.GaussianBlur(2))
    assert laplacian_variance(np.asarray(blurred, np.float32)) < 0.2 * laplacian_variance(np.asarray(sharp, np.float32))


def test_sequential_pairs_cover_neighbours_powers_of_two_and_the_loop():
    pairs = {tuple(p) for p in posing.sequential_pairs(40, 3).tolist()}
    assert all(0 <= i < j < 40 for i, j in pairs)
    assert {(0, 1), (0, 3), (0, 4), (0, 8), (0, 32), (5, 21)} <= pairs and (0, 5) not in pairs
    assert {(0, 39), (2, 37), (0, 37)} <= pairs  # the first 3 with the last 3
    assert len(posing.exhaustive_pairs(10)) == 45


def test_failure_reasons_follow_features_then_matches():
    assert best_matches_per_image([(1, 2), (1, 3), (2, 3)], [40, 10, 5]) == {1: 40, 2: 40, 3: 10}
    assert failure_reason(50, 0).startswith("only 50 features")
    assert "overlaps too little" in failure_reason(5000, 7)
    assert "not in the largest model" in failure_reason(5000, 300)
