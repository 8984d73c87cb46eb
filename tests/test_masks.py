"""The masks stage: flattening rules, SAM through its checkpoint path (tiny random SAM), the Felzenszwalb
fallback, simulated SAM errors on GT maps, and the resumable writer."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import pytest
import segment_anything
import torch
from PIL import Image
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

import protosaga_core.masks.generate as generate_module
from protosaga_core.datasets.scene import Scene, View
from protosaga_core.io.labelmaps import load_label_map, save_label_map
from protosaga_core.masks import (
    FallbackMaskGenerator,
    MaskRecord,
    MasksConfig,
    NoiseLevel,
    SamMaskGenerator,
    flatten,
    generate_masks,
    load_sam,
    simulate_sam_masks,
)
from protosaga_core.masks.sam_decoder import predict_points

# ---------------------------------------------------------------------------------------------- flatten


def box_mask(shape: tuple[int, int], rows: slice, cols: slice) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[rows, cols] = True
    return mask


def overlapping_records() -> list[MaskRecord]:
    """A: 4x6 block (IoU 0.6); B: 2x4 strip over A's right edge (0.9); C: column 5 (0.8). On [4, 8]."""
    shape = (4, 8)
    return [
        MaskRecord.from_mask(box_mask(shape, slice(0, 4), slice(0, 6)), 0.6, 0.9),
        MaskRecord.from_mask(box_mask(shape, slice(1, 3), slice(4, 8)), 0.9, 0.9),
        MaskRecord.from_mask(box_mask(shape, slice(0, 4), slice(5, 6)), 0.8, 0.9),
    ]


def test_flatten_score_puts_highest_predicted_iou_on_top():
    expected = np.array([
        [1, 1, 1, 1, 1, 3, 0, 0],
        [1, 1, 1, 1, 2, 2, 2, 2],
        [1, 1, 1, 1, 2, 2, 2, 2],
        [1, 1, 1, 1, 1, 3, 0, 0],
    ], dtype=np.uint16)
    labels = flatten(overlapping_records(), "score")
    assert labels.dtype == np.uint16
    np.testing.assert_array_equal(labels, expected)


def test_flatten_large_lets_larger_masks_win_and_drops_swallowed_ones():
    # C (column 5) lies entirely inside A, keeps nothing and is dropped; labels stay consecutive.
    expected = np.array([
        [1, 1, 1, 1, 1, 1, 0, 0],
        [1, 1, 1, 1, 1, 1, 2, 2],
        [1, 1, 1, 1, 1, 1, 2, 2],
        [1, 1, 1, 1, 1, 1, 0, 0],
    ], dtype=np.uint16)
    np.testing.assert_array_equal(flatten(overlapping_records(), "large"), expected)


def test_flatten_small_lets_smaller_masks_win():
    expected = np.array([
        [1, 1, 1, 1, 1, 3, 0, 0],
        [1, 1, 1, 1, 2, 3, 2, 2],
        [1, 1, 1, 1, 2, 3, 2, 2],
        [1, 1, 1, 1, 1, 3, 0, 0],
    ], dtype=np.uint16)
    np.testing.assert_array_equal(flatten(overlapping_records(), "small"), expected)


@pytest.mark.parametrize("uncovered, survives", [(2, False), (3, True)])
def test_flatten_drops_masks_keeping_at_most_ten_percent(uncovered, survives):
    shape = (4, 5)
    under = MaskRecord.from_mask(np.ones(shape, dtype=bool), 0.5, 0.9)  # 20 px
    top = np.ones(shape, dtype=bool)
    top.flat[:uncovered] = False  # `under` keeps 2/20 = 10 % (dropped) or 3/20 = 15 % (kept)
    labels = flatten([under, MaskRecord.from_mask(top, 0.9, 0.9)], "score")
    expected = np.where(top, 2 if survives else 1, 1 if survives else 0)
    np.testing.assert_array_equal(labels, expected)


def test_flatten_ties_go_to_the_earlier_record_and_empty_input_needs_a_shape():
    mask = box_mask((3, 3), slice(0, 2), slice(0, 2))
    labels = flatten([MaskRecord.from_mask(mask, 0.8, 0.9), MaskRecord.from_mask(mask, 0.8, 0.9)])
    np.testing.assert_array_equal(labels, mask.astype(np.uint16))
    np.testing.assert_array_equal(flatten([], shape=(2, 3)), np.zeros((2, 3), dtype=np.uint16))
    with pytest.raises(ValueError, match="shape"):
        flatten([])


