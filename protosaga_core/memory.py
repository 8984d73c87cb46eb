"""How much memory this process may still take: what stages size their caches and checks by."""

from __future__ import annotations

import os
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
