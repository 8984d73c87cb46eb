"""Metrics: PSNR, SSIM, Gaga's instance protocol (hand-computed cases), the folder CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from protosaga_core.cli import Metrics
from protosaga_core.io.labelmaps import save_label_map
from protosaga_core.metrics.image import psnr, ssim, ssim_loss, ssim_map
from protosaga_core.metrics.instances import (
    InstanceMetrics,
    evaluate_folders,
    frame_overlap,
    instance_metrics,
    mean_iou_matrix,
    resize_nearest,
)

A = np.array  # brevity in the hand-computed label maps


def check(
    result: InstanceMetrics, miou: float, precision: float, recall: float, num_gt: int, num_pred: int
) -> None:
    assert result.miou == pytest.approx(miou, abs=1e-12)
    assert result.precision == pytest.approx(precision, abs=1e-12)
    assert result.recall == pytest.approx(recall, abs=1e-12)
    assert (result.num_gt, result.num_pred) == (num_gt, num_pred)


# ------------------------------------------------------------------------------------------------
# Instance metrics, hand-computed
# ------------------------------------------------------------------------------------------------


def test_single_frame():
    # gt   1 1 2      pred 5 5 5
    #      1 2 2           5 7 7
    # areas: gt1 = 3, gt2 = 3, pred5 = 4, pred7 = 2
    # IoU(1,5) = 3/(3+4-3) = 3/4    IoU(1,7) = 0/5 = 0
    # IoU(2,5) = 1/(3+4-1) = 1/6    IoU(2,7) = 2/(3+2-2) = 2/3
    # match 1->5, 2->7: mIoU = (3/4 + 2/3)/2 = 17/24; both > 0.5: hits = 2
    gt = A([[1, 1, 2], [1, 2, 2]])
    pred = A([[5, 5, 5], [5, 7, 7]])
    result = instance_metrics([gt], [pred])
    check(result, 17 / 24, 1.0, 1.0, 2, 2)
    assert result.num_frames == 1 and result.include_zero is False
    # tensors work the same as arrays
    assert instance_metrics([torch.from_numpy(gt)], [torch.from_numpy(pred)]) == result


def test_more_predictions_than_gt():
    # gt   1 1 1 2 2 2      gt1 = 3, gt2 = 3
    # pred 1 1 3 3 4 4      pred1 = 2, pred3 = 2, pred4 = 2
    # IoU(1,1) = 2/3   IoU(1,3) = 1/(3+2-1) = 1/4   IoU(1,4) = 0
    # IoU(2,1) = 0     IoU(2,3) = 1/4               IoU(2,4) = 2/3
    # 2x3 matrix (no padding); match 1->1, 2->4: mIoU = 2/3, hits = 2
    # precision = 2/3 (pred 3 unmatched), recall = 2/2
    result = instance_metrics([A([[1, 1, 1, 2, 2, 2]])], [A([[1, 1, 3, 3, 4, 4]])])
    check(result, 2 / 3, 2 / 3, 1.0, 2, 3)


def test_fewer_predictions_than_gt_pads_with_zero():
    # gt 1 1 2 2, pred 7 7 7 7: IoU(1,7) = 2/4, IoU(2,7) = 2/4; matrix 2x2 with a zero column:
    # one GT matched to 7 (1/2), the other to padding (0): mIoU = 1/4; 0.5 is not > 0.5: hits = 0
    result = instance_metrics([A([[1, 1, 2, 2]])], [A([[7, 7, 7, 7]])])
    check(result, 0.25, 0.0, 0.0, 2, 1)


def test_gt_id_missing_from_some_frames_averages_only_where_it_appears():
    # frame a: gt 1 1 2 2, pred 1 1 2 2 -> IoU(1,1) = 1, IoU(2,2) = 1, cross terms 0
    # frame b: gt 1 1 1 1, pred 1 1 2 2 -> gt 2 absent; IoU(1,1) = 2/4, IoU(1,2) = 2/4
    # gt 1 (2 frames): IoU(1,1) = (1 + 1/2)/2 = 3/4, IoU(1,2) = (0 + 1/2)/2 = 1/4
    # gt 2 (frame a only): IoU(2,1) = 0, IoU(2,2) = 1   (averaging over both frames would give 1/2)
    # match 1->1 (3/4), 2->2 (1): mIoU = 7/8, hits = 2
    gts = [A([[1, 1, 2, 2]]), A([[1, 1, 1, 1]])]
    preds = [A([[1, 1, 2, 2]]), A([[1, 1, 2, 2]])]
    matrix = mean_iou_matrix((frame_overlap(g, p) for g, p in zip(gts, preds)))
    np.testing.assert_allclose(matrix.iou, [[0.75, 0.25], [0.0, 1.0]])
    np.testing.assert_array_equal(matrix.frames_per_gt, [2, 1])
    result = instance_metrics(gts, preds)
    check(result, 7 / 8, 1.0, 1.0, 2, 2)
    assert result.num_frames == 2


def test_all_wrong_predictions():
    # gt   1 1    pred 3 4     every gt/pred pair shares 1 pixel of areas 2 and 2:
    #      2 2         3 4     IoU = 1/(2+2-1) = 1/3 everywhere
    # mIoU = 1/3 from the partial overlaps, no IoU > 0.5: hits = 0
    result = instance_metrics([A([[1, 1], [2, 2]])], [A([[3, 4], [3, 4]])])
    check(result, 1 / 3, 0.0, 0.0, 2, 2)


def test_include_zero_true_vs_false():
    # col   0 1 2 3 4 5 6
    # gt    0 0 1 1 1 1 2     gt0 = 2, gt1 = 4, gt2 = 1
    # pred  0 3 3 3 3 0 0     pred0 = 3 (cols 0,5,6), pred3 = 4 (cols 1-4)
    # intersections: (0,0) col0 = 1, (0,3) col1 = 1, (1,0) col5 = 1, (1,3) cols 2-4 = 3, (2,0) col6 = 1, (2,3) = 0
    # IoU: (0,0) = 1/(2+3-1) = 1/4   (0,3) = 1/(2+4-1) = 1/5
    #      (1,0) = 1/(4+3-1) = 1/6   (1,3) = 3/(4+4-3) = 3/5
    #      (2,0) = 1/(1+3-1) = 1/3   (2,3) = 0
    gt = A([[0, 0, 1, 1, 1, 1, 2]])
    pred = A([[0, 3, 3, 3, 3, 0, 0]])

    # include_zero: G = {0,1,2}, P = {0,3}, 3x3 padded. Best assignment 0->pad, 1->3, 2->0:
    # 0 + 3/5 + 1/3 = 14/15 (the others: 1/4+3/5 = 0.85, 1/5+1/3, 1/4, 1/5+1/6, 1/6 are smaller)
    # mIoU = 14/45; hits = 1 (3/5); precision = 1/2, recall = 1/3
    check(instance_metrics([gt], [pred], include_zero=True), 14 / 45, 1 / 2, 1 / 3, 3, 2)

    # without 0: G = {1,2}, P = {3}; the areas keep the 0 pixels, so IoU(1,3) stays 3/5 (col 5, predicted
    # 0, is a miss in gt1's union; col 1, pred3 on gt0, stays in pred3's union; dropping those pixels
    # instead would give 3/3). Matrix [[3/5, 0], [0, 0]]: mIoU = (3/5 + 0)/2 = 3/10, hits = 1,
    # precision = 1/1, recall = 1/2
    result = instance_metrics([gt], [pred], include_zero=False)
    check(result, 3 / 10, 1.0, 1 / 2, 2, 1)
    assert result.include_zero is False
    # and the library default is "0 not counted"
    assert instance_metrics([gt], [pred]) == result


def test_prediction_of_another_size_is_resized_by_nearest_neighbour():
    # 4x4 -> 2x2 samples input rows/cols floor((x + 0.5) * 2) = 1, 3 (pixel centres, as PIL does);
    # the 9s are never sampled, so the resized prediction equals the GT exactly: mIoU 1, P = {1,2,3,4}.
    # (A top-left-aligned resize, sampling rows/cols 0 and 2, would see only 9s.)
    gt = A([[1, 2], [3, 4]])
    pred = A([[9, 9, 9, 9], [9, 1, 9, 2], [9, 9, 9, 9], [9, 3, 9, 4]])
    check(instance_metrics([gt], [pred]), 1.0, 1.0, 1.0, 4, 4)
    # upsampling: each predicted pixel becomes a 2x2 block
    # gt 4x4 halves: left = 1, right = 2; pred 2x2 [[1, 2], [1, 1]] -> bottom-right block is 1
    # IoU(1,1) = 8/(8+12-8) = 2/3, IoU(2,1) = 4/(8+12-4) = 1/4, IoU(2,2) = 4/8 = 1/2, IoU(1,2) = 0
    # match 1->1, 2->2: mIoU = (2/3 + 1/2)/2 = 7/12, hits = 1 (1/2 is not > 1/2)
    gt4 = np.repeat(np.repeat(A([[1, 2], [1, 2]]), 2, 0), 2, 1)
    check(instance_metrics([gt4], [A([[1, 2], [1, 1]])]), 7 / 12, 1 / 2, 1 / 2, 2, 2)


@pytest.mark.parametrize(
    "src,dst", [((7, 5), (13, 11)), ((20, 30), (9, 14)), ((6, 9), (4, 6)), ((5, 5), (15, 10))]
)
def test_resize_nearest_matches_pil(tmp_path, src, dst):
    # The in-memory metrics resize with resize_nearest; check it against PIL's NEAREST (what
    # labelmaps.read_map_for_view uses for full-resolution maps) so both agree with the rest of the project.
    labels = np.random.default_rng(0).integers(0, 65536, size=src)
    save_label_map(tmp_path / "x.png", labels)
    with Image.open(tmp_path / "x.png") as img:
        expected = np.asarray(img.resize((dst[1], dst[0]), Image.Resampling.NEAREST)).astype(np.int64)
    np.testing.assert_array_equal(resize_nearest(labels, *dst), expected)


def test_errors():
    with pytest.raises(ValueError, match="GT maps"):
        instance_metrics([A([[1]])], [])
    with pytest.raises(ValueError, match="no frames"):
        instance_metrics([], [])
    with pytest.raises(ValueError, match="no ground-truth ids"):
        instance_metrics([A([[0, 0]])], [A([[1, 1]])], include_zero=False)
    with pytest.raises(ValueError, match=r"\[H, W\]"):
        instance_metrics([A([1, 2])], [A([1, 2])])


# ------------------------------------------------------------------------------------------------
# Folders of uint16 PNGs and the CLI command
# ------------------------------------------------------------------------------------------------


def write_scene(tmp_path):
    # the "missing GT id" scene above with sparse ids beyond uint8: 1 -> 1000, 2 -> 65535 (GT), 2 -> 300 (pred)
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    gt_dir.mkdir()
    pred_dir.mkdir()
    save_label_map(gt_dir / "000.png", A([[1000, 1000, 65535, 65535]]))
    save_label_map(gt_dir / "001.png", A([[1000, 1000, 1000, 1000]]))
    save_label_map(pred_dir / "000.png", A([[1000, 1000, 300, 300]]))
    save_label_map(pred_dir / "001.png", A([[1000, 1000, 300, 300]]))
    return gt_dir, pred_dir


def test_evaluate_folders_uint16_pngs(tmp_path):
    gt_dir, pred_dir = write_scene(tmp_path)
    with Image.open(gt_dir / "000.png") as img:
        assert img.mode.startswith("I")  # really 16-bit on disk
    result = evaluate_folders(gt_dir, pred_dir, include_zero=False)
    check(result, 7 / 8, 1.0, 1.0, 2, 2)  # same numbers as the in-memory case
    assert result.num_frames == 2


def test_evaluate_folders_errors(tmp_path):
    gt_dir, pred_dir = write_scene(tmp_path)
    save_label_map(pred_dir / "007.png", A([[1, 1, 1, 1]]))
    with pytest.raises(FileNotFoundError, match="007.png"):
        evaluate_folders(gt_dir, pred_dir)
    empty = tmp_path / "empty_preds"
    empty.mkdir()
    with pytest.raises(ValueError, match="empty_preds"):
        evaluate_folders(gt_dir, empty)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        evaluate_folders(tmp_path / "nowhere", pred_dir)


def test_metrics_command_json_and_table(tmp_path, capsys):
    gt_dir, pred_dir = write_scene(tmp_path)
    Metrics(gt=gt_dir, pred=pred_dir, json=True).run()
    out = json.loads(capsys.readouterr().out)  # exactly one JSON object
    assert out == {
        "miou": 0.875, "precision": 1.0, "recall": 1.0, "num_gt": 2, "num_pred": 2,
        "include_zero": False, "num_frames": 2,
    }
    Metrics(gt=gt_dir, pred=pred_dir, include_zero=True).run()
    table = capsys.readouterr().out
    assert "0.8750" in table and "--include-zero" in table and "counted as an ordinary id" in table


def test_metrics_command_flags_parse():
    import tyro
    command = tyro.cli(Metrics, args=["--gt", "a", "--pred", "b", "--include-zero", "--json"])
    assert command.include_zero is True and command.json is True
    assert tyro.cli(Metrics, args=["--gt", "a", "--pred", "b"]).include_zero is False


# ------------------------------------------------------------------------------------------------
# PSNR and SSIM
# ------------------------------------------------------------------------------------------------


def test_psnr_of_known_mse():
    gt = torch.full((4, 5, 3), 0.5)
    # error 0.1 everywhere: MSE 0.01 -> 10 log10(1/0.01) = 20 dB
    assert psnr(gt + 0.1, gt) == pytest.approx(20.0, abs=1e-4)
    # batch: MSEs 0.01 and 0.0001 -> 20 and 40 dB, mean 30
    batch_gt = torch.stack([gt, gt])
    batch_pred = torch.stack([gt + 0.1, gt - 0.01])
    assert psnr(batch_pred, batch_gt) == pytest.approx(30.0, abs=1e-4)
    assert psnr(gt, gt) == math.inf


def naive_ssim_map(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """SSIM by explicit loops over pixels and window offsets, zero outside the image. [H, W] -> [H, W]"""
    g = np.exp(-((np.arange(11) - 5) ** 2) / (2 * 1.5**2))
    w = np.outer(g, g) / g.sum() ** 2
    c1, c2 = 0.01**2, 0.03**2
    xp, yp = np.pad(x, 5), np.pad(y, 5)
    out = np.zeros_like(x)
    for r in range(x.shape[0]):
        for c in range(x.shape[1]):
            px, py = xp[r : r + 11, c : c + 11], yp[r : r + 11, c : c + 11]
            mx, my = (w * px).sum(), (w * py).sum()
            vx, vy = (w * px * px).sum() - mx**2, (w * py * py).sum() - my**2
            cxy = (w * px * py).sum() - mx * my
            out[r, c] = (2 * mx * my + c1) * (2 * cxy + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return out


def smooth_pair(h: int, w: int, c: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    base = np.stack([0.5 + 0.4 * np.sin(3 * xx + k) * np.cos(2 * yy - k) for k in range(c)], -1)
    noisy = np.clip(base + 0.1 * rng.standard_normal(base.shape), 0, 1)
    return torch.from_numpy(noisy), torch.from_numpy(base)


def test_ssim_identical_is_one():
    a, _ = smooth_pair(16, 20, 3)
    assert ssim(a, a) == pytest.approx(1.0, abs=1e-6)
    assert ssim(a.float(), a.float()) == pytest.approx(1.0, abs=1e-5)


def test_ssim_map_matches_naive_loops_including_borders():
    pred, gt = smooth_pair(9, 12, 2, seed=1)
    ours = ssim_map(pred, gt).numpy()
    assert ours.shape == (9, 12, 2)
    for ch in range(2):
        reference = naive_ssim_map(pred[..., ch].numpy(), gt[..., ch].numpy())
        np.testing.assert_allclose(ours[..., ch], reference, atol=1e-10)
    assert ssim(pred, gt) == pytest.approx(ours.mean(), abs=1e-12)


def test_ssim_matches_skimage_away_from_borders():
    from skimage import metrics
    pred, gt = smooth_pair(32, 40, 3, seed=2)
    _, ref = metrics.structural_similarity(
        pred.numpy(), gt.numpy(), channel_axis=-1, gaussian_weights=True, sigma=1.5,
        use_sample_covariance=False, data_range=1.0, full=True,
    )
    ours = ssim_map(pred, gt).numpy()
    # skimage pads by reflection, 3DGS by zeros: only the 5-pixel border differs
    np.testing.assert_allclose(ours[5:-5, 5:-5], ref[5:-5, 5:-5], atol=1e-6)


def test_ssim_batched_and_differentiable():
    p1, g1 = smooth_pair(12, 10, 3, seed=3)
    p2, g2 = smooth_pair(12, 10, 3, seed=4)
    batch = ssim_map(torch.stack([p1, p2]), torch.stack([g1, g2]))
    assert batch.shape == (2, 12, 10, 3)
    torch.testing.assert_close(batch[1], ssim_map(p2, g2))
    pred = p1.float().clone().requires_grad_(True)
    loss = ssim_loss(pred, g1.float())
    loss.backward()
    assert 0 < loss.item() < 1 and pred.grad is not None and torch.isfinite(pred.grad).all()
    assert pred.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="channels last"):
        ssim_map(torch.zeros(3, 4), torch.zeros(3, 4))
