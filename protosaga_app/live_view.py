"""One browser tab's server-rendered view, kept up to date by a background thread.

On the CPU a frame is rendered at a reduced size while the camera moves and once more at a larger size
when it has stopped for `settle_s` (DESIGN §8); on a GPU every frame is at the browser's full size.
Requests coalesce: a thread that falls behind renders only the newest camera, never a backlog.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import viser

from .browser_camera import BrowserPose, camera_from_pose, render_size
from .document import SceneDocument
from .live import SERVER_MODES, FeaturePca, Frame, RenderMode, render_frame, reselect_frame

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LiveSettings:
    """Sizes of server-rendered frames (longer side, pixels); None: the browser's own size."""

    moving_size: int | None = 256
    still_size: int | None = 640
    settle_s: float = 0.25


def client_pose(client: viser.ClientHandle) -> BrowserPose:
    camera = client.camera
    return BrowserPose(np.asarray(camera.wxyz), np.asarray(camera.position), float(camera.fov), float(camera.aspect))


def pose_key(pose: BrowserPose) -> tuple[float, ...]:
    """An exact, hashable identity of a pose: a frame is current only for the very same camera."""
    return (*np.asarray(pose.wxyz).tolist(), *np.asarray(pose.position).tolist(), pose.fov, pose.aspect)


class LiveView:
    """Renders a tab's camera in the background while the document's mode is a server mode."""

    def __init__(
        self,
        client: viser.ClientHandle,
        document: SceneDocument,
        pca: FeaturePca,
        mode: Callable[[], RenderMode],
        settings: LiveSettings = LiveSettings(),
    ) -> None:
        self.client = client
        self._document = document
        self._pca = pca
        self._mode = mode
        self._settings = settings
        self._wake = threading.Event()
        self._stopped = False
        self._frame: tuple[tuple[float, ...], Frame] | None = None
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=f"live-view-{client.client_id}", daemon=True)
        self._thread.start()

    def request(self) -> None:
        """Render again soon (the camera moved, an edit changed what is seen, or the mode changed)."""
        self._wake.set()

    def stop(self) -> None:
        self._stopped = True
        self._wake.set()

    def reselect(self) -> None:
        """Show the document's new selection at once by recolouring the current frame (no rendering)."""
        frame = self.current_frame()
        if frame is None or self._mode() != frame.mode:
            self.request()
            return
        state = self._document.model.state
        recoloured = reselect_frame(frame, self._document.prototypes(state), state.selected)
        with self._lock:
            if self._frame is not None and self._frame[1] is frame:
                self._frame = (self._frame[0], recoloured)
        self._show(recoloured)

    def current_frame(self) -> Frame | None:
        """The latest frame if it was rendered from the tab's current camera, else None."""
        with self._lock:
            frame = self._frame
        if frame is None or frame[0] != pose_key(client_pose(self.client)):
            return None
        return frame[1]

    def render_now(self, size: int | None) -> Frame:
        """Render the tab's current camera at once (on the calling thread) and keep the frame."""
        pose = client_pose(self.client)
        mode = self._mode()
        frame = self._render(pose, mode if mode in SERVER_MODES else "segmentation", size)
        with self._lock:
            self._frame = (pose_key(pose), frame)
        return frame

    # --- the thread ----------------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            if self._stopped:
                return
            try:
                self._update()
            except Exception:  # a frame that fails (a closing tab) must not end the thread
                logger.exception("live view of client %s failed", self.client.client_id)

    def _update(self) -> None:
        if self.client.camera.update_timestamp == 0.0:  # the tab has not reported its camera yet
            return
        mode = self._mode()
        if mode not in SERVER_MODES:
            with self._lock:
                self._frame = None
            self.client.scene.set_background_image(None)
            return
        self._show(self.render_now(self._settings.moving_size))
        if self._settings.still_size != self._settings.moving_size and not self._wake.wait(self._settings.settle_s):
            self._show(self.render_now(self._settings.still_size))

    def _render(self, pose: BrowserPose, mode: RenderMode, size: int | None) -> Frame:
        camera = self.client.camera
        if size is None:
            width, height = int(camera.image_width), int(camera.image_height)
        else:
            width, height = render_size(pose.aspect, size)
        state = self._document.model.state
        visible = self._document.visible(state)
        return render_frame(
            visible.gaussians,
            camera_from_pose(pose, width, height),
            mode,
            self._document.prototypes(state),
            self._pca,
            state.selected,
            torch.from_numpy(visible.labels) if self._document.lifted else None,
        )

    def _show(self, frame: Frame) -> None:
        if not self._stopped:
            self.client.scene.set_background_image(frame.image, format="jpeg", jpeg_quality=90, depth=frame.depth)
