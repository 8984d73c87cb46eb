"""Where the computation runs and which rasterizer draws it: the one place that chooses.

CUDA when there is one, else the CPU. Apple's MPS is not used: the portable rasterizer computes in
float64 in places, which MPS lacks, and nothing here has been run on one, so a Mac runs on its CPU.

On CUDA the renderer is gsplat's, whose kernels come compiled in a prebuilt wheel or are compiled at first
use (that needs nvcc and ninja matching torch's CUDA). Where they cannot be loaded, `auto` falls back to
the portable torch rasterizer on the GPU, once saying why; `--backend` on every command overrides.
"""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass
from typing import Literal

import torch

Backend = Literal["auto", "torch", "gsplat"]
BACKENDS: tuple[Backend, ...] = ("auto", "torch", "gsplat")

GSPLAT_FIX = (
    "install the CUDA toolkit matching torch's CUDA (nvcc) and ninja, then run `protosaga doctor "
    "--compile-gsplat` once; or, for torch 2.0-2.4, gsplat's prebuilt wheels: `pip install gsplat "
    "--index-url https://docs.gsplat.studio/whl/pt24cu124` (pick your torch and CUDA)"
)


def default_device() -> torch.device:
    """CUDA when there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass(frozen=True)
class GsplatStatus:
    """Whether gsplat's CUDA kernels can run here.

    Attributes:
        usable: the kernels are loaded.
        detail: where they came from, or why they are unavailable.
    """

    usable: bool
    detail: str


@functools.cache
def gsplat_status() -> GsplatStatus:
    """Load gsplat's kernels once (compiling them if a CUDA toolkit is there and no wheel brought them).

    Never touched without a GPU: gsplat would compile its kernels wherever it finds nvcc, GPU or not.
    """
    if not torch.cuda.is_available():
        return GsplatStatus(False, "no CUDA device")
    try:
        from gsplat.cuda._backend import _C
    except Exception as error:  # a failed compile raises whatever the toolchain raised
        return GsplatStatus(False, f"gsplat's CUDA kernels failed to compile or load ({type(error).__name__}: {error})")
    if _C is None:
        return GsplatStatus(False, "gsplat ships no compiled kernels in this install and found no CUDA toolkit (nvcc) to compile them")
    return GsplatStatus(True, f"gsplat's kernels loaded from {getattr(_C, '__file__', 'its extension')}")


_preferred: Backend = "auto"


def prefer_backend(backend: Backend) -> None:
    """What `auto` means for the rest of this process (the commands' `--backend`)."""
    global _preferred
    if backend not in BACKENDS:
        raise ValueError(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    _preferred = backend


def choose_backend(device: torch.device, backend: Backend = "auto") -> Literal["torch", "gsplat"]:
    """The rasterizer for tensors on `device`: gsplat on CUDA where its kernels load, else the torch one.

    Raises:
        ValueError: gsplat asked for explicitly where it cannot run.
    """
    wanted = _preferred if backend == "auto" else backend
    if wanted == "torch":
        return "torch"
    if device.type != "cuda":
        if wanted == "gsplat":
            raise ValueError(f"the gsplat backend needs CUDA tensors, got device {device}")
        return "torch"
    status = gsplat_status()
    if status.usable:
        return "gsplat"
    if wanted == "gsplat":
        raise ValueError(f"the gsplat backend is unavailable: {status.detail}; {GSPLAT_FIX}; or use --backend torch")
    _say_fallback_once(status.detail)
    return "torch"


@functools.cache
def _say_fallback_once(detail: str) -> None:
    print(
        f"protosaga: {detail}; rendering with the portable torch rasterizer on the GPU (slower). "
        f"For gsplat: {GSPLAT_FIX}",
        file=sys.stderr,
        flush=True,
    )
