"""The edited scene: a loaded scene plus the one edit model, and everything derived from the two.

Free of viser, so the viewer, its tests and bench/viewer.py share it. Derived data (labels after merges,
the Gaussians on screen, prototypes after merges) is cached per edit state: a frame or a click at the
same state reuses it, and an edit invalidates it by changing the state.

Merges follow Eq. 17-18 exactly: each training view's prototype of the merged instance is the mean
feature over the union of the two consistent masks, then averaged over the views (see
`merge_view_prototypes`). The per-view prototypes are rendered once, on the first merge. The
per-Gaussian labels of a merge are relabelled (`merge_labels`) rather than re-classified, so a merge
moves exactly the Gaussians of the absorbed instance and nothing else.

The edits are saved to SCENE/edits.json after every change and replayed when the scene is opened again
(edit_log.py); exports carry a record of the edits they include beside them.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from protosaga_core.datasets.scene import View
from protosaga_core.editing import (
    EDITS_FILE,
    ExportSource,
    LabelsFingerprint,
    export_with_record,
    record_path,
    safe_export_name,
)
from protosaga_core.gaussians import Gaussians
from protosaga_core.lifting import render_label_maps
from protosaga_core.prototypes import (
    Prototypes,
    classify,
    collect_view_prototypes,
    default_device,
    ensemble_prototypes,
    merge_view_prototypes,
)
from protosaga_core.render import render

from .edit_log import EditLog, export_edits
from .scene import ViewerScene
from .selection import EditModel, EditState


@dataclass(frozen=True)
class VisibleGaussians:
    """The Gaussians on screen at one edit state.

    Attributes:
        index: their indices in the scene. [M] int64
        gaussians: the M Gaussians, on the render device.
        labels: their labels after merges. [M] int64
    """

    index: np.ndarray
    gaussians: Gaussians
    labels: np.ndarray


@dataclass(frozen=True)
class Export:
    """A written export: the file under SCENE/exports/, how many Gaussians it holds, and its record
    (the JSON beside it: the edits it includes and its instances)."""

    path: Path
    count: int
    record: Path


class SceneDocument:
    """A scene under edit. Thread-safe: viser runs callbacks and frames on several threads."""

    def __init__(self, scene: ViewerScene, device: torch.device | None = None) -> None:
        self.scene = scene
        self.device = device or default_device()
        self.show_unassigned = True
        self._gaussians = scene.gaussians.detach().to(self.device)
        self._lock = threading.RLock()
        self._labels_cache: tuple[tuple, np.ndarray] | None = None
        self._visible_cache: tuple[tuple, VisibleGaussians] | None = None
        self._prototypes_cache: dict[tuple, Prototypes] = {(): scene.prototypes}
        self._view_prototypes: list[tuple[Tensor, Tensor, Tensor]] | None = None
        instances = [row.id for row in scene.instances] or np.unique(scene.labels[scene.labels > 0]).tolist()
        self.edit_log = EditLog(scene.scene_dir.root / EDITS_FILE, LabelsFingerprint.of(scene.labels))
        # The saved merges' prototypes are computed here, so that a log whose merges cannot be
        # recomputed (the dataset moved) is set aside at once instead of failing the first frame.
        initial = self.edit_log.replay(frozenset(instances), self.prototypes)
        self.model = EditModel(instances, initial=initial)
        self.model.subscribe(self.edit_log.save)

    # --- derived data --------------------------------------------------------------------------------
    def labels(self, state: EditState | None = None) -> np.ndarray:
        """Per-Gaussian labels after the merges of `state` (default: the current one). [N] int64"""
        state = state or self.model.state
        with self._lock:
            if self._labels_cache is None or self._labels_cache[0] != state.merged:
                self._labels_cache = (state.merged, state.effective_labels(self.scene.labels))
            return self._labels_cache[1]

    def visible(self, state: EditState | None = None) -> VisibleGaussians:
        """The Gaussians drawn at `state`: visible instances, and unassigned ones if shown."""
        state = state or self.model.state
        visible_ids = self.model.visible_instances(state)
        key = (tuple(sorted(visible_ids)), state.merged, self.show_unassigned)
        with self._lock:
            if self._visible_cache is None or self._visible_cache[0] != key:
                labels = self.labels(state)
                shown = np.fromiter(visible_ids | ({0} if self.show_unassigned else set()), dtype=np.int64)
                index = np.flatnonzero(np.isin(labels, shown))
                subset = self._gaussians.select(torch.from_numpy(index).to(self.device))
                self._visible_cache = (key, VisibleGaussians(index, subset, labels[index]))
            return self._visible_cache[1]

    def prototypes(self, state: EditState | None = None) -> Prototypes:
        """Eq. 18 prototypes after the merges of `state`."""
        merged = (state or self.model.state).merged
        with self._lock:
            if merged not in self._prototypes_cache:
                per_view = [merge_view_prototypes(*view, merged) for view in self._per_view_prototypes()]
                self._prototypes_cache[merged] = ensemble_prototypes([v[0] for v in per_view], [v[1] for v in per_view])
            return self._prototypes_cache[merged]

    def instance_counts(self, state: EditState | None = None) -> dict[int, int]:
        """Gaussians per instance after the merges of `state`."""
        counts = np.bincount(self.labels(state))
        return {i: int(counts[i]) if i < len(counts) else 0 for i in self.model.live_instances(state)}

    @property
    def lifted(self) -> bool:
        """Whether the per-Gaussian labels were lifted from the masks (the default), so that the
        segmentation renders them; else (the paper's rule) it classifies rendered features by Eq. 19."""
        return self.scene.meta.configs.get("prototypes", {}).get("gaussian_labels") == "lifted"

    def predict_view(self, view: View, state: EditState | None = None) -> np.ndarray:
        """The segmentation of a dataset view from every Gaussian, as `protosaga segment` does it. [H, W] int64"""
        cameras = view.cameras.to(self.device)
        if self.lifted:
            labels = torch.from_numpy(self.labels(state))
            return render_label_maps(self._gaussians, cameras, labels, torch.unique(labels[labels > 0]))[0].cpu().numpy()
        with torch.no_grad():
            features = render(self._gaussians, cameras, rgb=False, extras=self._gaussians.features).extras
            return classify(features[0], self.prototypes(state)).cpu().numpy()

    def _per_view_prototypes(self) -> list[tuple[Tensor, Tensor, Tensor]]:
        if self._view_prototypes is None:
            if self.scene.dataset is None:
                raise ValueError(
                    f"merging needs the training views to recompute prototypes, but the dataset of "
                    f"{self.scene.scene_dir.meta_path} cannot be read"
                )
            self._view_prototypes = [
                tuple(t.cpu() for t in view)
                for view in collect_view_prototypes(self.scene.scene_dir, self._gaussians, self.scene.dataset, progress=False)
            ]
        return self._view_prototypes

    # --- edits that need more than the model ---------------------------------------------------------
    def merge(self, keep: int, absorb: int) -> None:
        """Merge `absorb` into `keep` (undoable); prototypes are recomputed before the edit is recorded,
        so every listener already sees the merged prototypes."""
        self.prototypes(EditState(merged=(*self.model.state.merged, (keep, absorb))))
        self.model.merge(keep, absorb)

    # --- export --------------------------------------------------------------------------------------
    def export(self, selection_only: bool, with_instance_ids: bool = False) -> Export:
        """Write the selection (or the whole edited scene: every Gaussian not deleted) under SCENE/exports/,
        with its record beside it (`ExportRecord`: the edits it includes, its instances).

        The file name is generated (`safe_export_name`), never taken from the browser.
        """
        state = self.model.state
        labels = self.labels(state)
        if selection_only:
            ids: set[int] | None = set(state.selected)
            keep = np.ones(len(labels), dtype=bool)
        else:
            ids = None
            keep = state.kept(self.scene.labels)
        names = {row.id: row.name for row in self.scene.instances}
        source = ExportSource(self.scene.scene_dir.root.resolve(), self.edit_log.labels, names, export_edits(state, selection_only))
        path = safe_export_name(self.scene.scene_dir, ids)
        try:
            gaussians = self.scene.gaussians.select(torch.from_numpy(keep))
            record = export_with_record(gaussians, labels[keep], ids, path, source, with_instance_ids)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return Export(path, record.gaussians, record_path(path))

