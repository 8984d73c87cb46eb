"""The `protosaga` command: the core's subcommands (protosaga_core/cli.py), with `protosaga demo` opening its
scene in the viewer at the end. It lives here, above both packages, so that the core never imports the app."""

from __future__ import annotations

import sys
from pathlib import Path

from protosaga_core.cli import main as core_main

from .viewer import ViewerConfig, serve_forever


def open_viewer(scene: Path, port: int) -> int:
    """Serve `scene` on `port` until Ctrl+C; the exit status."""
    return serve_forever(ViewerConfig(scene, port=port))


def main(argv: list[str] | None = None) -> int:
    return core_main(argv, open_viewer)


if __name__ == "__main__":
    sys.exit(main())
