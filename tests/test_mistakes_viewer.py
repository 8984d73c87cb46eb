"""Mistakes the viewer must not make (issue 11): a page from another site, open in the same browser, must
not get the scene through the viewer's websocket; listening on the network must say what it exposes.
Limits and hangs (issue 21): sizes, ports and hosts are checked before any work, a server that cannot
listen is an error and not a hang, a damaged edits.json is set aside, and what a client or a file chose
(malformed messages, huge names) is reported in one short line."""

from __future__ import annotations

import base64
import functools
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

import pytest
import torch
import tyro
import viser
import websockets.asyncio.server
import websockets.sync.client
from websockets.exceptions import InvalidStatus

from protosaga_app import edit_log, origins
from protosaga_app.document import SceneDocument
from protosaga_app.scene import ViewerScene
from protosaga_app.origins import AllowedOrigin, parse_allowed_origin, refusal, start_viser_server
from protosaga_app.viewer import ViewerConfig, main, serve, warn_if_exposed

import viser_client
from viser_client import ViserTestClient, free_port

ALLOWED = ("viewer.example:8443", "proxy.example")
"""--allow-origin values of the test server: one host at one port, one host at any port."""


@pytest.fixture(scope="module")
def app(trained_scene_readonly):
    app = serve(ViewerConfig(trained_scene_readonly, port=free_port(), allow_origin=ALLOWED, open_browser=False))
    yield app
    app.stop()


def upgrade_raw(port: int, origin: str) -> bytes:
    """Everything the server sends back to a browser-like websocket upgrade from `origin`, read until the
    server closes the connection (so nothing sent after the HTTP response can go unseen), or for 5 s when
    it keeps the connection open (an accepted upgrade)."""
    request = "\r\n".join((
        "GET / HTTP/1.1", f"Host: 127.0.0.1:{port}", "Upgrade: websocket", "Connection: Upgrade",
        f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}", "Sec-WebSocket-Version: 13",
        f"Sec-WebSocket-Protocol: viser-v{viser.__version__}", f"Origin: {origin}", "", "",
    ))
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request.encode())
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except (ConnectionResetError, TimeoutError):
            pass
    return received


def assert_refused(port: int, origin: str) -> None:
    """The upgrade is answered 403 with a short text naming the problem, and nothing else follows."""
    head, _, body = upgrade_raw(port, origin).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 403"), head
    assert body.startswith(b"Origin not allowed") and b"\r\n" not in body and len(body) < 1000, body


def open_tab(app, origin: str | None, monkeypatch) -> ViserTestClient:
    """The test client, sending `origin` as a browser would (None: no Origin header, like a script)."""
    if origin is not None:
        monkeypatch.setattr(viser_client, "connect", functools.partial(websockets.sync.client.connect, origin=origin))
    return ViserTestClient(f"ws://127.0.0.1:{app.server.get_port()}")


def receives_the_scene(client: ViserTestClient) -> bool:
    found = client.wait_for(lambda m: m["type"] == "GaussianSplatsMessage")
    client.close()
    return found["name"].startswith("/splats/")


def test_a_page_from_another_site_is_refused_at_the_upgrade_and_logged_once(app, caplog):
    port = app.server.get_port()
    connected = len(app.server.get_clients())
    with caplog.at_level(logging.WARNING, logger=origins.__name__):
        assert_refused(port, "http://evil.example")
        assert_refused(port, "http://evil.example")  # a refused viser page retries: one log line, not one per try
    assert len(app.server.get_clients()) == connected
    refusals = [r.getMessage() for r in caplog.records if "http://evil.example" in r.getMessage()]
    assert len(refusals) == 1 and "refused" in refusals[0] and f"127.0.0.1:{port}" in refusals[0]
    with pytest.raises(InvalidStatus) as refused:
        websockets.sync.client.connect(f"ws://127.0.0.1:{port}", origin="http://evil.example", open_timeout=10)
    assert refused.value.response.status_code == 403


def test_pages_that_only_look_local_are_refused(app):
    port = app.server.get_port()
    assert_refused(port, f"http://127.0.0.1:{port + 1}")  # another local server's page
    assert_refused(port, f"http://rebound.example:{port}")  # DNS rebinding: the name resolves to 127.0.0.1
    assert_refused(port, "null")  # sandboxed frames and file:// pages
    assert_refused(port, "http://viewer.example:9999")  # allowed host, other port


