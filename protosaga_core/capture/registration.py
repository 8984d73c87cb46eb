"""Why photos failed to get a pose, read from what the matching left in COLMAP's database.

Three causes, in the order they are checked, each with what to do about it:
- too few features: the photo is blurred, dark, overexposed or shows a plain surface;
- too few verified matches with every other photo: it overlaps too little with them;
- matched, yet not in the model: it belongs to another group of photos the mapper could not join to the
  largest one, or its matches sit on something that moved or repeats.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

MIN_FEATURES = 200
"""Below this many SIFT features a photo rarely registers (COLMAP's mapper needs 15-100 inlier matches)."""
MIN_VERIFIED_MATCHES = 15
"""COLMAP's own threshold (IncrementalPipelineOptions.min_num_matches) for a pair to count."""


@dataclass(frozen=True)
class Unregistered:
    """A photo without a pose, and why.

    Attributes:
        name: the image file's name.
        features: SIFT features found in it.
        best_matches: its most verified matches with any other photo.
        reason: what went wrong and what to try, one sentence.
    """

    name: str
    features: int
    best_matches: int
    reason: str


def unregistered_photos(database: Path, registered: set[str]) -> list[Unregistered]:
    """Every photo in `database` whose name is not in `registered`, with its cause, by name."""
    import pycolmap

    with pycolmap.Database.open(database) as db:
        images = db.read_all_images()
        features = {image.image_id: db.num_keypoints_for_image(image.image_id) for image in images}
        pair_ids, inliers = db.read_two_view_geometry_num_inliers()
    best = best_matches_per_image([pycolmap.pair_id_to_image_pair(pair) for pair in pair_ids], inliers)
    missing = sorted((image for image in images if image.name not in registered), key=lambda image: image.name)
    return [
        Unregistered(image.name, features[image.image_id], best.get(image.image_id, 0),
                     failure_reason(features[image.image_id], best.get(image.image_id, 0)))
        for image in missing
    ]


def best_matches_per_image(pairs: list[tuple[int, int]], inliers: list[int]) -> dict[int, int]:
    """The most verified matches each image has with any other. pairs: [P] (id1, id2); inliers: [P]"""
    if not pairs:
        return {}
    ids = np.asarray(pairs, dtype=np.int64).reshape(-1)
    counts = np.repeat(np.asarray(inliers, dtype=np.int64), 2)
    order = np.lexsort((counts, ids))  # by image, then by count: the last of each image is its best
    last = np.r_[ids[order][1:] != ids[order][:-1], True]
    return dict(zip(ids[order][last].tolist(), counts[order][last].tolist()))


def failure_reason(features: int, best_matches: int) -> str:
    if features < MIN_FEATURES:
        return (f"only {features} features: blurred, too dark or bright, or a plain surface; retake it sharp, with "
                "textured things in view")
    if best_matches < MIN_VERIFIED_MATCHES:
        return (f"overlaps too little with the other photos (at most {best_matches} verified matches with any); "
                "add photos between it and its neighbours (each scene point in 3 or more photos)")
    return (f"matched other photos ({best_matches} verified matches at most) but is not in the largest model: it "
            "may belong to a group of photos the mapper could not join, or its matches lie on moving or repeated "
            "things; add photos that bridge the groups")
