"""The edited scene: a loaded scene plus the one edit model, and everything derived from the two.

Free of viser, so the viewer, its tests and bench/viewer.py share it. Derived data (labels after merges,
the Gaussians on screen, prototypes after merges) is cached per edit state: a frame or a click at the
same state reuses it, and an edit invalidates it by changing the state.

Merges and splits follow Eq. 17-18 exactly (protosaga_core/method/label_edits.py): each training view keeps its
prototypes as sums over the consistent masks, rendered once on the first merge or split; a merge adds two
instances' sums, and a split renders every training view once to move the pixels its new instance takes
from its sources. The per-Gaussian labels are relabelled (`apply_label_edits`) rather than re-classified,
so an edit moves exactly the Gaussians it names and nothing else.

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
from protosaga_core.device import default_device
from protosaga_core.gaussians import Gaussians
from protosaga_core.io.exports import (
    EDITS_FILE,
    ExportFormat,
    ExportSource,
    LabelsFingerprint,
    SourceRows,
    export_with_record,
    record_path,
    safe_export_name,
)
from protosaga_core.method.label_edits import LabelEdit, Merge, Split, ViewSums, split_region
from protosaga_core.method.lifting import covered_labels, render_label_maps
from protosaga_core.method.prototypes import Prototypes, classify, ensemble_prototypes
from protosaga_core.render import render
from protosaga_core.stages import read_consistent_mask, render_features

from .edit_log import EditLog, export_edits
from .scene import ViewerScene
from .selection import EditModel, EditState


MAX_NAME_CHARS = 200
"""The longest instance name the viewer gives: names are shown in a panel ~300 px wide, and a name of
megabytes (a field filled by a script) would be saved, sent to every tab and quoted in messages."""


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
    """A written export: the file under SCENE/exports/, how many Gaussians it holds, how many of those
    asked for its format left out (`ExportRecord.left_out`), and its record (the JSON beside it: the edits
    it includes and its instances)."""

    path: Path
    count: int
    record: Path
    left_out: int


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
        self._prototypes_cache: dict[tuple[LabelEdit, ...], Prototypes] = {(): scene.prototypes}
        # Per training view, by the label edits made: Eq. 17 sums, and for edits ending in a split the
        # pixels (flat indices) that split took.
        self._view_sums: dict[tuple[LabelEdit, ...], list[ViewSums]] = {}
        self._split_pixels: dict[tuple[LabelEdit, ...], list[Tensor]] = {}
        instances = [row.id for row in scene.instances] or np.unique(scene.labels[scene.labels > 0]).tolist()
        self.edit_log = EditLog(scene.scene_dir.root / EDITS_FILE, LabelsFingerprint.of(scene.labels))
        # The saved merges' prototypes are computed here, so that a log whose merges cannot be
        # recomputed (the dataset moved) is set aside at once instead of failing the first frame.
        initial = self.edit_log.replay(frozenset(instances), self.prototypes)
        self.model = EditModel(instances, initial=initial)
        self.model.subscribe(self.edit_log.save)

    # --- derived data --------------------------------------------------------------------------------
    def labels(self, state: EditState | None = None) -> np.ndarray:
        """Per-Gaussian labels after the merges and splits of `state` (default: the current one). [N] int64"""
        state = state or self.model.state
        with self._lock:
            if self._labels_cache is None or self._labels_cache[0] != state.label_edits:
                self._labels_cache = (state.label_edits, state.effective_labels(self.scene.labels))
            return self._labels_cache[1]

    def visible(self, state: EditState | None = None) -> VisibleGaussians:
        """The Gaussians drawn at `state`: visible instances, and unassigned ones if shown."""
        state = state or self.model.state
        visible_ids = self.model.visible_instances(state)
        key = (tuple(sorted(visible_ids)), state.label_edits, self.show_unassigned)
        with self._lock:
            if self._visible_cache is None or self._visible_cache[0] != key:
                labels = self.labels(state)
                shown = np.fromiter(visible_ids | ({0} if self.show_unassigned else set()), dtype=np.int64)
                index = np.flatnonzero(np.isin(labels, shown))
                subset = self._gaussians.select(torch.from_numpy(index).to(self.device))
                self._visible_cache = (key, VisibleGaussians(index, subset, labels[index]))
            return self._visible_cache[1]

    def prototypes(self, state: EditState | None = None) -> Prototypes:
        """Eq. 18 prototypes after the merges and splits of `state`."""
        edits = (state or self.model.state).label_edits
        with self._lock:
            if edits not in self._prototypes_cache:
                per_view = [sums.prototypes() for sums in self._sums(edits)]
                self._prototypes_cache[edits] = ensemble_prototypes([v[0] for v in per_view], [v[1] for v in per_view])
            return self._prototypes_cache[edits]

    def consistent_mask(self, view: View, state: EditState | None = None) -> Tensor:
        """A training view's consistent mask after the merges and splits of `state`. [H, W] int64"""
        edits = (state or self.model.state).label_edits
        with self._lock:
            if any(isinstance(edit, Split) for edit in edits):
                self._sums(edits)  # finds the pixels of its splits
            return self._edited_mask(self._training_index(view.name), view, edits)

    def instance_counts(self, state: EditState | None = None) -> dict[int, int]:
        """Gaussians per instance after the merges of `state`."""
        counts = np.bincount(self.labels(state))
        return {i: int(counts[i]) if i < len(counts) else 0 for i in self.model.live_instances(state)}

    def instance_name(self, instance_id: int) -> str:
        """An instance's name: from the scene's table, or for one a split made from the current edits;
        else "instance <id>"."""
        row = self.scene.instance(instance_id)
        name = row.name if row is not None else self.model.state.name_of(instance_id)
        return name or f"instance {instance_id}"

    def rename(self, instance_id: int, name: str) -> None:
        """Name an instance: one of the scene's in scene.json (at once), one a split made as an undoable
        edit (saved with the edits).

        Raises:
            ValueError: a name longer than MAX_NAME_CHARS (nothing is changed).
        """
        if len(name.strip()) > MAX_NAME_CHARS:
            raise ValueError(f"a name has at most {MAX_NAME_CHARS} characters, this one {len(name.strip()):,}")
        if self.scene.instance(instance_id) is not None:
            self.scene.rename(instance_id, name)
        else:
            self.model.name_instance(instance_id, name)

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

    def _training_views(self) -> list[View]:
        if self.scene.dataset is None:
            raise ValueError(
                f"merging and splitting need the training views to recompute prototypes, but the dataset of "
                f"{self.scene.scene_dir.meta_path} cannot be read"
            )
        return self.scene.dataset.split("train")

    def _training_index(self, name: str) -> int:
        return next(k for k, view in enumerate(self._training_views()) if view.name == name)

    def _sums(self, edits: tuple[LabelEdit, ...]) -> list[ViewSums]:
        """Eq. 17 sums of every training view after `edits` (label_edits.py); edits made one after another
        each cost one step from the previous state's sums."""
        if edits not in self._view_sums:
            if not edits:
                views = self._training_views()
                masks = [read_consistent_mask(self.scene.scene_dir, view) for view in views]  # fail before rendering
                rendered = render_features(self._gaussians, self.scene.dataset, views, progress=False)
                self._view_sums[edits] = [ViewSums.of(features, mask) for (_, features), mask in zip(rendered, masks)]
            elif isinstance(edits[-1], Merge):
                self._view_sums[edits] = [sums.merge(edits[-1].keep, edits[-1].absorb) for sums in self._sums(edits[:-1])]
            else:
                before = self._sums(edits[:-1])
                moved = self._split_transfers(edits)
                self._view_sums[edits] = [sums.move(part, edits[-1].id) for sums, part in zip(before, moved)]
        return self._view_sums[edits]

    def _split_transfers(self, edits: tuple[LabelEdit, ...]) -> list[ViewSums]:
        """For edits ending in a split, per training view: the feature sums of the pixels the split takes
        (`split_region`), grouped by the instance they leave; their flat indices go to `_split_pixels`."""
        split = edits[-1]
        assert isinstance(split, Split)
        before = self.labels(EditState(label_edits=edits[:-1]))
        sources = torch.from_numpy(np.unique(before[split.index]))
        after = torch.from_numpy(self.labels(EditState(label_edits=edits))).to(self.device)
        transfers, pixels = [], []
        for index, view in enumerate(self._training_views()):
            mask = self._edited_mask(index, view, edits[:-1])
            # One render gives the view's features and its label map after the split (as render_label_maps).
            with torch.no_grad():
                out = render(self._gaussians, view.cameras.to(self.device), rgb=False, extras=self._gaussians.features, labels=after)
            features, rendered = out.extras[0].cpu(), covered_labels(out.labels)[0].cpu()
            region = split_region(mask, rendered, split.id, sources[sources > 0])
            pixels.append(region.reshape(-1).nonzero().squeeze(1))
            transfers.append(ViewSums.of(features, torch.where(region, mask, 0)))
        self._split_pixels[edits] = pixels
        return transfers

    def _edited_mask(self, index: int, view: View, edits: tuple[LabelEdit, ...]) -> Tensor:
        """The consistent mask of training view `index` after `edits`, whose splits' pixels are known. [H, W] int64"""
        mask = read_consistent_mask(self.scene.scene_dir, view)
        for step, edit in enumerate(edits, 1):
            if isinstance(edit, Merge):
                mask[mask == edit.absorb] = edit.keep
            else:
                mask.view(-1)[self._split_pixels[edits[:step]][index]] = edit.id
        return mask

    # --- edits that need more than the model ---------------------------------------------------------
    def merge(self, keep: int, absorb: int) -> None:
        """Merge `absorb` into `keep` (undoable); prototypes are recomputed before the edit is recorded,
        so every listener already sees the merged prototypes."""
        self.prototypes(EditState(label_edits=(*self.model.state.label_edits, Merge(keep, absorb))))
        self.model.merge(keep, absorb)

    def split(self, index: np.ndarray) -> Split:
        """Make the Gaussians `index` [M] a new instance, selected (undoable); its prototypes are computed
        (one render of each training view) before the edit is recorded.

        Raises:
            ValueError: no Gaussian, or exactly the Gaussians of one instance already (nothing to split).
        """
        state = self.model.state
        split = Split.of(self.model.new_instance_id(), index)
        labels = self.labels(state)
        owners = np.unique(labels[split.index])
        if len(owners) == 1 and owners[0] > 0 and np.count_nonzero(labels == owners[0]) == len(split.index):
            raise ValueError(f"these are all the Gaussians of instance {int(owners[0])}: nothing to split off")
        self.prototypes(EditState(label_edits=(*state.label_edits, split)))
        self.model.split(split)
        return split

    # --- export --------------------------------------------------------------------------------------
    def export(self, selection_only: bool, with_instance_ids: bool = False, file_format: ExportFormat = "ply") -> Export:
        """Write the selection (or the whole edited scene: every Gaussian not deleted) under SCENE/exports/
        as a file of `file_format`, with its record beside it (`ExportRecord`: the edits it includes, its
        instances).

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
        names = {row.id: row.name for row in self.scene.instances} | dict(state.names)  # splits' names too
        source = ExportSource(self.scene.scene_dir.root.resolve(), self.edit_log.labels, names, export_edits(state, selection_only))
        path = safe_export_name(self.scene.scene_dir, ids, file_format=file_format)
        try:
            gaussians = self.scene.gaussians.select(torch.from_numpy(keep))
            # An imported scene's ply export copies the source PLY's rows of the kept Gaussians, byte for byte.
            verbatim = SourceRows.of(self.scene.scene_dir, np.flatnonzero(keep))
            record = export_with_record(gaussians, labels[keep], ids, path, source, with_instance_ids, verbatim, file_format)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return Export(path, record.gaussians, record_path(path), record.left_out)

