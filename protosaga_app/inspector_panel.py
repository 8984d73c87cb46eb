"""The association inspector's GUI: one training view's panels, ranked suspects, and the merge fix.

Choosing a view moves the choosing tab's camera into it and shows image | raw SAM mask | associated mask
| prediction | disagreement (`inspector.ViewPanels`): large, one tile per row at the panel's width, or
compact, the five in one row. Every suspect is listed, by kind and in pages of ten with a count, under
short entries whose full description is shown below them. Showing a suspect selects its instances and
opens its first view; merging the two selected instances is an undoable edit that recomputes the
prototypes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import viser

from protosaga_core.io.scene_dir import SceneDirError

from .inspector import (
    ALL_KINDS,
    KIND_NAMES,
    KIND_ORDER,
    Layout,
    Suspect,
    ViewPanels,
    find_suspects,
    page_names,
    suspect_page,
    suspects_of_kind,
)
from .document import SceneDocument
from .selection import EditState

NO_VIEW = "(choose a view)"
NO_SUSPECT = "(none)"
EXPANDED_WIDTH = 384
"""Tile width of the large panels, one tile per row: viser's panel is ~300-400 px wide, so a tile fills
it (the five in a row were ~60 px each, too small to read)."""
COMPACT_WIDTH = 96
"""Tile width of the compact panels, five in a row: an overview of the view, sent small."""
LAYOUTS: dict[bool, tuple[Layout, int]] = {True: ("column", EXPANDED_WIDTH), False: ("row", COMPACT_WIDTH)}
"""The mosaic's layout and tile width, by the "Large panels" checkbox."""


def _set_options(dropdown: viser.GuiDropdownHandle, options: tuple[str, ...]) -> None:
    """Send options only when they change; viser moves the value to the first option when it is gone."""
    if tuple(dropdown.options) != options:
        dropdown.options = options


