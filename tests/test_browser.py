"""End to end in a real headless Chromium: open a scene, click an object, isolate it, export it.

Needs Debian's `chromium` and the `playwright` package (`.ci/run` installs both); the scene stays under
5k splats because Chromium draws WebGL in software here. Set PROTOSAGA_SCREENSHOT=path.png and
PROTOSAGA_SCREENSHOT_ISOLATED=path.png to keep screenshots of the viewer with the object selected and
isolated (the README's pictures come from this test), and
PROTOSAGA_E2E_SCENE=dir to run on another trained scene (e.g. the full demo) instead of the quick one.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from protosaga_app.browser_camera import camera_from_pose
from protosaga_app.live_view import client_pose
from protosaga_app.viewer import ViewerConfig, serve
from protosaga_core.ply import read_ply
from protosaga_core.render import render
from viser_client import free_port, until

CHROMIUM = Path("/usr/bin/chromium")
if os.environ.get("PROTOSAGA_REQUIRE_BROWSER") != "1":  # CI sets it: there a missing browser is a failure
    pytest.importorskip("playwright.sync_api", reason="the browser tests need the playwright package")
    pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="the browser tests need Debian's chromium package")
from playwright import sync_api  # noqa: E402
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]
VIEWPORT = {"width": 1000, "height": 700}
MAX_BROWSER_SPLATS = 5000


@pytest.fixture()
def scene(trained_scene, tmp_path) -> Path:
    other = os.environ.get("PROTOSAGA_E2E_SCENE")
    return Path(shutil.copytree(other, tmp_path / "other")) if other else trained_scene


@pytest.fixture()
def page(tmp_path):
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        context = browser.new_context(viewport=VIEWPORT, accept_downloads=True)
        yield context.new_page()
        context.close()
        browser.close()


def target_pixel(app, client) -> tuple[int, float, float]:
    """An object and a viewport pixel where it contributes most, found with the rasterizer alone (one-hot
    instance channels), independent of the picking code. The object is the largest one that does not
    touch the image border (walls and floors do), inside a region away from the GUI panel (right) and
    notifications (top-left)."""
    width, height = int(client.camera.image_width), int(client.camera.image_height)
    visible = app.document.visible()
    one_hot = torch.nn.functional.one_hot(torch.from_numpy(visible.labels), int(visible.labels.max()) + 1).float()
    with torch.no_grad():
        weights = render(
            visible.gaussians, camera_from_pose(client_pose(client), width, height), rgb=False, extras=one_hot
        ).extras[0]
    weights[..., 0] = 0.0
    best, owner = weights.max(-1)
    owner = torch.where(best > 0.5, owner, torch.zeros_like(owner))
    allowed = torch.zeros(height, width, dtype=torch.bool)
    allowed[int(0.3 * height) : int(0.95 * height), int(0.05 * width) : int(0.6 * width)] = True
    border = set(torch.cat([owner[0], owner[-1], owner[:, 0], owner[:, -1]]).tolist()) | {0}
    ids, counts = torch.unique(owner[allowed], return_counts=True)
    inside = [(int(c), int(i)) for i, c in zip(ids, counts) if int(i) not in border]
    chosen = max(inside)[1] if inside else int(ids[counts.argmax()])
    share = torch.where(allowed & (owner == chosen), weights[..., chosen], torch.zeros(()))
    row, column = divmod(int(share.flatten().argmax()), width)
    return chosen, column + 0.5, row + 0.5


ISOLATED_INSIDE_GT = 0.8
"""Share of an isolated object's rendered opacity that must fall inside one GT object's mask."""
OCCLUSION_MARGIN = 0.1
"""Metres by which the GT surface must lie in front of the isolated splats for a pixel to count as hidden."""


def isolated_share_inside_gt(app) -> tuple[int, float]:
    """What the isolated Gaussians render in the training view where they show the most, checked against
    that view's GT instance map: the GT object they overlap most, and the share of their rendered opacity
    inside its mask (1 = the isolated splats are exactly one real object, seen from there). Pixels where
    the GT depth puts another surface in front of them are left out: an isolated floor rightly shows the
    floor under the table, which the GT map labels as the table."""
    visible = app.document.visible()
    best = (0.0, None)
    for view in app.document.scene.dataset.split("train"):
        with torch.no_grad():
            out = render(visible.gaussians, view.cameras, rgb=False, extras=torch.ones(len(visible.gaussians), 1), depth="ED")
        gt_depth = view.load_depth()
        hidden = (gt_depth > 0) & (gt_depth < out.depths[0, ..., 0] - OCCLUSION_MARGIN)
        alpha = torch.where(hidden, 0.0, out.alphas[0, ..., 0])
        best = max(best, (float(alpha.sum()), (view, alpha)), key=lambda item: item[0])
    view, alpha = best[1]
    mass = torch.bincount(view.load_instances().flatten(), weights=alpha.flatten().double())
    mass[0] = 0.0  # background is no object
    gt_object = int(mass.argmax())
    return gt_object, float(mass[gt_object] / alpha.sum())


def test_click_isolate_and_export_in_a_real_browser(scene, page, tmp_path):
    app = serve(ViewerConfig(scene, port=free_port(), open_browser=False, max_splats=MAX_BROWSER_SPLATS))
    try:
        page.goto(f"http://127.0.0.1:{app.server.get_port()}")
        until(timeout=60.0, condition=lambda: any(c.camera.update_timestamp > 0 for c in app.server.get_clients().values()))
        client = next(iter(app.server.get_clients().values()))
        page.get_by_text("Selection:").wait_for()
        page.wait_for_timeout(1500)  # let the splats arrive and draw once

        instance, x, y = target_pixel(app, client)
        box = page.locator("canvas").first.bounding_box()
        page.mouse.click(box["x"] + x * box["width"] / client.camera.image_width, box["y"] + y * box["height"] / client.camera.image_height)
        until(timeout=60.0, condition=lambda: app.document.model.state.selected == frozenset({instance}))
        page.get_by_text(f"{instance}: ").first.wait_for()  # the panel shows the selection
        if os.environ.get("PROTOSAGA_SCREENSHOT"):
            page.wait_for_timeout(1500)
            page.screenshot(path=os.environ["PROTOSAGA_SCREENSHOT"])

        page.keyboard.press("i")  # the isolate hotkey, through the browser's command palette bindings
        until(timeout=60.0, condition=lambda: app.document.model.visible_instances() == frozenset({instance}))
        if os.environ.get("PROTOSAGA_SCREENSHOT_ISOLATED"):
            page.wait_for_timeout(1500)
            page.screenshot(path=os.environ["PROTOSAGA_SCREENSHOT_ISOLATED"])
        gt_object, share = isolated_share_inside_gt(app)
        assert share >= ISOLATED_INSIDE_GT, f"isolated instance {instance}: {share:.2f} of its opacity on GT object {gt_object}"

        with page.expect_download() as download_info:
            page.get_by_role("button", name="Export selection").click()
        downloaded = tmp_path / download_info.value.suggested_filename
        download_info.value.save_as(downloaded)
        exported = read_ply(downloaded)
        assert len(exported.gaussians) == int((app.document.scene.labels == instance).sum())
        assert exported.gaussians.feature_dim == 0 and exported.instance_ids is None
        assert (scene / "exports" / downloaded.name).read_bytes() == downloaded.read_bytes()
        np.testing.assert_allclose(
            exported.gaussians.means.numpy(), app.document.scene.gaussians.means[torch.from_numpy(app.document.scene.labels == instance)].numpy()
        )

        page.keyboard.press("Control+z")  # undo the isolate
        until(timeout=60.0, condition=lambda: app.document.model.visible_instances() == app.document.model.live_instances())
    finally:
        app.server.stop()
