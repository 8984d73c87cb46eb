"""The association inspector's computations (no GUI): one training view's panels, ranked suspects, and
how the suspects are listed (short entries, pages).

Association (paper Sec. 3.2) makes every hard decision per mask and never revisits it, so its errors are
of two kinds: a split (one object gets two consistent ids) and a merge (one id covers two objects). Each
suspect kind below is evidence for one of them:

- `single_view`: an instance that masks of only one training view map to. Eq. 12-13 match a mask to the
  bank entry holding its filtered Gaussians (Eq. 10, 15, 16), so an object seen again should be matched
  again. When a later view's filtered set G picks different Gaussians (other depths, other semantics),
  γ(t, e) of Eq. 12 stays below δ and the object starts a second entry: the single-view one is then a
  fragment of a split. Objects really seen once exist too (at the border of the capture), so the larger
  the instance the more suspicious: a large object is seen from many views. Its size is its Gaussians in
  the per-Gaussian labels (labels.npy after merges), the count the instance table shows: the record's |G|
  (the Gaussians the filters kept for one mask) would be a second, smaller number for the same instance.
  Only flagged when the record has at least two views.
- `similar_prototypes`: two instances whose prototypes v(t) (Eq. 17-18) have cosine ≥ a threshold. The
  features were trained with raw SAM masks only (Eq. 5-8), so near-parallel prototypes mean the features
  do not tell the two apart: Eq. 19's argmax between them is noise, and most likely association gave one
  object two ids (a split).
- `weak_match`: a mask that joined an existing entry with an overlap score just at or above δ
  (δ ≤ γ < δ + margin). Eq. 13 then merged its Gaussians into the entry on little shared evidence; a
  slightly larger δ would have started a new instance, so the mask may be a different object (a merge).
  The record's `score` is the best γ against the bank before that view and `matched` is γ ≥ δ (a score
  equal to δ matches, as in Gaga); unmatched masks and masks of the first view (score 0) never count.
  For view-consensus association (the default) the score is the consensus rate at which the mask's group
  last grew and δ the most lenient threshold: groups joined on the weakest agreement of the views.
- `merged_raw_masks`: several raw masks of one view given one consistent id. SAM separated them in that
  view and each matched the same entry: either SAM over-segmented one object (harmless, association
  fixes it) or the entry already spans several objects (a merge). More masks make the second likelier.

Evidence is made comparable across kinds by one convention: each kind measures a strength s in [0, 1],
0 at the edge of its flagging rule and 1 at its most extreme possible value, and evidence = (1 + s) / 2.
Every flagged suspect thus has evidence in [1/2, 1], and equal evidence means "equally far past its own
threshold". The strengths: single_view, the instance's size rank among all instances (0 smallest, 1
largest); similar_prototypes, (cos - threshold) / (1 - threshold); weak_match, 1 - (γ - δ) / margin;
merged_raw_masks, 1 - 1 / (count - 1) (2 masks give 0, 3 give 1/2, many approach 1).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from protosaga_core.method.association import AssociateConfig, AssociationRecord
from protosaga_core.method.prototypes import Prototypes
from protosaga_core.palette import instance_color

Color = tuple[int, int, int]

GAP_COLOR = 255
"""The mosaic's separators are white: black is id 0 in the colour-coded panels."""
DISAGREEMENT_COLOR = (255, 0, 0)
DARKEN_DIVISOR = 3
"""The disagreement panel shows the image at a third of its brightness, so red pixels stand out."""
RAW_HASH_MULTIPLIER = 40503
RAW_HASH_MODULUS = 65521
"""A prime: multiplying by a non-multiple of it permutes the residues, so raw ids below it get distinct
scrambled ids (uint16 labels above it may share a colour with a small one)."""
Layout = Literal["row", "column"]


# --- the view panels ---------------------------------------------------------------------------------


def raw_color(raw: int) -> Color:
    """The colour of a raw SAM mask id (0 is black).

    Raw ids are per view and unrelated to consistent ids, so they must not share `instance_color`'s
    palette: raw 3 and instance 3 would look like the same object. The id is scrambled by a multiplicative
    hash modulo a prime before `instance_color`, which also spreads consecutive raw ids apart.
    """
    if raw == 0:
        return (0, 0, 0)
    return instance_color((raw * RAW_HASH_MULTIPLIER) % RAW_HASH_MODULUS + 1)


