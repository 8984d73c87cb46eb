"""A minimal viser websocket client for tests: speaks the wire format a browser speaks.

Server -> client frames: [8 bytes inner size][8 bytes compressed size][zstd(msgpack {"messages": [...]})]
followed by raw binary buffers (left undecoded: tests read GUI and scene messages, not splat data).
Client -> server frames: msgpack of one message dict carrying its "type".
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import msgspec.msgpack
import viser
import zstandard
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

Message = dict[str, Any]


class ViserTestClient:
    def __init__(self, url: str) -> None:
        self._ws = connect(url, subprotocols=[f"viser-v{viser.__version__}"], max_size=None)
        self.messages: list[Message] = []
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        decompressor = zstandard.ZstdDecompressor()
        try:
            while True:
                raw = self._ws.recv()
                inner_size = int.from_bytes(raw[0:8], "little")
                compressed_size = int.from_bytes(raw[8:16], "little")
                inner = decompressor.decompress(raw[16 : 16 + compressed_size], max_output_size=inner_size)
                with self._changed:
                    self.messages.extend(msgspec.msgpack.decode(inner)["messages"])
                    self._changed.notify_all()
        except ConnectionClosed:
            return

    def send(self, message_type: str, **fields: Any) -> None:
        self._ws.send(msgspec.msgpack.encode({"type": message_type, **fields}))

    def wait_for(self, predicate: Callable[[Message], bool], timeout: float = 20.0, start: int = 0) -> Message:
        """The first message (from index `start`) satisfying `predicate`; fails after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for message in self.messages[start:]:
                    if predicate(message):
                        return message
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"no matching message within {timeout} s ({len(self.messages)} received)")
                self._changed.wait(remaining)

    def gui_uuid(self, label: str) -> str:
        """The uuid of the GUI element (or command) with this label."""
        found = self.wait_for(lambda m: m.get("props", {}).get("label") == label and "uuid" in m)
        return found["uuid"]

    def announce_camera(self) -> None:
        """Send a camera as a browser tab does first: viser takes a tab's input only once it knows its camera."""
        self.send(
            "ViewerCameraMessage", wxyz=(1.0, 0.0, 0.0, 0.0), position=(0.0, 0.0, 3.0), fov=1.0, near=0.01, far=100.0,
            image_height=96, image_width=128, look_at=(0.0, 0.0, 0.0), up_direction=(0.0, 0.0, 1.0),
        )

    def click_button(self, label: str) -> None:
        self.send("GuiUpdateMessage", uuid=self.gui_uuid(label), updates={"value": True})

    def set_value(self, label: str, value: Any) -> None:
        self.send("GuiUpdateMessage", uuid=self.gui_uuid(label), updates={"value": value})

    def trigger_command(self, label: str, hotkey: str) -> None:
        command = self.wait_for(
            lambda m: m["type"] == "RegisterCommandMessage" and m["props"]["label"] == label and m["props"]["hotkey"] == hotkey
        )
        self.send("CommandTriggerMessage", uuid=command["uuid"])

    def close(self) -> None:
        self._ws.close()
        self._thread.join(timeout=5)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (for a test server)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def until(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    """Wait until `condition()` holds; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)
