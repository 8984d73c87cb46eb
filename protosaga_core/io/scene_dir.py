"""The trained-scene directory (DESIGN §7): what each stage writes and every later stage reads.

```
trained_scene/
  scene.json         format, version, source dataset, stage status, configs, instance table; for an
                     imported scene (protosaga import) also the dataset-to-Gaussians similarity
  gaussians.ply      INRIA layout + feat_0..feat_{D-1}; an imported scene's is the source PLY, verbatim
                     (plus feat_* columns once features are learnt on it)
  classifiers.pt     per-view cosine classifiers (tensors, strings and ints only: weights_only loadable)
  association/       <stem>.png uint16 consistent masks; association.json
  prototypes.npz     v [T, D], ids [T], views per instance [T]
  labels.npy         per-Gaussian instance id [N]
  eval/metrics.json
  checkpoints/
```
Every write is atomic; every read validates and names the offending file.
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..datasets.scene import Scene
from ..datasets.similarity import Similarity, SimilarityError
from ..gaussians import Gaussians
from .atomic import atomic_open, atomic_write_bytes, recover_dir, remove_stale_temporaries
from .bounded import BoundedReadError, load_npy, read_json
from .ply import read_ply, write_features, write_ply

SCENE_FORMAT = "protosaga-scene"
SCENE_VERSION = 1
STAGES = ("import", "train", "features", "associate", "refine", "prototypes", "eval")
"""In order; a stage's outputs are made from the earlier ones' ("features": `protosaga features`, optional;
"import": `protosaga import`, Gaussians trained elsewhere and no features yet, stands in for "train";
"refine": `protosaga refine`, the features refined against the associated masks)."""
FEATURES_HINT = "run protosaga features SCENE to learn them on its Gaussians, which stay as they are"
"""What adds features to an imported scene, named by every message about a stage that needs them."""


class SceneDirError(ValueError):
    """A trained-scene directory that is missing something or holds a malformed file."""


@dataclass
class InstanceInfo:
    """One row of the instance table."""

    id: int
    color: tuple[int, int, int]
    num_gaussians: int
    num_views: int
    name: str = ""


@dataclass
class SceneMeta:
    """scene.json.

    Attributes:
        dataset: the dataset folder the scene was trained on.
        dataset_format: its layout ("colmap", "nerf", ...), so later stages read it the same way.
        downscale: the image downscale factor training used; later stages render at the same size.
        split_rule: the dataset's train/test rule (see `protosaga_core.datasets.SplitRule`).
        train_views: names of the training views, in memory-bank order (sorted).
        stages: finished stages ("train", "associate", "prototypes", "eval").
        configs: each finished stage's config, as plain JSON values, for the record.
        instances: the instance table, filled by the prototypes stage.
        world_transform: the similarity from the dataset's world frame to the Gaussians' frame (4x4 rows;
            datasets/similarity.py), which `SceneDir.load_dataset` applies to the cameras; None: the same
            frame (a scene trained here).
    """

    dataset: str
    dataset_format: str
    downscale: int
    split_rule: str
    train_views: list[str]
    stages: list[str] = field(default_factory=list)
    configs: dict[str, Any] = field(default_factory=dict)
    instances: list[InstanceInfo] = field(default_factory=list)
    world_transform: list[list[float]] | None = None
    format: str = SCENE_FORMAT
    version: int = SCENE_VERSION


@dataclass(frozen=True)
class Classifiers:
    """The per-view cosine classifiers w_k of Eq. 6.

    Attributes:
        view_names: the training view of each classifier, in memory-bank order.
        labels: for each view, the raw mask label of each classifier row. list of [L_k] int64
        weights: for each view, the classifier. list of [L_k, D]
    """

    view_names: list[str]
    labels: list[Tensor]
    weights: list[Tensor]

    def for_view(self, name: str) -> tuple[Tensor, Tensor]:
        index = self.view_names.index(name)
        return self.labels[index], self.weights[index]


class SceneDir:
    """Paths and typed readers/writers of one trained-scene directory."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    # --- paths ---------------------------------------------------------------------------------------
    @property
    def meta_path(self) -> Path:
        return self.root / "scene.json"

    @property
    def gaussians_path(self) -> Path:
        return self.root / "gaussians.ply"

    @property
    def classifiers_path(self) -> Path:
        return self.root / "classifiers.pt"

    @property
    def association_dir(self) -> Path:
        return self.root / "association"

    @property
    def association_json(self) -> Path:
        return self.association_dir / "association.json"

    @property
    def prototypes_path(self) -> Path:
        return self.root / "prototypes.npz"

    @property
    def labels_path(self) -> Path:
        return self.root / "labels.npy"

    @property
    def refined_features_path(self) -> Path:
        return self.root / "refined_features.npy"

    @property
    def eval_dir(self) -> Path:
        return self.root / "eval"

    @property
    def checkpoints_dir(self) -> Path:
        return self.root / "checkpoints"

    # --- scene.json ----------------------------------------------------------------------------------
    def read_meta(self) -> SceneMeta:
        raw = read_versioned_json(
            self.meta_path, SCENE_FORMAT, SCENE_VERSION, f"is {self.root} a trained scene (protosaga train)?"
        )
        try:
            instances = [InstanceInfo(**{**row, "color": tuple(row["color"])}) for row in raw.pop("instances", [])]
            meta = SceneMeta(**raw, instances=instances)
        except (TypeError, KeyError) as error:
            raise SceneDirError(f"{self.meta_path}: malformed ({error})") from error
        wrong = mistyped_fields(meta)
        if wrong:
            raise SceneDirError(f"{self.meta_path}: malformed (wrong type of value: {', '.join(wrong)})")
        return meta

    def write_meta(self, meta: SceneMeta) -> None:
        atomic_write_bytes(self.meta_path, (json.dumps(asdict(meta), indent=1) + "\n").encode())

    def mark_done(self, stage: str, config: Any, meta: SceneMeta | None = None) -> None:
        """Record a finished stage and its config (a dataclass) in scene.json, in one write, and forget
        the later stages, whose outputs were made from the stage's old outputs.

        Stages call this once their outputs are completely written and never reset their state before:
        a scene interrupted mid-stage keeps the state and files it had. `meta`: scene.json's new
        contents, when the stage changes more of it than its state.
        """
        meta = meta or self.read_meta()
        later = STAGES[STAGES.index(stage) + 1 :]
        meta.stages = [s for s in meta.stages if s not in later and s != stage] + [stage]
        meta.configs = {k: v for k, v in meta.configs.items() if k not in later}
        meta.configs[stage] = config_record(config)
        self.write_meta(meta)

    def forget_from(self, stage: str) -> None:
        """Forget `stage` and the stages after it in scene.json, before `stage` replaces in place files
        that it and they were made from (gaussians.ply's features): a process killed between its writes
        leaves them to be redone, never recorded as done from files that have changed since."""
        meta = self.read_meta()
        later = STAGES[STAGES.index(stage) :]
        if any(s in later for s in meta.stages):
            meta.stages = [s for s in meta.stages if s not in later]
            meta.configs = {k: v for k, v in meta.configs.items() if k not in later}
            self.write_meta(meta)

    def sweep(self) -> None:
        """Clean up after a killed process: temporaries of atomic writes whose writer is gone, and a
        folder swap (association/) cut between its two renames."""
        recover_dir(self.association_dir)
        for folder in (self.root, self.checkpoints_dir, self.association_dir, self.eval_dir):
            remove_stale_temporaries(folder)

    def is_done(self, stage: str) -> bool:
        return self.meta_path.exists() and stage in self.read_meta().stages

    def load_dataset(self) -> Scene:
        """The dataset this scene was trained on, read exactly as training read it; for an imported scene
        its cameras (GT depths and points too) moved into the Gaussians' frame: the one place that happens."""
        from ..datasets import load_scene

        meta = self.read_meta()
        scene = load_scene(Path(meta.dataset), meta.dataset_format, meta.downscale, meta.split_rule)
        return self.similarity(meta).apply_scene(scene)

    def similarity(self, meta: SceneMeta | None = None) -> Similarity:
        """The dataset-to-Gaussians transform scene.json records (the identity where it records none)."""
        meta = meta or self.read_meta()
        if meta.world_transform is None:
            return Similarity.identity()
        try:
            return Similarity.from_matrix(meta.world_transform, f"{self.meta_path} (world_transform)")
        except SimilarityError as error:
            raise SceneDirError(str(error)) from error

    def is_imported(self) -> bool:
        """Whether the Gaussians were trained elsewhere (`protosaga import`) rather than by `train`."""
        return self.is_done("import")

    def source_properties(self) -> list[str] | None:
        """For an imported scene, the vertex properties of the source PLY in their order (gaussians.ply holds
        them verbatim, and exports copy them byte for byte); None for a scene trained here."""
        try:
            meta = self.read_meta() if self.meta_path.exists() else None
        except SceneDirError:  # exports of a scene whose scene.json is damaged still work (INRIA columns)
            meta = None
        record = meta.configs.get("import") if meta is not None and "import" in meta.stages else None
        names = record.get("properties") if isinstance(record, dict) else None
        return list(names) if isinstance(names, list) and all(isinstance(n, str) for n in names) else None

    # --- Gaussians -----------------------------------------------------------------------------------
    def read_gaussians(self, refined: bool = True) -> Gaussians:
        """The scene's Gaussians. An imported scene's have no features (features [N, 0]) until features are
        learnt on it: feat_* columns of the source PLY were not made with this scene's classifiers.

        Args:
            refined: once the refine stage is done, its features (refined_features.npy) instead of
                gaussians.ply's, which keep training's (what the stages before it read: False).
        """
        if not self.gaussians_path.exists():
            raise SceneDirError(f"{self.gaussians_path}: missing; run protosaga train (or protosaga import) first")
        gaussians = read_ply(self.gaussians_path).gaussians
        try:
            stages = self.read_meta().stages if self.meta_path.exists() else []
        except SceneDirError:  # the Gaussians are readable without it
            stages = []
        if "import" in stages and not {"train", "features"} & set(stages):
            return Gaussians(**{**gaussians.tensors(), "features": gaussians.features[:, :0]})
        if gaussians.feature_dim == 0:
            raise SceneDirError(f"{self.gaussians_path}: has no feat_* columns; it was not trained by protosaga")
        if refined and "refine" in stages and self.refined_features_path.exists():
            return Gaussians(**{**gaussians.tensors(), "features": self.read_refined_features(gaussians.features.shape)})
        return gaussians

    def read_refined_features(self, shape: torch.Size) -> Tensor:
        """refined_features.npy, checked to have gaussians.ply's feature shape. [N, D] float32"""
        path, hint = self.refined_features_path, "run protosaga refine again"
        features = _read_npy(path, hint)
        if not isinstance(features, np.ndarray) or features.dtype != np.float32 or features.shape != tuple(shape):
            raise SceneDirError(
                f"{path}: expected float32 features of shape {list(shape)} (those of {self.gaussians_path.name}), got "
                f"{getattr(features, 'dtype', type(features).__name__)} {list(getattr(features, 'shape', []))}; {hint}"
            )
        if not np.isfinite(features).all():
            raise SceneDirError(f"{path}: holds non-finite values; {hint}")
        return torch.from_numpy(features)

    def write_refined_features(self, features: Tensor | None) -> None:
        """Write refined_features.npy atomically, or remove it (None). [N, D]"""
        if features is None:
            self.refined_features_path.unlink(missing_ok=True)
            return
        with atomic_open(self.refined_features_path) as handle:
            np.save(handle, features.detach().cpu().numpy().astype(np.float32))

    def require_features(self, gaussians: Gaussians, what: str) -> None:
        """Refuse `what` (an option that needs per-Gaussian features) on a scene that has none yet."""
        if gaussians.feature_dim == 0:
            raise SceneDirError(
                f"{self.root}: {what} needs per-Gaussian features, and this imported scene has none yet; "
                f"{FEATURES_HINT}, or use the defaults, which need none"
            )

    def write_gaussians(self, gaussians: Gaussians) -> None:
        write_ply(self.gaussians_path, gaussians)

    def write_features(self, features: Tensor) -> None:
        """Replace gaussians.ply's feat_* columns (atomically), every other column kept bit for bit. [N, D]"""
        write_features(self.gaussians_path, features)

    # --- classifiers ---------------------------------------------------------------------------------
    def read_classifiers(self) -> Classifiers:
        path = self.classifiers_path
        if not path.exists():
            if self.is_imported():
                raise SceneDirError(f"{path}: missing: this imported scene has no per-view classifiers yet; {FEATURES_HINT}")
            raise SceneDirError(f"{path}: missing; run protosaga train first")
        try:
            raw = torch.load(path, map_location="cpu", weights_only=True)
            classifiers = Classifiers(list(raw["view_names"]), list(raw["labels"]), list(raw["weights"]))
        except Exception as error:  # torch raises many types for a corrupt or foreign file
            raise SceneDirError(f"{path}: not a classifiers file ({error})") from error
        if not len(classifiers.view_names) == len(classifiers.labels) == len(classifiers.weights):
            raise SceneDirError(f"{path}: view_names, labels and weights differ in length")
        for name, labels, weights in zip(classifiers.view_names, classifiers.labels, classifiers.weights):
            if weights.ndim != 2 or labels.shape != (weights.shape[0],):
                raise SceneDirError(f"{path}: classifier of view {name} has shape {list(weights.shape)} for {list(labels.shape)} labels")
        return classifiers

    def write_classifiers(self, classifiers: Classifiers) -> None:
        payload = {
            "view_names": classifiers.view_names,
            "labels": [t.detach().cpu() for t in classifiers.labels],
            "weights": [t.detach().cpu().float() for t in classifiers.weights],
        }
        buffer = io.BytesIO()
        torch.save(payload, buffer)
        atomic_write_bytes(self.classifiers_path, buffer.getvalue())

    # --- per-Gaussian labels -------------------------------------------------------------------------
    def read_labels(self, num_gaussians: int | None = None) -> np.ndarray:
        """Per-Gaussian instance ids, 0 = unassigned, checked to be one per Gaussian when `num_gaussians`
        is given. [N] int64"""
        if not self.labels_path.exists():
            raise SceneDirError(f"{self.labels_path}: missing; run protosaga prototypes first")
        labels = _read_npy(self.labels_path, "run protosaga prototypes again")
        if not isinstance(labels, np.ndarray) or not np.issubdtype(labels.dtype, np.integer):
            raise SceneDirError(
                f"{self.labels_path}: expected integer instance ids, got {getattr(labels, 'dtype', type(labels).__name__)}; "
                "run protosaga prototypes again"
            )
        labels = labels.astype(np.int64)
        if num_gaussians is not None and (labels.shape != (num_gaussians,) or (len(labels) and labels.min() < 0)):
            raise SceneDirError(
                f"{self.labels_path}: expected {num_gaussians} non-negative labels (one per Gaussian of "
                f"{self.gaussians_path.name}), got shape {list(labels.shape)}; run protosaga prototypes again"
            )
        return labels

    def write_labels(self, labels: np.ndarray) -> None:
        with atomic_open(self.labels_path) as handle:
            np.save(handle, np.asarray(labels, dtype=np.int64))


