"""The viser server of `protosaga-view`: wires the document to the splat nodes (`splat_nodes.py`), the
training cameras (`training_cameras.py`), the panels, clicks, hotkeys and each tab's live view.

Everything the user does goes through the document's one `EditModel` (buttons, hotkeys and clicks
alike); the model notifies `ViewerApp._on_edit`, which updates the shared scene nodes and GUI, so every
tab shows one state. Each tab also has a `LiveView` that renders its camera on the server in the
segmentation and PCA modes.

Geometry sent to the browser is finite by construction: splats that are not (`splats.drawable`) stay on
the server, cameras with unusable poses or intrinsics get no frustum, and scene sizes are taken from finite
centres only. (The `computeBoundingSphere(): Computed radius is NaN` every tab logs does not come from this
data, and finite splats alone trigger it: viser 1.1.1's splat mesh gives three.js a two-component `position`
attribute, whose missing z reads as NaN when three.js bounds the mesh for frustum culling. A NaN sphere
never culls, so every splat is still drawn; the fix belongs in viser's client.)
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, replace

import numpy as np
import torch
import viser

from . import panels
from .browser_camera import camera_from_pose
from .document import SceneDocument
from .feedback import ClickFeedback
from .live import SERVER_MODES, FeaturePca, RenderMode
from .live_view import LiveSettings, LiveView, client_pose
from .picking import gaussians_in_rectangle, pick_along_ray, pick_instance, pick_rectangle
from .selection import KEY_BINDINGS, Action, EditState, apply_action
from .splat_nodes import NodeLook, SplatNodes
from .training_cameras import TrainingCameras

logger = logging.getLogger(__name__)

HOTKEY_HINT = "*Hotkeys work after a click in the 3D view, not while a list or field has focus.*"
"""Shown above the panel's tabs: viser ignores hotkeys while one of its dropdowns or text fields has focus."""


@dataclass(frozen=True)
class ViewerOptions:
    """How the server presents a scene (the command line's ViewerConfig carries the same values).

    Attributes:
        max_splats: Gaussians sent to the browser (the most opaque ones); None: all of them.
        live: sizes of server-rendered frames.
        mode: the render mode at start.
    """

    max_splats: int | None = 1_000_000
    live: LiveSettings = LiveSettings()
    mode: RenderMode = "rgb"