@dataclass
class InspectorPanel:
    document: SceneDocument
    go_to_view: Callable[[viser.ClientHandle, str], None]
    view: viser.GuiDropdownHandle
    large: viser.GuiCheckboxHandle
    mosaic: viser.GuiImageHandle
    summary: viser.GuiMarkdownHandle
    kind: viser.GuiDropdownHandle
    page: viser.GuiDropdownHandle
    caption: viser.GuiMarkdownHandle
    suspects: viser.GuiDropdownHandle
    detail: viser.GuiMarkdownHandle
    show: viser.GuiButtonHandle
    merge: viser.GuiButtonHandle
    _ranked: list[Suspect] = field(default_factory=list)
    _all_ranked: tuple[tuple, list[Suspect]] | None = None
    """Every suspect, by the merges and splits they were ranked for: a click changes only the selection,
    and re-ranking took most of a click at 1M Gaussians x 200 views (~0.1 s, bench/RESULTS.md)."""
    _entries: dict[str, Suspect] = field(default_factory=dict)
    """The suspect dropdown's entries on the current page."""
    _panels: tuple[tuple[str, tuple], ViewPanels] | None = None
    """The last view drawn, by (view, merges): switching the layout needs no new rendering."""
    _shown: tuple[str, tuple, bool] | None = None

    @classmethod
    def build(cls, gui: viser.GuiApi, document: SceneDocument, go_to_view: Callable[[viser.ClientHandle, str], None]) -> "InspectorPanel":
        """The inspector's widgets on `gui`; `go_to_view` moves a tab's camera into a training view."""
        names = [view.name for view in document.scene.training_views()]
        available = bool(names) and document.scene.association is not None
        if not available:
            gui.add_markdown("The inspector needs the scene's dataset and association record; neither could be read.")
        view = gui.add_dropdown("Training view", (NO_VIEW, *names), initial_value=NO_VIEW, disabled=not available)
        summary = gui.add_markdown("")
        # The suspect controls come before the panels, so a tall mosaic never pushes them out of reach.
        kind = gui.add_dropdown("Kind", (ALL_KINDS, *(KIND_NAMES[k] for k in KIND_ORDER)), disabled=not available)
        page = gui.add_dropdown("Showing", page_names(0), disabled=not available)
        caption = gui.add_markdown("")
        suspects = gui.add_dropdown("Suspect", (NO_SUSPECT,), initial_value=NO_SUSPECT, disabled=not available)
        detail = gui.add_markdown("")
        show = gui.add_button("Show suspect", disabled=True)
        merge = gui.add_button("Merge the two selected instances", disabled=True)
        gui.add_markdown("Tiles: image · raw SAM mask · associated · prediction · disagreement (red)")
        large = gui.add_checkbox("Large panels", initial_value=True, hint="One tile per row; off: five in a row")
        # PNG: JPEG would blur the colour-coded ids' borders into colours of no id.
        mosaic = gui.add_image(np.zeros((8, 40, 3), np.uint8), label="view panels", format="png")
        panel = cls(document, go_to_view, view, large, mosaic, summary, kind, page, caption, suspects, detail, show, merge)
        view.on_update(lambda event: panel._on_view(event.client))
        large.on_update(lambda _: panel._redraw())
        kind.on_update(lambda _: panel._relist())
        page.on_update(lambda _: panel._relist())
        suspects.on_update(lambda _: panel._on_suspect())
        show.on_click(lambda event: panel._show_suspect(event.client))
        merge.on_click(lambda event: panel._merge(event.client))
        return panel

    def refresh(self, state: EditState) -> None:
        """Re-rank the suspects and redraw the view for the current prototypes."""
        self.merge.disabled = len(state.selected) != 2
        record = self.document.scene.association
        if record is None:
            return
        document = self.document
        live = document.model.live_instances(state)
        if self._all_ranked is None or self._all_ranked[0] != state.label_edits:
            # The instance table's counts (per-Gaussian labels after merges), so both say the same number.
            ranked = find_suspects(record, document.prototypes(state), document.instance_counts(state))
            self._all_ranked = (state.label_edits, ranked)
        self._ranked = [s for s in self._all_ranked[1] if set(s.instances) <= live]
        self._relist()
        self._redraw(state)

    # --- the suspect list ----------------------------------------------------------------------------
    def _relist(self) -> None:
        """Fill the page and suspect dropdowns for the chosen kind and page.

        Assigning options may move a dropdown's value and so rerun this from its callback; values are
        read again after every assignment, which makes the outer run agree with the inner one.
        """
        listed = suspects_of_kind(self._ranked, self.kind.value)
        _set_options(self.page, page_names(len(listed)))
        shown = suspect_page(listed, self.page.options.index(self.page.value), kind_name=self.kind.value)
        self._entries = dict(zip(shown.labels, shown.suspects))
        self.caption.content = shown.caption
        _set_options(self.suspects, (NO_SUSPECT, *shown.labels))
        self._on_suspect()

    def _on_suspect(self) -> None:
        """Describe the chosen suspect; "Show suspect" acts only on one."""
        suspect = self._entries.get(self.suspects.value)
        self.show.disabled = suspect is None
        self.detail.content = "" if suspect is None else f"{suspect.description} (evidence {suspect.evidence:.2f})"

    # --- callbacks -----------------------------------------------------------------------------------
    def _on_view(self, client: viser.ClientHandle | None) -> None:
        if self.view.value == NO_VIEW:
            return
        if client is not None:
            self.go_to_view(client, self.view.value)
        self._redraw()

    def _show_suspect(self, client: viser.ClientHandle | None) -> None:
        suspect = self._entries.get(self.suspects.value)
        if suspect is None:
            return
        self.document.model.select_many(suspect.instances)
        if suspect.views:
            self.view.value = suspect.views[0]  # its update callback moves the camera and draws the view
            if client is not None:
                self.go_to_view(client, suspect.views[0])

    def _merge(self, client: viser.ClientHandle | None) -> None:
        selected = sorted(self.document.model.state.selected)
        if len(selected) != 2:
            return
        counts = self.document.instance_counts()
        # The larger instance keeps its id (and name): the smaller one is the fragment being fixed.
        keep, absorb = sorted(selected, key=lambda i: (-counts.get(i, 0), i))
        try:
            self.document.merge(keep, absorb)
        except (ValueError, SceneDirError) as error:
            if client is not None:
                client.add_notification("Merge failed", str(error), color="red", auto_close_seconds=8.0)

    def _redraw(self, state: EditState | None = None) -> None:
        """Draw the chosen view at `state` (default: the current one) in the chosen layout, if it changed."""
        view_name = self.view.value
        if view_name == NO_VIEW:
            return
        state = state or self.document.model.state
        key = (view_name, state.label_edits, self.large.value)
        if self._shown == key:
            return
        if self._panels is None or self._panels[0] != key[:2]:
            self._panels = (key[:2], self.panels(view_name, state))
        panels = self._panels[1]
        self.mosaic.image = panels.mosaic(*LAYOUTS[self.large.value])
        self.summary.content = (
            f"**{view_name}**: {panels.disagreement_fraction:.1%} of associated pixels disagree with the prediction"
        )
        self._shown = key

    def panels(self, view_name: str, state: EditState) -> ViewPanels:
        """The five panels of a training view at an edit state."""
        document = self.document
        view = next(v for v in document.scene.training_views() if v.name == view_name)
        raw = view.load_mask()
        # Merges and splits apply to the associated ids too, or a fixed error would still show as disagreement.
        associated = document.consistent_mask(view, state).numpy()
        return ViewPanels(
            (view.load_image().numpy() * 255.0 + 0.5).astype(np.uint8),
            np.zeros_like(associated) if raw is None else raw.numpy(),
            associated,
            document.predict_view(view, state),
        )