@pytest.mark.parametrize("spelling", ["127.0.0.1", "localhost"])
def test_the_viewers_own_page_connects_and_receives_the_scene(app, monkeypatch, spelling):
    assert receives_the_scene(open_tab(app, f"http://{spelling}:{app.server.get_port()}", monkeypatch))


@pytest.mark.parametrize("origin", ["https://viewer.example:8443", "http://proxy.example:1234"])
def test_an_origin_given_with_allow_origin_connects(app, monkeypatch, origin):
    assert receives_the_scene(open_tab(app, origin, monkeypatch))


def test_a_client_without_an_origin_header_still_connects(app, monkeypatch):
    assert receives_the_scene(open_tab(app, None, monkeypatch))


def test_the_start_fails_loudly_when_the_origin_hook_cannot_be_installed(monkeypatch):
    original = websockets.asyncio.server.serve
    monkeypatch.setattr(origins, "VISER_HANDLER_MODULE", "not.viser")  # as if viser moved its handler
    with pytest.raises(RuntimeError, match="Origin check could not be installed"):
        start_viser_server("127.0.0.1", free_port(), (), label="test")
    assert websockets.asyncio.server.serve is original


def test_refusal_accepts_every_loopback_spelling_and_names_what_is_allowed():
    assert refusal([], "127.0.0.1", 8080, ()) is None
    for page in ("http://127.0.0.1:8080", "http://localhost:8080", "http://[::1]:8080", "http://LOCALHOST:8080"):
        assert refusal([page], "127.0.0.1", 8080, ()) is None, page
        assert refusal([page], "0.0.0.0", 8080, ()) is None, page
    assert refusal(["http://localhost:8080"], "192.168.1.5", 8080, ()) is not None
    assert refusal(["http://192.168.1.5:8080"], "192.168.1.5", 8080, ()) is None
    assert refusal(["http://evil.example"], "127.0.0.1", 8080, ()) == (
        "only pages from 127.0.0.1:8080, localhost:8080, [::1]:8080 may connect"
    )
    assert "2 Origin headers" in refusal(["http://127.0.0.1:8080", "http://evil.example"], "127.0.0.1", 8080, ())


def test_allow_origin_values_are_parsed_or_named_in_the_error():
    assert parse_allowed_origin("MyHost") == AllowedOrigin("myhost", None)
    assert parse_allowed_origin("myhost:8080") == AllowedOrigin("myhost", 8080)
    assert parse_allowed_origin("[::1]:9000") == AllowedOrigin("::1", 9000)
    assert parse_allowed_origin("::1") == AllowedOrigin("::1", None)
    assert parse_allowed_origin("https://myhost") == AllowedOrigin("myhost", 443)
    for bad in ("", "myhost:http", "myhost/path", "ftp://myhost"):
        with pytest.raises(ValueError, match=f"--allow-origin {bad!r}"):
            parse_allowed_origin(bad)
    config = tyro.cli(ViewerConfig, args=["scene", "--allow-origin", "a.example", "--allow-origin", "b.example:81"])
    assert config.allow_origin == ("a.example", "b.example:81")


def test_the_command_line_refuses_a_malformed_allow_origin(tmp_path, capsys):
    assert main([str(tmp_path), "--allow-origin", "myhost/path", "--no-open-browser"]) == 2
    assert "--allow-origin 'myhost/path'" in capsys.readouterr().err


def test_listening_on_the_network_prints_a_warning(capsys):
    assert warn_if_exposed("0.0.0.0", 8080, (parse_allowed_origin("myhost:8080"),))
    warning = capsys.readouterr().err
    assert warning.count("\n") == 1 and "warning" in warning and "0.0.0.0" in warning
    assert "anyone" in warning and "edit" in warning
    assert "localhost:8080" in warning and "myhost:8080" in warning  # the pages that can still connect
    for host in ("127.0.0.1", "localhost", "::1"):
        assert not warn_if_exposed(host, 8080, ())
    assert capsys.readouterr().err == ""


