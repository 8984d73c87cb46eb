"""The scene's Gaussians in the browser: one viser splat node per instance, kept in step with the edits.

`SplatNodes` owns the nodes; the app tells it what to draw (`NodeLook`: colouring, selection, visibility)
and it sends only what changed: a node whose Gaussians changed (a merge or split made, undone or discarded)
is sent again, a node whose colours changed gets new colours, a node whose instance is gone is removed.

The browser gets every drawable Gaussian (`splats.drawable`) when they fit the splat budget. A bigger scene
is a level of detail: the budget goes to the most opaque Gaussians of what can be seen (`splats.browser_subset`
over the visible instances), chosen again when the visibility changes, so an isolated object arrives whole
and hidden ones cost nothing; the server's frames, picks and exports always use every Gaussian.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import viser

from protosaga_core.gaussians import Gaussians
from protosaga_core.palette import instance_color

from .splats import SplatArrays, browser_subset, dimmed, drawable, highlighted, instance_groups, splat_arrays

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class NodeLook:
    """How the nodes are drawn at one moment.

    Attributes:
        drawn: whether splats are drawn at all (not while the server renders the frames).
        instance_colors: each instance in its palette colour rather than its own RGB.
        selected: instances drawn highlighted, every other one dimmed (when not empty).
        visible: instances drawn (not hidden, deleted or isolated away).
        show_unassigned: whether the unassigned Gaussians (id 0) are drawn.
    """

    drawn: bool
    instance_colors: bool
    selected: frozenset[int]
    visible: frozenset[int]
    show_unassigned: bool

    def is_visible(self, instance_id: int) -> bool:
        if not self.drawn:
            return False
        return self.show_unassigned if instance_id == 0 else instance_id in self.visible

    def colors(self, instance_id: int, rgbs: np.ndarray) -> np.ndarray:
        """Colours of one node's splats, given their own (`rgbs` [M, 3]). [M, 3]"""
        if self.instance_colors and instance_id > 0:
            rgbs = np.broadcast_to(np.asarray(instance_color(instance_id), dtype=np.float32) / 255.0, rgbs.shape)
        if instance_id in self.selected:
            return highlighted(rgbs)
        return dimmed(rgbs) if self.selected else np.ascontiguousarray(rgbs)


@dataclass(frozen=True)
class SplatNode:
    """One instance's splats in the browser: the viser node and the Gaussians it holds (scene indices). [M]"""

    handle: viser.GaussianSplatHandle
    index: np.ndarray


class SplatNodes:
    """The splat nodes of one scene on one viser scene (shared by every tab)."""

    def __init__(self, scene: viser.SceneApi, gaussians: Gaussians, max_splats: int | None) -> None:
        """`max_splats`: Gaussians sent to the browser (the most opaque drawable ones); None: all of them."""
        self.scene = scene
        self.splats: SplatArrays = splat_arrays(gaussians)
        """Every Gaussian of the scene as the browser would draw it (also those never sent). [N]"""
        self.drawable = drawable(self.splats)
        """Which Gaussians the browser can draw. [N] bool"""
        if not self.drawable.all():
            logger.warning(
                "%d Gaussians have NaN/inf values or covariances beyond float16: the browser does not draw them",
                int((~self.drawable).sum()),
            )
        self.max_splats = max_splats
        self.budgeted = max_splats is not None and int(self.drawable.sum()) > max_splats
        """Whether the drawable Gaussians exceed the budget, so that what is sent follows what is visible."""
        self.shown = np.flatnonzero(self.drawable)
        """Indices of the Gaussians sent to the browser (over the budget, chosen by `sync`). [M]"""
        self._nodes: dict[int, SplatNode] = {}
        self._labels: np.ndarray | None = None
        self._chosen_for: tuple | None = None
        if self.budgeted:
            logger.info(
                "%d Gaussians: the browser gets the %d most opaque of what is visible (--max-splats); "
                "isolate an object to get all of it. Frames, picks and exports use every Gaussian.",
                len(self.drawable), max_splats,
            )

    @property
    def ids(self) -> set[int]:
        """Instance ids with a node (0: the unassigned Gaussians)."""
        return set(self._nodes)

    def sync(self, labels: np.ndarray, look: NodeLook) -> set[int]:
        """One node per instance of `labels` ([N], after the edits) and one for unassigned Gaussians.
        Returns the ids whose node was sent."""
        self._labels = labels
        self._choose(labels, look)
        groups = instance_groups(labels, self.shown)
        for instance_id in set(self._nodes) - set(groups):
            self._nodes.pop(instance_id).handle.remove()
        sent = set()
        for instance_id, index in groups.items():
            node = self._nodes.get(instance_id)
            if node is not None and np.array_equal(node.index, index):
                continue
            splats = self.splats.take(index)
            name = "/splats/unassigned" if instance_id == 0 else f"/splats/instance_{instance_id}"
            handle = self.scene.add_gaussian_splats(  # replaces a node of the same name
                name, splats.centers, splats.covariances, look.colors(instance_id, splats.rgbs), splats.opacities,
                visible=look.is_visible(instance_id),
            )
            self._nodes[instance_id] = SplatNode(handle, index)
            sent.add(instance_id)
        return sent

    def recolor(self, instance_ids: set[int], look: NodeLook) -> None:
        """Send new colours for the nodes of `instance_ids` (ids without a node are skipped)."""
        for instance_id in instance_ids & set(self._nodes):
            node = self._nodes[instance_id]
            node.handle.rgbs = look.colors(instance_id, self.splats.rgbs[node.index])

    def update_visibility(self, look: NodeLook) -> set[int]:
        """Show and hide the nodes; over the budget, first send what became visible (`_choose`).
        Returns the ids whose node was sent."""
        sent = set()
        if self.budgeted and self._labels is not None and self._visibility_key(look) != self._chosen_for:
            sent = self.sync(self._labels, look)
        for instance_id, node in self._nodes.items():
            node.handle.visible = look.is_visible(instance_id)
        return sent

    def _choose(self, labels: np.ndarray, look: NodeLook) -> None:
        """Over the budget: the most opaque drawable Gaussians of the visible instances (and of the
        unassigned ones when shown), whatever the render mode, so that switching modes sends nothing."""
        if not self.budgeted:
            return
        visible_ids = np.fromiter(look.visible, dtype=np.int64, count=len(look.visible))
        seen = np.isin(labels, visible_ids) | ((labels == 0) & look.show_unassigned)
        self.shown = browser_subset(self.splats.opacities, self.max_splats, self.drawable & seen)
        self._chosen_for = self._visibility_key(look)

    @staticmethod
    def _visibility_key(look: NodeLook) -> tuple:
        return look.visible, look.show_unassigned
