"""One writer per scene: `SCENE/.protosaga.lock`, held by whatever writes into a trained scene.

Every library function that writes a scene takes the lock for its whole duration (`writes_scene`):
`train`, `associate`, `compute_prototypes`, `evaluate`, `segment` and `export_scene` when they write inside
the scene, `run` and `run_demo` across all their stages; the viewer takes it only around each save of
edits.json. Within one thread the lock is re-entrant (`run` holding it calls the stages); another thread
of the same process is refused (or waits) as another process would be. Readers never take it.

The file is created with O_CREAT|O_EXCL (atomic on local file systems and on NFSv3 or later) and holds
one JSON object:

    {"format": "protosaga-lock", "command": "run", "pid": 1234, "host": "box", "started": "2025-01-31T10:41:03+01:00",
     "process_start": 123456, "argv": ["protosaga", "run", ...]}

A second writer is refused with `SceneLockedError` (one line naming the holder). A lock is stale, and is
taken over with a one-line note, when:
- its host is this host and its process is gone: no such pid, a zombie, or a pid reused by a process that
  started at another time than the one recorded (`process_start`, Linux's start time in clock ticks);
- its host is another one (a scene on NFS written from two machines) and it started more than
  `FOREIGN_STALE_AFTER_S` (7 days) ago: this machine cannot ask whether that process lives, a training
  on a CPU takes hours, not days, and a lock wrongly taken over would let two writers mix their files;
  so until then the message tells the user to remove the file once that process is gone;
- it is unreadable (a writer killed between creating and filling it) and older than `MALFORMED_STALE_AFTER_S`.
Two processes taking over the same stale lock do it one at a time (`.protosaga.lock.break`, also O_EXCL).

The lock is removed on normal exit, on exceptions and on KeyboardInterrupt; while it is held in the main
thread, SIGTERM (if nothing else handles it) raises KeyboardInterrupt, so that it is removed then too. A
SIGKILLed holder leaves it behind, and the next writer takes it over as stale.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from .outputs import real_path

LOCK_FILE = ".protosaga.lock"
"""The lock's name in the scene folder: hidden, and not a scene file (`train` ignores it when it checks
that a folder is empty; exports never include it)."""
LOCK_FORMAT = "protosaga-lock"
FOREIGN_STALE_AFTER_S = 7 * 24 * 3600.0
"""A lock from another host is taken over only when it is older than this."""
MALFORMED_STALE_AFTER_S = 30.0
"""An unreadable lock this old has no writer filling it any more."""
POLL_S = 0.05


class SceneLockedError(OSError):
    """Another process (or thread) is writing the scene."""


_guards: dict[Path, threading.RLock] = {}
_depth: dict[Path, int] = {}
_guards_lock = threading.Lock()


@contextlib.contextmanager
def scene_lock(root: str | os.PathLike, command: str, wait: float = 0.0, create: bool = False) -> Iterator[None]:
    """Hold the scene `root`'s lock for the block, as `command` ("run", "train", "protosaga-view", ...).

    Args:
        wait: seconds to wait for another holder to finish before refusing (0: refuse at once).
        create: make the folder where there is none (train, run), and remove it again on release if it is
            still empty. Without it a missing or non-folder `root` holds no scene and is not locked: the
            function called then refuses it with its own message.

    Raises:
        SceneLockedError: another live process or thread holds the lock.
    """
    root = Path(root)
    created = _make_folder(root) if create else []
    try:
        if not root.is_dir():
            yield
            return
        with _held(root, command, wait):
            yield
    finally:
        for folder in created:  # innermost first; a folder that holds anything stays
            with contextlib.suppress(OSError):
                folder.rmdir()


F = TypeVar("F", bound=Callable[..., Any])


def writes_scene(command: str, scene: str = "scene_dir", create: bool = False, only_if: Callable[..., bool] | None = None) -> Callable[[F], F]:
    """Decorate a library function that writes a scene to hold its lock while it runs.

    Args:
        scene: the parameter naming the scene: a SceneDir (its `root`) or a path.
        create: as `scene_lock`'s.
        only_if: called with the function's arguments by name; False: this call writes outside the scene
            and takes no lock.
    """

    def decorate(function: F) -> F:
        signature = inspect.signature(function)

        @functools.wraps(function)
        def locked(*args: Any, **kwargs: Any) -> Any:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            if only_if is not None and not only_if(**bound.arguments):
                return function(*args, **kwargs)
            target = bound.arguments[scene]
            root = target if isinstance(target, (str, os.PathLike)) else target.root  # a path, or a SceneDir
            with scene_lock(root, command, create=create):
                return function(*args, **kwargs)

        return locked  # type: ignore[return-value]

    return decorate


def is_inside(path: str | os.PathLike, root: str | os.PathLike) -> bool:
    """Whether `path` is the folder `root` or lies in it (links resolved; a loop of them is a ValueError)."""
    target, folder = real_path(Path(path)), real_path(Path(root))
    return target == folder or folder in target.parents


# --- holding ---------------------------------------------------------------------------------------
@contextlib.contextmanager
def _held(root: Path, command: str, wait: float) -> Iterator[None]:
    key = root.resolve()
    with _guards_lock:
        guard = _guards.setdefault(key, threading.RLock())
    deadline = time.monotonic() + wait
    if not (guard.acquire(timeout=wait) if wait > 0 else guard.acquire(blocking=False)):  # another thread here
        raise SceneLockedError(_refusal(root, _read(root / LOCK_FILE)[1] or _this_process("another thread")))
    try:
        _depth[key] = _depth.get(key, 0) + 1
        if _depth[key] > 1:  # this thread holds it already: `run` calling a stage
            yield
            return
        record = (json.dumps(_this_process(command)) + "\n").encode()
        with _sigterm_interrupts():
            try:
                _take(root / LOCK_FILE, record, deadline)
                yield
            finally:
                _release(root / LOCK_FILE, record)
    finally:
        _depth[key] -= 1
        guard.release()


def _take(path: Path, record: bytes, deadline: float) -> None:
    """Create the lock file `path` holding `record`, taking over a stale one."""
    while True:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            raw, holder = _read(path)
            if raw is None:  # removed meanwhile
                continue
            why = _stale_because(holder, path)
            if why is not None:
                if _break(path, raw):
                    print(f"note: {path}: taking over the lock of {_describe(holder)}: {why}", file=sys.stderr, flush=True)
                else:
                    time.sleep(POLL_S)  # another process is taking it over
                continue
            if time.monotonic() < deadline:
                time.sleep(POLL_S)
                continue
            raise SceneLockedError(_refusal(path.parent, holder)) from None
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(record)
        except BaseException:  # e.g. SIGTERM right here: no half-written lock is left
            path.unlink(missing_ok=True)
            raise
        return


def _release(path: Path, record: bytes) -> None:
    """Remove the lock if it is still this holder's (never one that another process took over)."""
    raw, _ = _read(path)
    if raw == record:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _break(path: Path, raw: bytes) -> bool:
    """Remove the stale lock holding `raw`, one taker at a time; False when another taker is at it."""
    breaker = path.with_name(path.name + ".break")
    try:
        os.close(os.open(breaker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
    except FileExistsError:
        with contextlib.suppress(FileNotFoundError):
            if time.time() - breaker.stat().st_mtime > MALFORMED_STALE_AFTER_S:  # its taker was killed
                breaker.unlink()
        return False
    try:
        if _read(path)[0] != raw:  # taken over and taken again meanwhile
            return False
        path.unlink()
        return True
    finally:
        breaker.unlink(missing_ok=True)


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt while the lock is held (in the main thread, where SIGTERM would
    otherwise kill the process without removing it)."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt("terminated (SIGTERM)")

    signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


# --- the holder ------------------------------------------------------------------------------------
def _this_process(command: str) -> dict[str, Any]:
    return {
        "format": LOCK_FORMAT,
        "command": command,
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": datetime.now().astimezone().isoformat(timespec="seconds"),
        "process_start": _process_start(os.getpid()),
        "argv": sys.argv,
    }


def _read(path: Path) -> tuple[bytes | None, dict[str, Any] | None]:
    """The lock's bytes (None: no lock) and its record (None: unreadable)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None, None
    except OSError:
        return b"", None
    try:
        holder = json.loads(raw)
        ok = isinstance(holder, dict) and isinstance(holder.get("pid"), int) and isinstance(holder.get("host"), str)
        if ok:
            holder["since"] = datetime.fromisoformat(holder["started"])
            return raw, holder
    except (ValueError, TypeError, KeyError, RecursionError):
        pass
    return raw, None


def _stale_because(holder: dict[str, Any] | None, path: Path) -> str | None:
    """Why the lock's holder is gone; None while it may be writing."""
    if holder is None:
        try:
            age = time.time() - path.stat().st_mtime
        except FileNotFoundError:
            return "it is gone"
        return f"the file is unreadable and {age:.0f} s old" if age > MALFORMED_STALE_AFTER_S else None
    if holder["host"] != socket.gethostname():
        age = time.time() - holder["since"].timestamp()
        return f"it is {age / 86400:.0f} days old and its host cannot be asked" if age > FOREIGN_STALE_AFTER_S else None
    pid = holder["pid"]
    if pid == os.getpid():  # not held by this process (its guard would have let it in): left by a former one
        return "that process is gone"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return "that process is gone"
    except PermissionError:  # another user's live process
        pass
    start = _process_start(pid)
    recorded = holder.get("process_start")
    if start == "zombie" or (isinstance(recorded, int) and isinstance(start, int) and start != recorded):
        return "that process is gone"
    return None


def _process_start(pid: int) -> int | str | None:
    """When process `pid` started (clock ticks since boot, from /proc); "zombie" for a dead unreaped one;
    None where /proc does not say."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()
        return "zombie" if fields[0] in ("Z", "X") else int(fields[19])
    except (OSError, ValueError, IndexError):
        return None


def _describe(holder: dict[str, Any] | None) -> str:
    if holder is None:
        return "an unknown process (the lock file is unreadable)"
    since: datetime = holder.get("since") or datetime.fromisoformat(holder["started"])
    when = since.strftime("%H:%M:%S") if since.date() == datetime.now(since.tzinfo).date() else since.strftime("%Y-%m-%d %H:%M:%S")
    return f"`{holder.get('command', '?')}` (pid {holder['pid']} on {holder['host']}, since {when})"


def _refusal(root: Path, holder: dict[str, Any] | None) -> str:
    return (
        f"{root} is being written by {_describe(holder)}; wait for it to finish, or remove {root / LOCK_FILE} "
        "if that process is gone"
    )


def _make_folder(root: Path) -> list[Path]:
    """Make `root` and its missing parents; the folders made, innermost first."""
    missing = [folder for folder in (root, *root.parents) if not folder.exists()]
    if missing:
        root.mkdir(parents=True, exist_ok=True)
    return missing
