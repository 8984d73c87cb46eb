"""SAM-like masks simulated from ground-truth instance maps, for benchmarks with known answers.

SAM's per-view masks are wrong in recurring ways; each is simulated here, in this order:

1. merges: adjacent instances share one mask. The tendency is a property of the scene (a cup and its
   saucer tend to be merged in every view): each unordered pair of GT ids is merge-prone with probability
   `merge`, decided once from the seed and the two ids alone; a prone pair that touches in a view is
   merged there with probability `merge_in_view`.
2. drops: small instances (area < `small_fraction` of the image) get no mask.
3. splits: large instances (area ≥ `large_fraction` of the image) are cut in two along a random line
   through their centroid.
4. jitter: an instance's boundary moves by 1 px (dilated into its neighbours or eroded to 0).
5. seams: unlabeled (0) lines 1-2 px wide along the boundaries between masks.
6. labels are a fresh random permutation of 1..L, as each SAM run numbers its masks anew.

Everything is deterministic in (seed, view name, GT map): the view's generator is seeded from a stable
hash of its name (not Python's salted `hash`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from ..io.labelmaps import MAX_LABEL

NoiseName = Literal["low", "default", "high"]


@dataclass(frozen=True)
class NoiseLevel:
    """Probabilities of each simulated SAM error.

    Attributes:
        merge: that an unordered pair of GT instances is merge-prone in the scene.
        merge_in_view: that a merge-prone pair touching in a view is merged in that view.
        drop: that a small instance is left unlabeled in a view.
        split: that a large instance is split in two in a view.
        jitter: that an instance's boundary grows or shrinks by 1 px in a view.
        seam: that a view has unlabeled seams (1 or 2 px, equally likely) between its masks.
        small_fraction: instances smaller than this fraction of the image are droppable.
        large_fraction: instances at least this fraction of the image are splittable.
    """

    merge: float
    merge_in_view: float
    drop: float
    split: float
    jitter: float
    seam: float
    small_fraction: float = 0.005
    large_fraction: float = 0.05


# Merges chain through shared neighbours, so even `high` keeps the pair probability well below the point
# where most of a cluttered scene fuses into one mask.
NOISE_LEVELS: dict[NoiseName, NoiseLevel] = {
    "low": NoiseLevel(merge=0.03, merge_in_view=0.8, drop=0.1, split=0.05, jitter=0.05, seam=0.2),
    "default": NoiseLevel(merge=0.1, merge_in_view=0.85, drop=0.3, split=0.15, jitter=0.15, seam=0.5),
    "high": NoiseLevel(merge=0.25, merge_in_view=0.9, drop=0.6, split=0.4, jitter=0.3, seam=0.9),
}


def simulate_sam_masks(
    instances: np.ndarray, view_name: str, seed: int = 0, noise: NoiseLevel | NoiseName = "default"
) -> np.ndarray:
    """Corrupt one view's GT instance map the way SAM errs.

    Args:
        instances: GT instance ids, 0 = none. [H, W] integer
        view_name: the view's name; with `seed`, it seeds this view's randomness.
        seed: the scene-wide seed (merge tendencies depend on it alone).
        noise: a preset name or explicit probabilities.

    Returns:
        labels 1..L in random order, 0 = no mask. [H, W] uint16
    """
    level = NOISE_LEVELS[noise] if isinstance(noise, str) else noise
    labels = np.asarray(instances).astype(np.int64)
    if labels.ndim != 2:
        raise ValueError(f"an instance map must be [H, W], got shape {list(labels.shape)}")
    if labels.size and labels.min() < 0:
        raise ValueError("instance ids must be non-negative")
    rng = np.random.default_rng([seed % 2**64, _stable_hash(view_name)])
    labels = _merge(labels, seed, level, rng)
    labels = _drop(labels, level, rng)
    labels = _split(labels, level, rng)
    labels = _jitter(labels, level, rng)
    labels = _seams(labels, level, rng)
    return _permute(labels, rng)


def _stable_hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """A bijective 64-bit mixer (uint64 arrays wrap silently, which is the arithmetic wanted here)."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _pair_uniforms(seed: int, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """A uniform in [0, 1) per unordered id pair, fixed by the seed alone so every view agrees. [n] -> [n]"""
    key = _splitmix64(np.full(low.shape, seed % 2**64, dtype=np.uint64))
    key = _splitmix64(_splitmix64(key ^ low.astype(np.uint64)) ^ high.astype(np.uint64))
    return (key >> np.uint64(11)).astype(np.float64) / 2.0**53


def _touching_pairs(labels: np.ndarray) -> np.ndarray:
    """Unordered pairs of different nonzero labels that are 4-neighbours somewhere, sorted. [n, 2]"""
    firsts, seconds = [], []
    for a, b in ((labels[:, :-1], labels[:, 1:]), (labels[:-1, :], labels[1:, :])):
        touch = (a != b) & (a > 0) & (b > 0)
        firsts.append(a[touch])
        seconds.append(b[touch])
    a, b = np.concatenate(firsts), np.concatenate(seconds)
    return np.unique(np.stack([np.minimum(a, b), np.maximum(a, b)], axis=1), axis=0)


def _merge(labels: np.ndarray, seed: int, level: NoiseLevel, rng: np.random.Generator) -> np.ndarray:
    pairs = _touching_pairs(labels)
    in_view = rng.random(len(pairs)) < level.merge_in_view
    prone = _pair_uniforms(seed, pairs[:, 0], pairs[:, 1]) < level.merge
    edges = pairs[prone & in_view]
    if not len(edges):
        return labels
    n_nodes = int(labels.max()) + 1
    graph = coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(n_nodes, n_nodes))
    _, component = connected_components(graph, directed=False)
    # Component ids are distinct per group of merged ids; 0 stays 0 (it touches nothing in the graph).
    lookup = component + 1
    lookup[0] = 0
    return lookup[labels]


def _drop(labels: np.ndarray, level: NoiseLevel, rng: np.random.Generator) -> np.ndarray:
    areas = np.bincount(labels.ravel())
    small = (areas > 0) & (areas < level.small_fraction * labels.size)
    small[0] = False
    dropped = small & (rng.random(len(areas)) < level.drop)
    return np.where(dropped[labels], 0, labels)


def _split(labels: np.ndarray, level: NoiseLevel, rng: np.random.Generator) -> np.ndarray:
    labels = labels.copy()
    areas = np.bincount(labels.ravel())
    next_label = len(areas)
    boxes = ndimage.find_objects(labels)
    for label in np.flatnonzero(areas >= level.large_fraction * labels.size):
        if label == 0:
            continue
        split, angle = rng.random() < level.split, rng.uniform(0.0, np.pi)
        if not split:
            continue
        box = boxes[label - 1]
        ys, xs = np.nonzero(labels[box] == label)
        side = (ys - ys.mean()) * np.sin(angle) + (xs - xs.mean()) * np.cos(angle) > 0
        labels[box][ys[side], xs[side]] = next_label
        next_label += 1
    return labels


def _jitter(labels: np.ndarray, level: NoiseLevel, rng: np.random.Generator) -> np.ndarray:
    # Masks come from the unjittered map, so two jittered neighbours move a boundary by 1 px, not 2.
    original, labels = labels, labels.copy()
    boxes = ndimage.find_objects(original)
    ids = np.array([i + 1 for i, box in enumerate(boxes) if box is not None], dtype=np.int64)
    chosen = ids[rng.random(len(ids)) < level.jitter]
    grow = rng.random(len(chosen)) < 0.5
    for label, dilate in zip(chosen, grow):
        # One pixel of margin around the instance's box leaves room to grow.
        box = tuple(slice(max(axis.start - 1, 0), axis.stop + 1) for axis in boxes[label - 1])
        mask = original[box] == label
        window = labels[box]
        if dilate:
            window[ndimage.binary_dilation(mask) & ~mask] = label
        else:
            # border_value=1: the image edge is not an object boundary, so it does not erode.
            window[mask & ~ndimage.binary_erosion(mask, border_value=1)] = 0
    return labels


def _seams(labels: np.ndarray, level: NoiseLevel, rng: np.random.Generator) -> np.ndarray:
    apply, width = rng.random() < level.seam, int(rng.integers(1, 3))
    if not apply:
        return labels
    seam = np.zeros(labels.shape, dtype=bool)
    for a, b, seam_a, seam_b in (
        (labels[:, :-1], labels[:, 1:], seam[:, :-1], seam[:, 1:]),
        (labels[:-1, :], labels[1:, :], seam[:-1, :], seam[1:, :]),
    ):
        boundary = (a != b) & (a > 0) & (b > 0)
        seam_a |= boundary
        if width == 2:
            seam_b |= boundary
    return np.where(seam, 0, labels)


def _permute(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    ids = np.unique(labels)
    ids = ids[ids > 0]
    if len(ids) > MAX_LABEL:
        raise ValueError(f"{len(ids)} simulated masks; a uint16 label map holds at most {MAX_LABEL}")
    lookup = np.zeros(int(labels.max()) + 1 if labels.size else 1, dtype=np.uint16)
    lookup[ids] = rng.permutation(len(ids)) + 1
    return lookup[labels]
