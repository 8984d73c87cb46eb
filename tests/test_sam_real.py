"""The real MobileSAM weights on real photos: two views of the statue scene (../shared/data/statue_colmap).

The weights come from `protosaga weights mobile_sam` (CI runs it before the tests). Without them the test
skips, except where PROTOSAGA_REQUIRE_SAM_WEIGHTS=1 (CI): there a missing checkpoint is a failure.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from protosaga_core.masks.records import flatten
from protosaga_core.masks.sam import SamMaskGenerator
from protosaga_core.masks.weights import MOBILE_SAM, cached_weights

STATUE = Path(__file__).resolve().parents[2] / "shared" / "data" / "statue_colmap" / "images"
WIDTH = 250
"""The cpu preset trains the statue at 250 px wide; masks are made at that size."""
STATUE_BOXES = {  # (x0, y0, x1, y1) at WIDTH px, drawn once by hand around the statue in each photo
    "DSC_5283": (64, 50, 192, 164),
    "DSC_5295": (62, 36, 199, 166),
}
POINTS_PER_SIDE = 16
"""MobileSAM's CPU default (`default_points_per_side`): ~35 s a photo on two cores."""


def _weights() -> Path:
    path = cached_weights(MOBILE_SAM)
    if path is None:
        if os.environ.get("PROTOSAGA_REQUIRE_SAM_WEIGHTS") == "1":
            pytest.fail("MobileSAM weights missing: CI must run `protosaga weights mobile_sam` first")
        pytest.skip("MobileSAM weights not fetched (protosaga weights mobile_sam)")
    return path


@pytest.fixture(scope="module")
def generator() -> SamMaskGenerator:
    if not STATUE.is_dir():
        pytest.skip(f"{STATUE} not found (../shared beside the checkout)")
    return SamMaskGenerator(_weights(), "vit_t", points_per_side=POINTS_PER_SIDE, device="cpu")


@pytest.mark.parametrize("name", sorted(STATUE_BOXES))
def test_mobile_sam_finds_the_statue_as_one_mask_in_a_real_photo(generator, name):
    with Image.open(STATUE / f"{name}.jpg") as photo:
        photo = photo.convert("RGB")
        image = np.asarray(photo.resize((WIDTH, round(photo.height * WIDTH / photo.width)), Image.Resampling.BOX))
    labels = flatten(generator(image), "score", shape=image.shape[:2])
    assert (labels > 0).mean() > 0.7, "the masks should cover most of the photo"
    x0, y0, x1, y1 = STATUE_BOXES[name]
    inside = np.zeros(labels.shape, dtype=bool)
    inside[y0:y1, x0:x1] = True
    ids, counts = np.unique(labels[inside & (labels > 0)], return_counts=True)
    statue = int(ids[counts.argmax()])
    # One mask fills the statue's box as far as its silhouette does (~60 %), and lies inside the box:
    # the statue, whole and alone.
    assert counts.max() / inside.sum() > 0.45
    assert (labels[inside] == statue).sum() / (labels == statue).sum() > 0.9
