"""How much memory this process may still take: what stages size their caches and checks by."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
from collections.abc import Callable
from pathlib import Path


def available_memory() -> int | None:
    """Bytes this process may still allocate: the system's available memory, capped by a cgroup's limit (less
    its usage) and by `ulimit -v`; None where none of them can be read."""
    found = []
    try:
        lines = Path("/proc/meminfo").read_text().splitlines()
        found += [int(line.split()[1]) * 1024 for line in lines if line.startswith("MemAvailable:")]
    except (OSError, ValueError, IndexError):
        pass
    if not found:
        try:
            found.append(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):
            pass
    for limit, usage in (("memory.max", "memory.current"), ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes")):
        try:
            cap, used = (Path("/sys/fs/cgroup", name).read_text().strip() for name in (limit, usage))
            found.append(int(cap) - int(used))
        except (OSError, ValueError):  # no such cgroup file, or "max" (no limit)
            continue
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft != resource.RLIM_INFINITY:
            found.append(soft)
    except (ImportError, OSError, ValueError):
        pass
    return max(min(found), 0) if found else None


def amount(size: int) -> str:
    """A byte count in words (MiB or GiB)."""
    return f"{size / 2**30:,.1f} GiB" if size >= 2**30 else f"{size / 2**20:,.1f} MiB"


def release_freed_memory() -> None:
    """Hand the memory that this process has freed back to the system (glibc's `malloc_trim`; elsewhere
    nothing).

    glibc keeps freed blocks below its mmap threshold, which rises to 32 MiB once such blocks are freed,
    inside the heap for reuse, and a heap of many views' temporaries of different sizes holds them
    scattered: at 100k Gaussians x 200 views the view-consensus association left 1.3 GB free but resident
    (bench/RESULTS.md). Stages that loop over views call this between views, so that what a view freed
    leaves the resident set before the next ones and the clustering add theirs.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # not glibc (musl, macOS, Windows)
        return None
