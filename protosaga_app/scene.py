"""What the viewer opens: a trained scene directory, validated and loaded once (DESIGN §7).

The Gaussians, their labels and the prototypes are required: without them there is nothing to segment,
and the error says which stage to run. The dataset (for training-camera frustums and the inspector) and
the association record are optional: a scene copied to another machine without its dataset still opens,
with a warning, and only the parts that need the images are missing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from protosaga_core.datasets.scene import Scene, View
from protosaga_core.gaussians import Gaussians
from protosaga_core.io.scene_dir import InstanceInfo, SceneDir, SceneDirError, SceneMeta
from protosaga_core.method.association import AssociationRecord, read_association
from protosaga_core.method.prototypes import Prototypes

logger = logging.getLogger(__name__)


@dataclass
class ViewerScene:
    """A trained scene as the viewer uses it (everything on the CPU).

    Attributes:
        scene_dir: the directory it was read from.
        meta: scene.json (the instance table holds names, colours and counts).
        gaussians: the N Gaussians with their features.
        labels: per-Gaussian instance id, 0 = unassigned. [N] int64
        prototypes: Eq. 18's prototypes, the classifier of the per-pixel segmentation.
        dataset: the posed images, or None where the dataset cannot be read.
        association: association.json, or None where it is missing.
    """

    scene_dir: SceneDir
    meta: SceneMeta
    gaussians: Gaussians
    labels: np.ndarray
    prototypes: Prototypes
    dataset: Scene | None
    association: AssociationRecord | None

    @classmethod
    def load(cls, root: str | Path) -> "ViewerScene":
        """Read and validate a trained scene; every problem raises SceneDirError naming the file."""
        root = Path(root)
        if not root.is_dir():
            raise SceneDirError(f"{root}: not a directory; pass a trained scene (the output of protosaga run)")
        scene_dir = SceneDir(root)
        meta = scene_dir.read_meta()
        if "prototypes" not in meta.stages:
            raise SceneDirError(
                f"{scene_dir.meta_path}: the prototypes stage has not run (stages done: "
                f"{', '.join(meta.stages) or 'none'}); run protosaga run or protosaga prototypes first"
            )
        gaussians = scene_dir.read_gaussians()
        labels = scene_dir.read_labels(len(gaussians))
        prototypes = Prototypes.load(scene_dir.prototypes_path)
        if len(prototypes) and prototypes.feature_dim != gaussians.feature_dim:
            raise SceneDirError(
                f"{scene_dir.prototypes_path}: prototypes have {prototypes.feature_dim} channels but the Gaussians "
                f"{gaussians.feature_dim}"
            )
        return cls(scene_dir, meta, gaussians, labels, prototypes, _optional_dataset(scene_dir), _optional_association(scene_dir))

    @property
    def instances(self) -> list[InstanceInfo]:
        return self.meta.instances

    def instance(self, instance_id: int) -> InstanceInfo | None:
        return next((row for row in self.meta.instances if row.id == instance_id), None)

    def training_views(self) -> list[View]:
        """The training views in name order (the memory-bank order); none without a dataset."""
        if self.dataset is None:
            return []
        return sorted(self.dataset.split("train"), key=lambda view: view.name)

    def rename(self, instance_id: int, name: str) -> None:
        """Give an instance a new name, saved to scene.json at once (atomically)."""
        row = self.instance(instance_id)
        if row is None:
            raise ValueError(f"no instance {instance_id} in {self.scene_dir.meta_path}")
        row.name = name.strip() or f"instance {instance_id}"
        meta = self.scene_dir.read_meta()  # another process may have touched other fields since we loaded
        meta.instances = self.meta.instances
        self.scene_dir.write_meta(meta)


def _optional_dataset(scene_dir: SceneDir) -> Scene | None:
    try:
        return scene_dir.load_dataset()
    except (OSError, ValueError) as error:
        logger.warning("training cameras and the inspector are unavailable: cannot read the dataset (%s)", error)
        return None


def _optional_association(scene_dir: SceneDir) -> AssociationRecord | None:
    try:
        return read_association(scene_dir)
    except SceneDirError as error:
        logger.warning("the association inspector has no record to show (%s)", error)
        return None
