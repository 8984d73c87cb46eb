"""`protosaga import`: a scene of Gaussians trained elsewhere, segmented without training them again.

The scene keeps the source's Gaussians as they are, in the source's frame: gaussians.ply is the source PLY
copied byte for byte (every property, SH degree 0-3; a gsplat run saved as checkpoints only is converted by
gsplat's own exporter), and scene.json records the similarity that moves the dataset's cameras into that
frame (`world_transform`, applied by `SceneDir.load_dataset`): the identity for the INRIA code, which trains
in its dataset's frame; nerfstudio's dataparser transform; gsplat's normalised world (frames.py lists the
candidates, and the alignment check keeps the one that fits best). Its stage "import" stands in for "train": the frozen-
geometry stages (view-consensus association, lifted labels, segment, eval) and the viewer run on it, and
those that need features say so and name what adds them.

Nothing is written before the alignment check has passed (alignment.py): a scene whose Gaussians are not
where the dataset's cameras look would have every mask lifted onto the wrong Gaussians, silently.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..datasets import DatasetConfig, Scene, View, detect_format
from ..datasets.common import DatasetError
from ..datasets.similarity import Similarity, similarity_from_json
from ..device import default_device
from ..gaussians import Gaussians
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
from .frames import Frame, gsplat_frames, identity_frames, transform_frames
from .gsplat_trainer import read_checkpoints
from .inria import InriaCamera
from .nerfstudio import applied_frame
from .sources import FoundSource, find_source

CAMERA_TOLERANCE = 0.01
"""cameras.json's camera centres may differ from the dataset's (moved by the transform) by this share of the
cameras' spread: the same cameras agree to float precision (~1e-7); another capture or frame is off by far more."""
CONFIG_KEYS = {"inria": "cfg_args' source_path", "nerfstudio": "config.yml's dataparser data", "gsplat": "cfg.yml's data_dir"}
"""Where each trainer's config names its dataset (for messages)."""
SEARCH_PARENTS = 4
"""A relative dataset path in a trainer's config is relative to the folder the trainer ran in: tried from the
current folder and from this many folders above SOURCE (nerfstudio runs lie at outputs/NAME/METHOD/TIME)."""
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
    s} meaning x' = s·(T·x) (nerfstudio's dataparser_transforms.json as it is); default: what SOURCE's trainer
    implies (INRIA: the same frame; nerfstudio: its run's dataparser_transforms.json; gsplat: its normalised world)"""
    max_width: int | None = None
    """shrink the dataset's views (by an integer factor) until at most this wide, for every later stage"""
    skip_alignment_check: bool = False
    """import without rendering training views against their photos (experts: a misaligned scene is then
    segmented wrongly without a word)"""


@dataclass(frozen=True)
class ImportRecord:
    """scene.json's record of the import (configs["import"]).

    Attributes:
        source: the path given; kind: the trainer recognised (sources.py); ply: the PLY copied, or the gsplat
            checkpoints converted; iteration: its iteration or step (None for a bare PLY).
        ply_bytes, sha256: of the copy (gaussians.ply), as it was imported.
        properties: the source's vertex properties, in order (exports write these, byte for byte).
        gaussians, sh_degree: what it holds.
        transform: the --transform file, or None; the matrix itself is scene.json's world_transform.
        frame: the candidate frame the alignment check kept (frames.py).
        max_width: as given.
        alignment: the check's numbers; None when it was skipped.
        cameras_json: max distance of cameras.json's centres from the dataset's, in units of their spread; None without one.
    """

    source: str
    kind: str
    ply: str
    iteration: int | None
    ply_bytes: int
    sha256: str
    properties: list[str]
    gaussians: int
    sh_degree: int
    transform: str | None
    frame: str
    max_width: int | None
    alignment: dict | None
    cameras_json: float | None


@writes_scene("import", scene="output", create=True)
def import_scene(source: Path, dataset: DatasetConfig | None, output: Path, config: ImportConfig = ImportConfig()) -> SceneDir:
    """Import the Gaussians of `source` (a trainer's output folder or a bare INRIA-layout PLY, sources.py) with
    the posed images of `dataset` (None: the one the trainer's config names) into the new scene folder `output`.

    Raises:
        ImportRefused: the Gaussians fit the dataset's cameras in none of the candidate frames; nothing is written.
        ValueError, OSError: one line naming the file, for bad inputs; nothing is written.
    """
    _check_output(output)
    if config.max_width is not None and config.max_width < 16:
        raise ValueError(f"--max-width must be at least 16, got {config.max_width}")
    found = find_source(Path(source), config.iteration)
    dataset = _dataset(found, dataset)
    with _splat_ply(found) as ply:
        info = inspect_source_ply(ply)
        gaussians = read_ply(ply).gaussians  # the Gaussian columns checked (names, float32, finite)
        where = f" (iteration {found.iteration} of {', '.join(map(str, found.iterations))})" if found.iterations else ""
        print(f"[protosaga] import: {found.described}{where}: {len(gaussians):,} Gaussians, SH degree {gaussians.sh_degree}", flush=True)
        _note_source_path(found, dataset)

        scene, downscale = dataset.load_at_most(config.max_width)  # as `train` picks it, in its own frame
        if not scene.split("train"):
            raise ValueError(f"{scene.root}: the dataset has no training views")
        frames = candidate_frames(found, config.transform, scene)
        fit = choose_frame(gaussians, scene, frames, found, config)
        sh_degree = gaussians.sh_degree
        del gaussians

        scene_dir = SceneDir(output)
        try:
            size, digest = copy_verbatim(ply, scene_dir.gaussians_path)
            record = ImportRecord(
                str(Path(source).resolve()), found.kind,
                str(found.ply.resolve()) if found.ply is not None else ", ".join(str(p.resolve()) for p in found.checkpoints),
                found.iteration, size, digest, list(info.properties), info.count, sh_degree,
                None if config.transform is None else str(config.transform.resolve()), fit.frame.name,
                config.max_width, None if fit.alignment is None else fit.alignment.to_json(), fit.camera_error,
            )
            similarity = fit.frame.similarity
            meta = SceneMeta(
                dataset=str(Path(dataset.root).resolve()),
                dataset_format=scene.format,
                downscale=downscale,
                split_rule=dataset.split,
                train_views=sorted(view.name for view in scene.split("train")),
                world_transform=None if similarity.is_identity() else similarity.to_json(),
            )
            scene_dir.mark_done("import", record, meta)
        except BaseException:
            for path in (scene_dir.meta_path, scene_dir.gaussians_path):  # an import is whole or absent
                path.unlink(missing_ok=True)
            raise
    kept = f"{found.ply.name} byte for byte" if found.ply is not None else "the checkpoints converted by gsplat's exporter"
    print(f"[protosaga] import: wrote {output} (gaussians.ply is {kept}; frame: {fit.frame.name})", flush=True)
    return scene_dir


@dataclass(frozen=True)
class FrameFit:
    """A candidate frame checked: the alignment (None when skipped), cameras.json's distance, what is wrong."""

    frame: Frame
    alignment: Alignment | None
    camera_error: float | None
    problems: tuple[str, ...]


def candidate_frames(found: FoundSource, transform: Path | None, scene: Scene) -> list[Frame]:
    """The frames the Gaussians may live in (frames.py), most likely first.

    Raises:
        ValueError: a transform file that is no similarity, or a gsplat run normalised from SfM points the
            dataset does not have.
    """
    transform = transform if transform is not None else found.transform
    if transform is not None:
        return transform_frames(read_transform(transform), applied_frame(scene.root), str(transform))
    if found.kind != "gsplat":
        return identity_frames()
    frames = gsplat_frames(scene) if found.normalized is not False else []
    if found.normalized is True and not frames:
        raise ValueError(
            f"{scene.root}: gsplat normalised its world from the SfM points of its COLMAP model, and this dataset has "
            "none; give the COLMAP dataset it was trained on with --dataset"
        )
    return frames + (identity_frames() if found.normalized is not True else [])


def choose_frame(gaussians: Gaussians, scene: Scene, frames: list[Frame], found: FoundSource, config: ImportConfig) -> FrameFit:
    """The frame in which the Gaussians fit the training views best (the first, unchecked, when the check is
    skipped).

    Raises:
        ImportRefused: none fits; the message names each frame tried and the likely cause.
    """
    on_device = gaussians.to(default_device())
    fits = [check_frame(on_device, scene, frame, found, config) for frame in (frames[:1] if config.skip_alignment_check else frames)]
    passing = [fit for fit in fits if not fit.problems]
    if config.skip_alignment_check:
        problems = fits[0].problems
        print(f"[protosaga] import: {SKIP_RISK}" + (f" (and: {'; '.join(problems)})" if problems else ""), flush=True)
        return fits[0]
    if passing:
        return max(passing, key=lambda fit: fit.alignment.gain_db if fit.alignment is not None else 0.0)
    if len(fits) == 1:
        raise ImportRefused(f"{found.described}: refused, nothing written: {'; '.join(fits[0].problems)}")
    tried = "; ".join(f"{fit.frame.name}: {'; '.join(fit.problems)}" for fit in fits)
    raise ImportRefused(f"{found.described}: refused, nothing written: it fits the dataset in none of the {len(fits)} frames tried: {tried}")


def check_frame(gaussians: Gaussians, scene: Scene, frame: Frame, found: FoundSource, config: ImportConfig) -> FrameFit:
    """cameras.json (INRIA) and the alignment check, with the dataset's cameras moved by `frame`."""
    moved = frame.similarity.apply_scene(scene)
    problems: list[str] = []
    camera_error = None
    if found.cameras is not None:
        camera_error, problem = compare_cameras(found.cameras, moved.views, frame.similarity, found.source)
        problems += [problem] if problem else []
    alignment = None
    if not config.skip_alignment_check:
        alignment = check_alignment(gaussians, spread_views(moved.split("train")), 1.0 if found.white_background else 0.0)
        label = f" in {frame.name}" if not frame.similarity.is_identity() else ""
        print(f"[protosaga] import: alignment{label}: {alignment.summary()}", flush=True)
        if not alignment.passed:
            problems.append(alignment_problem(alignment, found, config))
    return FrameFit(frame, alignment, camera_error, tuple(problems))


@contextmanager
def _splat_ply(found: FoundSource) -> Iterator[Path]:
    """The source's PLY; for a gsplat step saved as checkpoints only, a temporary PLY written from them by
    gsplat's exporter (the same writer as its trainer's --save-ply)."""
    if found.ply is not None:
        yield found.ply
        return
    from gsplat.exporter import (
        export_splats,  # CPU code; never touches gsplat's CUDA kernels
    )

    gaussians = read_checkpoints(found.checkpoints)
    data = export_splats(gaussians.means, gaussians.scales, gaussians.quats, gaussians.opacities, gaussians.sh0, gaussians.shN, format="ply")
    with tempfile.TemporaryDirectory(prefix="protosaga-import-") as folder:
        path = Path(folder) / f"point_cloud_{found.iteration}.ply"
        path.write_bytes(data)
        yield path


def _check_output(output: Path) -> None:
    """A new or empty folder outside every scene (an import never replaces a scene's files)."""
    check_scene_output(output)
    if output.exists() and not output.is_dir():
        raise ValueError(f"{output}: exists and is not a folder; -o names the scene folder to make")
    if output.is_dir() and any(p.name != LOCK_FILE for p in output.iterdir()):
        raise ValueError(f"{output}: already holds files; import into a new or empty folder")


def _dataset(found: FoundSource, dataset: DatasetConfig | None) -> DatasetConfig:
    if dataset is not None:
        return dataset
    named = found.dataset_path
    located = _locate(named, found.source) if named is not None else None
    if located is not None:
        print(f"[protosaga] import: dataset {located} ({CONFIG_KEYS[found.kind]})", flush=True)
        return DatasetConfig(located)
    config = found.config_file.name if found.config_file is not None else "config"
    why = f"its {config} names {named}, which is not a folder here" if named else f"it has no {config} naming one"
    raise ValueError(f"{found.source}: give the posed images it was trained on with --dataset DATASET ({why})")


def _locate(named: str, source: Path) -> Path | None:
    """The dataset folder a trainer's config names, here (see SEARCH_PARENTS), or None."""
    path = Path(named)
    bases = [Path("/")] if path.is_absolute() else [Path.cwd(), *list(Path(os.path.abspath(source)).parents)[:SEARCH_PARENTS]]
    return next((base / path for base in bases if _is_dataset(base / path)), None)


def _is_dataset(folder: Path) -> bool:
    """Whether a folder holds a dataset layout (a trainer's output folder of the same name does not)."""
    try:
        detect_format(folder)
    except (DatasetError, OSError):
        return False
    return True


def _note_source_path(found: FoundSource, dataset: DatasetConfig) -> None:
    named = found.dataset_path
    if named is not None and Path(named).name != Path(dataset.root).resolve().name:
        key = CONFIG_KEYS[found.kind].split("'")[0]
        print(f"[protosaga] import: note: {key} says it was trained on {named}; checking it against {dataset.root}", flush=True)


def read_transform(path: Path) -> Similarity:
    """A --transform file (see `similarity_from_json`)."""
    try:
        raw = read_json(path)
    except BoundedReadError as error:
        raise ValueError(str(error)) from None
    return similarity_from_json(raw, str(path))


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


def alignment_problem(alignment: Alignment, found: FoundSource, config: ImportConfig) -> str:
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

