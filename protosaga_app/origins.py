"""Which web pages may open the viewer's websocket.

Browsers let any page open a websocket to any address, so without a check a page from another site,
open in the same browser, could connect to ws://127.0.0.1:8080, receive the scene and edit it. Every
browser sends an `Origin` header with the upgrade request, so the server accepts an upgrade only when
that header names the viewer itself (or a host the user allowed with `--allow-origin`); requests
without one come from programs (the test client, scripts) and stay allowed: the threat is a page.

The host is compared, not only the port, which also stops DNS rebinding (a hostile name resolving to
127.0.0.1 still sends its own name as the origin).
"""

from __future__ import annotations

import http
import ipaddress
import logging
import threading
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import viser
import websockets.asyncio.server
from websockets.asyncio.server import ServerConnection
from websockets.http11 import Request, Response

logger = logging.getLogger(__name__)

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
"""The spellings of this machine a browser may use for a viewer bound to loopback."""
WILDCARD_HOSTS = ("", "0.0.0.0", "::")
"""Bind addresses meaning every interface (loopback included)."""
DEFAULT_PORTS = {"http": 80, "https": 443}

ProcessRequest = Callable[[ServerConnection, Request], "Awaitable[Response | None] | Response | None"]


@dataclass(frozen=True)
class AllowedOrigin:
    """A host whose pages may connect: `port` None admits any of its ports.

    Attributes:
        host: lower case; IPv6 addresses without brackets.
        port: the page's port (the scheme's default when its origin names none), or None for any.
    """

    host: str
    port: int | None = None

    def admits(self, host: str, port: int) -> bool:
        return host == self.host and self.port in (None, port)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port is None else f"{host}:{self.port}"


def parse_allowed_origin(text: str) -> AllowedOrigin:
    """What `--allow-origin` says: `HOST[:PORT]` (any port when none is given), a bare IPv6 address, or a
    full origin `http[s]://HOST[:PORT]` (whose port defaults to the scheme's, as a browser's would)."""
    usage = f"--allow-origin {text!r}: expected HOST[:PORT] (e.g. myhost, myhost:8080, [::1]:9000 or https://myhost)"
    stripped = text.strip()
    if _is_ip(stripped.strip("[]")):
        return AllowedOrigin(normal_host(stripped), None)
    has_scheme = "://" in stripped
    parts = urlsplit(stripped if has_scheme else f"//{stripped}")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{usage}; the port is not a number from 0 to 65535") from None
    if not parts.hostname or parts.path or parts.query or parts.fragment or parts.username is not None:
        raise ValueError(usage)
    if has_scheme:
        if parts.scheme not in DEFAULT_PORTS:
            raise ValueError(f"{usage}; a page's scheme is http or https, not {parts.scheme!r}")
        port = port if port is not None else DEFAULT_PORTS[parts.scheme]
    return AllowedOrigin(normal_host(parts.hostname), port)


def normal_host(host: str) -> str:
    """One spelling per host, so that comparisons are exact: lower case, IPv6 addresses without brackets
    and in their compressed form (as browsers write them in origins)."""
    name = host.strip("[]").lower()
    return str(ipaddress.ip_address(name)) if _is_ip(name) else name


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def origin_host_port(origin: str) -> tuple[str, int] | None:
    """The host (lower case, IPv6 without brackets) and port of an `Origin` header's value; None when it
    names no http(s) host: "null" (sandboxed frames, file:// pages), other schemes, or a malformed value."""
    parts = urlsplit(origin.strip())
    try:
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        return None
    return normal_host(parts.hostname), port if port is not None else DEFAULT_PORTS[parts.scheme]


def is_loopback(host: str) -> bool:
    """Whether binding `host` keeps the viewer on this machine (localhost, 127.x.x.x or ::1)."""
    name = normal_host(host)
    return name == "localhost" or (_is_ip(name) and ipaddress.ip_address(name).is_loopback)


def own_origins(bound_host: str, port: int) -> tuple[AllowedOrigin, ...]:
    """The viewer's own origins: every loopback spelling when it listens on loopback (a wildcard bind
    listens there too), else the host it was bound to, at the port the connection arrived on."""
    name = normal_host(bound_host)
    if name in WILDCARD_HOSTS or is_loopback(name):
        hosts = LOOPBACK_NAMES if name in (*WILDCARD_HOSTS, *LOOPBACK_NAMES) else (*LOOPBACK_NAMES, name)
        return tuple(AllowedOrigin(host, port) for host in hosts)
    return (AllowedOrigin(name, port),)


def refusal(origins: Sequence[str], bound_host: str, port: int, allowed: Sequence[AllowedOrigin]) -> str | None:
    """Why an upgrade request with these `Origin` header values must be refused; None when it may connect.

    No header: a program, not a page. More than one: a browser never sends that (RFC 6454, 7.3).
    """
    if not origins:
        return None
    if len(origins) > 1:
        return f"{len(origins)} Origin headers ({', '.join(origins)}); a browser sends one"
    parsed = origin_host_port(origins[0])
    if parsed is None:
        return f"the origin {origins[0]!r} names no http(s) host"
    candidates = (*own_origins(bound_host, port), *allowed)
    if any(candidate.admits(*parsed) for candidate in candidates):
        return None
    return f"only pages from {', '.join(map(str, candidates))} may connect"


