"""The inspector's panels, suspects and suspect list on hand-built association records, prototypes and
label maps, and its GUI on a viser server without a browser."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import viser
from viser_client import free_port

from protosaga_app.inspector import (
    ALL_KINDS,
    DISAGREEMENT_COLOR,
    GAP_COLOR,
    PAGE_SIZE,
    Suspect,
    ViewPanels,
    colorize,
    consistent_color,
    find_suspects,
    page_names,
    raw_color,
    resize_to_width,
    suspect_page,
    suspects_of_kind,
)
from protosaga_app.inspector_panel import COMPACT_WIDTH, EXPANDED_WIDTH, LAYOUTS, NO_SUSPECT, InspectorPanel
from protosaga_app.selection import EditModel
from protosaga_core.method.association import AssociateConfig, AssociationRecord, MaskAssociation, ViewRecord
from protosaga_core.method.prototypes import Prototypes
from protosaga_core.palette import instance_color

DELTA = 0.1
NO_COUNTS: dict[int, int] = {}
"""Gaussian counts for tests whose suspects do not depend on them."""


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
    similar = of_kind(find_suspects(rec, protos, NO_COUNTS), "similar_prototypes")
    assert len(similar) == 1
    assert similar[0].instances == (3, 7)
    assert similar[0].views == ("c", "a", "b")
    assert similar[0].evidence == pytest.approx(0.5 + 0.5 * (c - 0.9) / 0.1, abs=1e-5)
    assert "instances 3 and 7" in similar[0].description and "0.990" in similar[0].description
    assert of_kind(find_suspects(rec, protos, NO_COUNTS, similarity_threshold=0.995), "similar_prototypes") == []


def test_similar_prototypes_evidence_grows_with_the_cosine_and_ignores_duplicate_ids():
    protos = prototypes(
        [1, 2, 3, 4, 4], [[1.0, 0.0], [0.999, 0.045], [0.0, 1.0], [0.1, 0.995], [0.2, 0.98]]
    )
    similar = of_kind(find_suspects(record(), protos, NO_COUNTS), "similar_prototypes")
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
    weak = of_kind(find_suspects(rec, orthogonal([1, 2, 3, 4]), NO_COUNTS), "weak_match")
    assert [(s.views, s.instances) for s in weak] == [(("c",), (2,)), (("b",), (2,)), (("b",), (1,))]
    assert [s.evidence for s in weak] == pytest.approx([1.0, 0.5 + 0.5 * 0.9, 0.5 + 0.5 * 0.1])
    assert "raw mask 2 of b joined instance 2 with overlap 0.110" in weak[1].description


def test_weak_margin_reads_delta_from_the_record():
    rec = record(("a", [mask(1, 1)]), ("b", [mask(1, 1, 0.36, True)]), delta=0.3)
    weak = of_kind(find_suspects(rec, orthogonal([1]), NO_COUNTS), "weak_match")
    assert len(weak) == 1 and weak[0].evidence == pytest.approx(0.5 + 0.5 * 0.4)
    assert of_kind(find_suspects(rec, orthogonal([1]), NO_COUNTS, weak_margin=0.05), "weak_match") == []


def test_consensus_weak_matches_are_groups_joined_at_the_most_lenient_threshold():
    config = AssociateConfig(consensus_thresholds=(0.9, 0.8, 0.7, 0.6))
    views = [("a", [mask(1, 1, 0.6, True), mask(2, 2, 0.9, True)]), ("b", [mask(1, 1, 0.6, True), mask(2, 2, 0.9, True)])]
    rec = AssociationRecord(config, 2, [ViewRecord(name, masks) for name, masks in views])
    weak = of_kind(find_suspects(rec, orthogonal([1, 2]), NO_COUNTS), "weak_match")
    assert [s.instances for s in weak] == [(1,), (1,)] and all(s.evidence == 1.0 for s in weak)
    assert "consensus 0.600" in weak[0].description and "δ = 0.6" in weak[0].description


def test_single_view_instances_are_flagged_and_two_view_ones_are_not():
    rec = record(
        ("a", [mask(1, 1, gaussians=20), mask(2, 2, gaussians=50)]),
        ("b", [mask(1, 1, 0.8, True, 20), mask(2, 3, gaussians=5), mask(3, 0, gaussians=0)]),
    )
    # Sizes are the per-Gaussian label counts, not the record's |G| (which would rank 2 above 3).
    single = of_kind(find_suspects(rec, orthogonal([1, 2, 3]), {1: 200, 2: 50, 3: 3000}), "single_view")
    assert [(s.instances, s.views) for s in single] == [((3,), ("b",)), ((2,), ("a",))]
    assert [s.evidence for s in single] == pytest.approx([1.0, 0.5])
    assert "instance 3 (3,000 Gaussians) appears in only 1 of 2 training views (b)" in single[0].description


def test_suspect_gaussian_counts_are_the_instance_tables_not_the_records():
    # The measured case: the record's |G| (134 Gaussians kept for the mask) against the 907 that the
    # per-Gaussian labels give the instance, which scene.json's table and the viewer's table show.
    labels = np.repeat(np.arange(3), [40, 907, 500])
    rec = record(("a", [mask(1, 1, gaussians=134), mask(2, 2, gaussians=300)]), ("b", [mask(1, 2, 0.5, True, 300)]))
    table = dict(enumerate(np.bincount(labels).tolist()))
    single = of_kind(find_suspects(rec, orthogonal([1, 2]), table), "single_view")
    assert [s.instances for s in single] == [(1,)]
    assert "(907 Gaussians)" in single[0].description and "134" not in single[0].description
    # An instance the labels never name (its Gaussians all went elsewhere) has 0, not the record's count.
    missing = of_kind(find_suspects(rec, orthogonal([1, 2]), {2: 500}), "single_view")
    assert "(0 Gaussians)" in missing[0].description


def test_single_view_needs_at_least_two_views():
    rec = record(("a", [mask(1, 1), mask(2, 2)]))
    assert of_kind(find_suspects(rec, orthogonal([1, 2]), NO_COUNTS), "single_view") == []


def test_raw_masks_of_one_view_merged_into_one_id_are_flagged():
    rec = record(
        # Two empty masks of view a share id 0, which is no merge.
        ("a", [mask(1, 1), mask(2, 2), mask(3, 0, gaussians=0), mask(4, 0, gaussians=0)]),
        ("b", [mask(2, 1, 0.5, True), mask(4, 1, 0.5, True), mask(5, 2, 0.5, True)]),
        ("c", [mask(1, 2, 0.5, True), mask(3, 2, 0.5, True), mask(7, 2, 0.5, True), mask(8, 1, 0.5, True)]),
    )
    merged = of_kind(find_suspects(rec, orthogonal([1, 2]), NO_COUNTS), "merged_raw_masks")
    assert [(s.instances, s.views) for s in merged] == [((2,), ("c",)), ((1,), ("b",))]
    assert [s.evidence for s in merged] == pytest.approx([0.75, 0.5])
    assert "3 raw masks of c (1, 3, 7) all became instance 2" in merged[0].description


def test_suspects_are_sorted_by_evidence_with_deterministic_ties():
    c = 0.97  # similar: 0.5 + 0.5 * 0.7 = 0.85
    protos = prototypes([1, 2, 3], [[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [c, math.sqrt(1 - c * c), 0.0]])
    rec = record(
        ("a", [mask(1, 2, gaussians=20), mask(2, 3, gaussians=20)]),
        ("b", [mask(1, 2, DELTA, True), mask(2, 3, DELTA + 0.04, True), mask(3, 1, gaussians=90)]),
        ("c", [mask(1, 2, 0.9, True), mask(2, 2, 0.9, True)]),
    )
    ranked = find_suspects(rec, protos, {1: 90, 2: 20, 3: 20})
    assert [(s.kind, s.instances, s.views) for s in ranked] == [
        ("weak_match", (2,), ("b",)),  # 1.0
        ("single_view", (1,), ("b",)),  # the largest instance: 1.0, after weak_match on the tie despite its id
        ("similar_prototypes", (2, 3), ("a", "b", "c")),  # 0.85
        ("weak_match", (3,), ("b",)),  # 0.8
        ("merged_raw_masks", (2,), ("c",)),  # 0.5
    ]
    assert [s.evidence for s in ranked] == pytest.approx([1.0, 1.0, 0.85, 0.8, 0.5], abs=1e-5)


def test_find_suspects_on_an_empty_record_and_no_prototypes():
    empty = Prototypes(torch.zeros(0, dtype=torch.int64), torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64))
    assert find_suspects(record(), empty, NO_COUNTS) == []
    assert find_suspects(record(("a", []), ("b", [])), empty, NO_COUNTS) == []


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"similarity_threshold": 0.0}, "similarity_threshold"),
        ({"weak_margin": 0.0}, "weak_margin"),
    ],
)
def test_find_suspects_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        find_suspects(record(), orthogonal([1]), NO_COUNTS, **kwargs)


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
    mosaic = view.mosaic(gap=gap)
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
    assert view.mosaic(gap=0).shape == (2, 15, 3)
    # The column holds the same tiles top to bottom, white rows between them.
    column = view.mosaic("column", gap=gap)
    assert column.shape == (5 * 2 + 4 * gap, 3, 3)
    for k in range(5):
        np.testing.assert_array_equal(column[k * (2 + gap) : k * (2 + gap) + 2], panel[k])
    assert (column[2 : 2 + gap] == GAP_COLOR).all()


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
        panels().mosaic(gap=-1)
    with pytest.raises(ValueError, match="width"):
        resize_to_width(panels().image, 0)


def test_resize_to_width_repeats_or_samples_whole_pixels():
    image = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    np.testing.assert_array_equal(resize_to_width(image, 9), image.repeat(3, axis=0).repeat(3, axis=1))
    wide = np.arange(4 * 8, dtype=np.int64).reshape(4, 8)
    # Halving samples the pixel under each output pixel's centre: every second one, from the second.
    np.testing.assert_array_equal(resize_to_width(wide, 4), wide[[1, 3]][:, [1, 3, 5, 7]])
    assert resize_to_width(image, 1).shape == (1, 1, 3)


def test_the_large_panels_are_at_least_256_px_wide_and_the_compact_ones_small():
    # The demo's training views are 128 x 96: five in a row showed each at ~60 px of a 320-px panel.
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)
    view = ViewPanels(image, *(rng.integers(0, 4, (96, 128)) for _ in range(3)))
    large = view.mosaic(*LAYOUTS[True], gap=4)
    assert EXPANDED_WIDTH >= 256 and large.shape == (5 * 288 + 4 * 4, EXPANDED_WIDTH, 3)
    np.testing.assert_array_equal(large[:288], image.repeat(3, axis=0).repeat(3, axis=1))
    compact = view.mosaic(*LAYOUTS[False], gap=4)
    assert compact.shape == (72, 5 * COMPACT_WIDTH + 4 * 4, 3)


# --- the suspect list ----------------------------------------------------------------------------------


def many_suspects(count: int) -> list[Suspect]:
    return [Suspect("weak_match", (k + 1,), (f"v{k}",), 1.0 - k / 100, f"suspect {k + 1}") for k in range(count)]


def test_pages_list_every_suspect_once_and_say_how_many_there_are():
    suspects = many_suspects(23)
    names = page_names(len(suspects))
    assert names == ("1-10", "11-20", "21-23")
    pages = [suspect_page(suspects, k) for k in range(len(names))]
    assert [s for page in pages for s in page.suspects] == suspects
    assert [page.caption for page in pages] == [
        "23 suspects, showing 1-10", "23 suspects, showing 11-20", "23 suspects, showing 21-23"
    ]
    assert pages[2].labels == ("21. weak match: 21 (v20)", "22. weak match: 22 (v21)", "23. weak match: 23 (v22)")
    assert suspect_page(suspects, 7) == pages[2]  # past the end: the last page
    assert page_names(PAGE_SIZE) == ("1-10",) and page_names(0) == ("none",)
    empty = suspect_page([], 0)
    assert empty.suspects == () and empty.caption == "no suspects"
    with pytest.raises(ValueError, match="size"):
        suspect_page(suspects, 0, size=0)


def test_a_kind_lists_its_suspects_in_rank_order_under_short_entries():
    suspects = [*many_suspects(12), *(Suspect("single_view", (20 + k,), ("frame_0004",), 0.6, "") for k in range(6))]
    single = suspects_of_kind(suspects, "single view")
    assert len(single) == 6 and suspects_of_kind(suspects, ALL_KINDS) == suspects
    page = suspect_page(single, 0, kind_name="single view")
    assert page.caption == "6 single view suspects, showing 1-6"
    assert page.labels[0] == "1. single view: 20 (frame_0004)"
    pair = Suspect("similar_prototypes", (3, 7), (), 0.9, "")
    assert suspect_page([pair], 0).labels == ("1. similar prototypes: 3, 7",)


# --- the GUI, on a server without a browser -------------------------------------------------------------

SINGLE_VIEW_IDS = (1, 2, 3, 4, 5, 6)
"""Six instances each seen in one view, smaller than two instances weakly matched in five views: ranked
after those ten weak matches, past the first page (the list once stopped at its first entries)."""
VIEW_NAMES = ("a", "b", "c", "d", "e", "f")


def six_single_view_record() -> AssociationRecord:
    masks = {name: [mask(1, k, gaussians=13)] for name, k in zip(VIEW_NAMES, SINGLE_VIEW_IDS)}
    masks["a"] += [mask(2, 7), mask(3, 8)]
    for name in VIEW_NAMES[1:]:
        masks[name] += [mask(2, 7, DELTA + 0.01, True), mask(3, 8, DELTA + 0.02, True)]
    return record(*masks.items())


def label_counts(labels: np.ndarray, model: EditModel) -> dict[int, int]:
    """`SceneDocument.instance_counts` without merges: Gaussians per live instance in the per-Gaussian
    labels, what the viewer's instance table and scene.json's show."""
    counts = np.bincount(labels)
    return {i: int(counts[i]) for i in model.live_instances()}


@pytest.fixture()
def inspector():
    """An InspectorPanel on a real viser server, for the parts of a SceneDocument that it reads, of a
    hand-built scene (no dataset: the views' panels are stubbed where drawn)."""
    labels = np.repeat(np.arange(9), [50, 100, 200, 300, 400, 500, 600, 1000, 1200])
    scene = SimpleNamespace(
        labels=labels,
        association=six_single_view_record(),
        training_views=lambda: [SimpleNamespace(name=name) for name in VIEW_NAMES],
    )
    model = EditModel(range(1, 9))
    document = SimpleNamespace(
        scene=scene,
        model=model,
        prototypes=lambda state=None: orthogonal(list(range(1, 9))),
        instance_counts=lambda state=None: label_counts(labels, model),
    )
    server = viser.ViserServer(host="127.0.0.1", port=free_port(), verbose=False)
    panel = InspectorPanel.build(server.gui, document, go_to_view=lambda client, view_name: None)
    panel.refresh(document.model.state)
    yield panel
    server.stop()


def entries(panel: InspectorPanel) -> list[str]:
    return [option for option in panel.suspects.options if option != NO_SUSPECT]


def test_the_gui_reaches_every_suspect_by_page_and_by_kind(inspector):
    assert inspector.caption.content == "16 suspects, showing 1-10"
    assert tuple(inspector.page.options) == ("1-10", "11-16")
    listed = entries(inspector)
    inspector.page.value = "11-16"
    assert inspector.caption.content == "16 suspects, showing 11-16"
    listed += entries(inspector)
    assert len(listed) == 16 == len(set(listed))
    assert sum("single view" in entry for entry in listed) == len(SINGLE_VIEW_IDS)
    inspector.kind.value = "single view"
    assert inspector.caption.content == "6 single view suspects, showing 1-6"
    assert [int(entry.split(": ")[1].split(" ")[0]) for entry in entries(inspector)] == [6, 5, 4, 3, 2, 1]


def test_show_suspect_is_disabled_on_none_and_shows_the_instance_tables_count(inspector):
    document = inspector.document
    assert inspector.suspects.value == NO_SUSPECT and inspector.show.disabled
    inspector.kind.value = "single view"
    inspector.suspects.value = entries(inspector)[0]  # instance 6, the largest single-view one
    assert not inspector.show.disabled
    # The instance table's count (per-Gaussian labels), not the 13 Gaussians of the record's mask.
    count = document.instance_counts()[6]
    assert count == np.bincount(document.scene.labels)[6] == 600
    assert f"instance 6 ({count:,} Gaussians)" in inspector.detail.content
    inspector.suspects.value = NO_SUSPECT
    assert inspector.show.disabled and inspector.detail.content == ""
    # Choosing another page leaves no suspect chosen: the button follows.
    inspector.kind.value = ALL_KINDS
    inspector.suspects.value = entries(inspector)[0]
    inspector.page.value = "11-16"
    assert inspector.suspects.value == NO_SUSPECT and inspector.show.disabled


def test_showing_a_suspect_selects_it_and_draws_its_view_large_or_compact(inspector):
    drawn = []
    image = np.zeros((96, 128, 3), np.uint8)
    maps = np.zeros((96, 128), np.int64)
    inspector.panels = lambda name, state: drawn.append(name) or ViewPanels(image, maps, maps, maps)
    inspector.kind.value = "single view"
    inspector.suspects.value = entries(inspector)[0]
    inspector._show_suspect(None)
    assert inspector.document.model.state.selected == frozenset({6})
    assert inspector.view.value == "f" and drawn == ["f"]
    assert inspector.large.value and inspector.mosaic.image.shape[1] == EXPANDED_WIDTH >= 256
    inspector.large.value = False
    assert inspector.mosaic.image.shape == (72, 5 * COMPACT_WIDTH + 4 * 4, 3)
    assert drawn == ["f"]  # a new layout of the same view renders nothing again
