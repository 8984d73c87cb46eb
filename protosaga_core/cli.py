"""Segment 3D Gaussian Splatting scenes into objects (Proto-SaGa).

Start with `protosaga demo` (the whole method on a bundled scene, then the viewer), or `protosaga run
DATASET -o SCENE` on your own posed images, photos or video (posed first by `protosaga colmap`); the stages
after it run one step at a time, and the tools at the end inspect, render, score and export. `protosaga
doctor` says what this machine offers.
"""

# One subcommand per stage, each a thin shell over a library function. The installed `protosaga` command is
# `protosaga_app.command:main`, which calls `main` here with the viewer for `protosaga demo` to open at its
# end: this package never imports the app.

from __future__ import annotations

import json as json_module  # Metrics has a field named `json`
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal, Union

# PyTorch's CPU allocator asks for transparent huge pages for buffers of 2 MB and more when this is set
# before its first allocation: SAM's mask decoder and the rasterizer allocate large temporaries per batch
# and spend much of their time faulting in fresh 4 kB pages otherwise (bench/masks.py --sam).
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

import torch  # noqa: E402
import tyro  # noqa: E402

from .capture import ColmapConfig, pose_capture
from .datasets import DatasetConfig, DatasetFormat, SplitRule
from .device import BACKENDS, Backend, prefer_backend
from .evaluate import EvalConfig, evaluate
from .imports.importer import ImportConfig, import_scene
from .io.cache import check_cache_dir
from .io.exports import EDITS_FILE, EXPORTS_DIR, LEFT_OUT, ExportFormat, export_scene, record_path
from .io.outputs import check_output_dir, check_output_file, check_outside_scenes
from .io.scene_dir import SceneDir
from .masks import MasksConfig, generate_masks
from .method.association import AssociateConfig, associate
from .method.frozen_features import FeatureConfig, train_features
from .method.prototypes import PrototypesConfig, compute_prototypes
from .method.refine import RefineConfig, refine_features, refine_plan
from .method.segment import SegmentConfig, segment
from .method.train import PRESETS as TRAIN_PRESETS
from .method.train import Preset, TrainConfig, train
from .metrics.instances import evaluate_folders
from .pipeline import RunConfig, dataset_of_scene, run, run_demo
from .threads import check_threads
from .threads import configure as configure_threads
from .threads import release as release_threads


@dataclass
class Info:
    """Summarise a 3D Gaussian Splatting PLY file (INRIA layout, optionally with ProtoSaGa features)."""

    path: tyro.conf.Positional[Path]

    def run(self) -> None:
        from .io.ply import read_ply

        contents = read_ply(self.path)
        gaussians = contents.gaussians
        means = gaussians.means
        print(f"{self.path}")
        print(f"  gaussians      {len(gaussians):,}")
        print(f"  sh degree      {gaussians.sh_degree}")
        print(f"  feature dim    {gaussians.feature_dim}")
        print(f"  instance ids   {'yes' if contents.instance_ids is not None else 'no'}")
        if len(gaussians):
            print(f"  bounds min     {means.min(0).values.tolist()}")
            print(f"  bounds max     {means.max(0).values.tolist()}")
            print(f"  mean opacity   {gaussians.activated_opacities.mean().item():.3f}")


@dataclass
class Weights:
    """Fetch pretrained SAM-family weights once into ~/.cache/protosaga/weights/, checking their sha256."""

    name: tyro.conf.Positional[Literal["mobile_sam"]]
    """which checkpoint: mobile_sam (MobileSAM, vit_t; Apache-2.0)"""
    source: str | None = None
    """a local copy (the .pt or the source archive holding it) or a URL; default: the package index"""

    def run(self) -> None:
        from .masks.weights import SOURCES, WeightsError, cached_weights, fetch_weights

        source = SOURCES[self.name]
        if self.source is None:
            try:
                present = cached_weights(source)
            except WeightsError as damaged:
                print(f"{damaged}; fetching it again", flush=True)
                present = None
            if present is not None:
                print(f"{present}: sha256 {source.sha256} verified; already fetched")
                return
        print(f"fetching {source.filename} ({source.size:,} bytes, {source.license}) from {self.source or source.requirement}", flush=True)
        path = fetch_weights(source, self.source)
        print(f"{path}: sha256 {source.sha256} verified; protosaga masks and run now use MobileSAM (--model vit_t)")


