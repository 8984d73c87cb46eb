"""Handing freed memory back to the system between the views of a stage (`release_freed_memory`)."""

import ctypes.util
import platform
from pathlib import Path

import numpy as np
import pytest

from protosaga_core.memory import release_freed_memory


def _resident_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * 4096


@pytest.mark.skipif(platform.system() != "Linux" or not ctypes.util.find_library("c") or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_freed_blocks_scattered_in_the_heap_leave_the_resident_set():
    # Blocks below glibc's mmap threshold, each followed by a small one that stays: freeing the large ones
    # leaves holes that the heap keeps resident, as a view's temporaries do between views.
    large, kept = [], []
    for _ in range(4000):
        large.append(np.ones(100_000 // 8))  # 100 kB each, 400 MB in all
        kept.append(np.ones(8))
    del large
    before = _resident_bytes()
    release_freed_memory()
    assert before - _resident_bytes() > 200 << 20

