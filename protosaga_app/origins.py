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

import errno
import http
import ipaddress
import logging
import socket
import threading
import traceback
import warnings
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import viser
import viser.infra._infra
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
MAX_PORT = 65535


def check_listen_address(host: str, port: int) -> None:
    """Refuse, before any work, a `--host` / `--port` that no server can listen on (ValueError, one line): a
    port outside 0..65535, a host that is neither an address nor a name this machine resolves (999.1.1.1),
    or an address of another machine. A port that is taken is fine: viser moves on to the next free one."""
    if not 0 <= port <= MAX_PORT:
        raise ValueError(f"--port {port}: a port is a number from 0 to {MAX_PORT} (0: any free one)")
    shown = _short(repr(host))
    if host.replace(".", "").isdigit() and not _is_ip(host):  # the resolver would take "1234" for 0.0.4.210
        raise ValueError(f"--host {shown}: not an IPv4 address (four numbers from 0 to 255, e.g. 127.0.0.1)")
    try:
        infos = socket.getaddrinfo(host or None, 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (OSError, UnicodeError) as error:  # gaierror; UnicodeError: a label too long for a host name
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        raise ValueError(
            f"--host {shown}: neither an IP address nor a name this machine resolves ({reason}); "
            "e.g. 127.0.0.1 (this machine only) or 0.0.0.0 (every interface)"
        ) from None
    for family, kind, proto, _, address in infos:  # as asyncio's create_server binds them, on a free port
        try:
            probe = socket.socket(family, kind, proto)
        except OSError:  # an address family this machine lacks: the server skips it too
            continue
        with probe:
            if family == socket.AF_INET6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                probe.bind(address[:1] + (0,) + address[2:])
            except OSError as error:
                raise ValueError(
                    f"--host {shown}: cannot listen on {address[0]} ({error.strerror}): not an address of this machine?"
                ) from None


class _GaveUp(Exception):
    """Ends viser's server thread when binding failed in a way that trying the next port cannot cure."""


@dataclass
class _BindWatch:
    """What became of viser's attempts to listen: its server thread retries the next port on any OSError
    (up to 1000 times) and dies on anything else (port 65536 raises OverflowError), and its `start()` waits
    for the thread without a timeout, so a failed bind used to hang the viewer for ever."""

    listening: threading.Event = field(default_factory=threading.Event)
    websock: Any = None
    """viser's `WebsockServer` whose thread made the attempts."""
    port: int | None = None
    """The port of the last attempt."""
    failure: BaseException | None = None
    """Why the last attempt failed, where another port cannot help."""

    def serve(self, original: Any, port: int | None) -> "_WatchedServe":
        self.port = port
        return _WatchedServe(original, self)

    def error(self, host: str, first_port: int) -> OSError:
        """The one-line error for a server that never listened."""
        where = f"{host or '0.0.0.0'}:{self.port if self.port is not None else first_port}"
        if isinstance(self.failure, OSError):
            reason = self.failure.strerror or str(self.failure)
            if self.failure.errno == errno.EACCES:
                reason += " (ports below 1024 need administrator rights)"
            return OSError(f"cannot listen on {where}: {_short(reason)}")
        if self.failure is not None and self.port is not None and self.port > MAX_PORT:
            if first_port > MAX_PORT:
                return OSError(f"cannot listen on {where}: a port is a number from 0 to {MAX_PORT}")
            ports = f"port {MAX_PORT} is" if first_port == MAX_PORT else f"every port from {first_port} to {MAX_PORT} is"
            return OSError(f"cannot listen on {host or '0.0.0.0'}: {ports} taken")
        if self.failure is not None:
            return OSError(f"cannot listen on {where}: {_short(f'{type(self.failure).__name__}: {self.failure}')}")
        return OSError(f"cannot listen on {host or '0.0.0.0'}: no free port from {first_port} to {self.port}")


class _WatchedServe:
    """websockets' `serve(...)` (an async context manager that binds on entry), reporting to a `_BindWatch`."""

    def __init__(self, inner: Any, watch: _BindWatch) -> None:
        self._inner = inner
        self._watch = watch

    async def __aenter__(self) -> Any:
        try:
            server = await self._inner.__aenter__()
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise  # taken: viser tries the next port
            self._watch.failure = error
            raise _GaveUp from error
        except Exception as error:  # OverflowError past port 65535, and anything else
            self._watch.failure = error
            raise _GaveUp from error
        self._watch.listening.set()
        return server

    async def __aexit__(self, *exc_info: Any) -> Any:
        return await self._inner.__aexit__(*exc_info)


def start_viser_server(host: str, port: int, allowed: tuple[AllowedOrigin, ...], label: str) -> viser.ViserServer:
    """A started viser server whose websocket refuses pages from other origins at the upgrade (403).

    Why a patch: viser 1.1.1 (checked with websockets 16.1.1) calls `websockets.asyncio.server.serve`
    inside `WebsockServer._background_worker` with its own `process_request` and offers no hook for the
    `Origin` header (neither websockets' `origins` nor a request hook is exposed). So while this viser
    server starts, and only then, `serve` is replaced by a wrapper that puts an `OriginGuard` in front of
    viser's hook; the guard sits in that one server's `Server.process_request` for its whole life.
    If a viser release stops calling `serve` that way the guard could not be installed, and this raises
    rather than serving an unguarded websocket.

    A server that cannot listen raises OSError (one line) at once, where viser would wait for ever: the same
    `serve` wrapper watches each bind (`_BindWatch`), ends viser's port search on a failure another port
    cannot cure (an address of another machine, no permission, past port 65535), and viser's server thread
    (`WebsockServer._background_worker`, also replaced only while the server starts) signals `start()` when
    it ends, listening or not. Malformed messages from a client are logged in one line (`MalformedMessageLog`).
    """
    guards: list[OriginGuard] = []
    watch = _BindWatch()
    original = websockets.asyncio.server.serve
    websock_server = viser.infra._infra.WebsockServer
    original_worker = websock_server._background_worker

    def guarded_serve(handler: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if getattr(handler, "__module__", None) == VISER_HANDLER_MODULE:
            guards.append(OriginGuard(host, allowed, kwargs.get("process_request")))
            kwargs["process_request"] = guards[-1]
            return watch.serve(original(handler, *args, **kwargs), args[1] if len(args) > 1 else kwargs.get("port"))
        return original(handler, *args, **kwargs)

    def worker(self: Any, ready: threading.Semaphore) -> None:
        watch.websock = self
        try:
            original_worker(self, ready)
        except _GaveUp:  # the failure is in `watch`: no thread traceback
            pass
        finally:
            ready.release()  # start() waits for it; once it listened, one more release changes nothing

    install_malformed_message_log()
    with _SERVE_PATCH_LOCK:
        websockets.asyncio.server.serve = guarded_serve  # type: ignore[assignment]
        websock_server._background_worker = worker  # type: ignore[method-assign]
        try:
            server = viser.ViserServer(host=host, port=port, label=label, verbose=False)
        except Exception:
            if watch.listening.is_set():
                raise
            server = None  # viser's own start-up went on without a server thread, and failed
        finally:
            websockets.asyncio.server.serve = original  # type: ignore[misc]
            websock_server._background_worker = original_worker  # type: ignore[method-assign]
    if server is not None and not guards:
        server.stop()
        raise RuntimeError(
            f"viser {viser.__version__} no longer starts its websocket through websockets.asyncio.server.serve "
            f"from {VISER_HANDLER_MODULE}: the Origin check could not be installed (see protosaga_app/origins.py)"
        )
    if not watch.listening.is_set():
        if server is not None:
            server.stop()
        elif watch.websock is not None:
            watch.websock.stop()
        loop = getattr(watch.websock, "_background_event_loop", None)
        if loop is not None and not loop.is_running() and not loop.is_closed():
            loop.close()  # viser closes it only after serving
        raise watch.error(host, port)
    return server


class MalformedMessageLog(logging.Filter):
    """Turns websockets' "connection handler failed" record, with its traceback, into one warning line when
    the failure is viser's reading of a client's message (malformed msgpack, an unknown message type, a text
    frame): a client can send any bytes, and each used to print a traceback. Other failures keep theirs.
    The connection is closed either way (websockets answers 1011)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg == "connection handler failed" and record.exc_info and _from_message_reading(record.exc_info[2]):
            error = record.exc_info[1]
            record.msg = "protosaga-view: closed a websocket connection that sent a message the viewer cannot read (%s)"
            record.args = (_short(f"{type(error).__name__}: {error}" if str(error) else type(error).__name__),)
            record.exc_info = record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, logging.getLevelName(logging.WARNING)
        return True


WEBSOCKETS_SERVER_LOGGER = "websockets.server"
"""The logger of websockets' server connections (viser's included)."""
MESSAGE_READER = (VISER_HANDLER_MODULE, "_message_consumer")
"""Where viser reads a client's messages (module, function)."""


def install_malformed_message_log() -> None:
    """Put one `MalformedMessageLog` on websockets' server logger (idempotent), and silence viser's warnings
    about fields of a client's message that do not match their types: they print the client's value whole
    (any size), and a message that then fails is logged by the filter."""
    target = logging.getLogger(WEBSOCKETS_SERVER_LOGGER)
    if not any(isinstance(existing, MalformedMessageLog) for existing in target.filters):
        target.addFilter(MalformedMessageLog())
    warnings.filterwarnings("ignore", message=r"\[viser\] ", category=UserWarning, module=r"viser\.infra\._messages")


def _from_message_reading(tb: Any) -> bool:
    """Whether a traceback passes through viser's reading of a client's message."""
    return any(
        (frame.f_globals.get("__name__"), frame.f_code.co_name) == MESSAGE_READER for frame, _ in traceback.walk_tb(tb)
    )


def _short(text: str, limit: int = 200) -> str:
    """`text` on one line, cut to `limit` characters with an ellipsis (a client or a file chose it)."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


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