class ViewerApp:
    """A running viewer of one scene document on one viser server."""

    def __init__(self, server: viser.ViserServer, document: SceneDocument, options: ViewerOptions = ViewerOptions()) -> None:
        self.server = server
        self.document = document
        self.options = options
        self.mode: RenderMode = options.mode
        self.pca = FeaturePca.fit(document.scene.gaussians.features)
        self._views: dict[int, LiveView] = {}
        self._views_lock = threading.Lock()
        self.nodes = SplatNodes(server.scene, document.scene.gaussians, options.max_splats)
        splats = self.nodes.splats
        self.cameras = TrainingCameras(
            server, document.scene.training_views(), splats.centers, splats.opacities, self.nodes.drawable
        )
        self.rectangle_splits = False
        """Whether Ctrl+drag splits (the panel's toggle) rather than selects; Alt+drag always splits."""
        self._last_state = document.model.state  # replayed edits included
        self._feedback = ClickFeedback(lambda: self.cameras.near)

        server.scene.set_up_direction("+z")
        self.cameras.set_initial_camera()
        self.nodes.sync(document.labels(self._last_state), self._look(self._last_state))
        self.cameras.add_frustums()
        # viser listens for hotkeys on the page but skips keys typed into an input, and its dropdowns and
        # text fields are inputs that keep the focus (also across a switch of browser tabs); it offers no
        # way to change that, so the panel says, above its tabs, how to get the keys back.
        server.gui.add_markdown(HOTKEY_HINT)
        controls = panels.ViewerControls(
            set_mode=self.set_mode,
            show_frustums=self.cameras.set_visible,
            go_to_view=self.cameras.go_to,
            redraw=self.refresh_view,
            set_rectangle_splits=lambda on: setattr(self, "rectangle_splits", on),
        )
        self.gui = panels.build(server.gui, document, controls, self.mode)
        self._add_hotkeys()
        server.scene.on_click()(lambda event: self._on_click(event, additive=False))
        server.scene.on_click(modifier="shift")(lambda event: self._on_click(event, additive=True))
        server.scene.on_rect_select(modifier="cmd/ctrl")(lambda event: self._on_rect(event, additive=False))
        server.scene.on_rect_select(modifier="cmd/ctrl+shift")(lambda event: self._on_rect(event, additive=True))
        server.scene.on_rect_select(modifier="alt")(lambda event: self.split_rectangle(event.client, event.screen_min, event.screen_max))
        server.on_client_connect(self._on_connect)
        server.on_client_disconnect(self._on_disconnect)
        document.model.subscribe(self._on_edit)
        self._on_edit(document.model.state)

    def stop(self) -> None:
        """Stop every tab's live view, then the server: no frame in flight is sent to a closed connection."""
        for view in self._live_views():
            view.stop()
        self.server.stop()

    def _look(self, state: EditState) -> NodeLook:
        """How the splat nodes are drawn in the current mode at `state`."""
        return NodeLook(
            drawn=self.mode not in SERVER_MODES,
            instance_colors=self.mode == "instances",
            selected=state.selected,
            visible=self.document.model.visible_instances(state),
            show_unassigned=self.document.show_unassigned,
        )

    # --- edits ---------------------------------------------------------------------------------------
    def run_action(self, action: Action) -> None:
        apply_action(self.document.model, action)

    def set_mode(self, mode: RenderMode) -> None:
        """Switch the render mode for every tab: splats show in the browser modes, frames in the server ones."""
        if mode == self.mode:
            return
        recolor = "instances" in (mode, self.mode)
        self.mode = mode
        look = self._look(self.document.model.state)
        if recolor:
            self.nodes.recolor(self.nodes.ids, look)
        self._update_visibility(look)
        self._request_frames()

    def _on_edit(self, state: EditState) -> None:
        previous, self._last_state = self._last_state, state
        # Selections and names change nothing drawn: the frames are recoloured, not rendered again.
        selection_only = replace(state, selected=frozenset(), names=()) == replace(previous, selected=frozenset(), names=())
        look = self._look(state)
        sent = self.nodes.sync(self.document.labels(state), look) if state.label_edits != previous.label_edits else set()
        sent |= self._update_visibility(look)
        if sent or (previous.selected and not state.selected):
            self._feedback.clear()
        # A first selection dims every other node and the last one undims them; otherwise only the nodes
        # whose selection changed are sent again.
        changed = self.nodes.ids if bool(state.selected) != bool(previous.selected) else state.selected ^ previous.selected
        self.nodes.recolor(changed - sent, look)
        if selection_only:  # what is drawn is unchanged: recolour the frames instead of rendering them
            for view in self._live_views():
                view.reselect()
        else:
            self._request_frames()
        self.gui.refresh(state)

    def refresh_view(self) -> None:
        """Redraw after a change outside the edit model (e.g. showing unassigned Gaussians)."""
        self._update_visibility(self._look(self.document.model.state))
        self._request_frames()

    def _update_visibility(self, look: NodeLook) -> set[int]:
        """Returns the ids of the splat nodes sent again (a level of detail follows what is visible)."""
        with self.server.atomic():
            return self.nodes.update_visibility(look)

    # --- tabs ----------------------------------------------------------------------------------------
    def _on_connect(self, client: viser.ClientHandle) -> None:
        view = LiveView(client, self.document, self.pca, lambda: self.mode, self.options.live)
        with self._views_lock:
            self._views[client.client_id] = view
        client.camera.on_update(lambda _: view.request())
        view.request()

    def _on_disconnect(self, client: viser.ClientHandle) -> None:
        self._feedback.forget(client.client_id)
        with self._views_lock:
            view = self._views.pop(client.client_id, None)
        if view is not None:
            view.stop()

    def _live_views(self) -> list[LiveView]:
        with self._views_lock:
            return list(self._views.values())

    def _request_frames(self) -> None:
        for view in self._live_views():
            view.request()

    def live_view(self, client_id: int) -> LiveView | None:
        with self._views_lock:
            return self._views.get(client_id)

    # --- picking -------------------------------------------------------------------------------------
    def pick(self, client: viser.ClientHandle, screen_x: float, screen_y: float) -> int:
        """The instance under a screen position (0..1, top-left origin) of a tab.

        The label of the tab's current segmentation frame at that pixel when there is one; otherwise,
        or on background, the instance contributing most along the ray (only visible Gaussians).
        """
        view = self.live_view(client.client_id)
        frame = view.current_frame() if view is not None else None
        if frame is not None:
            picked = pick_instance(frame.labels, screen_x * frame.camera.width, screen_y * frame.camera.height)
            if picked:
                return picked
        width, height = int(client.camera.image_width), int(client.camera.image_height)
        camera = camera_from_pose(client_pose(client), width, height)
        visible = self.document.visible()
        return pick_along_ray(visible.gaussians, visible.labels, camera, screen_x * width, screen_y * height)

    def _on_click(self, event: viser.SceneClickEvent, additive: bool) -> None:
        self._feedback.clicked(event.client, event.ray_origin, event.ray_direction)
        picked = self.pick(event.client, *event.screen_pos)
        self.document.model.click(picked, additive=additive)
        self._feedback.picked(event.client, self._describe(picked) if picked else None)

    def _describe(self, instance_id: int) -> str:
        """An instance's name and size, as the click label shows them."""
        count = self.document.instance_counts().get(instance_id, 0)
        return f"{self.document.instance_name(instance_id)} · {count:,} Gaussians"

    def split_rectangle(self, client: viser.ClientHandle, screen_min: tuple[float, float], screen_max: tuple[float, float]) -> None:
        """Split off, as a new instance, the Gaussians of the selection (of every visible instance when
        nothing is selected) whose centres lie inside a screen rectangle of a tab (0..1, top-left origin),
        through every depth (`gaussians_in_rectangle`). Undoable; the tab is told what happened."""
        state = self.document.model.state
        width, height = int(client.camera.image_width), int(client.camera.image_height)
        camera = camera_from_pose(client_pose(client), width, height)
        sources = state.selected or self.document.model.visible_instances(state)
        candidates = np.flatnonzero(np.isin(self.document.labels(state), np.fromiter(sources, dtype=np.int64)))
        (x0, y0), (x1, y1) = screen_min, screen_max
        inside = gaussians_in_rectangle(
            torch.from_numpy(self.nodes.splats.centers[candidates]), camera, x0 * width, y0 * height, x1 * width, y1 * height
        )
        index = candidates[inside.numpy()]
        what = "the selection" if state.selected else "the visible instances"
        if len(index) == 0:
            client.add_notification("Nothing split", f"no Gaussian of {what} has its centre inside the rectangle", auto_close_seconds=6.0)
            return
        busy = client.add_notification("Splitting", f"{len(index):,} Gaussians of {what}", loading=True, with_close_button=False)
        try:
            split = self.document.split(index)
        except ValueError as error:
            busy.title, busy.body, busy.color = "Split failed", str(error), "red"
        else:
            busy.title = "Split"
            busy.body = f"{len(index):,} Gaussians are now instance {split.id}, selected (Ctrl+Z undoes)"
        busy.loading, busy.with_close_button, busy.auto_close_seconds = False, True, 8.0

    def _on_rect(self, event: viser.SceneRectSelectEvent, additive: bool) -> None:
        if self.rectangle_splits and not additive:
            self.split_rectangle(event.client, event.screen_min, event.screen_max)
            return
        view = self.live_view(event.client.client_id)
        if view is None:
            return
        frame = view.current_frame() or view.render_now(self.options.live.moving_size)
        (x0, y0), (x1, y1) = event.screen_min, event.screen_max
        width, height = frame.camera.width, frame.camera.height
        picked = pick_rectangle(frame.labels, x0 * width, y0 * height, x1 * width, y1 * height)
        self.document.model.select_many(picked, additive=additive)

    def _add_hotkeys(self) -> None:
        for binding in KEY_BINDINGS:
            command = self.server.gui.add_command(binding.label, hotkey=binding.key, modifier=binding.modifier)
            command.on_trigger(lambda _, action=binding.action: self.run_action(action))