MAX_RENDER_SIDE = 4096
"""The CPU rasterizer holds several float buffers per pixel: 4096² is a few GiB, 100,000² would not fit."""


@dataclass
class Render:
    """Render a PLY file to a PNG from a camera orbiting its centre (a quick look at any 3DGS file)."""

    path: tyro.conf.Positional[Path]
    """the PLY file"""
    output: Path = Path("render.png")
    """where to write the PNG"""
    width: int = 512
    height: int = 512
    azimuth: float = 30.0
    """degrees around the world up axis"""
    elevation: float = 20.0
    """degrees above the horizon"""
    distance: float = 2.5
    """camera distance in units of the scene's robust radius"""
    up: tuple[float, float, float] = (0.0, -1.0, 0.0)
    """world up (COLMAP and INRIA scenes usually have -y up)"""
    overwrite: bool = False
    """replace an existing --output file"""

    def run(self) -> None:
        from .io.ply import read_ply
        from .orbit import orbit_camera, save_png
        from .render import render

        if not (1 <= self.width <= MAX_RENDER_SIDE and 1 <= self.height <= MAX_RENDER_SIDE):
            raise ValueError(f"--width and --height must be 1..{MAX_RENDER_SIDE}, got {self.width}x{self.height}")
        check_output_file(self.output, self.overwrite, free=(EXPORTS_DIR,))  # never over a scene's own files

        gaussians = read_ply(self.path).gaussians
        cameras = orbit_camera(
            gaussians.means, self.width, self.height, self.azimuth, self.elevation, self.distance, self.up
        )
        with torch.no_grad():
            image = render(gaussians, cameras).colors[0]
        save_png(self.output, image)
        print(f"wrote {self.output} ({self.width}x{self.height}, {len(gaussians):,} Gaussians)")


@dataclass
class Colmap:
    """Pose a folder of photos or a video into a COLMAP dataset that `protosaga run` reads: pycolmap's SIFT
    features, matching and incremental mapping on the CPU, undistorted to PINHOLE, with images_2/4/8.
    A killed run continues where it stopped when given the same command."""

    input: Annotated[Path, tyro.conf.Positional, tyro.conf.arg(metavar="INPUT")]
    """a folder of photos (or a folder whose images/ holds them), or a video file"""
    output: Annotated[Path, tyro.conf.arg(aliases=("-o",))]
    """the dataset folder to make"""
    config: tyro.conf.OmitArgPrefixes[ColmapConfig] = field(default_factory=ColmapConfig)
    overwrite: bool = False
    """start again in an output folder made from other photos or settings"""

    def run(self) -> None:
        report = pose_capture(self.input, self.output, self.config, self.overwrite)
        print(report.summary())
        print(f"segment it with: protosaga run {self.output} -o SCENE")


@dataclass
class Masks:
    """Write one SAM-style label map per training view to DATASET/masks/<stem>.png (resumable)."""

    dataset: tyro.conf.OmitArgPrefixes[DatasetConfig]
    masks: tyro.conf.OmitArgPrefixes[MasksConfig]

    def run(self) -> None:
        scene, _ = self.dataset.load_at_most(self.masks.max_width)
        paths = generate_masks(scene, self.masks)
        print(f"{len(paths)} training-view masks in {scene.root / 'masks'} ({self.masks.method})")


@dataclass
class Synth:
    """Build a procedural indoor scene with exact instance GT as a NeRF-layout dataset."""

    output: tyro.conf.Positional[Path]
    preset: Literal["demo", "bench"] = "demo"
    seed: int = 0
    noise: Literal["low", "default", "high"] = "default"
    """noise level of the simulated SAM masks written for the training views"""
    density_scale: float = 1.0
    """multiply the preset's Gaussians per m² (the bench preset holds ~67k Gaussians at 1)"""
    write_gaussians: bool = False
    """also write the Gaussians that render the images as OUTPUT/gaussians.ply (INRIA layout), to import"""
    overwrite: bool = False
    """write into an output folder that already holds files"""

    def run(self) -> None:
        from .synthetic import synthesize

        check_output_dir(self.output, self.overwrite)  # never into a trained scene
        synthesize(
            self.output, self.preset, self.seed, self.noise, density_scale=self.density_scale, write_gaussians=self.write_gaussians
        )
        print(f"wrote {self.output} (preset {self.preset}, seed {self.seed})")


