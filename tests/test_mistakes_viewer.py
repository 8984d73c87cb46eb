"""Mistakes the viewer must not make (issue 11): a page from another site, open in the same browser, must
not get the scene through the viewer's websocket; listening on the network must say what it exposes."""

from __future__ import annotations

import base64
import functools
import logging
import os
import socket

import pytest
import tyro
import viser
import websockets.asyncio.server
import websockets.sync.client
from websockets.exceptions import InvalidStatus

from protosaga_app import origins
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