def _read_npy(path: Path, hint: str) -> Any:
    """A scene's `.npy` file, every failure a SceneDirError naming it and ending with `hint`."""
    try:
        return load_npy(path)
    except BoundedReadError as error:  # a header announcing more than the file holds, before allocating it
        raise SceneDirError(f"{error}; {hint}") from error
    except (ValueError, OSError, EOFError) as error:
        raise SceneDirError(f"{path}: not a NumPy array file ({error}); {hint}") from error


def mistyped_fields(meta: SceneMeta) -> list[str]:
    """The fields of a scene.json just read whose values have the wrong type (JSON gives any type)."""

    def is_int(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    def is_names(value: Any) -> bool:
        return isinstance(value, list) and all(isinstance(name, str) for name in value)

    checks = {
        "dataset": isinstance(meta.dataset, str),
        "dataset_format": isinstance(meta.dataset_format, str),
        "downscale": is_int(meta.downscale) and meta.downscale >= 1,
        "split_rule": isinstance(meta.split_rule, str),
        "train_views": is_names(meta.train_views),
        "stages": is_names(meta.stages),
        "configs": isinstance(meta.configs, dict),
        "world_transform": meta.world_transform is None or (
            isinstance(meta.world_transform, list)
            and all(isinstance(row, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in row) for row in meta.world_transform)
        ),
    }
    wrong = [name for name, ok in checks.items() if not ok]
    for row in meta.instances:
        counts = (row.id, row.num_gaussians, row.num_views)
        if not (all(map(is_int, counts)) and isinstance(row.name, str) and len(row.color) == 3 and all(map(is_int, row.color))):
            wrong.append(f"instances row {row.id!r}")
    return wrong


def read_versioned_json(path: Path, file_format: str, version: int, missing_hint: str) -> dict[str, Any]:
    """A JSON object carrying `"format": file_format` and `"version": version`; errors name the file."""
    if not path.is_file():
        raise SceneDirError(f"{path}: missing; {missing_hint}")
    try:
        raw = read_json(path)
    except BoundedReadError as error:  # too large, nested too deep, not UTF-8 or not JSON; names the file
        raise SceneDirError(str(error)) from error
    if not isinstance(raw, dict) or raw.get("format") != file_format:
        raise SceneDirError(f"{path}: not a {file_format} file")
    found = raw.get("version")
    if found is not None and (not isinstance(found, int) or isinstance(found, bool)):
        kind = {str: "a string", float: "a decimal number", bool: "a boolean", list: "an array"}.get(type(found), "an object")
        shown = json.dumps(found)
        shown = shown if len(shown) <= 40 else shown[:37] + "..."
        raise SceneDirError(f"{path}: version {shown} is {kind}; the version must be the integer {version}")
    if found != version:
        raise SceneDirError(f"{path}: version {found} is not the supported {version}")
    return raw


def config_record(config: Any) -> Any:
    """A stage's config (a dataclass) as the plain JSON value scene.json records and compares."""
    return _jsonable(asdict(config))


def _jsonable(value: Any) -> Any:
    """Configs hold Paths and tuples; scene.json holds strings and lists."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value
