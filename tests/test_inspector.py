"""The inspector's panels and suspects on hand-built association records, prototypes and label maps."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from protosaga_app.inspector import (
    DISAGREEMENT_COLOR,
    GAP_COLOR,
    Suspect,
    ViewPanels,
    colorize,
    consistent_color,
    find_suspects,
    raw_color,
)
from protosaga_core.association import AssociateConfig, AssociationRecord, MaskAssociation, ViewRecord
from protosaga_core.prototypes import Prototypes, instance_color

DELTA = 0.1


def mask(raw: int, global_id: int, score: float = 0.0, matched: bool = False, gaussians: int = 10) -> MaskAssociation:
    return MaskAssociation(raw, global_id, score, matched, gaussians)


def record(*views: tuple[str, list[MaskAssociation]], delta: float = DELTA) -> AssociationRecord:
    num_instances = max((m.global_id for _, masks in views for m in masks), default=0)
    config = AssociateConfig(grouping="bank", overlap_threshold=delta)
    return AssociationRecord(config, num_instances, [ViewRecord(name, masks) for name, masks in views])


def prototypes(ids: list[int], vectors: list[list[float]]) -> Prototypes:
    count = torch.ones(len(ids), dtype=torch.int64)
    return Prototypes(torch.tensor(ids), torch.tensor(vectors, dtype=torch.float32), count)


def orthogonal(ids: list[int], dim: int = 8) -> Prototypes:
    """Prototypes that are pairwise orthogonal (cosine 0): no similar_prototypes suspect."""
    return prototypes(ids, torch.eye(dim)[: len(ids)].tolist())


def of_kind(suspects: list[Suspect], kind: str) -> list[Suspect]:
    return [s for s in suspects if s.kind == kind]


# --- suspects ------------------------------------------------------------------------------------------


def test_similar_prototypes_flag_exactly_the_near_parallel_pair():
    c = 0.99
    protos = prototypes([3, 7, 9], [[1.0, 0.0, 0.0], [c, math.sqrt(1 - c * c), 0.0], [0.0, 0.0, 1.0]])
    # View a holds 3 and 9, view b holds 7 and 9, view c holds 3 and 7: c shows the pair, so it comes first.
    rec = record(("a", [mask(1, 3), mask(2, 9)]), ("b", [mask(1, 7), mask(2, 9)]), ("c", [mask(1, 3), mask(2, 7)]))
    similar = of_kind(find_suspects(rec, protos), "similar_prototypes")
    assert len(similar) == 1
    assert similar[0].instances == (3, 7)
    assert similar[0].views == ("c", "a", "b")
    assert similar[0].evidence == pytest.approx(0.5 + 0.5 * (c - 0.9) / 0.1, abs=1e-5)
    assert "instances 3 and 7" in similar[0].description and "0.990" in similar[0].description
    assert of_kind(find_suspects(rec, protos, similarity_threshold=0.995), "similar_prototypes") == []


def test_similar_prototypes_evidence_grows_with_the_cosine_and_ignores_duplicate_ids():
    protos = prototypes(
        [1, 2, 3, 4, 4], [[1.0, 0.0], [0.999, 0.045], [0.0, 1.0], [0.1, 0.995], [0.2, 0.98]]
    )
    similar = of_kind(find_suspects(record(), protos), "similar_prototypes")
    # Pairs (1, 2) and (3, 4) pass 0.9; id 4's two prototypes (k-means) are one instance, not a pair, and the
    # two (3, 4) pairs are one suspect with the better cosine.
    assert [s.instances for s in similar] == [(1, 2), (3, 4)]
    cos_34 = 0.995 / math.hypot(0.1, 0.995)
    assert similar[1].evidence == pytest.approx(0.5 + 0.5 * (cos_34 - 0.9) / 0.1, abs=1e-5)
    assert similar[0].evidence > similar[1].evidence
    assert similar[0].views == ()  # no view of the record holds them


def test_weak_matches_rank_by_closeness_to_delta_and_need_a_match_at_or_above_delta():
    rec = record(
        ("a", [mask(1, 1), mask(2, 2)]),
        ("b", [
            mask(1, 1, DELTA + 0.09, True),
            mask(2, 2, DELTA + 0.01, True),
            mask(3, 3, DELTA - 0.01, False),  # below δ: started instance 3
            mask(4, 0, 0.0, False),  # empty
            mask(5, 4, DELTA + 0.05, False),  # not matched: however high the score, no merge happened
            mask(6, 1, DELTA + 0.1, True),  # δ + margin: out of the window
        ]),
        ("c", [mask(1, 2, DELTA, True), mask(2, 3, 0.5, True), mask(3, 4, 0.5, True)]),
    )
    weak = of_kind(find_suspects(rec, orthogonal([1, 2, 3, 4])), "weak_match")
    assert [(s.views, s.instances) for s in weak] == [(("c",), (2,)), (("b",), (2,)), (("b",), (1,))]
    assert [s.evidence for s in weak] == pytest.approx([1.0, 0.5 + 0.5 * 0.9, 0.5 + 0.5 * 0.1])
    assert "raw mask 2 of b joined instance 2 with overlap 0.110" in weak[1].description


def test_weak_margin_reads_delta_from_the_record():
    rec = record(("a", [mask(1, 1)]), ("b", [mask(1, 1, 0.36, True)]), delta=0.3)
    weak = of_kind(find_suspects(rec, orthogonal([1])), "weak_match")
    assert len(weak) == 1 and weak[0].evidence == pytest.approx(0.5 + 0.5 * 0.4)
    assert of_kind(find_suspects(rec, orthogonal([1]), weak_margin=0.05), "weak_match") == []


def test_consensus_weak_matches_are_groups_joined_at_the_most_lenient_threshold():
    config = AssociateConfig(consensus_thresholds=(0.9, 0.8, 0.7, 0.6))
    views = [("a", [mask(1, 1, 0.6, True), mask(2, 2, 0.9, True)]), ("b", [mask(1, 1, 0.6, True), mask(2, 2, 0.9, True)])]
    rec = AssociationRecord(config, 2, [ViewRecord(name, masks) for name, masks in views])
    weak = of_kind(find_suspects(rec, orthogonal([1, 2])), "weak_match")
    assert [s.instances for s in weak] == [(1,), (1,)] and all(s.evidence == 1.0 for s in weak)
    assert "consensus 0.600" in weak[0].description and "δ = 0.6" in weak[0].description


def test_single_view_instances_are_flagged_and_two_view_ones_are_not():
    rec = record(
        ("a", [mask(1, 1, gaussians=20), mask(2, 2, gaussians=5)]),
        ("b", [mask(1, 1, 0.8, True, 20), mask(2, 3, gaussians=30), mask(3, 0, gaussians=0)]),
    )
    single = of_kind(find_suspects(rec, orthogonal([1, 2, 3])), "single_view")
    # Sizes are the largest per view (20, 5, 30), not sums over views: instance 3 is the largest, 2 the smallest.
    assert [(s.instances, s.views) for s in single] == [((3,), ("b",)), ((2,), ("a",))]
    assert [s.evidence for s in single] == pytest.approx([1.0, 0.5])
    assert "instance 3 appears in only 1 of 2 training views (b, 30 Gaussians)" in single[0].description


def test_single_view_needs_at_least_two_views():
    rec = record(("a", [mask(1, 1), mask(2, 2)]))
    assert of_kind(find_suspects(rec, orthogonal([1, 2])), "single_view") == []


def test_raw_masks_of_one_view_merged_into_one_id_are_flagged():
    rec = record(
        # Two empty masks of view a share id 0, which is no merge.
        ("a", [mask(1, 1), mask(2, 2), mask(3, 0, gaussians=0), mask(4, 0, gaussians=0)]),
        ("b", [mask(2, 1, 0.5, True), mask(4, 1, 0.5, True), mask(5, 2, 0.5, True)]),
        ("c", [mask(1, 2, 0.5, True), mask(3, 2, 0.5, True), mask(7, 2, 0.5, True), mask(8, 1, 0.5, True)]),
    )
    merged = of_kind(find_suspects(rec, orthogonal([1, 2])), "merged_raw_masks")
    assert [(s.instances, s.views) for s in merged] == [((2,), ("c",)), ((1,), ("b",))]
    assert [s.evidence for s in merged] == pytest.approx([0.75, 0.5])
    assert "3 raw masks of c (1, 3, 7) all became instance 2" in merged[0].description


def test_suspects_are_sorted_by_evidence_with_deterministic_ties_and_limited():
    c = 0.97  # similar: 0.5 + 0.5 * 0.7 = 0.85
    protos = prototypes([1, 2, 3], [[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [c, math.sqrt(1 - c * c), 0.0]])
    rec = record(
        ("a", [mask(1, 2, gaussians=20), mask(2, 3, gaussians=20)]),
        ("b", [mask(1, 2, DELTA, True), mask(2, 3, DELTA + 0.04, True), mask(3, 1, gaussians=90)]),
        ("c", [mask(1, 2, 0.9, True), mask(2, 2, 0.9, True)]),
    )
    ranked = find_suspects(rec, protos)
    assert [(s.kind, s.instances, s.views) for s in ranked] == [
        ("weak_match", (2,), ("b",)),  # 1.0
        ("single_view", (1,), ("b",)),  # the largest instance: 1.0, after weak_match on the tie despite its id
        ("similar_prototypes", (2, 3), ("a", "b", "c")),  # 0.85
        ("weak_match", (3,), ("b",)),  # 0.8
        ("merged_raw_masks", (2,), ("c",)),  # 0.5
    ]
    assert [s.evidence for s in ranked] == pytest.approx([1.0, 1.0, 0.85, 0.8, 0.5], abs=1e-5)
    assert find_suspects(rec, protos, limit=2) == ranked[:2]
    assert find_suspects(rec, protos, limit=0) == []


def test_find_suspects_on_an_empty_record_and_no_prototypes():
    empty = Prototypes(torch.zeros(0, dtype=torch.int64), torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64))
    assert find_suspects(record(), empty) == []
    assert find_suspects(record(("a", []), ("b", [])), empty) == []


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"similarity_threshold": 0.0}, "similarity_threshold"),
        ({"weak_margin": 0.0}, "weak_margin"),
        ({"limit": -1}, "limit"),
    ],
)
def test_find_suspects_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        find_suspects(record(), orthogonal([1]), **kwargs)


# --- panels --------------------------------------------------------------------------------------------


def panels() -> ViewPanels:
    image = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3) * 10
    raw = np.array([[0, 4, 4], [9, 9, 0]])
    associated = np.array([[0, 2, 2], [5, 5, 5]])
    prediction = np.array([[2, 2, 3], [5, 0, 5]])
    return ViewPanels(image, raw, associated, prediction)


def test_disagreement_is_exact():
    view = panels()
    # Pixel (0, 0) is unassociated, so predicting 2 there is no disagreement; (0, 2) and (1, 1) disagree.
    np.testing.assert_array_equal(view.disagreement, [[False, False, True], [False, True, False]])
    assert view.disagreement_fraction == pytest.approx(2 / 5)
    nothing = ViewPanels(view.image, view.raw_mask, np.zeros_like(view.associated), view.prediction)
    assert not nothing.disagreement.any() and nothing.disagreement_fraction == 0.0


def test_mosaic_layout_and_pixel_colours():
    view, gap = panels(), 2
    mosaic = view.mosaic(gap)
    assert mosaic.shape == (2, 5 * 3 + 4 * gap, 3) and mosaic.dtype == np.uint8
    panel = [mosaic[:, k * (3 + gap) : k * (3 + gap) + 3] for k in range(5)]
    np.testing.assert_array_equal(panel[0], view.image)
    assert (mosaic[:, 3 : 3 + gap] == GAP_COLOR).all()
    # Raw masks use their own palette, not instance_color; id 0 is black in every colour-coded panel.
    assert tuple(panel[1][0, 1]) == raw_color(4) != instance_color(4)
    assert tuple(panel[1][1, 0]) == raw_color(9)
    assert tuple(panel[1][0, 0]) == (0, 0, 0)
    assert tuple(panel[2][0, 1]) == instance_color(2) and tuple(panel[2][1, 2]) == instance_color(5)
    assert tuple(panel[2][0, 0]) == (0, 0, 0)
    assert tuple(panel[3][0, 2]) == instance_color(3) and tuple(panel[3][1, 1]) == (0, 0, 0)
    # The disagreement panel: the image at a third of its brightness, disagreeing pixels red.
    assert tuple(panel[4][0, 2]) == DISAGREEMENT_COLOR and tuple(panel[4][1, 1]) == DISAGREEMENT_COLOR
    np.testing.assert_array_equal(panel[4][0, 0], view.image[0, 0] // 3)
    np.testing.assert_array_equal(panel[4][1, 2], view.image[1, 2] // 3)
    assert view.mosaic(0).shape == (2, 15, 3)


def test_colorize_is_a_lookup_per_id():
    labels = np.array([[0, 1000], [65535, 1000]])
    colors = colorize(labels, consistent_color)
    assert colors.shape == (2, 2, 3) and colors.dtype == np.uint8
    assert tuple(colors[0, 0]) == (0, 0, 0) and tuple(colors[1, 0]) == instance_color(65535)
    np.testing.assert_array_equal(colors[0, 1], colors[1, 1])
    # Distinct raw ids get distinct colours: the hash spreads them over instance_color's ids.
    assert len({raw_color(r) for r in range(1, 200)}) == 199


@pytest.mark.parametrize(
    "shapes",
    [((2, 3, 3), (2, 3), (2, 3), (3, 2)), ((2, 3, 3), (2, 4), (2, 3), (2, 3)), ((2, 3), (2, 3), (2, 3), (2, 3)),
     ((2, 3, 4), (2, 3), (2, 3), (2, 3))],
)
def test_panels_validate_shapes(shapes):
    image, *maps = shapes
    with pytest.raises(ValueError, match=r"\[H, W, 3\].*got"):
        ViewPanels(np.zeros(image, np.uint8), *(np.zeros(s, np.int64) for s in maps))


def test_panels_need_a_uint8_image_and_a_non_negative_gap():
    with pytest.raises(ValueError, match="uint8"):
        ViewPanels(np.zeros((2, 2, 3), np.float32), *(np.zeros((2, 2), np.int64) for _ in range(3)))
    with pytest.raises(ValueError, match="gap"):
        panels().mosaic(-1)