def test_mask_record_from_sam_dict():
    segmentation = box_mask((3, 4), slice(0, 2), slice(1, 3))
    record = MaskRecord.from_sam(
        {"segmentation": segmentation, "area": 4, "predicted_iou": 0.91, "stability_score": 0.97, "bbox": [1, 0, 2, 2]}
    )
    assert record.area == 4 and record.predicted_iou == pytest.approx(0.91)
    assert record.stability_score == pytest.approx(0.97)
    np.testing.assert_array_equal(record.segmentation, segmentation)
    with pytest.raises(ValueError, match="binary_mask"):
        MaskRecord.from_sam({"segmentation": {"counts": [], "size": [3, 4]}, "area": 0,
                             "predicted_iou": 0.9, "stability_score": 0.9})


# ------------------------------------------------------------------------------------------------- SAM


def tiny_sam(embed_dim: int = 32, decoder_depth: int = 1) -> Sam:
    """A randomly initialised SAM on 64×64 inputs (4×4 embeddings) that runs in well under a second."""
    image_size, patch = 64, 16
    return Sam(
        image_encoder=ImageEncoderViT(
            img_size=image_size, patch_size=patch, embed_dim=embed_dim, depth=2, num_heads=2, mlp_ratio=2.0,
            out_chans=32, qkv_bias=True, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), use_rel_pos=True,
            window_size=2, global_attn_indexes=(1,),
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=32, image_embedding_size=(image_size // patch,) * 2, input_image_size=(image_size,) * 2,
            mask_in_chans=4,
        ),
        mask_decoder=MaskDecoder(
            transformer_dim=32, transformer=TwoWayTransformer(depth=decoder_depth, embedding_dim=32, mlp_dim=64, num_heads=2),
            num_multimask_outputs=3, iou_head_depth=2, iou_head_hidden_dim=32,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )


def rectangles_image(height: int, width: int) -> tuple[np.ndarray, list[tuple[slice, slice]]]:
    """Three saturated rectangles on a dark background. [H, W, 3] uint8, and the rectangles' slices."""
    image = np.full((height, width, 3), 40, dtype=np.uint8)
    boxes = [
        (slice(height // 12, height * 5 // 12), slice(width // 16, width * 6 // 16)),
        (slice(height * 13 // 24, height * 11 // 12), slice(width * 3 // 32, width * 15 // 32)),
        (slice(height // 6, height * 5 // 6), slice(width * 9 // 16, width * 15 // 16)),
    ]
    for box, color in zip(boxes, [(220, 30, 30), (30, 200, 40), (40, 60, 230)]):
        image[box] = color
    return image, boxes


@pytest.fixture
def tiny_checkpoint(tmp_path: Path) -> tuple[Path, Sam]:
    torch.manual_seed(0)
    sam = tiny_sam()
    path = tmp_path / "tiny_sam.pth"
    torch.save(sam.state_dict(), path)
    return path, sam


def test_sam_generator_loads_checkpoint_and_flattens_records(tiny_checkpoint):
    path, original = tiny_checkpoint
    generator = SamMaskGenerator(path, tiny_sam, points_per_side=4, pred_iou_thresh=0.0,
                                 stability_score_thresh=0.0, device="cpu")
    loaded = generator.automatic.predictor.model.state_dict()
    for name, tensor in original.state_dict().items():
        assert torch.equal(loaded[name], tensor), name

    image, _ = rectangles_image(36, 48)
    records = generator(image)
    assert records, "thresholds at 0 must let the random SAM's masks through"
    labels = flatten(records)
    assert labels.shape == (36, 48) and labels.dtype == np.uint16
    present = np.unique(labels[labels > 0])
    np.testing.assert_array_equal(present, np.arange(1, len(present) + 1))
    assert len(present) <= len(records)
    owners = set()
    for label in present:
        # Every label is a piece of exactly one record's mask; distinct labels come from distinct records.
        region = labels == label
        owner = next(i for i, r in enumerate(records) if np.all(r.segmentation[region]))
        owners.add(owner)
    assert len(owners) == len(present)
    with pytest.raises(ValueError, match="RGB uint8"):
        generator(image.astype(np.float32) / 255.0)


@pytest.mark.parametrize("multimask", [True, False])
def test_point_decoder_computes_upstreams_masks(multimask):
    # Random weights (two transformer blocks, so both the shared first block and the per-prompt ones run)
    # and a wide image, so only the top of the square input is upscaled; prompts of one and two points.
    torch.manual_seed(1)
    sam = tiny_sam(decoder_depth=2).eval()
    predictor = segment_anything.SamPredictor(sam)
    image = np.random.default_rng(0).integers(0, 256, (18, 48, 3), dtype=np.uint8)
    with torch.inference_mode():
        predictor.set_image(image)
        for count in (1, 2):
            coords = torch.rand(5, count, 2) * torch.tensor([64.0, 24.0])
            labels = torch.randint(0, 2, (5, count))
            expected = predictor.predict_torch(coords, labels, multimask_output=multimask, return_logits=True)
            masks, iou, low_res = predict_points(predictor, coords, labels, multimask, return_logits=True)
            torch.testing.assert_close(masks, expected[0], atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(iou, expected[1], atol=1e-5, rtol=1e-5)
            # the image is the top 24 of the 64x64 input: 2 of the 4 token rows, upscaled x4, are read
            assert low_res.shape[-2:] == (8, 16)
            torch.testing.assert_close(low_res, expected[2][..., :8, :], atol=1e-4, rtol=1e-4)


def test_sam_checkpoint_errors_name_the_file_and_model(tmp_path, tiny_checkpoint):
    path, _ = tiny_checkpoint
    missing = tmp_path / "nowhere.pth"
    with pytest.raises(FileNotFoundError, match=r"nowhere\.pth.*vit_b.*--method fallback"):
        load_sam(missing, "vit_b")

    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"this is not a checkpoint")
    with pytest.raises(ValueError, match=r"cannot read SAM checkpoint .*garbage\.pth"):
        load_sam(garbage, tiny_sam)

    # weights_only=True refuses pickled objects that are not plain tensors and containers.
    pickled = tmp_path / "pickled.pth"
    torch.save({"model": partial(print, "code")}, pickled)
    with pytest.raises(ValueError, match=r"pickled\.pth"):
        load_sam(pickled, tiny_sam)

    def wider_sam() -> Sam:
        return tiny_sam(embed_dim=48)

    with pytest.raises(ValueError, match=r"tiny_sam\.pth does not match wider_sam: .*shape mismatches"):
        load_sam(path, wider_sam)

    vit_b_like = tmp_path / "vit_b_like.pth"
    torch.save({"image_encoder.patch_embed.proj.weight": torch.zeros(768, 3, 16, 16)}, vit_b_like)
    with pytest.raises(ValueError, match=r"is it a vit_b checkpoint\?"):
        load_sam(vit_b_like, tiny_sam)


# -------------------------------------------------------------------------------------------- fallback


def test_fallback_covers_each_rectangle_mostly_with_its_own_label():
    image, boxes = rectangles_image(96, 128)
    records = FallbackMaskGenerator()(image)
    assert all(0.0 <= r.predicted_iou <= 1.0 and 0.0 <= r.stability_score <= 1.0 for r in records)
    labels = flatten(records)
    dominant = []
    for box in boxes:
        values, counts = np.unique(labels[box], return_counts=True)
        assert values[counts.argmax()] != 0
        assert counts.max() / counts.sum() >= 0.7
        dominant.append(values[counts.argmax()])
    assert len(set(dominant)) == len(boxes)


# ------------------------------------------------------------------------------------------- simulated


def grid_instances() -> np.ndarray:
    """4×4 blocks of 16×16 px (ids 1..16, each 6 % of the image: large) plus two 3×3 small ids. [64, 64]"""
    gt = np.kron(np.arange(1, 17).reshape(4, 4), np.ones((16, 16), dtype=np.int64))
    gt[6:9, 6:9] = 17
    gt[38:41, 54:57] = 18
    return gt


VIEWS = [f"frame_{i:03d}" for i in range(16)]
QUIET = NoiseLevel(merge=0.0, merge_in_view=0.0, drop=0.0, split=0.0, jitter=0.0, seam=0.0)


def shares(out: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """shares[g, l]: fraction of GT id g's pixels labelled l. [G+1, L+1]"""
    joint = np.zeros((gt.max() + 1, out.max() + 1))
    np.add.at(joint, (gt.ravel(), out.ravel()), 1)
    return joint / np.maximum(joint.sum(1, keepdims=True), 1)


def mean_best_iou(out: np.ndarray, gt: np.ndarray) -> float:
    joint = np.zeros((gt.max() + 1, int(out.max()) + 1))
    np.add.at(joint, (gt.ravel(), out.ravel().astype(np.int64)), 1)
    joint = joint[1:, 1:]
    union = joint.sum(1, keepdims=True) + joint.sum(0, keepdims=True) - joint
    return float((joint / np.maximum(union, 1)).max(1).mean()) if joint.size else 0.0


def test_simulated_is_deterministic_and_labels_are_consecutive():
    gt = grid_instances()
    a = simulate_sam_masks(gt, "frame_000", seed=3, noise="high")
    np.testing.assert_array_equal(a, simulate_sam_masks(gt, "frame_000", seed=3, noise="high"))
    assert a.dtype == np.uint16 and a.shape == gt.shape
    present = np.unique(a[a > 0])
    np.testing.assert_array_equal(present, np.arange(1, len(present) + 1))
    assert any(not np.array_equal(a, simulate_sam_masks(gt, "frame_000", seed=s, noise="high")) for s in (4, 5))


def test_simulated_without_noise_is_a_fresh_permutation_per_view():
    gt = grid_instances()
    mappings = []
    for name in VIEWS[:4]:
        out = simulate_sam_masks(gt, name, seed=0, noise=QUIET)
        mapping = {int(g): int(np.unique(out[gt == g]).item()) for g in range(1, 19)}
        assert sorted(mapping.values()) == list(range(1, 19))
        np.testing.assert_array_equal(out == 0, gt == 0)
        mappings.append(mapping)
    assert len({tuple(m.values()) for m in mappings}) == len(mappings)


def test_simulated_high_noise_merges_splits_drops_and_seams():
    gt = grid_instances()
    outputs = [simulate_sam_masks(gt, name, seed=0, noise="high") for name in VIEWS]
    blocks = np.arange(1, 17)
    merges = splits = drops = seams = 0
    # GT pixels next to another GT id: where seams may cut.
    boundary = np.zeros(gt.shape, dtype=bool)
    boundary[:, :-1] |= gt[:, :-1] != gt[:, 1:]
    boundary[:-1, :] |= gt[:-1, :] != gt[1:, :]
    for out in outputs:
        share = shares(out.astype(np.int64), gt)
        merges += sum(np.count_nonzero(share[blocks, label] >= 0.4) >= 2 for label in range(1, share.shape[1]))
        purity = shares(gt, out.astype(np.int64))  # purity[l, g]: fraction of label l inside GT g
        for g in blocks:
            parts = [l for l in range(1, share.shape[1]) if share[g, l] >= 0.25 and purity[l, g] >= 0.9]
            splits += len(parts) >= 2
        drops += sum(np.all(out[gt == g] == 0) for g in (17, 18))
        seams += np.count_nonzero((out == 0) & boundary & (gt > 0)) > 20
    assert merges > 0 and splits > 0 and drops > 0 and seams > 0


def test_simulated_merge_tendencies_are_shared_by_all_views():
    gt = grid_instances()
    merge_always = NoiseLevel(merge=0.3, merge_in_view=1.0, drop=0.0, split=0.0, jitter=0.0, seam=0.0)
    groupings = set()
    for name in VIEWS:
        out = simulate_sam_masks(gt, name, seed=0, noise=merge_always)
        # Which GT ids share a label, independent of the view's label numbering.
        groupings.add(frozenset(frozenset(np.unique(gt[out == label]).tolist()) for label in np.unique(out[out > 0])))
    assert len(groupings) == 1
    (grouping,) = groupings
    assert any(len(group) > 1 for group in grouping)


@pytest.mark.parametrize("effect", ["jitter", "seam"])
def test_simulated_boundary_effects_stay_within_one_pixel_of_gt_boundaries(effect):
    gt = grid_instances()
    level = NoiseLevel(**{**QUIET.__dict__, effect: 1.0})
    out = simulate_sam_masks(gt, "frame_000", seed=0, noise=level).astype(np.int64)
    # Undo the permutation with each GT id's majority nonzero label, then compare pixel by pixel.
    back = np.zeros(out.max() + 1, dtype=np.int64)
    for g in range(1, 19):
        back[np.bincount(out[(gt == g) & (out > 0)]).argmax()] = g
    changed = back[out] != gt
    near_boundary = np.zeros(gt.shape, dtype=bool)
    for axis in (0, 1):
        for shift in (1, -1):
            near_boundary |= np.roll(gt, shift, axis) != gt
    assert changed.any()
    assert not np.any(changed & ~near_boundary)
    if effect == "seam":
        assert np.all(out[changed] == 0)


def test_simulated_low_noise_stays_closer_to_gt_than_high():
    gt = grid_instances()
    quality = {
        noise: np.mean([mean_best_iou(simulate_sam_masks(gt, name, seed=0, noise=noise), gt) for name in VIEWS])
        for noise in ("low", "high")
    }
    assert quality["low"] > quality["high"] + 0.05


# ------------------------------------------------------------------------------------------- generation


def make_scene(root: Path, with_instances: bool = True) -> Scene:
    """Two training views and one test view of 48×64 rectangles, with GT instance maps."""
    image, boxes = rectangles_image(48, 64)
    gt = np.zeros((48, 64), dtype=np.int64)
    for i, box in enumerate(boxes, start=1):
        gt[box] = i
    views = []
    for name, split in (("a", "train"), ("b", "test"), ("c", "train")):
        image_path = root / "images" / f"{name}.png"
        image_path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(image_path)
        instance_path = None
        if with_instances:
            instance_path = root / "instances" / f"{name}.png"
            save_label_map(instance_path, gt)
        views.append(View(name, image_path, torch.eye(3), torch.eye(4), 64, 48, split, instance_path=instance_path))
    return Scene(root, views, "test")


def test_generate_masks_writes_train_views_only_and_resumes(tmp_path, monkeypatch):
    scene = make_scene(tmp_path)
    paths = generate_masks(scene, MasksConfig(method="fallback"), progress=False)
    assert paths == [tmp_path / "masks" / "a.png", tmp_path / "masks" / "c.png"]
    assert sorted(p.name for p in (tmp_path / "masks").iterdir()) == ["a.png", "c.png"]
    assert [v.mask_path for v in scene.split("train")] == paths
    labels = load_label_map(paths[0])
    assert labels.shape == (48, 64) and labels.max() > 0
    with Image.open(paths[0]) as img:
        assert img.mode.startswith("I;16")

    calls: list[str] = []
    real_build = generate_module.build_source

    def counting_build(config, views):
        source = real_build(config, views)
        return lambda view: (calls.append(view.name), source(view))[1]

    monkeypatch.setattr(generate_module, "build_source", counting_build)
    generate_masks(scene, MasksConfig(method="fallback"), progress=False)
    assert calls == []
    paths[1].unlink()
    generate_masks(scene, MasksConfig(method="fallback"), progress=False)
    assert calls == ["c"]


def test_generate_masks_simulated_and_its_errors(tmp_path):
    scene = make_scene(tmp_path / "gt")
    paths = generate_masks(scene, MasksConfig(method="simulated", noise="low", seed=1), progress=False)
    for path, view in zip(paths, scene.split("train")):
        out = load_label_map(path).numpy()
        assert out.shape == (48, 64)
        assert mean_best_iou(out, view.load_instances().numpy()) > 0.5

    bare = make_scene(tmp_path / "bare", with_instances=False)
    with pytest.raises(ValueError, match="view a has none"):
        generate_masks(bare, MasksConfig(method="simulated"), progress=False)
    with pytest.raises(ValueError, match="needs --checkpoint PATH"):
        generate_masks(bare, MasksConfig(method="sam", model="vit_h"), progress=False)
    assert not (tmp_path / "bare" / "masks").exists()


def test_generate_masks_sam_through_the_registry(tmp_path, monkeypatch, tiny_checkpoint):
    checkpoint, _ = tiny_checkpoint
    monkeypatch.setitem(segment_anything.sam_model_registry, "vit_b", lambda checkpoint=None: tiny_sam())
    scene = make_scene(tmp_path / "scene")
    config = MasksConfig(method="sam", checkpoint=checkpoint, model="vit_b", points_per_side=4, pred_iou_thresh=0.0)
    paths = generate_masks(scene, config, progress=False)
    for path in paths:
        labels = load_label_map(path)
        assert labels.shape == (48, 64)


def test_mobile_sam_checkpoints_load_strictly_and_are_recognised(tmp_path):
    """vit_t is MobileSAM's architecture (mobile_sam's registry); its checkpoints load through the same
    weights_only, strict loader, and one given with another --model is named as a vit_t checkpoint."""
    from protosaga_core.masks.sam import build_architecture, load_sam

    built = build_architecture("vit_t")
    path = tmp_path / "random_vit_t.pt"
    torch.save(built.state_dict(), path)
    loaded = load_sam(path, "vit_t")
    assert type(loaded.image_encoder).__name__ == "TinyViT"
    for name, tensor in built.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    with pytest.raises(ValueError, match="is it a vit_t checkpoint"):
        load_sam(path, lambda: tiny_sam())
