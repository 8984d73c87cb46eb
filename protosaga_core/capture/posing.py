"""`protosaga colmap`: photos or a video to a posed COLMAP dataset, with pycolmap on the CPU.

Steps, each resumed where a killed run left it:
frames (a video only) -> features -> matches -> mapping -> undistort -> downscale.
pycolmap skips the images and pairs its database already holds, so features and matching run in small
batches: a progress bar, and nothing done twice after a crash.

The dataset folder:
    frames/                the frames chosen from a video
    colmap/database.db     SIFT features and verified matches
    colmap/pairs.txt       the pairs to match
    colmap/sparse/N/       the mapper's models (distorted camera)
    colmap/state.json      the input, the settings and the finished steps
    images/, sparse/0/     the undistorted PINHOLE dataset that protosaga reads
    images_2/, _4/, _8/    shrunk copies
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from tqdm import tqdm

from ..io.atomic import atomic_write_bytes, replace_dir, staging_dir
from ..io.outputs import check_outside_scenes, real_path
from .downscale import write_downscaled
from .errors import CaptureError
from .photos import check_photos, one_size, photo_folder, photo_names
from .registration import Unregistered, unregistered_photos
from .video import extract_frames, is_video

STEPS = ("frames", "features", "matches", "mapping", "undistort", "downscale")
OWN_ENTRIES = ("frames", "colmap", "images", "sparse")
"""What the command writes in the dataset folder (with images_N/): all that --overwrite removes."""
FEATURE_BATCH = 8
PAIR_BATCH = 64


@dataclass(frozen=True)
class ColmapConfig:
    """How photos or a video become a posed dataset."""

    frames: int = 150
    """frames to take from a video: the sharpest of as many equal stretches of it"""
    matcher: Literal["auto", "exhaustive", "sequential"] = "auto"
    """which photo pairs to match; auto: sequential for a video, exhaustive for photos (every pair: slow beyond
    a few hundred photos)"""
    overlap: int = 10
    """sequential matching: each image with the next `overlap`, with images 2^k apart, and the first
    `overlap` with the last (a path that ends where it started)"""
    max_image_size: int = 1600
    """SIFT runs on photos shrunk to this many pixels on the long side"""
    max_features: int = 8192
    """SIFT features kept per photo"""
    camera_model: Literal["SIMPLE_RADIAL", "RADIAL", "OPENCV", "SIMPLE_PINHOLE", "PINHOLE"] = "SIMPLE_RADIAL"
    """the lens model the mapper fits (distortion is undone before training)"""
    single_camera: Literal["auto", "yes", "no"] = "auto"
    """one camera for every photo; auto: for a video, and for photos that all share one size"""
    downscales: tuple[int, ...] = (2, 4, 8)
    """write images_N/ for each N"""


@dataclass(frozen=True)
class CaptureReport:
    """What `pose_capture` made.

    Attributes:
        dataset: the posed dataset folder.
        photos: the photos it was given (or took from the video), by name.
        registered: those with a pose, by name.
        unregistered: the others, with why.
        groups: photos in each model of the mapper that the kept (largest) model lacks: groups of photos
            that could not be joined to it, largest first.
        seconds: the time of each step that ran in this call, by step.
    """

    dataset: Path
    photos: tuple[str, ...]
    registered: tuple[str, ...]
    unregistered: tuple[Unregistered, ...]
    groups: tuple[int, ...]
    seconds: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        lines = [f"{len(self.registered)} of {len(self.photos)} photos posed -> {self.dataset}"]
        if self.groups:
            sizes = ", ".join(map(str, self.groups))
            lines.append(f"{len(self.groups)} more group(s) of photos could not be joined to the kept one ({sizes} photos): "
                         "add photos that bridge them")
        lines += [f"  not posed: {view.name}: {view.reason}" for view in self.unregistered]
        return "\n".join(lines)


@dataclass
class State:
    """colmap/state.json: what the folder was made from and which steps finished."""

    input: str
    settings: dict[str, Any]
    done: list[str] = field(default_factory=list)
    photos: list[str] = field(default_factory=list)
    model: str = ""


def pose_capture(source: Path, output: Path, config: ColmapConfig, overwrite: bool = False,
                 progress: bool = True) -> CaptureReport:
    """Pose the photos in `source` (a folder, or its `images/`) or frames of the video `source`, into the
    COLMAP dataset `output`. A folder made earlier from the same input and settings is continued.

    Raises:
        CaptureError: an input that is no video or photo folder, an output made from something else, too
            few photos, or no two photos that map; each says what to try.
    """
    check_config(config)
    state = open_state(source, output, config, overwrite)
    work = output / "colmap"
    seconds: dict[str, float] = {}

    def step(name: str, run: Callable[[], None]) -> None:
        if name in state.done:
            return
        start = time.perf_counter()
        run()
        seconds[name] = time.perf_counter() - start
        state.done.append(name)
        save_state(work, state)

    if is_video(source):
        image_dir = output / "frames"
        step("frames", lambda: state.photos.extend(extract_frames(source, image_dir, config.frames, progress)))
        check_photos(image_dir, state.photos)
    else:  # checked before the state records them: fixing the folder and running again must work
        image_dir = photo_folder(source)
        state.photos = same_photos(image_dir, state)
        check_photos(image_dir, state.photos)
        step("frames", lambda: None)
    single = config.single_camera == "yes" or (config.single_camera == "auto" and (is_video(source) or one_size(image_dir, state.photos)))
    database = work / "database.db"
    step("features", lambda: extract_features(database, image_dir, state.photos, config, single, progress))
    sequential = config.matcher == "sequential" or (config.matcher == "auto" and is_video(source))
    pairs = sequential_pairs(len(state.photos), config.overlap) if sequential else exhaustive_pairs(len(state.photos))
    step("matches", lambda: match_pairs(database, work / "pairs.txt", [(state.photos[i], state.photos[j]) for i, j in pairs], progress))

    def mapping() -> None:
        state.model = map_photos(database, image_dir, work / "sparse", len(state.photos), progress)

    step("mapping", mapping)
    step("undistort", lambda: undistort(work / "sparse" / state.model, image_dir, output))
    step("downscale", lambda: write_downscaled(output / "images", tuple(config.downscales), progress))
    return report(output, state, seconds)


def same_photos(folder: Path, state: State) -> list[str]:
    """The photos in `folder`, which must be those a continued run started from."""
    names = photo_names(folder)
    if state.photos and names != state.photos:
        raise CaptureError(f"{folder}: its photos changed since posing began; add --overwrite to pose them again from the start")
    return names


def check_config(config: ColmapConfig) -> None:
    for name in ("frames", "overlap", "max_image_size", "max_features"):
        if getattr(config, name) < 1:
            raise CaptureError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(config, name)}")
    if any(factor < 2 for factor in config.downscales):
        raise CaptureError(f"--downscales must be factors of 2 or more, got {list(config.downscales)}")


def open_state(source: Path, output: Path, config: ColmapConfig, overwrite: bool) -> State:
    """The state of `output`: continued when it was made from `source` with `config`, new otherwise."""
    check_outside_scenes(output)
    if not (is_video(source) or photo_folder(source)):
        raise CaptureError(
            f"{source}: is neither a video ({', '.join(('.mp4', '.mov', '...'))}) nor a folder of photos without poses; "
            "a folder that is already a posed dataset (COLMAP, transforms.json, LLFF) needs no posing"
        )
    photos = real_path(source if is_video(source) else photo_folder(source))
    if any(real_path(output / entry) in (photos, *photos.parents) for entry in OWN_ENTRIES):
        raise CaptureError(f"{output}: would write over the photos in {source}; give the dataset another folder")
    wanted = State(str(real_path(source)), json.loads(json.dumps(asdict(config))))
    path = output / "colmap" / "state.json"
    if path.is_file() and not overwrite:
        state = read_state(path)
        if (state.input, state.settings) != (wanted.input, wanted.settings):
            raise CaptureError(
                f"{output}: was posed from {state.input} with other settings; add --overwrite to start again, or "
                "choose another folder"
            )
        return state
    if output.is_dir() and any(output.iterdir()) and not overwrite:
        raise CaptureError(f"{output}: already holds files; add --overwrite to write over them, or choose an empty folder")
    for entry in [*OWN_ENTRIES, *(p.name for p in output.glob("images_*"))]:
        shutil.rmtree(output / entry, ignore_errors=True)
    save_state(output / "colmap", wanted)
    return wanted


def read_state(path: Path) -> State:
    try:
        return State(**json.loads(path.read_text()))
    except (ValueError, TypeError) as err:
        raise CaptureError(f"{path}: is damaged ({err}); add --overwrite to pose again from the start") from None


def save_state(work: Path, state: State) -> None:
    atomic_write_bytes(work / "state.json", json.dumps(asdict(state), indent=1).encode())


def threads() -> int:
    """pycolmap takes as many threads as torch was given (`--threads`, shared between protosaga processes)."""
    return torch.get_num_threads()


def extract_features(database: Path, image_dir: Path, names: list[str], config: ColmapConfig, single: bool,
                     progress: bool) -> None:
    """SIFT features of every photo into `database`; a photo already there is skipped by pycolmap."""
    import pycolmap

    database.parent.mkdir(parents=True, exist_ok=True)
    extraction = pycolmap.FeatureExtractionOptions()
    extraction.max_image_size = config.max_image_size
    extraction.num_threads = threads()
    extraction.use_gpu = False
    extraction.sift.max_num_features = config.max_features
    reader = pycolmap.ImageReaderOptions()
    reader.camera_model = config.camera_model
    mode = pycolmap.CameraMode.SINGLE if single else pycolmap.CameraMode.PER_IMAGE
    with quiet_colmap(), tqdm(total=len(names), desc="features", unit="photo", disable=not progress) as bar:
        for start in range(0, len(names), FEATURE_BATCH):
            if single and start > 0:  # later batches join the camera the first one made
                reader.existing_camera_id = first_camera(database)
            batch = names[start:start + FEATURE_BATCH]
            pycolmap.extract_features(database, image_dir, batch, camera_mode=mode, reader_options=reader,
                                      extraction_options=extraction, device=pycolmap.Device.cpu)
            bar.update(len(batch))


def first_camera(database: Path) -> int:
    import pycolmap

    with pycolmap.Database.open(database) as db:
        return min(camera.camera_id for camera in db.read_all_cameras())


def exhaustive_pairs(count: int) -> np.ndarray:
    """Every pair of `count` images. [count * (count - 1) / 2, 2] (i < j)"""
    i, j = np.triu_indices(count, k=1)
    return np.stack([i, j], axis=1)


def sequential_pairs(count: int, overlap: int) -> np.ndarray:
    """Pairs of a sequence: each image with the next `overlap`, with those 2^k after it (COLMAP's quadratic
    overlap), and the first `overlap` with the last `overlap` (a loop around an object). [P, 2] (i < j)"""
    index = np.arange(count)
    steps = np.unique(np.r_[np.arange(1, overlap + 1), 2 ** np.arange(int(np.log2(max(count, 2))) + 1)])
    pairs = [np.stack([index, index + step], axis=1) for step in steps]
    ends = np.arange(min(overlap, count))
    pairs.append(np.stack(np.meshgrid(ends, count - 1 - ends, indexing="ij"), axis=-1).reshape(-1, 2))
    pairs = np.concatenate(pairs)
    pairs = np.sort(pairs[(pairs[:, 1] < count) & (pairs[:, 0] != pairs[:, 1])], axis=1)
    return np.unique(pairs, axis=0)


def match_pairs(database: Path, pairs_file: Path, pairs: list[tuple[str, str]], progress: bool) -> None:
    """Match and geometrically verify `pairs` (image names) into `database`, a batch at a time."""
    import pycolmap

    matching = pycolmap.FeatureMatchingOptions()
    matching.num_threads = threads()
    matching.use_gpu = False
    with quiet_colmap(), tqdm(total=len(pairs), desc="matches", unit="pair", disable=not progress) as bar:
        for start in range(0, len(pairs), PAIR_BATCH):
            batch = pairs[start:start + PAIR_BATCH]
            atomic_write_bytes(pairs_file, "".join(f"{a} {b}\n" for a, b in batch).encode())
            pairing = pycolmap.ImportedPairingOptions()
            pairing.match_list_path = pairs_file
            pycolmap.match_image_pairs(database, matching_options=matching, pairing_options=pairing,
                                       device=pycolmap.Device.cpu)
            bar.update(len(batch))


def map_photos(database: Path, image_dir: Path, models: Path, count: int, progress: bool) -> str:
    """Incremental mapping into `models/N/`; returns the name of the model with the most photos.

    Raises:
        CaptureError: no model at all (no two photos that match well enough to start from).
    """
    import pycolmap

    shutil.rmtree(models, ignore_errors=True)  # a killed mapping left partial models
    models.mkdir(parents=True)
    options = pycolmap.IncrementalPipelineOptions()
    options.num_threads = threads()
    # The callback comes with each photo after the first pair.
    with quiet_colmap(), tqdm(total=count, initial=2, desc="mapping", unit="photo", disable=not progress) as bar:
        reconstructions = pycolmap.incremental_mapping(database, image_dir, models, options,
                                                       next_image_callback=lambda: bar.update())
    if not reconstructions:
        raise CaptureError(
            f"{image_dir}: no two photos matched well enough to start a model; the photos must overlap (each scene "
            "point in 3 or more photos), be sharp and show textured, still things"
        )
    return str(max(reconstructions, key=lambda index: reconstructions[index].num_reg_images()))


def undistort(model: Path, image_dir: Path, output: Path) -> None:
    """`output/images/` and `output/sparse/0/`: the model's photos and cameras undistorted to PINHOLE."""
    import pycolmap

    staged = staging_dir(output / "undistorted")
    shutil.rmtree(staged, ignore_errors=True)
    with quiet_colmap():
        pycolmap.undistort_images(staged, model, image_dir, output_type="COLMAP", num_threads=threads())
    sparse = staged / "sparse"
    (sparse / "0").mkdir()
    for file in sparse.glob("*.bin"):
        file.rename(sparse / "0" / file.name)
    replace_dir(staged / "images", output / "images")
    replace_dir(sparse, output / "sparse")
    shutil.rmtree(staged)


def report(output: Path, state: State, seconds: dict[str, float]) -> CaptureReport:
    import pycolmap

    models = output / "colmap" / "sparse"
    posed = {path.name: posed_names(pycolmap.Reconstruction(path)) for path in models.iterdir() if path.is_dir()}
    registered = posed.pop(state.model)
    groups = sorted((len(names - registered) for names in posed.values() if names - registered), reverse=True)
    return CaptureReport(
        dataset=output,
        photos=tuple(state.photos),
        registered=tuple(sorted(registered)),
        unregistered=tuple(unregistered_photos(output / "colmap" / "database.db", registered)),
        groups=tuple(groups),
        seconds=seconds,
    )


def posed_names(reconstruction) -> set[str]:
    return {image.name for image in reconstruction.images.values() if image.has_pose}


@contextlib.contextmanager
def quiet_colmap() -> Iterator[None]:
    """COLMAP's log at warnings and above only while a step runs (its INFO lines would bury the progress bars)."""
    import pycolmap

    level = pycolmap.logging.minloglevel
    pycolmap.logging.minloglevel = 1
    try:
        yield
    finally:
        pycolmap.logging.minloglevel = level
