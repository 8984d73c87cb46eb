"""The 3D object score: hand-computed cases, GT assignment on two planes seen by three cameras, ties, speed.

The plane scene: cameras with world-aligned axes (x right, y down, z forward) at x = 0, 0.5 and -2 on the x axis;
plane A (id 7) at z = 2 for x in [-1, 0], plane B at z = 4 everywhere, id 300 where y < 0.5 and unlabelled (0)
below. Each view's GT maps are ray-cast analytically at pixel centres, so every expectation below follows from
the geometry.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from protosaga_core.datasets import View
from protosaga_core.io.labelmaps import save_label_map
from protosaga_core.metrics.instances import instance_metrics
from protosaga_core.metrics.objects3d import (
    ID_STRIDE,
    UNKNOWN,
    ObjectMetrics3D,
    gaussian_gt_objects,
    majority_vote,
    merge_votes,
    object_metrics_3d,
)

WIDTH, HEIGHT, FOCAL = 64, 48, 40.0
K = torch.tensor([[FOCAL, 0.0, WIDTH / 2], [0.0, FOCAL, HEIGHT / 2], [0.0, 0.0, 1.0]])
CAMERA_XS = (0.0, 0.5, -2.0)


def metrics(pred, gt, weights=None, **kwargs) -> ObjectMetrics3D:
    pred, gt = torch.tensor(pred), torch.tensor(gt)
    weights = torch.ones(len(pred)) if weights is None else torch.tensor(weights, dtype=torch.float32)
    return object_metrics_3d(pred, gt, weights, **kwargs)


# --- the score, by hand -----------------------------------------------------------------------------


def test_perfect_prediction_with_other_ids():
    result = metrics([5, 5, 9, 9, 0], [1, 1, 300, 300, 0])
    assert (result.miou, result.precision, result.recall) == (1.0, 1.0, 1.0)
    assert (result.num_gt, result.num_pred) == (2, 2)
    assert result.gt_ids == (1, 300) and result.matched_ids == (5, 9) and result.ious == (1.0, 1.0)


def test_split_object():
    # GT 1 = four Gaussians, three predicted 1 and one 2: IoU(1, 1) = 3/4, IoU(1, 2) = 1/4; GT 2 exact.
    result = metrics([1, 1, 1, 2, 3, 3, 3, 3], [1, 1, 1, 1, 2, 2, 2, 2])
    assert result.ious == (0.75, 1.0) and result.matched_ids == (1, 3)
    assert result.miou == pytest.approx(0.875)
    assert result.num_pred == 3 and result.precision == pytest.approx(2 / 3) and result.recall == 1.0


def test_merged_objects_one_match_each():
    # One prediction covers GT 1 (weight 3) and GT 2 (weight 2): IoU 3/5 and 2/5; only one GT may have it.
    result = metrics([5, 5, 5, 5], [1, 1, 2, 2], [1.5, 1.5, 1.0, 1.0])
    assert result.ious == pytest.approx((0.6, 0.0)) and result.matched_ids == (5, 0)
    assert result.miou == pytest.approx(0.3)
    assert (result.precision, result.recall) == (1.0, 0.5)


def test_labelled_floaters_cost_by_opacity():
    gt = [1, 1, 1, 1, 0, 0]
    pred = [1, 1, 1, 1, 1, 1]
    # Near-transparent fuzz hardly counts; opaque floaters as much as the object itself.
    assert metrics(pred, gt, [1, 1, 1, 1, 0.05, 0.05]).miou == pytest.approx(4 / 4.1)
    opaque = metrics(pred, gt, [1, 1, 1, 1, 3, 3])
    assert opaque.miou == pytest.approx(0.4) and opaque.recall == 0.0 and opaque.precision == 0.0
    # A prediction standing only on unlabelled Gaussians is an object that matches nothing.
    alone = metrics(pred[:4] + [2, 2], gt)
    assert alone.miou == 1.0 and alone.num_pred == 2 and alone.precision == 0.5 and alone.recall == 1.0


def test_gaussians_predicted_zero_are_misses_and_hits_are_strict():
    result = metrics([1, 1, 0, 0], [1, 1, 1, 1])
    assert result.miou == 0.5 and result.precision == 0.0 and result.recall == 0.0  # 0.5 is not > 0.5
    assert metrics([1, 1, 0, 0], [1, 1, 1, 1], iou_threshold=0.4).recall == 1.0


def test_empty_prediction():
    result = metrics([0, 0, 0], [1, 2, 2])
    assert (result.miou, result.precision, result.recall, result.num_pred) == (0.0, 0.0, 0.0, 0)
    assert result.matched_ids == (0, 0) and result.ious == (0.0, 0.0)


def test_zero_weight_ids_are_not_objects_and_large_ids_survive():
    result = metrics([70000, 70000, 8, 4], [65535, 65535, 3, 0], [1.0, 1.0, 0.0, 0.5])
    assert result.gt_ids == (65535,) and result.num_pred == 2  # GT 3 and prediction 8 weigh nothing
    assert result.matched_ids == (70000,) and result.miou == 1.0


def test_equals_gagas_protocol_on_one_frame_with_unit_weights():
    # With unit weights, Gaussians are pixels of one frame: the 2D protocol (without id 0) must agree.
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 6, size=400)
    pred = np.where(rng.random(400) < 0.7, gt * 10, rng.integers(0, 9, size=400))
    ours = metrics(pred.tolist(), gt.tolist())
    gaga = instance_metrics([gt[None]], [pred[None]], include_zero=False)
    assert ours.miou == pytest.approx(gaga.miou)
    assert (ours.precision, ours.recall, ours.num_gt, ours.num_pred) == pytest.approx(
        (gaga.precision, gaga.recall, gaga.num_gt, gaga.num_pred))


def test_json_dict_and_errors():
    result = metrics([1, 2], [1, 2])
    payload = json.loads(json.dumps(result.to_json_dict()))
    assert payload["gt_ids"] == [1, 2] and payload["miou"] == 1.0 and payload["iou_threshold"] == 0.5
    with pytest.raises(ValueError, match=r"pred, gt and weights must be \[N\] of one length"):
        object_metrics_3d(torch.tensor([1, 2]), torch.tensor([1]), torch.ones(2))
    with pytest.raises(ValueError, match="weights must be finite and >= 0"):
        metrics([1, 2], [1, 2], [1.0, -0.5])
    with pytest.raises(ValueError, match="gt must hold integer ids"):
        object_metrics_3d(torch.tensor([1]), torch.tensor([1.0]), torch.ones(1))
    with pytest.raises(ValueError, match="no GT objects"):
        metrics([1, 2], [0, 0])


# --- GT per Gaussian ----------------------------------------------------------------------------------


def cast_planes(camera_x: float, plane_a_id: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    """GT ids [H, W] and z-depth [H, W] of the plane scene from a camera at (camera_x, 0, 0), at pixel centres."""
    v, u = torch.meshgrid(torch.arange(HEIGHT) + 0.5, torch.arange(WIDTH) + 0.5, indexing="ij")
    dx, dy = (u - K[0, 2]) / FOCAL, (v - K[1, 2]) / FOCAL
    on_a = (camera_x + 2 * dx >= -1) & (camera_x + 2 * dx <= 0)
    ids = torch.where(on_a, plane_a_id, torch.where(4 * dy < 0.5, 300, 0))
    return ids, torch.where(on_a, 2.0, 4.0)


def plane_view(root: Path, name: str, camera_x: float, ids: torch.Tensor | None, depth: torch.Tensor | None) -> View:
    """A view of the plane scene whose GT maps are written to root (millimetres for depth)."""
    viewmat = torch.eye(4)
    viewmat[0, 3] = -camera_x
    instance_path = depth_path = None
    if ids is not None:
        instance_path = root / "instances" / f"{name}.png"
        save_label_map(instance_path, ids)
    if depth is not None:
        depth_path = root / "depths" / f"{name}.png"
        depth_path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((depth * 1000).round().numpy().astype(np.uint16)).save(depth_path)
    return View(name, root / f"{name}.png", K.clone(), viewmat, WIDTH, HEIGHT, "train",
                instance_path=instance_path, depth_path=depth_path)


@pytest.fixture
def plane_views(tmp_path) -> list[View]:
    views = [plane_view(tmp_path, f"cam{i}", x, *cast_planes(x)) for i, x in enumerate(CAMERA_XS)]
    # Views missing either map do not vote, whatever their other map says.
    views.append(plane_view(tmp_path, "no_depth", 0.0, torch.full((HEIGHT, WIDTH), 99), None))
    views.append(plane_view(tmp_path, "no_ids", 0.0, None, torch.full((HEIGHT, WIDTH), 3.0)))
    return views


PLANE_GAUSSIANS = {  # centre: expected GT id
    (-0.5, 0.0, 2.0): 7,  # on plane A, seen by all three cameras
    (1.0, 0.0, 4.0): 300,  # on plane B
    (-0.8, 0.0, 4.0): 300,  # on B behind A for cameras 0 and 1; camera 2 sees it
    (1.0, 1.0, 4.0): 0,  # on B's unlabelled part
    (0.3, 0.0, 3.0): UNKNOWN,  # a floater between the planes
    (0.0, 0.0, -1.0): UNKNOWN,  # behind every camera
    (10.0, 0.0, 4.0): UNKNOWN,  # outside every image
    (1.0, -0.2, 4.04): 300,  # 4 cm off B: within max(5 cm, 2 % of 4.04 m)
    (1.0, -0.2, 4.12): UNKNOWN,  # 12 cm off B: beyond max(5 cm, 8.2 cm)
    (-0.5, 0.0, 2.045): 7,  # 4.5 cm off A: within the absolute 5 cm, not within 2 % of 2.045 m
}


def test_gt_objects_of_gaussians_on_and_off_two_planes(plane_views):
    means = torch.tensor(list(PLANE_GAUSSIANS))
    assert gaussian_gt_objects(means, plane_views).tolist() == list(PLANE_GAUSSIANS.values())
    # The tolerances are what they say: tighter absolute, wider relative.
    tight = gaussian_gt_objects(means, plane_views, abs_tolerance=0.01)
    assert tight[-1] == UNKNOWN and tight[-3] == 300  # 4 cm at 4 m is within 2 %
    assert gaussian_gt_objects(means, plane_views, rel_tolerance=0.05)[-2] == 300
    assert gaussian_gt_objects(means.double(), plane_views).tolist() == list(PLANE_GAUSSIANS.values())


def test_unknown_depth_does_not_vote_and_views_without_both_maps_are_refused(tmp_path):
    ids, depth = cast_planes(0.0)
    view = plane_view(tmp_path, "holes", 0.0, ids, torch.where(ids == 7, 0.0, depth))  # A's depth unknown
    assert gaussian_gt_objects(torch.tensor([[-0.5, 0.0, 2.0], [1.0, 0.0, 4.0]]), [view]).tolist() == [UNKNOWN, 300]
    with pytest.raises(ValueError, match="none of the 1 views has both a GT instance map and a GT depth map"):
        gaussian_gt_objects(torch.zeros(1, 3), [plane_view(tmp_path, "ids_only", 0.0, ids, None)])


def test_majority_over_views_and_ties_to_the_smaller_id(tmp_path):
    on_a = torch.tensor([[-0.5, 0.0, 2.0]])
    votes = {name: plane_view(tmp_path, name, 0.0, *cast_planes(0.0, plane_a_id)) for name, plane_a_id in
             (("nine", 9), ("four", 4), ("nine_again", 9))}
    assert gaussian_gt_objects(on_a, [votes["nine"], votes["four"]]).item() == 4
    assert gaussian_gt_objects(on_a, [votes["four"], votes["nine"]]).item() == 4
    assert gaussian_gt_objects(on_a, list(votes.values())).item() == 9


def test_vote_counting_matches_a_counter():
    rng = np.random.default_rng(1)
    num_gaussians = 50
    gaussians = rng.integers(0, num_gaussians - 5, size=2000)  # the last five get no votes
    labels = rng.choice([0, 3, 4, 500, 65535], size=2000)
    keys, counts = merge_votes(torch.from_numpy(gaussians * ID_STRIDE + labels), torch.ones(2000, dtype=torch.int64))
    result = majority_vote(keys, counts, num_gaussians).tolist()
    for index in range(num_gaussians):
        tally = Counter(labels[gaussians == index].tolist())
        expected = min(tally, key=lambda label: (-tally[label], label)) if tally else UNKNOWN
        assert result[index] == expected, index


def test_a_hundred_thousand_gaussians_against_many_ids(tmp_path):
    rng = np.random.default_rng(2)
    views = []
    for index in range(8):
        ids = torch.from_numpy(rng.integers(0, 400, size=(HEIGHT, WIDTH)))
        depth = torch.from_numpy(rng.uniform(1.0, 5.0, size=(HEIGHT, WIDTH))).float()
        views.append(plane_view(tmp_path, f"v{index}", 0.1 * index, ids, depth))
    means = torch.from_numpy(rng.uniform([-2, -2, 0.5], [2, 2, 5.5], size=(100_000, 3))).float()
    gt = gaussian_gt_objects(means, views, rel_tolerance=0.2)
    pred = torch.where(torch.rand(len(gt), generator=torch.Generator().manual_seed(0)) < 0.8, gt.clamp_min(0), 600)
    result = object_metrics_3d(pred, gt, torch.ones(len(gt)))
    assert (gt > 0).float().mean() > 0.05 and result.num_gt > 300
    # Each object keeps 80 % of its Gaussians and gives the rest to one shared id: every IoU is about 0.8.
    assert result.recall == 1.0 and result.miou > 0.7