@dataclass
class Train:
    """Train Gaussians, 16-D features and per-view classifiers on a dataset with masks (paper Eq. 1-8).

    `--preset` picks the defaults (paper: 30k iterations at full resolution, for a GPU; cpu: fewer
    iterations at reduced resolution); every other flag overrides them.
    """

    dataset: tyro.conf.OmitArgPrefixes[DatasetConfig]
    output: Annotated[Path, tyro.conf.arg(aliases=("-o",))]
    """the scene directory to write"""
    config: tyro.conf.OmitArgPrefixes[TrainConfig]
    preset: Preset = "paper"
    """defaults to start from (default: cpu without CUDA, paper with it)"""
    resume: bool = False
    """continue from SCENE/checkpoints/last.pt, bit for bit"""
    overwrite: bool = False
    """train from scratch into a folder that already holds a scene (its files are replaced)"""

    def run(self) -> None:
        scene_dir = train(self.dataset, self.output, self.config, resume=self.resume, overwrite=self.overwrite)
        print(f"trained {scene_dir.root}: {len(scene_dir.read_gaussians()):,} Gaussians")


SceneArg = Annotated[Path, tyro.conf.Positional]


@dataclass
class Features:
    """Learn only the 16-D features and the per-view classifiers on a scene's frozen Gaussians (Eq. 1-8 with
    the geometry fixed): for a scene whose Gaussians another trainer made, or to retrain a scene's features.
    Replaces gaussians.ply's feat_* columns and classifiers.pt; the later stages then run again."""

    scene: SceneArg
    config: tyro.conf.OmitArgPrefixes[FeatureConfig]
    resume: bool = False
    """continue from SCENE/checkpoints/features.pt"""

    def run(self) -> None:
        result = train_features(SceneDir(self.scene), self.config, resume=self.resume)
        tail = result.losses[-min(len(result.losses), 50) :]
        loss = f"; cross-entropy {sum(tail) / len(tail):.4f} over the last {len(tail)} iterations" if tail else ""
        print(f"features of {result.gaussians:,} Gaussians in {result.scene_dir.gaussians_path}{loss}")
        print(f"next: protosaga associate {self.scene} (or protosaga run), then prototypes, segment and eval")


@dataclass
class Associate:
    """Associate the per-view SAM masks across views into instances, through the Gaussians (view consensus;
    --grouping bank: the paper's memory bank, Eq. 9-16)."""

    scene: SceneArg
    config: tyro.conf.OmitArgPrefixes[AssociateConfig]

    def run(self) -> None:
        result = associate(SceneDir(self.scene), self.config)
        print(f"{result.num_instances} instances across the training views in {SceneDir(self.scene).association_dir}")


@dataclass
class Refine:
    """Refine the features against the associated masks, with one prototype classifier shared by every view, so
    that prototype inference (Eq. 17-19) reads the objects; the geometry stays as it is."""

    scene: SceneArg
    config: tyro.conf.OmitArgPrefixes[RefineConfig]

    def run(self) -> None:
        scene_dir = SceneDir(self.scene)
        print(f"[protosaga] refine: {refine_plan(scene_dir, self.config)}", flush=True)
        result = refine_features(scene_dir, self.config)
        if result.losses:
            loss = f"loss {result.losses[0]:.3f} -> {result.losses[-1]:.3f}"
            print(f"features refined on {result.instances} instances in {scene_dir.refined_features_path} ({loss})")
        print(f"next: protosaga prototypes {self.scene}")


@dataclass
class Prototypes:
    """Per-view prototypes, their ensemble and per-Gaussian labels (paper Eq. 17-18)."""

    scene: SceneArg
    config: tyro.conf.OmitArgPrefixes[PrototypesConfig]

    def run(self) -> None:
        prototypes = compute_prototypes(SceneDir(self.scene), self.config)
        print(f"{len(prototypes.ids)} prototypes in {SceneDir(self.scene).prototypes_path}")


