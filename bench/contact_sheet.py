"""A contact sheet of a trained scene: `python bench/contact_sheet.py SCENE OUT.png [--train 2]`.

One row per view: the photo | its SAM masks | its consistent (associated) masks | the segmentation rendered
from the per-Gaussian labels. Training views first (as many as --train, spread over the capture), then every
test view, where SAM and association have nothing to show (grey). Label colours: raw masks get arbitrary
colours (their ids mean nothing across views); consistent ids and predictions share the instance colours.
"""

from __future__ import annotations

import argparse
import sys
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from protosaga_core.io.scene_dir import SceneDir
from protosaga_core.method.lifting import render_label_maps
from protosaga_core.palette import instance_color
from protosaga_core.stages import read_consistent_mask

GREY = 128


def instance_colours(labels: np.ndarray) -> np.ndarray:
    """Instance colours of an id map (0 black). [H, W] -> [H, W, 3] uint8"""
    ids = np.unique(labels)
    table = np.zeros((int(ids.max()) + 1, 3), dtype=np.uint8)
    for instance_id in ids[ids > 0].tolist():
        table[instance_id] = instance_color(instance_id)
    return table[labels]


def raw_colours(labels: np.ndarray, seed: int) -> np.ndarray:
    """Arbitrary colours per raw SAM label (0 black). [H, W] -> [H, W, 3] uint8"""
    palette = np.random.default_rng(seed).integers(40, 256, size=(int(labels.max()) + 1, 3)).astype(np.uint8)
    palette[0] = 0
    return palette[labels]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scene", type=Path)
    parser.add_argument("output", type=Path)
    parser.add_argument("--train", type=int, default=2, help="training views to show")
    args = parser.parse_args()
    scene_dir = SceneDir(args.scene)
    dataset = scene_dir.load_dataset()
    gaussians = scene_dir.read_gaussians()
    labels = torch.from_numpy(scene_dir.read_labels())
    ids = torch.unique(labels[labels > 0])
    train = dataset.split("train")
    picks = [train[int(i)] for i in np.linspace(0, len(train) - 1, args.train).round()] if args.train else []
    rows = []
    for view in picks + dataset.split("test"):
        photo = (view.load_image().numpy() * 255 + 0.5).astype(np.uint8)
        blank = np.full_like(photo, GREY)
        predicted = render_label_maps(gaussians, view.cameras, labels, ids)[0].numpy()
        if view.split == "train":
            raw = view.load_mask().numpy()
            panels = [photo, raw_colours(raw, zlib.crc32(view.name.encode())), instance_colours(read_consistent_mask(scene_dir, view).numpy())]
        else:
            panels = [photo, blank, blank]
        rows.append(np.concatenate(panels + [instance_colours(predicted)], axis=1))
    width = max(row.shape[1] for row in rows)
    sheet = np.concatenate([np.pad(row, ((0, 2), (0, width - row.shape[1]), (0, 0)), constant_values=255) for row in rows])
    Image.fromarray(sheet).save(args.output, optimize=True)
    print(f"wrote {args.output}: {len(rows)} views ({len(picks)} training), photo | SAM | consistent | segmentation")
    return 0


if __name__ == "__main__":
    sys.exit(main())
