"""One browser tab's server-rendered view, kept up to date by a background thread.

On the CPU a frame is rendered at a reduced size while the camera moves and once more at a larger size
when it has stopped for `settle_s` (DESIGN §8); on a GPU every frame is at the browser's full size.
Requests coalesce: a thread that falls behind renders only the newest camera, never a backlog.
"""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import viser
from PIL import Image
from viser._image_encoding import cv2_imencode_with_fallback
from viser._messages import BackgroundImageMessage

from protosaga_core.threads import rebalance as rebalance_threads

from .browser_camera import BrowserPose, render_size
from .document import SceneDocument
from .live import SERVER_MODES, FeaturePca, Frame, RenderMode, render_view, reselect_frame

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LiveSettings:
    """Sizes of server-rendered frames (longer side, pixels); None: the browser's own size."""

    moving_size: int | None = 256
    still_size: int | None = 640
    settle_s: float = 0.25


JPEG_QUALITY = 90


def encode_depth(depth: np.ndarray) -> bytes:
    """A frame's depth as `SceneApi.set_background_image` sends it (viser 1.1): 24-bit fixed point in
    1e-5 units, little-endian in the B, G, R bytes of an RGBA PNG (the client reads them as BGR).

    Same pixels as viser's, at zlib level 1: 640x480 in ~25 ms instead of ~180 ms, ~7 % more bytes.
    [H, W] float32 -> PNG bytes
    """
    fixed = np.clip(depth * 100_000, 0, 2**24 - 1).astype(np.uint32)[..., None].view(np.uint8)  # [H, W, 4]
    encoded = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(fixed[..., [2, 1, 0, 3]]), "RGBA").save(encoded, format="PNG", compress_level=1)
    return encoded.getvalue()


def send_background(scene: viser.SceneApi, image: np.ndarray, depth_png: bytes) -> None:
    """`scene.set_background_image(image, format="jpeg", jpeg_quality=90, depth=depth)` with the depth
    already encoded (`encode_depth`): the message that method queues, built one level below it.
    image: [H, W, 3] uint8.

    viser encodes the 640x480 depth PNG in ~180 ms on a CPU core and the JPEG in ~2 ms; a selection
    change recolours the image but leaves the depth as it is, so the click feedback reuses the depth's
    bytes (`LiveView._show`).
    """
    rgb = cv2_imencode_with_fallback("jpeg", image, jpeg_quality=JPEG_QUALITY, channel_ordering="rgb")
    scene._websock_interface.queue_message(BackgroundImageMessage(format="jpeg", rgb_data=rgb, depth_data=depth_png))


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
        self._depth_png: tuple[np.ndarray, bytes] | None = None  # the last depth sent and its bytes
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
        recoloured = reselect_frame(frame, state.selected)
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
        rebalance_threads()  # a training started or stopped beside the viewer
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
        if size is None:
            camera = self.client.camera
            width, height = int(camera.image_width), int(camera.image_height)
        else:
            width, height = render_size(pose.aspect, size)
        return render_view(self._document, self._pca, pose, mode, width, height)

    def _show(self, frame: Frame) -> None:
        if self._stopped:
            return
        cached = self._depth_png
        if cached is None or cached[0] is not frame.depth:  # a recoloured frame shares its depth array
            cached = (frame.depth, encode_depth(frame.depth))
            self._depth_png = cached
        send_background(self.client.scene, frame.image, cached[1])
