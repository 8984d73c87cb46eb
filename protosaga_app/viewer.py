"""Entry point of `protosaga-view SCENE`: open a trained scene in the browser.

The server binds 127.0.0.1 unless told otherwise: a segmentation editor that writes files under the
scene directory must not be reachable from the network by default (viser's own default is 0.0.0.0).
Its websocket also refuses pages from other sites open in the same browser (see origins.py).
"""

from __future__ import annotations

import os
import sys
import time
import webbrowser
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal, TextIO

import torch
import tyro

from protosaga_core.cli import MAX_RENDER_SIDE
from protosaga_core.device import Backend, default_device, prefer_backend
from protosaga_core.io.scene_dir import FEATURES_HINT, SceneDirError
from protosaga_core.threads import configure as configure_threads

from .document import SceneDocument
from .live import FEATURE_MODES, RenderMode
from .live_view import LiveSettings
from .origins import AllowedOrigin, check_listen_address, network_warning, parse_allowed_origin, start_viser_server
from .scene import ViewerScene
from .server import ViewerApp, ViewerOptions


@dataclass
class ViewerConfig:
    """Open a trained scene (the output of `protosaga run`) in an interactive viewer and editor."""

    scene: Annotated[Path, tyro.conf.Positional, tyro.conf.arg(metavar="SCENE")]
    """the trained scene directory (the output of protosaga run)"""
    host: str = "127.0.0.1"
    """address to listen on; 0.0.0.0 makes the viewer reachable from other machines"""
    port: int = 8080
    """port to listen on (the next free one is used if it is taken)"""
    allow_origin: Annotated[tuple[str, ...], tyro.conf.UseAppendAction, tyro.conf.arg(metavar="HOST[:PORT]")] = ()
    """also accept browser pages from this host (any port unless given), e.g. an SSH tunnel; other sites are refused"""
    mode: RenderMode = "rgb"
    """render mode at start: rgb, instances, segmentation (per pixel, on the server: the lifted labels), prototypes
    (Eq. 19 per pixel, on the server) or pca"""
    max_splats: int | None = 1_000_000
    """Gaussians sent to the browser (the most opaque ones; the server keeps all); None: every one"""
    moving_size: int | None = None
    """longer side of server frames while the camera moves (at most 4096); default: 256 on the CPU, full size on a GPU"""
    still_size: int | None = None
    """longer side of server frames once the camera stops (at most 4096); default: 640 on the CPU, full size on a GPU"""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """where frames are rendered: auto (cuda if available), cpu or cuda"""
    backend: Backend = "auto"
    """the rasterizer: auto (gsplat on CUDA where its kernels load, else the portable torch one), torch or gsplat"""
    open_browser: bool = True
    """open the viewer in the default browser where there is a display"""
    threads: int | None = None
    """torch's CPU threads for frames and picking; default: all cores, or an equal share while other
    protosaga processes run (e.g. a training), followed as they start and stop"""

    def check(self) -> None:
        """Refuse, before any work, values that cannot work (ValueError, one line naming the option): frame
        sides beyond MAX_RENDER_SIDE (100,000 asked for 28 GB at the first frame), a negative --max-splats,
        a port outside 0..65535, a host this machine cannot listen on, a malformed --allow-origin."""
        for option, size in (("--moving-size", self.moving_size), ("--still-size", self.still_size)):
            if size is not None and not 1 <= size <= MAX_RENDER_SIDE:
                raise ValueError(f"{option} must be 1..{MAX_RENDER_SIDE} (pixels on a frame's longer side), got {size}")
        if self.max_splats is not None and self.max_splats < 0:
            raise ValueError(f"--max-splats must be 0 or more (None: every Gaussian), got {self.max_splats}")
        self.allowed_origins()
        check_listen_address(self.host, self.port)

    def allowed_origins(self) -> tuple[AllowedOrigin, ...]:
        """The parsed --allow-origin values (ValueError naming the first malformed one)."""
        return tuple(parse_allowed_origin(text) for text in self.allow_origin)

    def live_settings(self, device: torch.device) -> LiveSettings:
        on_gpu = device.type == "cuda"
        moving = self.moving_size if self.moving_size is not None else (None if on_gpu else 256)
        still = self.still_size if self.still_size is not None else (None if on_gpu else 640)
        return LiveSettings(moving, still)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return default_device()
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available")
    return torch.device(name)


def serve(config: ViewerConfig) -> ViewerApp:
    """Load the scene and start the server (returns at once; the server runs on its own threads)."""
    config.check()
    allowed = config.allowed_origins()
    scene = ViewerScene.load(config.scene)
    if config.mode in FEATURE_MODES and scene.gaussians.feature_dim == 0:
        raise ValueError(f"--mode {config.mode}: {config.scene} is an imported scene with no per-Gaussian features yet; {FEATURES_HINT}")
    device = resolve_device(config.device)
    document = SceneDocument(scene, device)
    options = ViewerOptions(config.max_splats, config.live_settings(device), config.mode)
    server = start_viser_server(config.host, config.port, allowed, label="ProtoSaGa")
    try:
        return ViewerApp(server, document, options)
    except BaseException:
        server.stop()  # free the port: the caller reports the error and may go on (tests, scripts)
        raise


def url_of(app: ViewerApp) -> str:
    """The address to open: a wildcard bind is reached through 127.0.0.1; IPv6 hosts need brackets."""
    host = app.server.get_host()
    host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    return f"http://{f'[{host}]' if ':' in host else host}:{app.server.get_port()}"


def warn_if_exposed(host: str, port: int, allowed: tuple[AllowedOrigin, ...], file: TextIO | None = None) -> bool:
    """Print the warning for a viewer listening beyond this machine (to stderr unless `file` is given);
    whether there was one."""
    warning = network_warning(host, port, allowed)
    if warning is not None:
        print(warning, file=file if file is not None else sys.stderr, flush=True)
    return warning is not None


def serve_forever(config: ViewerConfig) -> int:
    """Run the viewer until Ctrl+C; returns the exit status."""
    try:
        app = serve(config)
    except (SceneDirError, FileNotFoundError, PermissionError, ValueError, OSError) as error:
        print(f"protosaga-view: error: {error}", file=sys.stderr)
        return 2
    url = url_of(app)
    warn_if_exposed(config.host, app.server.get_port(), config.allowed_origins())
    scene = app.document.scene
    print(
        f"protosaga-view: {scene.scene_dir.root} ({len(scene.gaussians):,} Gaussians, {len(scene.instances)} instances)\n"
        f"  open {url} in a browser; Ctrl+C stops the viewer (exports are saved in {scene.scene_dir.root / 'exports'})",
        flush=True,
    )
    if config.open_browser and _has_display():
        webbrowser.open(url)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        app.stop()
    return 0


def _has_display() -> bool:
    return sys.platform in ("darwin", "win32") or bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def main(argv: list[str] | None = None) -> int:
    config = tyro.cli(ViewerConfig, args=sys.argv[1:] if argv is None else argv, prog="protosaga-view")
    try:
        config.check()
        configure_threads("view", config.threads)
        prefer_backend(config.backend)
    except ValueError as error:
        print(f"protosaga-view: error: {error}", file=sys.stderr)
        return 2
    return serve_forever(config)


if __name__ == "__main__":
    raise SystemExit(main())
