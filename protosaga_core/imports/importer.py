"""`protosaga import`: a scene of Gaussians trained elsewhere, segmented without training them again.

The scene keeps the source's Gaussians as they are, in the source's frame: gaussians.ply is the source PLY
copied byte for byte (every property, SH degree 0-3), and scene.json records the similarity that moves the
dataset's cameras into that frame (`world_transform`, applied by `SceneDir.load_dataset`; the identity for
the INRIA code, which trains in its dataset's frame). Its stage "import" stands in for "train": the frozen-
geometry stages (view-consensus association, lifted labels, segment, eval) and the viewer run on it, and
those that need features say so and name what adds them.

Nothing is written before the alignment check has passed (alignment.py): a scene whose Gaussians are not
where the dataset's cameras look would have every mask lifted onto the wrong Gaussians, silently.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ..datasets import DatasetConfig, Scene, View
from ..datasets.similarity import Similarity, similarity_from_json
from ..device import default_device
from ..io.atomic import atomic_open
from ..io.bounded import BoundedReadError, read_json
from ..io.outputs import check_scene_output
from ..io.ply import read_ply
from ..io.scene_dir import SceneDir, SceneMeta
from ..io.scene_lock import LOCK_FILE, writes_scene
from ..io.source_ply import inspect_source_ply
from .alignment import (
    MIN_COVERAGE,
    MIN_GAIN_DB,
    Alignment,
    check_alignment,
    spread_views,
)
from .inria import InriaCamera, InriaSource, find_source

CAMERA_TOLERANCE = 0.01
"""cameras.json's camera centres may differ from the dataset's (moved by the transform) by this share of the
cameras' spread: the same cameras agree to float precision (~1e-7); another capture or frame is off by far more."""
SKIP_RISK = (
    "--skip-alignment-check: the alignment was NOT checked; if the Gaussians are not in the dataset's frame, every "
    "later stage lifts the masks onto the wrong Gaussians without saying so"
)


class ImportRefused(ValueError):
    """A source whose Gaussians do not fit the dataset's cameras: the message says why and what fixes it."""


@dataclass
class ImportConfig:
    """How `protosaga import` reads its source (the paths are the command's positional and -o)."""

    iteration: int | None = None
    """the iteration_N folder of an INRIA model to import; default: the latest"""
    transform: Path | None = None
    """JSON similarity from the dataset's world frame to the Gaussians' frame: {"transform": 3x4 or 4x4, "scale":
    s} meaning x' = s·(T·x) (nerfstudio's dataparser_transforms.json as it is); default: the same frame (INRIA)"""
    max_width: int | None = None
    """shrink the dataset's views (by an integer factor) until at most this wide, for every later stage"""
    skip_alignment_check: bool = False
    """import without rendering training views against their photos (experts: a misaligned scene is then
    segmented wrongly without a word)"""


@dataclass(frozen=True)
class ImportRecord:
    """scene.json's record of the import (configs["import"]).

    Attributes:
        source: the path given; ply: the PLY copied; iteration: its INRIA iteration (None for a bare PLY).
        ply_bytes, sha256: of the copy (gaussians.ply), as it was imported.
        properties: the source's vertex properties, in order (exports write these, byte for byte).
        gaussians, sh_degree: what it holds.
        transform: the --transform file, or None; the matrix itself is scene.json's world_transform.
        max_width: as given.
        alignment: the check's numbers; None when it was skipped.
        cameras_json: max distance of cameras.json's centres from the dataset's, in units of their spread; None without one.
    """

    source: str
    ply: str
    iteration: int | None
    ply_bytes: int
    sha256: str
    properties: list[str]
    gaussians: int
    sh_degree: int
    transform: str | None
    max_width: int | None
    alignment: dict | None
    cameras_json: float | None