def consistent_color(instance_id: int) -> Color:
    """The colour of a consistent / predicted id: `instance_color`, with 0 black."""
    return (0, 0, 0) if instance_id == 0 else instance_color(instance_id)


def colorize(labels: np.ndarray, color_of: Callable[[int], Color]) -> np.ndarray:
    """An id map in colour, through a lookup table over the ids present. [H, W] int -> [H, W, 3] uint8"""
    ids, inverse = np.unique(labels, return_inverse=True)
    table = np.array([color_of(int(i)) for i in ids], dtype=np.uint8).reshape(-1, 3)
    return table[inverse.reshape(labels.shape)]


def resize_to_width(image: np.ndarray, width: int) -> np.ndarray:
    """`image` at `width` columns and the same aspect ratio, each pixel the nearest source pixel, so an
    id's colour stays exact (no blended colours that belong to no id). [H, W, C] -> [h, width, C]"""
    if width <= 0:
        raise ValueError(f"width must be positive, got {width}")
    source_height, source_width = image.shape[:2]
    height = max(1, round(source_height * width / source_width))
    # Pixel centres: an integer upscale repeats every pixel equally often, a downscale samples evenly.
    rows = ((np.arange(height) + 0.5) * source_height / height).astype(np.int64)
    columns = ((np.arange(width) + 0.5) * source_width / width).astype(np.int64)
    return image[rows[:, None], columns]


@dataclass(frozen=True)
class ViewPanels:
    """One training view as the inspector shows it.

    Attributes:
        image: the training image. [H, W, 3] uint8
        raw_mask: the view's raw SAM mask ids, 0 = no mask. [H, W] int64
        associated: consistent ids from association/<view>.png, 0 = none. [H, W] int64
        prediction: prototype prediction ids (Eq. 19). [H, W] int64
    """

    image: np.ndarray
    raw_mask: np.ndarray
    associated: np.ndarray
    prediction: np.ndarray

    def __post_init__(self) -> None:
        size = self.image.shape[:2]
        maps = (self.raw_mask, self.associated, self.prediction)
        if self.image.ndim != 3 or self.image.shape[2] != 3 or any(m.shape != size for m in maps):
            raise ValueError(
                "ViewPanels need image [H, W, 3] and raw_mask, associated, prediction [H, W]; got "
                + ", ".join(str(list(a.shape)) for a in (self.image, *maps))
            )
        # A float image in [0, 1] would be truncated to black in the uint8 mosaic.
        if self.image.dtype != np.uint8:
            raise ValueError(f"ViewPanels need a uint8 image, got {self.image.dtype}")

    @property
    def disagreement(self) -> np.ndarray:
        """Associated pixels whose prediction is another id. [H, W] bool"""
        return (self.associated > 0) & (self.associated != self.prediction)

    @property
    def disagreement_fraction(self) -> float:
        """The fraction of associated pixels that disagree; 0.0 when no pixel is associated."""
        associated = int(np.count_nonzero(self.associated > 0))
        return int(np.count_nonzero(self.disagreement)) / associated if associated else 0.0

    def tiles(self) -> tuple[np.ndarray, ...]:
        """image, raw mask, associated, prediction, disagreement in colour. 5 x [H, W, 3] uint8"""
        darkened = self.image // DARKEN_DIVISOR
        darkened[self.disagreement] = DISAGREEMENT_COLOR
        return (
            self.image,
            colorize(self.raw_mask, raw_color),
            colorize(self.associated, consistent_color),
            colorize(self.prediction, consistent_color),
            darkened,
        )

    def mosaic(self, layout: Layout = "row", width: int | None = None, gap: int = 4) -> np.ndarray:
        """The five tiles in a row (left to right) or a column (top to bottom), white gaps between them.

        Args:
            layout: "row" gives [h, 5 w + 4 gap, 3], "column" [5 h + 4 gap, w, 3] uint8.
            width: each tile's width w (nearest-pixel resizing, aspect kept); None: the view's own W.
            gap: separator thickness in pixels.
        """
        if gap < 0:
            raise ValueError(f"gap must be non-negative, got {gap}")
        tiles = self.tiles() if width is None else tuple(resize_to_width(t, width) for t in self.tiles())
        height, tile_width = tiles[0].shape[:2]
        axis = 1 if layout == "row" else 0
        separator = np.full((height, gap, 3) if axis else (gap, tile_width, 3), GAP_COLOR, dtype=np.uint8)
        pieces = [piece for tile in tiles for piece in (separator, tile)][1:]
        return np.concatenate(pieces, axis=axis)