@dataclass
class Segment:
    """Write one uint16 label map per view of a split (paper Eq. 19, or a Table 4 baseline)."""

    scene: SceneArg
    config: tyro.conf.OmitArgPrefixes[SegmentConfig]

    def run(self) -> None:
        print(f"label maps in {segment(SceneDir(self.scene), self.config)}")


@dataclass
class Eval:
    """PSNR/SSIM on test views; instance mIoU / precision / recall (Gaga protocol) where GT exists."""

    scene: SceneArg
    config: tyro.conf.OmitArgPrefixes[EvalConfig]

    def run(self) -> None:
        evaluate(SceneDir(self.scene), self.config)


@dataclass
class Run:
    """masks (if missing), train, associate, prototypes and eval on a dataset, reusing finished stages.
    `protosaga run SCENE` runs a scene made by `protosaga import` on its own dataset, without training."""

    dataset: tyro.conf.OmitArgPrefixes[DatasetConfig]
    output: Annotated[Path | None, tyro.conf.arg(aliases=("-o",))] = None
    """the scene directory to write; without it, the positional is a scene (protosaga import's) to run on its dataset"""
    config: Annotated[RunConfig, tyro.conf.arg(name="")] = field(default_factory=RunConfig)
    preset: Preset = "paper"
    """training defaults to start from (default: cpu without CUDA, paper with it)"""

    def run(self) -> None:
        dataset, output = self.dataset, self.output
        if self.config.posed_dataset is not None:  # an output: refused before anything is read
            check_outside_scenes(self.config.posed_dataset)
        if output is None:  # `protosaga run SCENE`
            dataset, output = dataset_of_scene(self.dataset.root), self.dataset.root
        run(dataset, output, self.config)
        print(f"scene ready: {output}")


@dataclass
class Import:
    """Make a scene of Gaussians trained elsewhere (an INRIA 3DGS output folder, or a bare INRIA-layout PLY)
    and the posed images they were trained on, to segment without training: then `protosaga run SCENE`.

    The Gaussians are kept byte for byte in their own frame; a few training views are rendered against their
    photos first, and a poor fit is refused with its likely cause (nothing is written)."""

    source: Annotated[Path, tyro.conf.Positional, tyro.conf.arg(metavar="SOURCE")]
    """the INRIA model folder (holding point_cloud/iteration_N/point_cloud.ply, cameras.json, cfg_args) or a .ply"""
    output: Annotated[Path, tyro.conf.arg(aliases=("-o",))]
    """the scene folder to make (new or empty)"""
    dataset: Path | None = None
    """the posed images the Gaussians were trained on (COLMAP, NeRF, LLFF or Replica layout); default: the folder
    the model's cfg_args names, where it exists"""
    format: DatasetFormat = "auto"
    """the dataset's layout; auto detects it"""
    downscale: int = 1
    """read the dataset's images shrunk by this factor (or a shipped images_N/)"""
    split: SplitRule = "auto"
    """the dataset's train/test rule"""
    config: tyro.conf.OmitArgPrefixes[ImportConfig] = field(default_factory=ImportConfig)

    def run(self) -> None:
        dataset = None if self.dataset is None else DatasetConfig(self.dataset, self.format, self.downscale, self.split)
        scene_dir = import_scene(self.source, dataset, self.output, self.config)
        print(f"imported {scene_dir.root}; segment it with: protosaga run {scene_dir.root}")


@dataclass
class Demo:
    """The whole method on the bundled demo scene (about 3-5 minutes on a 2-core CPU)."""

    output: Path | None = None
    """scene directory; default: the user cache directory"""
    config: Annotated[RunConfig, tyro.conf.arg(name="")] = field(default_factory=RunConfig)
    preset: Preset = "paper"
    """training defaults to start from (default: cpu without CUDA, paper with it)"""
    view: bool = True
    """open the finished scene in the viewer (protosaga-view) and serve it until Ctrl+C"""
    port: int = 8080
    """the viewer's port"""

    def run(self, open_viewer: "ViewerLauncher | None" = None) -> None:
        scene, _ = run_demo(self.output, self.config)
        print(f"\ndemo scene ready: {scene}")
        print(f"label maps: {scene / 'segment'}; metrics: {scene / 'eval' / 'metrics.json'}")
        if not self.view or open_viewer is None:
            print(f"open it with: protosaga-view {scene}")
            return
        if open_viewer(scene, self.port) != 0:
            raise ValueError(f"the viewer could not open {scene}")