@writes_scene("import", scene="output", create=True)
def import_scene(source: Path, dataset: DatasetConfig | None, output: Path, config: ImportConfig = ImportConfig()) -> SceneDir:
    """Import the Gaussians of `source` (an INRIA model folder or a bare INRIA-layout PLY) with the posed
    images of `dataset` (None: the one the model's cfg_args names) into the new scene folder `output`.

    Raises:
        ImportRefused: the Gaussians do not fit the dataset's cameras; nothing is written.
        ValueError, OSError: one line naming the file, for bad inputs; nothing is written.
    """
    _check_output(output)
    if config.max_width is not None and config.max_width < 16:
        raise ValueError(f"--max-width must be at least 16, got {config.max_width}")
    found = find_source(Path(source), config.iteration)
    dataset = _dataset(found, dataset)
    similarity = read_transform(config.transform) if config.transform is not None else Similarity.identity()
    info = inspect_source_ply(found.ply)
    gaussians = read_ply(found.ply).gaussians  # the Gaussian columns checked (names, float32, finite)
    where = f" (iteration {found.iteration} of {', '.join(map(str, found.iterations))})" if found.iterations else ""
    print(f"[protosaga] import: {found.ply}{where}: {len(gaussians):,} Gaussians, SH degree {gaussians.sh_degree}", flush=True)
    _note_source_path(found, dataset)

    scene, downscale = _load(dataset, config.max_width, similarity)
    views = scene.split("train")
    if not views:
        raise ValueError(f"{scene.root}: the dataset has no training views")
    problems: list[str] = []
    camera_error = None
    if found.cameras is not None:
        camera_error, problem = compare_cameras(found.cameras, scene.views, similarity, found.source)
        problems += [problem] if problem else []
    alignment = None
    if not config.skip_alignment_check:
        alignment = check_alignment(gaussians.to(default_device()), spread_views(views), 1.0 if found.white_background else 0.0)
        print(f"[protosaga] import: alignment: {alignment.summary()}", flush=True)
        if not alignment.passed:
            problems.append(alignment_problem(alignment, found, config))
    if problems and not config.skip_alignment_check:
        raise ImportRefused(f"{found.ply}: refused, nothing written: {'; '.join(problems)}")
    if config.skip_alignment_check:
        print(f"[protosaga] import: {SKIP_RISK}" + (f" (and: {'; '.join(problems)})" if problems else ""), flush=True)
    sh_degree = gaussians.sh_degree
    del gaussians

    scene_dir = SceneDir(output)
    try:
        size, digest = copy_verbatim(found.ply, scene_dir.gaussians_path)
        record = ImportRecord(
            str(Path(source).resolve()), str(found.ply.resolve()), found.iteration, size, digest, list(info.properties),
            info.count, sh_degree, None if config.transform is None else str(config.transform.resolve()),
            config.max_width, None if alignment is None else alignment.to_json(), camera_error,
        )
        meta = SceneMeta(
            dataset=str(Path(dataset.root).resolve()),
            dataset_format=scene.format,
            downscale=downscale,
            split_rule=dataset.split,
            train_views=sorted(view.name for view in views),
            world_transform=None if similarity.is_identity() else similarity.to_json(),
        )
        scene_dir.mark_done("import", record, meta)
    except BaseException:
        for path in (scene_dir.meta_path, scene_dir.gaussians_path):  # an import is whole or absent
            path.unlink(missing_ok=True)
        raise
    print(f"[protosaga] import: wrote {output} (gaussians.ply is {found.ply.name} byte for byte)", flush=True)
    return scene_dir


def _check_output(output: Path) -> None:
    """A new or empty folder outside every scene (an import never replaces a scene's files)."""
    check_scene_output(output)
    if output.exists() and not output.is_dir():
        raise ValueError(f"{output}: exists and is not a folder; -o names the scene folder to make")
    if output.is_dir() and any(p.name != LOCK_FILE for p in output.iterdir()):
        raise ValueError(f"{output}: already holds files; import into a new or empty folder")


def _dataset(found: InriaSource, dataset: DatasetConfig | None) -> DatasetConfig:
    if dataset is not None:
        return dataset
    named = found.source_path
    if named is not None and Path(named).is_dir():
        print(f"[protosaga] import: dataset {named} (cfg_args' source_path)", flush=True)
        return DatasetConfig(Path(named))
    why = f"its cfg_args names {named}, which is not a folder here" if named else "it has no cfg_args naming one"
    raise ValueError(f"{found.source}: give the posed images it was trained on with --dataset DATASET ({why})")


def _note_source_path(found: InriaSource, dataset: DatasetConfig) -> None:
    named = found.source_path
    if named is not None and Path(named).name != Path(dataset.root).resolve().name:
        print(f"[protosaga] import: note: cfg_args says it was trained on {named}; checking it against {dataset.root}", flush=True)


def read_transform(path: Path) -> Similarity:
    """A --transform file (see `similarity_from_json`)."""
    try:
        raw = read_json(path)
    except BoundedReadError as error:
        raise ValueError(str(error)) from None
    return similarity_from_json(raw, str(path))