# --- suspects ----------------------------------------------------------------------------------------

SuspectKind = Literal["single_view", "similar_prototypes", "weak_match", "merged_raw_masks"]
KIND_ORDER: tuple[SuspectKind, ...] = ("similar_prototypes", "weak_match", "merged_raw_masks", "single_view")
"""Breaks evidence ties between kinds, most direct evidence first."""


@dataclass(frozen=True)
class Suspect:
    """A suspected association error.

    Attributes:
        kind: what the evidence is (see the module docstring).
        instances: the consistent ids involved (one, or a pair for similar_prototypes).
        views: training views where the evidence is, to show it; may be empty.
        evidence: in [0, 1], higher = more likely an error; comparable across kinds.
        description: one human line.
    """

    kind: SuspectKind
    instances: tuple[int, ...]
    views: tuple[str, ...]
    evidence: float
    description: str


def _evidence(strength: float) -> float:
    """The module docstring's convention: strength 0 (at the flagging rule's edge) .. 1 -> evidence 1/2 .. 1."""
    return 0.5 + 0.5 * min(max(strength, 0.0), 1.0)


@dataclass(frozen=True)
class _MaskTable:
    """The association record's masks as flat arrays, one row per raw mask.

    Attributes:
        view_names: the views in memory-bank order. [V]
        view: the row's view index. [M] int64
        raw, global_id: as in MaskAssociation. [M] int64
        score: γ of Eq. 12. [M] float64
        matched: whether the mask joined an existing entry. [M] bool
    """

    view_names: tuple[str, ...]
    view: np.ndarray
    raw: np.ndarray
    global_id: np.ndarray
    score: np.ndarray
    matched: np.ndarray

    @classmethod
    def of(cls, record: AssociationRecord) -> "_MaskTable":
        rows = [(k, m.raw, m.global_id, m.score, m.matched) for k, view in enumerate(record.views) for m in view.masks]
        columns = list(zip(*rows)) if rows else [()] * 5
        ints = [np.array(c, dtype=np.int64) for c in columns[:3]]
        return cls(
            tuple(v.name for v in record.views),
            *ints,
            np.array(columns[3], dtype=np.float64),
            np.array(columns[4], dtype=bool),
        )

    def instance_views(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every (view, instance > 0) pair that masks map to.

        Returns:
            view index [P] int64, instance id [P] int64, masks mapped there [P] int64; sorted by view, then id.
        """
        kept = self.global_id > 0
        pairs, counts = np.unique(np.stack([self.view[kept], self.global_id[kept]], axis=1), axis=0, return_counts=True)
        return pairs[:, 0], pairs[:, 1], counts


def single_view_suspects(table: _MaskTable, gaussians: Mapping[int, int]) -> list[Suspect]:
    """Instances that masks of exactly one view map to, stronger the larger they are (size rank).

    Args:
        gaussians: Gaussians per instance id in the per-Gaussian labels; ids missing from it count 0.
    """
    if len(table.view_names) < 2:
        return []
    views, ids, _ = table.instance_views()
    instances, first, num_views = np.unique(ids, return_index=True, return_counts=True)
    size = np.array([gaussians.get(int(i), 0) for i in instances], dtype=np.int64)
    # The size rank: how many instances are strictly smaller, over how many others there are.
    rank = np.searchsorted(np.sort(size), size, side="left") / max(len(instances) - 1, 1)
    suspects = []
    for row in np.flatnonzero(num_views == 1):
        instance, view = int(instances[row]), table.view_names[views[first[row]]]
        suspects.append(Suspect(
            "single_view",
            (instance,),
            (view,),
            _evidence(float(rank[row])),
            f"instance {instance} ({int(size[row]):,} Gaussians) appears in only 1 of {len(table.view_names)} "
            f"training views ({view}): possibly a fragment of an object split across views",
        ))
    return suspects


def similar_prototype_pairs(prototypes: Prototypes, threshold: float) -> list[tuple[int, int, float]]:
    """Pairs of distinct instance ids whose prototypes have cosine ≥ threshold, best cosine per pair.

    Returns:
        (smaller id, larger id, cosine), by id pair.
    """
    vectors = F.normalize(prototypes.vectors.detach().float().cpu(), dim=-1)
    cosine = vectors @ vectors.T  # [T, T]
    upper = torch.ones_like(cosine, dtype=torch.bool).triu(diagonal=1)
    rows, cols = torch.nonzero(upper & (cosine >= threshold), as_tuple=True)
    ids = prototypes.ids.cpu()
    best: dict[tuple[int, int], float] = {}
    # The k-means baseline may give one id several prototypes: pairs within an id are no split, and
    # several pairs of the same two ids are one suspect.
    for i, j, c in zip(ids[rows].tolist(), ids[cols].tolist(), cosine[rows, cols].tolist()):
        if i != j:
            key = (min(i, j), max(i, j))
            best[key] = max(best.get(key, -1.0), c)
    return [(i, j, c) for (i, j), c in sorted(best.items())]


def similar_prototype_suspects(table: _MaskTable, prototypes: Prototypes, threshold: float) -> list[Suspect]:
    """Instance pairs with near-parallel prototypes; views holding both come first, then either's."""
    views, ids, _ = table.instance_views()
    suspects = []
    for i, j, cosine in similar_prototype_pairs(prototypes, threshold):
        has_i, has_j = set(views[ids == i].tolist()), set(views[ids == j].tolist())
        both = has_i & has_j
        shown = sorted(has_i | has_j, key=lambda k: (k not in both, k))
        strength = (cosine - threshold) / (1.0 - threshold) if threshold < 1.0 else 1.0
        suspects.append(Suspect(
            "similar_prototypes",
            (i, j),
            tuple(table.view_names[k] for k in shown),
            _evidence(strength),
            f"instances {i} and {j} have near-identical prototypes (cos {cosine:.3f}): likely one object split in two",
        ))
    return suspects


def weak_match_suspects(table: _MaskTable, delta: float, margin: float, score_name: str = "overlap") -> list[Suspect]:
    """Masks that joined an entry with δ ≤ γ < δ + margin, stronger the closer γ is to δ (for consensus
    association: groups that grew at the most lenient consensus threshold δ)."""
    # `matched` is exactly γ ≥ δ for a non-empty mask (association.py), so it is the window's lower bound.
    weak = table.matched & (table.score < delta + margin)
    suspects = []
    for row in np.flatnonzero(weak):
        instance, view, score = int(table.global_id[row]), table.view_names[table.view[row]], float(table.score[row])
        suspects.append(Suspect(
            "weak_match",
            (instance,),
            (view,),
            _evidence(1.0 - (score - delta) / margin),
            f"raw mask {int(table.raw[row])} of {view} joined instance {instance} with {score_name} {score:.3f}, "
            f"just above δ = {delta:g}: it may be another object",
        ))
    return suspects


def merged_raw_mask_suspects(table: _MaskTable) -> list[Suspect]:
    """(view, instance) pairs that ≥ 2 raw masks of the view map to, stronger the more masks."""
    views, ids, counts = table.instance_views()
    suspects = []
    for row in np.flatnonzero(counts >= 2):
        view, instance, count = int(views[row]), int(ids[row]), int(counts[row])
        raws = np.sort(table.raw[(table.view == view) & (table.global_id == instance)])
        suspects.append(Suspect(
            "merged_raw_masks",
            (instance,),
            (table.view_names[view],),
            _evidence(1.0 - 1.0 / (count - 1)),
            f"{count} raw masks of {table.view_names[view]} ({', '.join(map(str, raws.tolist()))}) all became "
            f"instance {instance}: it may cover several objects",
        ))
    return suspects


def _weak_match_threshold(config: AssociateConfig) -> tuple[float, str]:
    """δ of the weak-match window and what the record's score is, for the grouping that wrote it."""
    if config.grouping == "consensus":
        return min(config.consensus_thresholds), "consensus"
    return config.overlap_threshold, "overlap"


def find_suspects(
    record: AssociationRecord,
    prototypes: Prototypes,
    gaussians: Mapping[int, int],
    similarity_threshold: float = 0.9,
    weak_margin: float = 0.1,
) -> list[Suspect]:
    """Every suspected association error, most evidence first (ties: kind, then instances, then views).

    Args:
        record: association.json; δ is `record.config.overlap_threshold` for the memory bank, the most
            lenient consensus threshold for consensus association.
        prototypes: the instance prototypes (Eq. 18).
        gaussians: Gaussians per instance id in the per-Gaussian labels after merges (the viewer's
            `SceneDocument.instance_counts`, which its instance table shows; scene.json's table before any
            edit); ids missing from it count 0.
        similarity_threshold: the prototype cosine from which a pair is suspect, in (0, 1].
        weak_margin: matches with δ ≤ γ < δ + weak_margin are suspect; positive.
    """
    if not 0.0 < similarity_threshold <= 1.0:
        raise ValueError(f"similarity_threshold must lie in (0, 1], got {similarity_threshold}")
    if weak_margin <= 0.0:
        raise ValueError(f"weak_margin must be positive, got {weak_margin}")
    table = _MaskTable.of(record)
    delta, score_name = _weak_match_threshold(record.config)
    suspects = [
        *single_view_suspects(table, gaussians),
        *similar_prototype_suspects(table, prototypes, similarity_threshold),
        *weak_match_suspects(table, delta, weak_margin, score_name),
        *merged_raw_mask_suspects(table),
    ]
    suspects.sort(key=lambda s: (-s.evidence, KIND_ORDER.index(s.kind), s.instances, s.views))
    return suspects


# --- listing -----------------------------------------------------------------------------------------

PAGE_SIZE = 10
"""Suspects per page of the inspector's list: a dropdown of ten entries opens without scrolling."""
ALL_KINDS = "all kinds"
KIND_NAMES: dict[SuspectKind, str] = {
    "similar_prototypes": "similar prototypes",
    "weak_match": "weak match",
    "merged_raw_masks": "merged masks",
    "single_view": "single view",
}
"""Short names: a dropdown cuts an entry off at the panel's width (viser's panel is ~300-400 px)."""


def suspect_label(rank: int, suspect: Suspect) -> str:
    """A short, unique dropdown entry: rank (1-based), kind, instances and first view, e.g.
    "3. single view: 12 (frame_0004)"; the description says the rest where it can wrap."""
    where = f" ({suspect.views[0]})" if suspect.views else ""
    return f"{rank}. {KIND_NAMES[suspect.kind]}: {', '.join(map(str, suspect.instances))}{where}"


def suspects_of_kind(suspects: Sequence[Suspect], kind_name: str) -> list[Suspect]:
    """The suspects whose kind's short name is `kind_name` (all of them for ALL_KINDS), order kept."""
    return [s for s in suspects if kind_name in (ALL_KINDS, KIND_NAMES[s.kind])]


def page_names(total: int, size: int = PAGE_SIZE) -> tuple[str, ...]:
    """The pages of a list of `total` entries by their ranks: "1-10", "11-20", "21-23"; "none" when empty
    (a dropdown needs one entry)."""
    if size <= 0:
        raise ValueError(f"size must be positive, got {size}")
    return tuple(f"{start + 1}-{min(start + size, total)}" for start in range(0, total, size)) or ("none",)


@dataclass(frozen=True)
class SuspectPage:
    """One page of a ranked suspect list.

    Attributes:
        suspects: the page's suspects, best first.
        start: the list rank (0-based) of the first one.
        total: suspects in the whole list.
        kind_name: what the list holds: ALL_KINDS or one of KIND_NAMES' values.
    """

    suspects: tuple[Suspect, ...]
    start: int
    total: int
    kind_name: str = ALL_KINDS

    @property
    def labels(self) -> tuple[str, ...]:
        """The page's dropdown entries, numbered by rank in the whole list."""
        return tuple(suspect_label(self.start + k + 1, s) for k, s in enumerate(self.suspects))

    @property
    def caption(self) -> str:
        """"23 suspects, showing 11-20" (or "6 single view suspects, ..."): the list is never cut silently."""
        noun = "suspects" if self.kind_name == ALL_KINDS else f"{self.kind_name} suspects"
        if not self.suspects:
            return f"no {noun}"
        return f"{self.total} {noun}, showing {self.start + 1}-{self.start + len(self.suspects)}"


def suspect_page(
    suspects: Sequence[Suspect], index: int, size: int = PAGE_SIZE, kind_name: str = ALL_KINDS
) -> SuspectPage:
    """Page `index` (0-based) of `size` suspects; an index past the end gives the last page."""
    if size <= 0:
        raise ValueError(f"size must be positive, got {size}")
    start = min(max(index, 0), max(len(suspects) - 1, 0) // size) * size
    return SuspectPage(tuple(suspects[start : start + size]), start, len(suspects), kind_name)
