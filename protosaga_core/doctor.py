"""`protosaga doctor`: what this machine offers the project, and what each missing piece costs.

Each check is a small function returning `Finding`s; none of them changes anything, except that
`compile_gsplat=True` lets gsplat build its CUDA kernels (minutes, once) where a GPU and nvcc exist.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import platform
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from .device import GSPLAT_FIX, gsplat_status
from .io.cache import cache_dir
from .masks.weights import MOBILE_SAM, WeightsError, cached_weights
from .threads import available_cores, other_processes

Status = Literal["ok", "missing", "note"]

FREE_DISK_WANTED = 2 << 30
"""A demo scene, MobileSAM's weights and a few exports fit in well under 2 GiB."""

CHROMIUM_PATHS = ("/usr/bin/chromium", "/usr/bin/chromium-browser")


@dataclass(frozen=True)
class Finding:
    """One line of the report.

    Attributes:
        status: ok, missing (something the user can add) or note (a fact that costs something).
        topic: what was checked, e.g. "gsplat".
        found: what is there.
        fix: what to do about it, and what not doing it costs; empty when nothing is needed.
    """

    status: Status
    topic: str
    found: str
    fix: str = ""


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def check_torch() -> list[Finding]:
    cuda_build = torch.version.cuda or "none (a CPU build)"
    found = f"torch {torch.__version__}, python {platform.python_version()}, CUDA build {cuda_build}"
    return [Finding("ok", "torch", found)]


def check_devices() -> list[Finding]:
    cores = available_cores()
    findings = [Finding("ok", "cpu", f"{cores} cores available to this process")]
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            properties = torch.cuda.get_device_properties(index)
            memory = properties.total_memory / 2**30
            findings.append(Finding("ok", f"cuda:{index}", f"{properties.name}, {memory:.0f} GiB: every stage runs here"))
    else:
        findings.append(
            Finding(
                "note",
                "gpu",
                "no CUDA device: everything runs on the CPU with the portable torch rasterizer",
                "nothing to fix; `--preset cpu` (the default here) trains at 320 px; a CUDA GPU trains the paper's "
                "30k iterations at full size",
            )
        )
    if torch.backends.mps.is_available():
        findings.append(Finding("note", "mps", "Apple MPS is present but not used (the rasterizer needs float64)", "nothing to fix: runs on the CPU"))
    return findings


def _gsplat_build_folder() -> Path:
    from torch.utils.cpp_extension import _get_build_directory

    return Path(_get_build_directory("gsplat_cuda", verbose=False))


def check_gsplat(compile_kernels: bool) -> list[Finding]:
    version = _version("gsplat")
    if version is None:
        return [Finding("missing", "gsplat", "not installed", "pip install -e . (gsplat is a dependency)")]
    if not torch.cuda.is_available():
        return [Finding("ok", "gsplat", f"{version}: its pure-PyTorch maths only (no GPU, so its kernels are not needed)")]
    nvcc, ninja = shutil.which("nvcc"), shutil.which("ninja")
    tools = f"nvcc {nvcc or 'missing'}, ninja {ninja or 'missing'}"
    prebuilt = importlib.util.find_spec("gsplat.csrc") is not None
    built = (_gsplat_build_folder() / "gsplat_cuda.so").exists()
    if not (compile_kernels or prebuilt or built):
        if nvcc and ninja:
            return [Finding("note", "gsplat", f"{version}: kernels not compiled yet ({tools})",
                            "the first render compiles them (several minutes); `protosaga doctor --compile-gsplat` does it now")]
        return [Finding("missing", "gsplat", f"{version}: no compiled kernels and no toolchain to build them ({tools})",
                        f"renders fall back to the torch rasterizer on the GPU (several times slower); {GSPLAT_FIX}")]
    status = gsplat_status()
    if status.usable:
        return [Finding("ok", "gsplat", f"{version}: {status.detail}")]
    return [Finding("missing", "gsplat", f"{version}: {status.detail} ({tools})",
                    f"renders fall back to the torch rasterizer on the GPU (several times slower); {GSPLAT_FIX}")]


def check_threads() -> list[Finding]:
    others = other_processes()
    count = torch.get_num_threads()
    found = f"torch uses {count} thread{'' if count == 1 else 's'}"
    if not others:
        return [Finding("ok", "threads", found)]
    names = ", ".join(f"{o.command} (pid {o.pid})" for o in others)
    return [Finding("note", "threads", f"{found}; other protosaga processes share the cores: {names}",
                    "each gets an equal share; --threads N sets it")]


def check_sam() -> list[Finding]:
    findings = []
    missing = [name for name in ("segment-anything", "mobilesam-mirror", "timm") if _version(name) is None]
    if missing:
        findings.append(Finding("missing", "sam code", f"not installed: {', '.join(missing)}",
                                "pip install -e '.[sam]'; without it masks use the Felzenszwalb fallback (much weaker objects)"))
    else:
        findings.append(Finding("ok", "sam code", "segment-anything and MobileSAM installed"))
    try:
        weights = cached_weights(MOBILE_SAM)
    except WeightsError as damaged:
        return findings + [Finding("missing", "mobile_sam", str(damaged), f"protosaga weights {MOBILE_SAM.name}")]
    if weights is None:
        findings.append(Finding("missing", "mobile_sam", "weights not fetched",
                                f"protosaga weights {MOBILE_SAM.name} (41 MB, once); without them masks use the much weaker fallback"))
    else:
        findings.append(Finding("ok", "mobile_sam", f"{weights}: sha256 verified"))
    return findings


def check_browser() -> list[Finding]:
    chromium = next((path for path in CHROMIUM_PATHS if Path(path).exists()), None) or shutil.which("chromium")
    playwright = _version("playwright")
    if chromium and playwright:
        return [Finding("ok", "browser tests", f"Chromium {chromium}, playwright {playwright}")]
    lacking = [name for name, there in (("Chromium", chromium), ("playwright", playwright)) if not there]
    return [Finding("missing", "browser tests", f"{' and '.join(lacking)} not found",
                    "apt-get install chromium; pip install -e '.[test]' (only the viewer's browser tests need them)")]


def check_disk() -> list[Finding]:
    folder = cache_dir()
    existing = next((p for p in (folder, *folder.parents) if p.exists()), Path("/"))
    if not existing.is_dir():
        return [Finding("missing", "cache", f"{existing} is not a folder", "point XDG_CACHE_HOME at a folder")]
    free = shutil.disk_usage(existing).free
    status: Status = "ok" if free >= FREE_DISK_WANTED else "missing"
    fix = "" if status == "ok" else "free some space: the demo and the weights need about 2 GiB"
    return [Finding(status, "cache", f"{folder}: {free / 2**30:.1f} GiB free", fix)]


def diagnose(compile_gsplat: bool = False) -> list[Finding]:
    """Every check, in the order a new user meets them."""
    checks: list[Callable[[], list[Finding]]] = [
        check_torch,
        check_devices,
        lambda: check_gsplat(compile_gsplat),
        check_threads,
        check_sam,
        check_browser,
        check_disk,
    ]
    return [finding for check in checks for finding in check()]


def report(findings: list[Finding]) -> str:
    """The findings as aligned lines, each fix indented under its line."""
    width = max(len(f.topic) for f in findings)
    lines = []
    for finding in findings:
        lines.append(f"[{finding.status:7s}] {finding.topic:<{width}}  {finding.found}")
        if finding.fix:
            lines.append(f"{'':10s}{'':<{width}}  -> {finding.fix}")
    return "\n".join(lines)