# --- issue 21: limits and hangs ----------------------------------------------------------------------
VIEWER_TIMEOUT_S = 90
"""Far beyond what a refusal takes (the interpreter and torch start in a few seconds): a run that reaches
it hung, or served where it should have refused."""


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under `root`, by relative path, with its bytes."""
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


def run_viewer(*args: str) -> subprocess.CompletedProcess:
    """`protosaga-view ARGS --no-open-browser` in a process of its own, which is killed (and the test failed)
    when it is still running after VIEWER_TIMEOUT_S: a refusal must come at once."""
    command = [sys.executable, "-m", "protosaga_app.viewer", *args, "--no-open-browser"]
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=VIEWER_TIMEOUT_S)
    except subprocess.TimeoutExpired as expired:
        pytest.fail(f"protosaga-view {' '.join(args)} still ran after {VIEWER_TIMEOUT_S} s; stderr: {expired.stderr!r}")


def assert_refused_in_one_line(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("protosaga-view: error: ") and result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr and all(fragment in result.stderr for fragment in fragments), result.stderr


REFUSED_OPTIONS = {
    "a still frame of 100,000 px": (("--still-size", "100000"), ("--still-size must be 1..4096", "100000")),
    "a moving frame of 0 px": (("--moving-size", "0"), ("--moving-size must be 1..4096", "got 0")),
    "a negative splat count": (("--max-splats", "-5"), ("--max-splats must be 0 or more", "-5")),
    "port 99999": (("--port", "99999"), ("--port 99999", "0 to 65535")),
    "host 999.1.1.1": (("--host", "999.1.1.1"), ("--host '999.1.1.1'", "not an IPv4 address")),
    "a host name that does not resolve": (("--host", "no-such-host.invalid"), ("no-such-host.invalid", "resolves")),
    "an address of another machine": (("--host", "192.0.2.1"), ("--host '192.0.2.1'", "cannot listen on 192.0.2.1")),
}


@pytest.mark.parametrize("case", REFUSED_OPTIONS)
def test_sizes_ports_and_hosts_that_cannot_work_are_refused_before_any_work(trained_scene_readonly, case):
    options, fragments = REFUSED_OPTIONS[case]
    before = snapshot(trained_scene_readonly)
    assert_refused_in_one_line(run_viewer(str(trained_scene_readonly), *options), *fragments)
    assert snapshot(trained_scene_readonly) == before


@pytest.fixture()
def port_65535_taken():
    """Port 65535 of 127.0.0.1 in use (by this test, or already by another program)."""
    holder = socket.socket()
    try:
        holder.bind(("127.0.0.1", 65535))
        holder.listen()
    except OSError:
        pass  # someone else holds it: taken all the same
    yield 65535
    holder.close()


def test_a_viewer_that_finds_no_free_port_says_so_instead_of_hanging(trained_scene_readonly, port_65535_taken):
    # The last port is taken, so viser's search for the next free one runs past 65535 (its thread dies
    # with OverflowError): the up-front checks pass, and the failure comes from the server's start.
    before = snapshot(trained_scene_readonly)
    result = run_viewer(str(trained_scene_readonly), "--port", str(port_65535_taken))
    assert_refused_in_one_line(result, "cannot listen on 127.0.0.1", "port 65535 is taken")
    assert snapshot(trained_scene_readonly) == before


def test_a_server_that_cannot_bind_raises_at_once_instead_of_waiting_for_ever():
    # Below the viewer's up-front checks: viser's thread fails in bind() (an address of another machine) and
    # its start() waited on a semaphore nobody would release. Run in a thread, so the old hang fails the test.
    outcome: list[BaseException | object] = []

    def start() -> None:
        try:
            outcome.append(start_viser_server("192.0.2.1", free_port(), (), label="test"))
        except BaseException as error:
            outcome.append(error)

    starter = threading.Thread(target=start, daemon=True)
    started = time.monotonic()
    starter.start()
    starter.join(timeout=30)
    assert not starter.is_alive(), "start_viser_server still waits after 30 s"
    (error,) = outcome
    assert isinstance(error, OSError) and str(error).startswith("cannot listen on 192.0.2.1:"), error
    assert "\n" not in str(error) and time.monotonic() - started < 10
    from viser.infra._infra import WebsockServer  # nothing is left patched

    assert websockets.asyncio.server.serve.__module__ == "websockets.asyncio.server"
    assert WebsockServer._background_worker.__module__ == "viser.infra._infra"


MALFORMED_MESSAGES = {
    "not msgpack": b"\xc1 not msgpack",
    "an unknown message type": b"\x81\xa4type\xa9NoSuchMsg",
    "a text frame": "a text frame, where viser expects bytes",
    "a huge unknown type": b"\x81\xa4type\xdb" + (1_000_000).to_bytes(4, "big") + b"x" * 1_000_000,
}


@pytest.mark.parametrize("case", MALFORMED_MESSAGES)
def test_a_malformed_message_is_one_log_line_not_a_traceback(app, monkeypatch, caplog, case):
    caplog.set_level(logging.WARNING)
    client = open_tab(app, None, monkeypatch)
    client.wait_for(lambda m: m["type"] == "GaussianSplatsMessage")
    client._ws.send(MALFORMED_MESSAGES[case])
    client._thread.join(timeout=20)  # the server closes the connection
    assert not client._thread.is_alive(), "the connection stayed open"
    viewer_records = [r for r in caplog.records if r.name == "websockets.server"]
    assert [r.exc_info for r in viewer_records] == [None], [r.getMessage()[:300] for r in viewer_records]
    (line,) = [r.getMessage() for r in viewer_records]
    assert line.startswith("protosaga-view: closed a websocket connection that sent a message the viewer cannot read (")
    assert "\n" not in line and len(line) < 400, line
    assert receives_the_scene(open_tab(app, None, monkeypatch))  # the viewer serves on


def bracket_bomb(path: Path) -> bytes:
    """An edits.json of 200,000 nested arrays (Python's parser raises RecursionError near 1,000)."""
    path.write_bytes(b"[" * 200_000 + b"]" * 200_000)
    return path.read_bytes()


def unbounded_json(path, *args, **kwargs):
    """A JSON reader without limits (what edit_log.py called before issue 21): whatever Python raises escapes."""
    return json.loads(Path(path).read_text())


@pytest.mark.parametrize("reader", ["the project's reader", "a reader without limits"])
def test_a_deeply_nested_edits_json_is_set_aside_and_the_scene_opens(trained_scene, monkeypatch, caplog, reader):
    data = bracket_bomb(trained_scene / "edits.json")
    before = snapshot(trained_scene)
    if reader == "a reader without limits":
        monkeypatch.setattr(edit_log, "read_versioned_json", unbounded_json)
    with caplog.at_level(logging.WARNING):
        app = serve(ViewerConfig(trained_scene, port=free_port(), open_browser=False))
    try:
        assert app.document.model.state.edits_only() == edit_log.EditState()
        (aside,) = trained_scene.glob("edits.set-aside-*.json")
        after = snapshot(trained_scene)
        assert after.pop(aside.name) == data and before.pop("edits.json") == data and after == before
        notice = app.document.edit_log.notice
        assert notice.startswith(f"{trained_scene / 'edits.json'}: ") and "nested" in notice and aside.name in notice
        assert len(notice) < 600 and "\n" not in notice
        assert notice in [r.getMessage() for r in caplog.records]  # the terminal says so
        assert aside.name in app.gui.edits.content  # and the panel
        assert receives_the_scene(open_tab(app, None, monkeypatch))
    finally:
        app.stop()


def test_a_huge_instance_name_is_cut_short_in_the_warning(trained_scene, caplog):
    labels = np.load(trained_scene / "labels.npy")
    fingerprint = edit_log.LabelsFingerprint.of(labels)
    name = "n" * 5_000_000  # named for an instance no split made: the log cannot be replayed
    raw = {"format": "protosaga-edits", "version": 1, "labels": {"gaussians": fingerprint.gaussians, "sha256": fingerprint.sha256},
           "edits": [{"op": "name", "id": 999, "name": name}]}
    (trained_scene / "edits.json").write_text(json.dumps(raw))
    before = snapshot(trained_scene)
    with caplog.at_level(logging.WARNING):
        document = SceneDocument(ViewerScene.load(trained_scene), torch.device("cpu"))
    notice = document.edit_log.notice
    assert "edit 1 (" in notice and "instance 999 was not made by an earlier split" in notice
    assert len(notice) < 600 and "nnnnnnnnnn…" in notice, notice[:600]
    assert all(len(r.getMessage()) < 600 for r in caplog.records)
    (aside,) = trained_scene.glob("edits.set-aside-*.json")
    after = snapshot(trained_scene)
    assert after.pop(aside.name) == before.pop("edits.json") and after == before


def test_renaming_an_instance_refuses_an_absurd_name(trained_scene):
    document = SceneDocument(ViewerScene.load(trained_scene), torch.device("cpu"))
    instance = document.scene.instances[0].id
    before = snapshot(trained_scene)
    with pytest.raises(ValueError, match="a name has at most 200 characters, this one 5,000,000"):
        document.rename(instance, "n" * 5_000_000)
    assert snapshot(trained_scene) == before and len(document.instance_name(instance)) < 200
    document.rename(instance, "lid " * 50)  # 199 characters once stripped: taken
    assert document.instance_name(instance) == ("lid " * 50).strip()
