"""The viser server of `protosaga-view`: splat nodes, training cameras, clicks, hotkeys and live views.

Everything the user does goes through the document's one `EditModel` (buttons, hotkeys and clicks
alike); the model notifies `ViewerApp._on_edit`, which updates the shared scene nodes and GUI, so every
tab shows one state. Each tab also has a `LiveView` that renders its camera on the server in the
segmentation and PCA modes.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, replace

import numpy as np
import viser
import viser.transforms as vtf

from protosaga_core.prototypes import instance_color

from . import panels
from .browser_camera import camera_from_pose, pose_from_camera
from .document import SceneDocument
from .live import SERVER_MODES, FeaturePca, RenderMode
from .live_view import LiveSettings, LiveView, client_pose
from .picking import pick_along_ray, pick_instance, pick_rectangle
from .selection import Action, EditState, apply_action
from .splats import SplatArrays, browser_subset, highlighted, instance_groups, splat_arrays

logger = logging.getLogger(__name__)

THUMBNAIL_SIDE = 96
"""Longer side of a frustum's thumbnail: enough to recognise the view, small enough for hundreds."""
FRUSTUM_SIZE = 0.03
"""Largest frustum depth as a share of the scene's extent, so frustums look alike in metres or in SfM
units; frustums are also kept below half the spacing of neighbouring cameras, so that from one training
camera the next one's thumbnail is a small picture, not a wall in front of the scene."""
OVERVIEW_RISE = 0.6
"""The start camera rises this share of the scene's extent above the first training camera (along its
up axis) and looks down at the centre: the ring of training cameras stays below the line of sight."""
NEAR_PLANE = 1.5 * FRUSTUM_SIZE
"""The browser's near plane (same units): beyond a frustum's image plane, so a camera standing in a
training camera sees the scene, not that camera's own thumbnail filling the view."""
HOTKEYS: tuple[tuple[str, str, str | None, Action], ...] = (
    ("Delete selection", "delete", None, "delete"),
    ("Delete selection", "backspace", None, "delete"),
    ("Hide selection", "H", None, "hide"),
    ("Isolate selection", "I", None, "isolate"),
    ("Clear selection", "escape", None, "clear_selection"),
    ("Undo", "Z", "cmd/ctrl", "undo"),
    ("Redo", "Z", "cmd/ctrl+shift", "redo"),
    ("Redo", "Y", "cmd/ctrl", "redo"),
)
"""(label, key, modifier, action): the viewer's hotkeys, registered as viser commands."""


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
        self._extent = _extent(self._splats.centers)
        self._shown = browser_subset(self._splats.opacities, options.max_splats)
        self._nodes: dict[int, viser.GaussianSplatHandle] = {}
        self._frustums: list[viser.CameraFrustumHandle] = []
        self._highlighted: frozenset[int] = frozenset()
        self._last_state = EditState()

        server.scene.set_up_direction("+z")
        self._set_initial_camera()
        self._add_splat_nodes()
        self._add_frustums()
        self.gui = panels.build(self)
        self._add_hotkeys()
        server.scene.on_click()(lambda event: self._on_click(event, additive=False))
        server.scene.on_click(modifier="shift")(lambda event: self._on_click(event, additive=True))
        server.scene.on_rect_select(modifier="cmd/ctrl")(lambda event: self._on_rect(event, additive=False))
        server.scene.on_rect_select(modifier="cmd/ctrl+shift")(lambda event: self._on_rect(event, additive=True))
        server.on_client_connect(self._on_connect)
        server.on_client_disconnect(self._on_disconnect)
        document.model.subscribe(self._on_edit)
        self._on_edit(document.model.state)

    # --- scene nodes ---------------------------------------------------------------------------------
    def _add_splat_nodes(self) -> None:
        labels = self.document.scene.labels
        for instance_id, index in instance_groups(labels, self._shown).items():
            splats = self._splats.take(index)
            name = "/splats/unassigned" if instance_id == 0 else f"/splats/instance_{instance_id}"
            self._nodes[instance_id] = self.server.scene.add_gaussian_splats(
                name, splats.centers, splats.covariances, self._node_colors(instance_id, splats, False), splats.opacities
            )

    def _node_colors(self, instance_id: int, splats: SplatArrays, selected: bool) -> np.ndarray:
        """[M, 3] colours of one node: RGB or the instance colour of its (merged) id, highlighted if selected."""
        if self.mode == "instances" and instance_id > 0:
            color = np.asarray(instance_color(self._effective_id(instance_id)), dtype=np.float32) / 255.0
            rgbs = np.broadcast_to(color, splats.rgbs.shape)
        else:
            rgbs = splats.rgbs
        return highlighted(rgbs) if selected else np.ascontiguousarray(rgbs)

    def _effective_id(self, instance_id: int) -> int:
        for keep, absorb in self.document.model.state.merged:
            if instance_id == absorb:
                instance_id = keep
        return instance_id

    def _recolor(self, instance_ids: set[int]) -> None:
        selected = self.document.model.state.selected
        labels = self.document.scene.labels
        for instance_id in instance_ids & set(self._nodes):
            splats = self._splats.take(self._shown[labels[self._shown] == instance_id])
            self._nodes[instance_id].rgbs = self._node_colors(instance_id, splats, self._effective_id(instance_id) in selected)

    def _add_frustums(self) -> None:
        views = self.document.scene.training_views()
        size = _frustum_size(np.stack([v.cameras.centers[0].numpy() for v in views]), self._extent) if views else 0.0
        for view in views:
            camera = view.cameras
            pose = pose_from_camera(camera.viewmats[0], camera.Ks[0], camera.width, camera.height)
            image = view.load_image()
            step = max(1, max(image.shape[:2]) // THUMBNAIL_SIDE)
            thumbnail = (image[::step, ::step].clamp(0, 1) * 255).byte().numpy()
            frustum = self.server.scene.add_camera_frustum(
                f"/cameras/{view.name}", pose.fov, pose.aspect, scale=size, thickness=0.05 * size,
                image=thumbnail, wxyz=pose.wxyz, position=pose.position,
            )
            frustum.on_click(lambda event, name=view.name: self.go_to_view(event.client, name))
            self._frustums.append(frustum)

    def _set_initial_camera(self) -> None:
        """New tabs start above the first training camera, looking at the scene's centre: an overview
        (not viser's origin, nor a view filled by a training camera's thumbnail)."""
        views = self.document.scene.training_views()
        if not views:
            return
        camera = views[0].cameras
        pose = pose_from_camera(camera.viewmats[0], camera.Ks[0], camera.width, camera.height)
        rotation = vtf.SO3(pose.wxyz).as_matrix()
        centre = np.median(self._splats.centers, axis=0) if len(self._splats) else pose.position + rotation[:, 2]
        initial = self.server.initial_camera
        initial.position = pose.position + OVERVIEW_RISE * self._extent * -rotation[:, 1]
        initial.look_at = centre
        initial.up = -rotation[:, 1]
        initial.fov = pose.fov
        initial.near = NEAR_PLANE * self._extent

    def set_frustums_visible(self, visible: bool) -> None:
        with self.server.atomic():
            for frustum in self._frustums:
                frustum.visible = visible

    def go_to_view(self, client: viser.ClientHandle, view_name: str) -> None:
        """Move a tab's camera into a training camera."""
        view = next(v for v in self.document.scene.training_views() if v.name == view_name)
        camera = view.cameras
        pose = pose_from_camera(camera.viewmats[0], camera.Ks[0], camera.width, camera.height)
        with client.atomic():
            client.camera.near = NEAR_PLANE * self._extent
            client.camera.fov = pose.fov
            client.camera.position = pose.position
            client.camera.wxyz = pose.wxyz

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
            self._recolor(set(self._nodes))
        self._update_visibility(self.document.model.state)
        self._request_frames()

    def _on_edit(self, state: EditState) -> None:
        selection_only = replace(state, selected=frozenset()) == replace(self._last_state, selected=frozenset())
        self._last_state = state
        self._update_visibility(state)
        changed = (state.selected ^ self._highlighted) | {absorb for _, absorb in state.merged}
        self._highlighted = state.selected
        absorbed = {absorb for keep, absorb in state.merged if keep in changed}
        self._recolor({i for i in self._nodes if self._effective_id(i) in changed} | absorbed)
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
        in_browser = self.mode not in SERVER_MODES
        with self.server.atomic():
            for instance_id, node in self._nodes.items():
                shown = self.document.show_unassigned if instance_id == 0 else self._effective_id(instance_id) in visible
                node.visible = in_browser and shown

    # --- tabs ----------------------------------------------------------------------------------------
    def _on_connect(self, client: viser.ClientHandle) -> None:
        view = LiveView(client, self.document, self.pca, lambda: self.mode, self.options.live)
        with self._views_lock:
            self._views[client.client_id] = view
        client.camera.on_update(lambda _: view.request())
        view.request()

    def _on_disconnect(self, client: viser.ClientHandle) -> None:
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
        picked = self.pick(event.client, *event.screen_pos)
        self.document.model.click(picked, additive=additive)

    def _on_rect(self, event: viser.SceneRectSelectEvent, additive: bool) -> None:
        view = self.live_view(event.client.client_id)
        if view is None:
            return
        frame = view.current_frame() or view.render_now(self.options.live.moving_size)
        (x0, y0), (x1, y1) = event.screen_min, event.screen_max
        width, height = frame.camera.width, frame.camera.height
        picked = pick_rectangle(frame.labels, x0 * width, y0 * height, x1 * width, y1 * height)
        self.document.model.select_many(picked, additive=additive)

    def _add_hotkeys(self) -> None:
        for label, key, modifier, action in HOTKEYS:
            command = self.server.gui.add_command(label, hotkey=key, modifier=modifier)
            command.on_trigger(lambda _, action=action: self.run_action(action))


def _extent(centers: np.ndarray) -> float:
    """The scene's size: the 90th percentile of the Gaussians' distances to their median. [N, 3] -> float"""
    if len(centers) == 0:
        return 1.0
    distances = np.linalg.norm(centers - np.median(centers, axis=0), axis=1)
    return max(float(np.percentile(distances, 90)), 1e-6)


def _frustum_size(centers: np.ndarray, extent: float) -> float:
    """Frustum depth for training cameras at `centers` [C, 3] in a scene of size `extent`."""
    size = FRUSTUM_SIZE * extent
    if len(centers) > 1:
        distances = np.linalg.norm(centers[:, None] - centers[None], axis=-1)
        np.fill_diagonal(distances, np.inf)
        size = min(size, 0.5 * float(np.median(distances.min(axis=1))))
    return size
