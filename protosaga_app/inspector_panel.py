"""The association inspector's GUI: one training view's panels, ranked suspects, and the merge fix.

Choosing a view moves the choosing tab's camera into it and shows image | raw SAM mask | associated mask
| prediction | disagreement (`inspector.ViewPanels`). Showing a suspect selects its instances and opens
its first view; merging the two selected instances is an undoable edit that recomputes the prototypes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import viser

from protosaga_core.prototypes import read_consistent_mask
from protosaga_core.scene_dir import SceneDirError

from .inspector import Suspect, ViewPanels, find_suspects
from .selection import EditState

if TYPE_CHECKING:
    from .server import ViewerApp

MAX_SUSPECTS = 30
NO_VIEW = "(choose a view)"
NO_SUSPECT = "(none)"


@dataclass
class InspectorPanel:
    app: "ViewerApp"
    view: viser.GuiDropdownHandle
    mosaic: viser.GuiImageHandle
    summary: viser.GuiMarkdownHandle
    suspects: viser.GuiDropdownHandle
    merge: viser.GuiButtonHandle
    _suspects: list[Suspect] = field(default_factory=list)
    _shown: tuple[str, tuple] | None = None

    @classmethod
    def build(cls, app: "ViewerApp") -> "InspectorPanel":
        gui = app.server.gui
        names = [view.name for view in app.document.scene.training_views()]
        available = bool(names) and app.document.scene.association is not None
        gui.add_markdown(
            "image · raw SAM mask · associated mask · prediction · disagreement (red)"
            if available
            else "The inspector needs the scene's dataset and association record; neither could be read."
        )
        view = gui.add_dropdown("Training view", (NO_VIEW, *names), initial_value=NO_VIEW, disabled=not available)
        mosaic = gui.add_image(np.zeros((8, 40, 3), np.uint8), label="view panels")
        summary = gui.add_markdown("")
        suspects = gui.add_dropdown("Suspects", (NO_SUSPECT,), initial_value=NO_SUSPECT, disabled=not available)
        show = gui.add_button("Show suspect", disabled=not available)
        merge = gui.add_button("Merge the two selected instances", disabled=True)
        panel = cls(app, view, mosaic, summary, suspects, merge)
        view.on_update(lambda event: panel._on_view(event.client))
        show.on_click(lambda event: panel._show_suspect(event.client))
        merge.on_click(lambda event: panel._merge(event.client))
        return panel

    def refresh(self, state: EditState) -> None:
        """Re-rank the suspects and redraw the view for the current prototypes."""
        self.merge.disabled = len(state.selected) != 2
        record = self.app.document.scene.association
        if record is None:
            return
        live = self.app.document.model.live_instances(state)
        ranked = find_suspects(record, self.app.document.prototypes(state))
        self._suspects = [s for s in ranked if set(s.instances) <= live][:MAX_SUSPECTS]
        options = (NO_SUSPECT, *(f"{rank + 1}. {s.description}" for rank, s in enumerate(self._suspects)))
        if tuple(self.suspects.options) != options:
            self.suspects.options = options
        if self.view.value != NO_VIEW:
            self._draw(self.view.value, state)

    # --- callbacks -----------------------------------------------------------------------------------
    def _on_view(self, client: viser.ClientHandle | None) -> None:
        if self.view.value == NO_VIEW:
            return
        if client is not None:
            self.app.go_to_view(client, self.view.value)
        self._draw(self.view.value, self.app.document.model.state)

    def _show_suspect(self, client: viser.ClientHandle | None) -> None:
        options = list(self.suspects.options)
        if self.suspects.value == NO_SUSPECT or self.suspects.value not in options:
            return
        suspect = self._suspects[options.index(self.suspects.value) - 1]
        self.app.document.model.select_many(suspect.instances)
        if suspect.views:
            self.view.value = suspect.views[0]  # its update callback moves the camera and draws the view
            if client is not None:
                self.app.go_to_view(client, suspect.views[0])

    def _merge(self, client: viser.ClientHandle | None) -> None:
        selected = sorted(self.app.document.model.state.selected)
        if len(selected) != 2:
            return
        counts = self.app.document.instance_counts()
        # The larger instance keeps its id (and name): the smaller one is the fragment being fixed.
        keep, absorb = sorted(selected, key=lambda i: (-counts.get(i, 0), i))
        try:
            self.app.document.merge(keep, absorb)
        except (ValueError, SceneDirError) as error:
            if client is not None:
                client.add_notification("Merge failed", str(error), color="red", auto_close_seconds=8.0)

    def _draw(self, view_name: str, state: EditState) -> None:
        key = (view_name, state.merged)
        if self._shown == key:
            return
        panels = self.panels(view_name, state)
        self.mosaic.image = panels.mosaic()
        self.summary.content = (
            f"**{view_name}**: {panels.disagreement_fraction:.1%} of the associated pixels disagree with the prediction"
        )
        self._shown = key

    def panels(self, view_name: str, state: EditState) -> ViewPanels:
        """The five panels of a training view at an edit state."""
        document = self.app.document
        view = next(v for v in document.scene.training_views() if v.name == view_name)
        raw = view.load_mask()
        # Merges apply to the associated ids too, or a fixed split would still show as disagreement.
        associated = state.effective_labels(read_consistent_mask(document.scene.scene_dir, view).numpy())
        return ViewPanels(
            (view.load_image().numpy() * 255.0 + 0.5).astype(np.uint8),
            np.zeros_like(associated) if raw is None else raw.numpy(),
            associated,
            document.predict_view(view, state),
        )