@dataclass
class Metrics:
    """Instance-segmentation metrics (Gaga's protocol) between a folder of GT and a folder of predicted label maps.

    Frames are the GT <stem>.png files; each needs a predicted file with the same name and size (a missing
    frame is an error unless --allow-missing; predictions are never resized). By default id 0
    is NOT counted (removed from the GT and predicted ids, its pixels still counted as misses);
    pass --include-zero to count it as an ordinary id, which is what Gaga's published numbers do.
    The report always says which mode was used.
    """

    gt: Path
    """folder of GT label maps (<stem>.png, uint8/uint16)"""
    pred: Path
    """folder of predicted label maps (<stem>.png, uint8/uint16), one per GT map, of its size"""
    include_zero: bool = False
    """count id 0 as an ordinary id (Gaga's setting); off by default"""
    json: bool = False
    """print exactly one JSON object instead of the table"""
    allow_missing: bool = False
    """score only the GT frames that have a prediction (a warning says how many of all) instead of failing;
    predictions of another size are still refused"""

    def run(self) -> None:
        result = evaluate_folders(self.gt, self.pred, include_zero=self.include_zero, allow_missing=self.allow_missing)
        if self.json:
            print(json_module.dumps(result.to_json_dict()))
            return
        mode = (
            "counted as an ordinary id (--include-zero, Gaga's setting)"
            if result.include_zero
            else "not counted (default; --include-zero counts it, as Gaga does)"
        )
        print(f"instance metrics (Gaga protocol): {self.pred} vs {self.gt}")
        print(f"  id 0        {mode}")
        print(f"  frames      {result.num_frames}")
        print(f"  GT ids      {result.num_gt}")
        print(f"  pred ids    {result.num_pred}")
        print(f"  mIoU        {result.miou:.4f}")
        print(f"  precision   {result.precision:.4f}")
        print(f"  recall      {result.recall:.4f}")


def parse_instance_ids(args: list[str]) -> tuple[int, ...]:
    """`["3,7"]`, `["3", "7"]` or `["3,", "7"]` -> (3, 7): the command line accepts either spelling."""
    parts = [part.strip() for arg in args for part in arg.split(",") if part.strip()]
    try:
        ids = tuple(int(part) for part in parts)
    except ValueError as error:
        raise ValueError(f"instance ids must be integers separated by commas or spaces, got {' '.join(args)!r}") from error
    if any(i <= 0 for i in ids):
        raise ValueError(f"instance ids are positive (0 means unassigned), got {list(ids)}")
    return ids


InstanceIds = Annotated[
    tuple[int, ...],
    tyro.constructors.PrimitiveConstructorSpec(
        nargs="*",
        metavar="ID[,ID...]",
        instance_from_str=parse_instance_ids,
        is_instance=lambda value: isinstance(value, tuple) and all(isinstance(i, int) for i in value),
        str_from_instance=lambda ids: [",".join(map(str, ids))] if ids else [],
    ),
]
"""A tuple of instance ids that tyro parses from `3,7` as well as from `3 7`."""


