"""The viser server of `protosaga-view`: splat nodes, training cameras, clicks, hotkeys and live views.

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
import viser.transforms as vtf

from protosaga_core.palette import instance_color

from . import panels
from .browser_camera import camera_from_pose, frustum_scale
from .document import SceneDocument
from .feedback import ClickFeedback
from .framing import (
    CONTROL_PANEL_PX,
    DEFAULT_FOV,
    TYPICAL_CANVAS,
    behind_frustum,
    framed_objects,
    frustum_depth_for,
    near_plane,
    overview_pose,
    scene_extent,
    scene_up,
    training_poses,
)
from .live import SERVER_MODES, FeaturePca, RenderMode
from .live_view import LiveSettings, LiveView, client_pose
from .picking import gaussians_in_rectangle, pick_along_ray, pick_instance, pick_rectangle
from .selection import KEY_BINDINGS, Action, EditState, apply_action
from .splats import browser_subset, dimmed, drawable, highlighted, instance_groups, splat_arrays

logger = logging.getLogger(__name__)

THUMBNAIL_SIDE = 96
"""Longer side of a frustum's thumbnail: enough to recognise the view, small enough for hundreds."""
FRUSTUM_LINE = 0.025
"""Frustum line thickness as a share of its depth."""
HOTKEY_HINT = "*Hotkeys work after a click in the 3D view, not while a list or field has focus.*"
"""Shown above the panel's tabs: viser ignores hotkeys while one of its dropdowns or text fields has focus."""


