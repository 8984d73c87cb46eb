"""Replica as Gaga prepares it: a COLMAP scene whose images are `train_rgb_XXXX.png` / `test_rgb_XXXX.png`.

Gaga's data/replica script copies Semantic-NeRF's instance maps to
`semantic_instance/{train,test}_semantic_instance_XXXX.png`, and its eval.py finds the map of `test_rgb_XXXX` by
replacing `_rgb` with `_semantic_instance`. We do the same, and also accept a map named like the image
(`semantic_instance/<stem>.png`). The split comes from the name prefix (see `splits.py`).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from .colmap import read_colmap
from .common import RawScene


def read_replica(root: Path, downscale: int = 1) -> RawScene:
    """The COLMAP cameras of `root` with each image's GT instance map attached when it exists."""
    scene = read_colmap(root, downscale)
    images = [replace(image, instance_path=instance_map(root, image.name)) for image in scene.images]
    return replace(scene, images=images, format="replica")


def instance_map(root: Path, name: str) -> Path | None:
    """`semantic_instance/<prefix>_semantic_instance_<index>.png` for `<prefix>_rgb_<index>`, else `<name>.png`."""
    folder = root / "semantic_instance"
    for candidate in (folder / f"{name.replace('_rgb_', '_semantic_instance_', 1)}.png", folder / f"{name}.png"):
        if candidate.is_file():
            return candidate
    return None