@dataclass
class Export:
    """Export instances (or the whole scene) as a plain INRIA PLY that opens in SuperSplat and other viewers
    (or, with --format, SuperSplat's compressed PLY or a .splat for web viewers), with a record of what it
    holds beside it (same name, .json)."""

    scene: tyro.conf.Positional[Path]
    """the trained scene directory"""
    instances: InstanceIds = ()
    """instance ids to export, e.g. 3,7; none: every Gaussian of the scene"""
    output: Annotated[Path | None, tyro.conf.arg(aliases=("-o",))] = None
    """the file to write, *.ply or *.splat as --format says (its record goes beside it, .json); default: a new generated name under SCENE/exports/"""
    format: ExportFormat = "ply"
    """ply: every viewer, every property; ply_compressed: SuperSplat, ~4x smaller, quantised, without nearly transparent Gaussians; splat: web viewers, SH degree 0 only"""
    with_instance_ids: bool = False
    """add an integer `instance` column (ply only; other viewers ignore it)"""
    overwrite: bool = False
    """replace an existing --output file and its record"""

    def run(self) -> Path:
        """Write the file and its record, print what was written and return the file's path."""
        scene_dir = SceneDir(self.scene)
        path, record = export_scene(scene_dir, self.instances, self.output, self.with_instance_ids, self.overwrite, self.format)
        what = "the whole scene" if not self.instances else f"instances {', '.join(map(str, sorted(set(self.instances))))}"
        columns = {
            "ply": "INRIA columns + instance" if self.with_instance_ids else "plain INRIA columns",
            "ply_compressed": "SuperSplat's compressed PLY, quantised",
            "splat": ".splat, quantised, SH degree 0",
        }[self.format]
        left_out = f"; {record.left_out:,} {LEFT_OUT[self.format]} left out" if record.left_out else ""
        print(f"wrote {path}: {record.gaussians:,} Gaussians of {what} ({columns}{left_out}); its record: {record_path(path).name}")
        if (scene_dir.root / EDITS_FILE).exists():
            print(
                f"note: the viewer's saved edits ({scene_dir.root / EDITS_FILE}) are not applied: this exports the "
                "computed labels; export from protosaga-view to include them"
            )
        return path


@dataclass
class Doctor:
    """What this machine offers (devices, gsplat's kernels, SAM weights, the browser for tests, disk) and
    what each missing piece costs, with the fix."""

    compile_gsplat: bool = False
    """on a GPU machine, load gsplat's CUDA kernels now, compiling them if needed (minutes, once)"""

    def run(self) -> None:
        from .doctor import diagnose, report

        print(report(diagnose(self.compile_gsplat)))


ViewerLauncher = Callable[[Path, int], int]
"""Serves a scene in the viewer on a port until Ctrl+C and returns the exit status (protosaga_app's)."""


def default_preset() -> Preset:
    return "paper" if torch.cuda.is_available() else "cpu"


def _preset_in(argv: list[str]) -> Preset:
    """The `--preset` value on the command line, read before tyro so it can set the other defaults."""
    for index, arg in enumerate(argv):
        if arg == "--preset" and index + 1 < len(argv) and argv[index + 1] in TRAIN_PRESETS:
            return argv[index + 1]
        if arg.startswith("--preset=") and arg.split("=", 1)[1] in TRAIN_PRESETS:
            return arg.split("=", 1)[1]
    return default_preset()


def command_type(preset: Preset):
    """The subcommands, with training defaults taken from `preset`."""
    train_config = TRAIN_PRESETS[preset]
    train_default = Train(DatasetConfig(tyro.MISSING), tyro.MISSING, train_config, preset)
    run_default = Run(DatasetConfig(tyro.MISSING), None, RunConfig(train=train_config), preset)
    demo_default = Demo(None, RunConfig(train=train_config), preset)
    return Union[
        Annotated[Demo, tyro.conf.subcommand("demo", default=demo_default)],
        Annotated[Run, tyro.conf.subcommand("run", default=run_default)],
        Annotated[Weights, tyro.conf.subcommand("weights")],
        Annotated[Colmap, tyro.conf.subcommand("colmap")],
        Annotated[Masks, tyro.conf.subcommand("masks")],
        Annotated[Train, tyro.conf.subcommand("train", default=train_default)],
        Annotated[Import, tyro.conf.subcommand("import")],
        Annotated[Features, tyro.conf.subcommand("features")],
        Annotated[Associate, tyro.conf.subcommand("associate")],
        Annotated[Refine, tyro.conf.subcommand("refine")],
        Annotated[Prototypes, tyro.conf.subcommand("prototypes")],
        Annotated[Segment, tyro.conf.subcommand("segment")],
        Annotated[Eval, tyro.conf.subcommand("eval")],
        Annotated[Export, tyro.conf.subcommand("export")],
        Annotated[Info, tyro.conf.subcommand("info")],
        Annotated[Render, tyro.conf.subcommand("render")],
        Annotated[Metrics, tyro.conf.subcommand("metrics")],
        Annotated[Synth, tyro.conf.subcommand("synth")],
        Annotated[Doctor, tyro.conf.subcommand("doctor")],
    ]


