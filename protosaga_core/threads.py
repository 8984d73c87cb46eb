"""How many CPU threads this process gives torch, so that protosaga processes share the cores.

torch uses every core by default, and two processes that each do so spin against each other: on the
2-core machines a training beside the viewer ran 10-30x slower than alone (bench/RESULTS.md). Each
`protosaga` command and `protosaga-view` therefore registers itself in a small folder (one file per
process, `<cache>/running/<pid>.json`, removed at exit; files of dead processes are ignored and
swept) and, unless `--threads` fixes the count, takes an equal share of the cores available to it:
all of them alone, half beside one other protosaga process. Long-running work (the training loop, the
viewer's frames) calls `rebalance()`, which looks again at most every REBALANCE_S seconds, so a viewer
opened during a training slows the training down to its share, and closing the viewer gives the cores
back. Library use (tests, scripts) registers nothing and keeps torch's own setting.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .io.atomic import atomic_write_bytes
from .io.cache import cache_dir

logger = logging.getLogger(__name__)

REBALANCE_S = 5.0
"""How often (at most) a long-running process looks for other protosaga processes."""
THREADS_PER_CORE = 4
"""The most threads `--threads` may ask for, per core available to the process. torch's threads beyond the
cores only take turns on them (no faster), and each holds its own stack and buffers: at 100,000 the process
ran out of memory with a traceback. Four per core leaves room to try oversubscription and refuses only
counts that cannot help."""


@dataclass(frozen=True)
class Running:
    """Another protosaga process: its pid and command (e.g. "train", "view")."""

    pid: int
    command: str


def running_dir() -> Path:
    return cache_dir() / "running"


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS tells it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def max_threads() -> int:
    """The largest thread count `--threads` accepts here (THREADS_PER_CORE per available core)."""
    return THREADS_PER_CORE * available_cores()


def check_threads(requested: int) -> int:
    """`requested` if it is a thread count this process may use; else ValueError, one line saying why."""
    if requested < 1:
        raise ValueError(f"--threads must be at least 1, got {requested}")
    if requested > max_threads():
        raise ValueError(
            f"--threads {requested}: at most {max_threads()} here ({THREADS_PER_CORE} per core, and this process "
            f"may use {available_cores()} cores); more threads than cores cannot make it faster"
        )
    return requested


def share_of_cores(cores: int, others: int) -> int:
    """An equal share of `cores` among this process and `others` more, at least one."""
    return max(1, cores // (others + 1))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def other_processes(folder: Path | None = None) -> list[Running]:
    """The other live protosaga processes registered in `folder` (default `running_dir()`); files of dead
    ones are removed, unreadable ones skipped."""
    folder = folder or running_dir()
    found = []
    for path in folder.glob("*.json") if folder.is_dir() else ():
        try:
            raw = json.loads(path.read_text())
            pid, command = int(raw["pid"]), str(raw["command"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if pid == os.getpid():
            continue
        if _alive(pid):
            found.append(Running(pid, command))
        else:
            path.unlink(missing_ok=True)
    return found


class ThreadBudget:
    """This process's registration and its torch thread count.

    Args:
        command: what this process does, shown to the others ("train", "view", ...).
        requested: a fixed thread count (`--threads`); None: the share of the cores (see the module).
        folder: where processes register (default `running_dir()`).
    """

    def __init__(self, command: str, requested: int | None = None, folder: Path | None = None) -> None:
        if requested is not None:
            check_threads(requested)
        self.command = command
        self.requested = requested
        self.folder = folder or running_dir()
        self._path = self.folder / f"{os.getpid()}.json"
        self._checked = 0.0
        self._lock = threading.Lock()
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(self._path, json.dumps({"pid": os.getpid(), "command": command}).encode())
            atexit.register(self.unregister)
        except OSError as error:  # a read-only home: share nothing, but run
            logger.warning("cannot register in %s (%s): other protosaga processes will not see this one", self.folder, error)

    def threads(self) -> int:
        """The thread count this process should use now."""
        if self.requested is not None:
            return self.requested
        return share_of_cores(available_cores(), len(other_processes(self.folder)))

    def apply(self) -> int:
        """Set torch's thread count to `threads()`; returns it."""
        with self._lock:
            self._checked = time.monotonic()
            count = self.threads()
            if count != torch.get_num_threads():
                torch.set_num_threads(count)
            return count

    def rebalance(self) -> None:
        """`apply()`, at most every REBALANCE_S seconds (cheap enough to call every iteration)."""
        if self.requested is None and time.monotonic() - self._checked >= REBALANCE_S:
            self.apply()

    def unregister(self) -> None:
        self._path.unlink(missing_ok=True)


_budget: ThreadBudget | None = None


def configure(command: str, requested: int | None = None) -> ThreadBudget:
    """Register this process and set its threads (the CLI's and the viewer's entry points call this);
    prints a line when other protosaga processes share the cores."""
    global _budget
    if _budget is not None:
        _budget.unregister()
    _budget = ThreadBudget(command, requested)
    count = _budget.apply()
    others = other_processes(_budget.folder)
    if others and requested is None:
        names = ", ".join(f"{o.command} (pid {o.pid})" for o in others[:3])
        print(
            f"[protosaga] sharing the CPU with {names}: {count} of {available_cores()} threads (--threads sets it)",
            file=sys.stderr,  # a notice, never part of what a command prints (metrics --json is one JSON object)
            flush=True,
        )
    return _budget


def release() -> None:
    """Unregister this process (its command finished; also done at exit) and stop rebalancing."""
    global _budget
    if _budget is not None:
        _budget.unregister()
        _budget = None


def rebalance() -> None:
    """Let a long-running loop follow other protosaga processes starting and stopping; no-op unless
    `configure` ran in this process."""
    if _budget is not None:
        _budget.rebalance()