@dataclass(frozen=True)
class SplatNode:
    """One instance's splats in the browser: the viser node and the Gaussians it holds (scene indices). [M]"""

    handle: viser.GaussianSplatHandle
    index: np.ndarray


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
        self._splats = splat_arrays(document.scene.gaussians)
        self._drawable = drawable(self._splats)
        if not self._drawable.all():
            logger.warning(
                "%d Gaussians have NaN/inf values or covariances beyond float16: the browser does not draw them",
                int((~self._drawable).sum()),
            )
        self._extent = scene_extent(self._splats.centers)
        self._shown = browser_subset(self._splats.opacities, options.max_splats, self._drawable)
        self._poses = training_poses(document.scene.training_views())
        framing_views = [view for view in document.scene.training_views() if view.name in self._poses]
        self._focus = framed_objects(
            self._splats.centers[self._drawable], self._splats.opacities[self._drawable], framing_views
        )
        centres = np.stack([pose.position for pose in self._poses.values()]) if self._poses else np.zeros((0, 3))
        self._frustum_depth = frustum_depth_for(centres, self._extent)
        self._near = near_plane(self._frustum_depth, self._extent)
        self._nodes: dict[int, SplatNode] = {}
        self.rectangle_splits = False
        """Whether Ctrl+drag splits (the panel's toggle) rather than selects; Alt+drag always splits."""
        self._frustums: list[viser.CameraFrustumHandle] = []
        self._last_state = document.model.state  # replayed edits included
        self._feedback = ClickFeedback(lambda: self._near)

        server.scene.set_up_direction("+z")
        self._set_initial_camera()
        self._sync_nodes(self._last_state)
        self._add_frustums()
        # viser listens for hotkeys on the page but skips keys typed into an input, and its dropdowns and
        # text fields are inputs that keep the focus (also across a switch of browser tabs); it offers no
        # way to change that, so the panel says, above its tabs, how to get the keys back.
        server.gui.add_markdown(HOTKEY_HINT)
        self.gui = panels.build(self)
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

    # --- scene nodes ---------------------------------------------------------------------------------
    def _sync_nodes(self, state: EditState) -> set[int]:
        """One splat node per instance of `state` (and one for unassigned Gaussians): nodes whose Gaussians
        changed (a merge or split made, undone or discarded) are sent again, nodes of instances that no
        longer exist removed. Returns the ids whose node was sent."""
        groups = instance_groups(self.document.labels(state), self._shown)
        visible = self.document.model.visible_instances(state)
        for instance_id in set(self._nodes) - set(groups):
            self._nodes.pop(instance_id).handle.remove()
        sent = set()
        for instance_id, index in groups.items():
            node = self._nodes.get(instance_id)
            if node is not None and np.array_equal(node.index, index):
                continue
            splats = self._splats.take(index)
            name = "/splats/unassigned" if instance_id == 0 else f"/splats/instance_{instance_id}"
            handle = self.server.scene.add_gaussian_splats(  # replaces a node of the same name
                name, splats.centers, splats.covariances, self._node_colors(instance_id, splats.rgbs, state), splats.opacities,
                visible=self._node_visible(instance_id, visible),
            )
            self._nodes[instance_id] = SplatNode(handle, index)
            sent.add(instance_id)
        return sent

    def _node_colors(self, instance_id: int, rgbs: np.ndarray, state: EditState) -> np.ndarray:
        """Colours of one node's splats (`rgbs` [M, 3]: their own): RGB or the instance colour, highlighted
        if selected, dimmed while something else is. [M, 3]"""
        if self.mode == "instances" and instance_id > 0:
            rgbs = np.broadcast_to(np.asarray(instance_color(instance_id), dtype=np.float32) / 255.0, rgbs.shape)
        if instance_id in state.selected:
            return highlighted(rgbs)
        return dimmed(rgbs) if state.selected else np.ascontiguousarray(rgbs)

    def _recolor(self, instance_ids: set[int], state: EditState) -> None:
        for instance_id in instance_ids & set(self._nodes):
            node = self._nodes[instance_id]
            node.handle.rgbs = self._node_colors(instance_id, self._splats.rgbs[node.index], state)

    def _node_visible(self, instance_id: int, visible: frozenset[int]) -> bool:
        """Whether a node is drawn, given the visible instances of the edit state."""
        if self.mode in SERVER_MODES:
            return False
        return self.document.show_unassigned if instance_id == 0 else instance_id in visible

    def _add_frustums(self) -> None:
        """One frustum per training camera with a usable pose, all drawn `self._frustum_depth` deep."""
        for view in self.document.scene.training_views():
            pose = self._poses.get(view.name)
            if pose is None:
                continue
            image = view.load_image()
            step = max(1, max(image.shape[:2]) // THUMBNAIL_SIDE)
            thumbnail = (image[::step, ::step].clamp(0, 1) * 255).byte().numpy()
            scale = frustum_scale(pose.fov, pose.aspect, self._frustum_depth)
            frustum = self.server.scene.add_camera_frustum(
                f"/cameras/{view.name}", pose.fov, pose.aspect, scale=scale, thickness=FRUSTUM_LINE * self._frustum_depth,
                image=thumbnail, wxyz=pose.wxyz, position=pose.position,
            )
            frustum.on_click(lambda event, name=view.name: self.go_to_view(event.client, name))
            self._frustums.append(frustum)

    def _set_initial_camera(self) -> None:
        """New tabs (and viser's Reset View) start with what the training cameras look at (`_framed_objects`)
        framed in the part of the canvas the control panel leaves free, seen from the first training
        camera's side and from above: an overview (not viser's origin, nor a view filled by a training
        camera's thumbnail)."""
        if self._focus is None:
            return
        centre, radius = self._focus
        poses = list(self._poses.values())
        if poses:
            up = scene_up(np.stack([vtf.SO3(p.wxyz).as_matrix() for p in poses]))
            towards, fov = poses[0].position - centre, poses[0].fov
        else:
            up, towards, fov = np.array([0.0, 0.0, 1.0]), np.array([1.0, -1.0, 0.0]), DEFAULT_FOV
        width, height = TYPICAL_CANVAS
        position, look_at = overview_pose(centre, radius, up, towards, fov, width / height, CONTROL_PANEL_PX / width)
        initial = self.server.initial_camera
        initial.position = position
        initial.look_at = look_at
        initial.up = up
        initial.fov = fov
        initial.near = self._near

    def set_frustums_visible(self, visible: bool) -> None:
        with self.server.atomic():
            for frustum in self._frustums:
                frustum.visible = visible

    def go_to_view(self, client: viser.ClientHandle, view_name: str) -> None:
        """Move a tab's camera to look through a training camera: just behind its frustum, with its
        orientation and field of view, and the orbit point at the objects' depth on its axis.

        Standing at the camera itself would put the tab inside the frustum, whose photo then covers the
        whole view; from BEHIND_FRUSTUM depths back the near plane clips that frustum, and the view is the
        training view widened by a few per cent.
        """
        pose = self._poses.get(view_name)
        if pose is None:
            logger.warning("training view %s has no usable camera to go to", view_name)
            return
        position = behind_frustum(pose, self._frustum_depth)
        forward = vtf.SO3(pose.wxyz).as_matrix()[:, 2]
        target = self._focus[0] if self._focus is not None else position + forward * self._extent
        # The orbit point: on the axis, as deep as the objects (never behind the near plane).
        look_at = position + forward * max(float((target - position) @ forward), 2.0 * self._near)
        with client.atomic():
            client.camera.near = self._near
            client.camera.fov = pose.fov
            client.camera.position = position
            client.camera.wxyz = pose.wxyz
            client.camera.look_at = look_at

    # --- edits ---------------------------------------------------------------------------------------
    def run_action(self, action: Action) -> None:
        apply_action(self.document.model, action)

    def set_mode(self, mode: RenderMode) -> None:
        """Switch the render mode for every tab: splats show in the browser modes, frames in the server ones."""
        if mode == self.mode:
            return
        recolor = "instances" in (mode, self.mode)
        self.mode = mode
        if recolor:
            self._recolor(set(self._nodes), self.document.model.state)
        self._update_visibility(self.document.model.state)
        self._request_frames()

    def _on_edit(self, state: EditState) -> None:
        previous, self._last_state = self._last_state, state
        selection_only = replace(state, selected=frozenset()) == replace(previous, selected=frozenset())
        sent = self._sync_nodes(state) if state.label_edits != previous.label_edits else set()
        if sent or (previous.selected and not state.selected):
            self._feedback.clear()
        self._update_visibility(state)
        # A first selection dims every other node and the last one undims them; otherwise only the nodes
        # whose selection changed are sent again.
        changed = set(self._nodes) if bool(state.selected) != bool(previous.selected) else state.selected ^ previous.selected
        self._recolor(changed - sent, state)
        if selection_only:  # what is drawn is unchanged: recolour the frames instead of rendering them
            for view in self._live_views():
                view.reselect()
        else:
            self._request_frames()
        self.gui.refresh(state)

    def refresh_view(self) -> None:
        """Redraw after a change outside the edit model (e.g. showing unassigned Gaussians)."""
        self._update_visibility(self.document.model.state)
        self._request_frames()

    def _update_visibility(self, state: EditState) -> None:
        visible = self.document.model.visible_instances(state)
        with self.server.atomic():
            for instance_id, node in self._nodes.items():
                node.handle.visible = self._node_visible(instance_id, visible)

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
            torch.from_numpy(self._splats.centers[candidates]), camera, x0 * width, y0 * height, x1 * width, y1 * height
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

