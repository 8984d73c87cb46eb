"""`images_N/`: the dataset's undistorted photos shrunk by N, which training at a reduced size reads."""

from __future__ import annotations

from pathlib import Path

from PIL import Image
from tqdm import tqdm

from ..io.atomic import replace_dir, staging_dir


def write_downscaled(images: Path, factors: tuple[int, ...], progress: bool = True) -> None:
    """`images.parent / images_N/` for each N: every photo of `images` at (width // N, height // N), the size
    the dataset readers expect of a shipped `images_N/` (datasets/common.view_size). Each folder appears
    whole or not at all."""
    names = sorted(path.name for path in images.iterdir() if path.is_file())
    for factor in factors:
        target = images.with_name(f"images_{factor}")
        staged = staging_dir(target)
        staged.mkdir(parents=True, exist_ok=True)
        for name in tqdm(names, desc=f"images_{factor}", unit="image", disable=not progress):
            with Image.open(images / name) as image:
                size = (max(1, image.width // factor), max(1, image.height // factor))
                image.convert("RGB").resize(size, Image.Resampling.LANCZOS).save(staged / name, quality=95)
        replace_dir(staged, target)