RESUME_HINTS = {
    "train": "the checkpoint is saved: run the same command with --resume to continue",
    "features": "the checkpoint is saved and the scene is unchanged: run the same command with --resume to continue",
    "run": "run the same command again: finished stages and the training checkpoint are reused",
    "demo": "run the same command again: finished stages and the training checkpoint are reused",
    "masks": "run the same command again: the views already done are kept",
    "colmap": "run the same command again: the finished steps, the photos' features and the matched pairs are kept",
    "weights": "nothing was stored (the partial download is removed): run the same command again",
}
"""What to do after Ctrl-C, per command; the others change nothing until their outputs are complete."""


GLOBAL_HELP = (
    "Every command also takes --threads N (torch's CPU threads; default: all cores, or an equal share of them "
    "while other protosaga processes run) and --backend auto|torch|gsplat (the rasterizer; auto: gsplat on a "
    "GPU where its kernels load, else the portable torch rasterizer)."
)


@dataclass(frozen=True)
class GlobalOptions:
    """The options every command takes, read before the subcommand's own.

    Attributes:
        threads: torch's CPU threads; None: all cores, or a share while other protosaga processes run.
        backend: the rasterizer that `auto` means in this process.
    """

    threads: int | None = None
    backend: Backend = "auto"


def global_options(argv: list[str]) -> tuple[list[str], GlobalOptions]:
    """`--threads N` and `--backend NAME` (or `--x=value`), anywhere in `argv`, taken out.

    Raises:
        ValueError: a thread count that is not a positive integer or more than `check_threads` allows, an
            unknown backend, or no value.
    """
    rest, values = [], {}
    args = iter(argv)
    for arg in args:
        name = arg.split("=", 1)[0]
        if name not in ("--threads", "--backend"):
            rest.append(arg)
            continue
        values[name] = arg.split("=", 1)[1] if "=" in arg else next(args, "")
    threads, backend = values.get("--threads"), values.get("--backend", "auto")
    if threads is not None and (not (threads.isascii() and threads.isdigit()) or int(threads) < 1):
        raise ValueError(f"--threads needs a positive integer, got {threads[:40]!r}")
    if threads is not None:
        check_threads(int(threads))  # at most a few per core: more cannot help, and 100,000 exhausted memory
    if backend not in BACKENDS:
        raise ValueError(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    return rest, GlobalOptions(None if threads is None else int(threads), backend)


def main(argv: list[str] | None = None, open_viewer: ViewerLauncher | None = None) -> int:
    """Run one subcommand; `open_viewer` lets `demo` open its scene at the end (else it prints how)."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        argv, options = global_options(argv)
    except ValueError as error:
        print(f"protosaga: {error}", file=sys.stderr)
        return 2
    command = tyro.cli(command_type(_preset_in(argv)), args=argv, prog="protosaga", description=f"{__doc__}\n{GLOBAL_HELP}")
    name = next((arg for arg in argv if not arg.startswith("-")), "")
    try:  # the cache holds the process registry and the weights: a bad one fails now, not after the work
        check_cache_dir()
    except ValueError as error:
        print(f"protosaga {name}: {error}", file=sys.stderr)
        return 2
    configure_threads(name or "protosaga", options.threads)
    prefer_backend(options.backend)
    try:
        command.run(open_viewer) if isinstance(command, Demo) else command.run()
    except (OSError, ValueError, ImportError) as error:
        print(f"protosaga {name}: {error_message(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:
        hint = RESUME_HINTS.get(name, "the scene and its files are as they were before the command")
        print(f"\nprotosaga {name}: {str(interrupt) or 'interrupted'}; {hint}", file=sys.stderr)
        return 130
    finally:
        release_threads()  # done: the other protosaga processes may take the cores back
    return 0


def error_message(error: Exception) -> str:
    """One line naming the file and the problem (OSError's own text puts the errno first)."""
    if isinstance(error, OSError) and error.filename is not None and error.strerror:
        return f"{error.filename}: {error.strerror}"
    return str(error)


if __name__ == "__main__":
    raise SystemExit(main())