def _load(dataset: DatasetConfig, max_width: int | None, similarity: Similarity) -> tuple[Scene, int]:
    """The dataset at the downscale the later stages will use (as `train` picks it), moved into the
    Gaussians' frame."""
    probe = dataset.load()
    downscale = dataset.downscale
    if max_width is not None:
        widest = max(view.width * view.downscale for view in probe.views)
        downscale = max(dataset.downscale, math.ceil(widest / max_width))
    scene = probe if downscale == dataset.downscale else replace(dataset, downscale=downscale).load()
    return similarity.apply_scene(scene), downscale


def compare_cameras(cameras: list[InriaCamera], views: list[View], similarity: Similarity, source: Path) -> tuple[float | None, str | None]:
    """cameras.json against the dataset's views (already moved into the Gaussians' frame), by image name.

    Returns:
        the largest distance between matching camera centres in units of the cameras' spread (None when no
        name matches), and the problem to report, if any.
    """
    by_name: dict[str, View] = {}
    for view in views:  # INRIA names COLMAP images up to their first dot, NeRF frames by their stem
        by_name.setdefault(view.name, view)
        by_name.setdefault(view.name.split(".")[0], view)
    pairs = [(camera, by_name[camera.name]) for camera in cameras if camera.name in by_name]
    if not pairs:
        shown = ", ".join(camera.name for camera in cameras[:3])
        return None, (
            f"{source / 'cameras.json'} names none of the dataset's {len(views)} views (it has {shown}, ...): "
            "--dataset is not the dataset this model was trained on"
        )
    theirs = np.stack([camera.position for camera, _ in pairs])
    viewmats = torch.stack([view.viewmat for _, view in pairs]).double()
    ours = (-(viewmats[:, :3, :3].transpose(1, 2) @ viewmats[:, :3, 3:])[..., 0]).numpy()  # camera centres
    spread = max(float(np.linalg.norm(theirs - theirs.mean(0), axis=1).max()), 1e-12)
    error = float(np.linalg.norm(theirs - ours, axis=1).max()) / spread
    if error <= CAMERA_TOLERANCE:
        return error, None
    return error, (
        f"the dataset's camera centres{' moved by --transform' if not similarity.is_identity() else ''} lie up to "
        f"{error:.0%} of the cameras' spread from {source / 'cameras.json'}'s ({len(pairs)} cameras matched by name): "
        "the Gaussians live in another frame (give the similarity from the dataset's frame to theirs with --transform FILE) "
        "or --dataset is another capture of the scene"
    )


def alignment_problem(alignment: Alignment, found: InriaSource, config: ImportConfig) -> str:
    """What a failed alignment check most likely means, and the flag that fixes it."""
    frame = (
        "the --transform given does not map the dataset's frame to theirs" if config.transform is not None
        else "they live in another frame (give the similarity to it with --transform FILE, e.g. nerfstudio's dataparser_transforms.json)"
    )
    if alignment.coverage < MIN_COVERAGE:
        cause = (
            f"the Gaussians cover only {alignment.coverage:.0%} of the median training view, so they are not where the "
            f"dataset's cameras look: {frame}, or --dataset is another scene"
        )
    else:
        fit = "worse than" if alignment.gain_db < 0 else f"only {alignment.gain_db:.1f} dB better than"
        cause = (
            f"the renders of the training views match their photos {fit} a flat colour (at least {MIN_GAIN_DB:.0f} dB "
            f"needed), so they do not show what the photos show: {frame}, or --dataset is not the dataset they "
            "were trained on"
        )
        later = [i for i in found.iterations if found.iteration is not None and i > found.iteration]
        if later:
            cause += f"; or iteration {found.iteration} is too early (--iteration {later[-1]})"
    return cause + "; --skip-alignment-check imports it anyway"


def copy_verbatim(source: Path, target: Path) -> tuple[int, str]:
    """Copy a file atomically, returning its size and sha256 (computed from the bytes written)."""
    digest = hashlib.sha256()
    size = 0
    with open(source, "rb") as reader, atomic_open(target) as writer:
        for block in iter(lambda: reader.read(1 << 22), b""):
            digest.update(block)
            writer.write(block)
            size += len(block)
    if size != source.stat().st_size:
        raise OSError(f"{source}: changed while it was copied; import it again")
    return size, digest.hexdigest()

