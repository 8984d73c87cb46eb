"""What a tab shows where the user clicked: at once a dot (the click arrived; orange while the server picks
and edits), then the picked instance's name and size beside it, until a merge or split changes what it
says or the selection is cleared.

viser reports clicks but not the cursor's movement, so the instance is named where it was clicked, not
where the cursor hovers. The dot is drawn a fixed, short distance along the click's ray, with a radius in
proportion: it covers the clicked pixel at the same size on screen whatever lies behind it, without
waiting for the server to find the depth of what was clicked.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable

import numpy as np
import viser

BUSY_RGB = (255, 150, 0)
DONE_RGB = (40, 200, 90)
MISS_RGB = (150, 150, 150)
MARK_ANGLE = 0.006
"""Angular radius of the dot (radians): ~5 px on a 800 px tall canvas with a 55° field of view."""
MARK_DEPTH = 2.0
"""The dot stands this many near-plane distances along the ray: beyond the near plane, before the scene."""


class ClickFeedback:
    """Per-tab click marks and labels. Thread-safe: clicks of several tabs arrive on viser's threads.

    Args:
        near: the browser's near-plane distance (callable: read at each click).
    """

    def __init__(self, near: Callable[[], float]) -> None:
        self._near = near
        self._marks: dict[int, tuple[np.ndarray, viser.IcosphereHandle, viser.LabelHandle | None]] = {}
        self._lock = threading.Lock()

    def clicked(self, client: viser.ClientHandle, ray_origin: tuple[float, ...], ray_direction: tuple[float, ...]) -> None:
        """Mark the clicked point at once, in the busy colour, replacing the tab's previous mark."""
        distance = MARK_DEPTH * self._near()
        direction = np.asarray(ray_direction, dtype=np.float64)
        position = np.asarray(ray_origin, dtype=np.float64) + distance * direction / max(np.linalg.norm(direction), 1e-12)
        if not np.isfinite(position).all():
            return
        mark = client.scene.add_icosphere(
            "/click/mark", radius=MARK_ANGLE * distance, color=BUSY_RGB, subdivisions=2, position=position,
            cast_shadow=False, receive_shadow=False,
        )
        with self._lock:
            previous = self._marks.pop(client.client_id, None)
            self._marks[client.client_id] = (position, mark, None)
        if previous is not None and previous[2] is not None:
            previous[2].remove()

    def picked(self, client: viser.ClientHandle, text: str | None) -> None:
        """The server is done: the dot turns green with `text` beside it, or grey without (nothing picked)."""
        with self._lock:
            entry = self._marks.get(client.client_id)
        if entry is None:
            return
        position, mark, _ = entry
        with warnings.catch_warnings():  # the tab may have closed while the server worked: nothing to show
            warnings.filterwarnings("ignore", message="Queued a .* on a closed connection")
            mark.color = DONE_RGB if text else MISS_RGB
            label = None
            if text:
                label = client.scene.add_label("/click/label", text, position=position, anchor="bottom-left", font_screen_scale=0.9)
        with self._lock:
            if self._marks.get(client.client_id) is entry:
                self._marks[client.client_id] = (position, mark, label)
            elif label is not None:  # a newer click took over meanwhile
                label.remove()

    def clear(self) -> None:
        """Remove every tab's mark and label: an edit changed what they described (a merge or split, or
        the selection was cleared)."""
        with self._lock:
            entries, self._marks = list(self._marks.values()), {}
        for _, mark, label in entries:
            mark.remove()
            if label is not None:
                label.remove()

    def forget(self, client_id: int) -> None:
        """Drop a closed tab's handles."""
        with self._lock:
            self._marks.pop(client_id, None)
