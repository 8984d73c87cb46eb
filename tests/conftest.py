"""Shared fixtures: a small trained scene (the bundled demo dataset, a short training) for viewer tests;
the gsplat path emulated on a CPU; and CI's rule that only hardware may skip a test."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from protosaga_core.cli import main

DEMO = Path(__file__).resolve().parents[1] / "assets" / "demo"
QUICK_TRAINING = ["--preset", "cpu", "--iterations", "300", "--sh-degree", "0", "--masks.method", "simulated"]
"""Enough iterations for geometry whose objects isolate cleanly (the browser test checks it); ~6k Gaussians,
of which the browser test draws the 5k most opaque."""


@pytest.fixture(scope="session")
def trained_scene_readonly(tmp_path_factory) -> Path:
    """A scene trained once per test session; tests that write into it use `trained_scene` instead."""
    root = tmp_path_factory.mktemp("trained")
    shutil.copytree(DEMO, root / "data")
    assert main(["run", str(root / "data"), "-o", str(root / "scene"), *QUICK_TRAINING]) == 0
    return root / "scene"


@pytest.fixture()
def trained_scene(trained_scene_readonly, tmp_path) -> Path:
    """A private copy of the trained scene (its dataset is shared, and never written)."""
    return Path(shutil.copytree(trained_scene_readonly, tmp_path / "scene"))


@pytest.fixture()
def gsplat_emulated(monkeypatch):
    """`render` takes its gsplat path, with the torch rasterizer standing in for gsplat's kernels. The
    stand-in refuses what `gsplat.rasterize_to_pixels` refuses (0 or more than 513 channels), so code that
    only the CUDA path runs meets gsplat's limits on a CPU too."""
    from protosaga_core.render import api
    from protosaga_core.render.torch_backend import rasterize_torch

    def gsplat_like(means, quats, scales, opacities, colors, *args, **kwargs):
        if not 0 < colors.shape[-1] <= 513:
            raise ValueError(f"Unsupported number of color channels: {colors.shape[-1]}")
        return rasterize_torch(means, quats, scales, opacities, colors, *args, **kwargs)

    monkeypatch.setattr(api, "choose_backend", lambda device, backend="auto": "gsplat")
    monkeypatch.setattr(api, "rasterize_gsplat", gsplat_like)


NO_SKIPS = os.environ.get("PROTOSAGA_NO_SKIPS") == "1"
"""Set by .ci/run: what CI sets up (../shared/data, MobileSAM's weights, Chromium) must be there, so a test
that would skip for want of it fails instead. Only hardware may be missing."""
HARDWARE = "hardware:"
"""How the reason of a skip that only hardware explains begins (e.g. "hardware: needs a CUDA device")."""


def _refuse_skip(report) -> None:
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    if not reason.removeprefix("Skipped: ").startswith(HARDWARE):
        report.outcome = "failed"
        report.longrepr = f"skipped where CI requires what it needs (PROTOSAGA_NO_SKIPS=1): {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    report = (yield).get_result()
    if NO_SKIPS and report.skipped and not hasattr(report, "wasxfail"):
        _refuse_skip(report)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    report = (yield).get_result()
    if NO_SKIPS and report.skipped:
        _refuse_skip(report)