def is_websocket_upgrade(request: Request) -> bool:
    """Whether a request asks for the websocket (any spelling: refusing too much is safe, missing one is not)."""
    return any(value.strip().lower() == "websocket" for value in request.headers.get_all("Upgrade"))


@dataclass
class OriginGuard:
    """A websockets `process_request` hook: refuses upgrades from other origins with 403 (logging each
    refused origin once, since a refused viser page retries every second), then defers to `delegate`
    (viser's own hook, which serves the web client).

    Attributes:
        bound_host: the address the viewer listens on.
        allowed: hosts the user allowed beyond the viewer's own origin.
        delegate: the `process_request` hook this one wraps.
    """

    bound_host: str
    allowed: tuple[AllowedOrigin, ...]
    delegate: ProcessRequest | None = None
    logged: set[str] = field(default_factory=set)

    def __call__(self, connection: ServerConnection, request: Request) -> Awaitable[Response | None] | Response | None:
        if is_websocket_upgrade(request):
            origins = request.headers.get_all("Origin")
            reason = refusal(origins, self.bound_host, _local_port(connection), self.allowed)
            if reason is not None:
                self._log_once(", ".join(origins), reason)
                return connection.respond(http.HTTPStatus.FORBIDDEN, f"Origin not allowed: {reason}.\n")
        return self.delegate(connection, request) if self.delegate is not None else None

    def _log_once(self, origin: str, reason: str) -> None:
        if origin in self.logged:
            return
        self.logged.add(origin)
        logger.warning(
            "protosaga-view: refused a websocket connection from a page at %s: %s "
            "(if that page is yours, allow it with --allow-origin HOST[:PORT])",
            origin, reason,
        )


def _local_port(connection: ServerConnection) -> int:
    """The port the connection arrived on: the viewer's real port even when viser moved to the next free
    one or the OS picked it (port 0)."""
    return int(connection.local_address[1])


_SERVE_PATCH_LOCK = threading.Lock()
"""Serialises the temporary replacement of websockets' `serve` (one viewer starts at a time)."""
VISER_HANDLER_MODULE = "viser.infra._infra"
"""The module of viser's websocket handler: only its `serve` calls get the guard."""


def start_viser_server(host: str, port: int, allowed: tuple[AllowedOrigin, ...], label: str) -> viser.ViserServer:
    """A started viser server whose websocket refuses pages from other origins at the upgrade (403).

    Why a patch: viser 1.1.1 (checked with websockets 16.1.1) calls `websockets.asyncio.server.serve`
    inside `WebsockServer._background_worker` with its own `process_request` and offers no hook for the
    `Origin` header (neither websockets' `origins` nor a request hook is exposed). So while this viser
    server starts, and only then, `serve` is replaced by a wrapper that puts an `OriginGuard` in front of
    viser's hook; the guard sits in that one server's `Server.process_request` for its whole life.
    If a viser release stops calling `serve` that way the guard could not be installed, and this raises
    rather than serving an unguarded websocket.
    """
    guards: list[OriginGuard] = []
    original = websockets.asyncio.server.serve

    def guarded_serve(handler: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if getattr(handler, "__module__", None) == VISER_HANDLER_MODULE:
            guards.append(OriginGuard(host, allowed, kwargs.get("process_request")))
            kwargs["process_request"] = guards[-1]
        return original(handler, *args, **kwargs)

    with _SERVE_PATCH_LOCK:
        websockets.asyncio.server.serve = guarded_serve  # type: ignore[assignment]
        try:
            server = viser.ViserServer(host=host, port=port, label=label, verbose=False)
        finally:
            websockets.asyncio.server.serve = original  # type: ignore[misc]
    if not guards:
        server.stop()
        raise RuntimeError(
            f"viser {viser.__version__} no longer starts its websocket through websockets.asyncio.server.serve "
            f"from {VISER_HANDLER_MODULE}: the Origin check could not be installed (see protosaga_app/origins.py)"
        )
    return server


def network_warning(host: str, port: int, allowed: Sequence[AllowedOrigin]) -> str | None:
    """The warning printed when the viewer listens beyond this machine (None on loopback): anyone on the
    network can open it, and the Origin check only keeps other sites' pages out."""
    if is_loopback(host):
        return None
    pages = ", ".join(str(origin) for origin in (*own_origins(host, port), *allowed))
    return (
        f"protosaga-view: warning: --host {host} listens on the network: anyone who can reach this machine on "
        f"port {port} can see the scene and edit it (exports are written under the scene directory); only pages "
        f"from {pages} can connect from a browser (add others with --allow-origin HOST[:PORT])"
    )
