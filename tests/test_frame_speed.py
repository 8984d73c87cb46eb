"""The viewer's fast frame paths give what the slow ones gave: the forward-only compositing against the
autograd one, a frame of the Gaussians that may reach it against a frame of all of them, label maps without a channel per label against the argmax of one-hot channels, and the
background message with a reused depth against viser's own."""

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import viser
from PIL import Image

from protosaga_app.live import COVERED_ALPHA, FeaturePca, frame_subset, render_frame
from protosaga_app.live_view import encode_depth, send_background
from protosaga_core.cameras import Cameras, intrinsics, look_at
from protosaga_core.gaussians import Gaussians
from protosaga_core.method.lifting import covered_labels, labels_from_weights, render_label_maps
from protosaga_core.method.prototypes import Prototypes, classify
from protosaga_core.render import api, composite, render, torch_backend
from protosaga_core.render.composite import tile_blocks
from protosaga_core.render.labels import LabelWeights, tile_label_weights, tile_local_labels
from protosaga_core.render.projection import may_reach_image, project
from protosaga_core.render.settings import RasterSettings
from protosaga_core.render.torch_backend import rasterize_torch

NUM_LABELS = 12


def random_scene(count: int, seed: int, width: int = 48, height: int = 36) -> tuple[Gaussians, Cameras, torch.Tensor]:
    """Overlapping Gaussians in front of two cameras, with labels 0..NUM_LABELS (0: unlabelled). [N]"""
    generator = torch.Generator().manual_seed(seed)
    means = torch.rand(count, 3, generator=generator) * torch.tensor([1.0, 1.0, 0.6]) - torch.tensor([0.5, 0.5, 0.3])
    gaussians = Gaussians(
        means=means,
        scales=torch.full((count, 3), -3.0) + 0.8 * torch.rand(count, 3, generator=generator),
        quats=torch.randn(count, 4, generator=generator),
        opacities=2.0 * torch.randn(count, generator=generator),
        sh0=torch.rand(count, 1, 3, generator=generator),
        shN=torch.zeros(count, 0, 3),
        features=torch.randn(count, 4, generator=generator),
    )
    eye = torch.tensor([[0.2, -0.1, 2.0], [-0.3, 0.2, 1.8]])
    viewmats = look_at(eye, torch.zeros(2, 3), torch.tensor([0.0, 1.0, 0.0]))
    cameras = Cameras(viewmats, intrinsics(50.0, 50.0, width / 2, height / 2, count=2), width, height)
    labels = torch.randint(0, NUM_LABELS + 1, (count,), generator=generator)
    return gaussians, cameras, labels


def one_hot_of(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The label channels the viewer rendered before: one per id > 0. ([N, T], [T])"""
    ids = torch.unique(labels[labels > 0])
    columns = torch.searchsorted(ids, labels).clamp(max=len(ids) - 1)
    one_hot = F.one_hot(columns, len(ids)).float() * (labels > 0)[:, None]
    return one_hot, ids


def render_with_autograd(gaussians: Gaussians, cameras: Cameras, extras: torch.Tensor):
    """`render` through `CompositeChunks` (its forward is the compositing before the fast path)."""
    with torch.enable_grad():
        return render(gaussians, cameras, sh_degree=0, extras=extras.clone().requires_grad_(), depth="ED")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_forward_only_compositing_matches_the_autograd_path(seed):
    gaussians, cameras, _ = random_scene(600, seed)
    with torch.no_grad():
        fast = render(gaussians, cameras, sh_degree=0, extras=gaussians.features, depth="ED")
    slow = render_with_autograd(gaussians, cameras, gaussians.features)
    assert slow.alphas.max() > 0.9  # pixels are covered many layers deep
    for name in ("colors", "extras", "depths", "alphas"):
        assert torch.allclose(getattr(fast, name), getattr(slow, name).detach(), atol=1e-5, rtol=1e-5), name


def test_blocks_of_any_size_give_the_same_image(monkeypatch):
    gaussians, cameras, _ = random_scene(600, 3)
    with torch.no_grad():
        whole = render(gaussians, cameras, extras=gaussians.features)
        monkeypatch.setattr(composite, "BLOCK_ELEMENTS", 1)  # one tile a block
        tiny = render(gaussians, cameras, extras=gaussians.features)
    assert torch.allclose(whole.colors, tiny.colors, atol=1e-6) and torch.allclose(whole.extras, tiny.extras, atol=1e-6)
    assert torch.allclose(whole.alphas, tiny.alphas, atol=1e-6)


def test_tile_blocks_cover_the_chunks_without_splitting_a_tile():
    chunk_first = torch.tensor([0, 0, 0, 3, 4, 4, 4, 4, 4, 9, 10])
    blocks = tile_blocks(chunk_first, 4)
    assert blocks[0][0] == 0 and blocks[-1][1] == len(chunk_first)
    assert all(a[1] == b[0] for a, b in zip(blocks, blocks[1:]))
    assert all(chunk_first[start] == start for start, _ in blocks)
    assert tile_blocks(torch.zeros(0, dtype=torch.int64), 4) == []


def _decided(weights: torch.Tensor, threshold: float = 1e-5) -> torch.Tensor:
    """Pixels whose dense label map cannot flip by float rounding: the best label leads the second by
    more than `threshold` (or no label has any), and the labelled total is not within it of the coverage
    threshold. [..., T] -> [...]"""
    top2 = weights.topk(2, dim=-1).values
    leads = (top2[..., 0] - top2[..., 1] > threshold) | (top2[..., 0] == 0)
    return leads & ((weights.sum(-1) - 0.5).abs() > threshold)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_label_maps_without_label_channels_are_the_argmax_of_one_hot_channels(seed):
    gaussians, cameras, labels = random_scene(800, seed)
    one_hot, ids = one_hot_of(labels)
    weights = render_with_autograd(gaussians, cameras, one_hot).extras.detach()
    dense = labels_from_weights(weights, ids)
    with torch.no_grad():
        out = render(gaussians, cameras, sh_degree=0, depth="ED", labels=labels)
    fast = covered_labels(out.labels)
    decided = _decided(weights)
    assert decided.float().mean() > 0.95 and (dense > 0).float().mean() > 0.3
    assert torch.equal(fast[decided], dense[decided])
    assert torch.allclose(out.labels.total, weights.sum(-1), atol=1e-5)
    assert torch.allclose(out.labels.best, weights.max(-1).values, atol=1e-5)
    assert torch.equal(render_label_maps(gaussians, cameras, labels, ids)[decided], dense[decided])


def test_ties_go_to_the_smaller_id_as_in_the_dense_argmax():
    weights = torch.tensor([[[0.25, 0.0], [0.25, 0.0]]])  # one tile, two labels, two pixels
    tile = tile_label_weights(weights, torch.tensor([[4, 9]]))
    dense = LabelWeights.from_weights(weights.transpose(1, 2), torch.tensor([4, 9]))
    assert tile.ids.tolist() == dense.ids.tolist() == [[4, 0]]  # no weight: no label
    assert torch.equal(tile.total, dense.total)


def test_tile_local_labels_renumber_by_id_within_each_tile():
    ids = torch.tensor([0, 3, 8, 11])
    isect_labels = torch.tensor([2, 0, 1, 2, 3, 3])  # indices into ids
    isect_tiles = torch.tensor([0, 0, 0, 1, 1, 2])
    local = tile_local_labels(isect_labels, ids, isect_tiles, num_tiles=4)
    assert local.ids.tolist() == [[3, 8], [8, 11], [11, 0], [0, 0]]
    assert local.columns.tolist() == [1, -1, 0, 0, 1, 0]


def test_labels_need_no_gradients():
    gaussians, cameras, labels = random_scene(50, 0)
    with pytest.raises(ValueError, match="without gradients"):
        rasterize_torch(
            gaussians.means.requires_grad_(), gaussians.activated_quats, gaussians.activated_scales,
            gaussians.activated_opacities, torch.rand(50, 3), cameras.viewmats, cameras.Ks, cameras.width,
            cameras.height, api.RasterSettings(), labels=labels,
        )


def test_gsplat_label_fallback_blends_one_hot_channels(request):
    """On CUDA the labels become one-hot channels of gsplat's render; emulated here with the torch
    rasterizer standing in for gsplat."""
    gaussians, cameras, labels = random_scene(800, 5)
    with torch.no_grad():
        expected = render(gaussians, cameras, sh_degree=0, depth="ED", labels=labels)
        request.getfixturevalue("gsplat_emulated")  # from here on
        emulated = render(gaussians, cameras, sh_degree=0, depth="ED", labels=labels)
    assert torch.allclose(emulated.colors, expected.colors, atol=1e-6)
    assert torch.allclose(emulated.labels.total, expected.labels.total, atol=1e-5)
    one_hot, ids = one_hot_of(labels)
    decided = _decided(render_with_autograd(gaussians, cameras, one_hot).extras.detach())
    assert torch.equal(covered_labels(emulated.labels)[decided], covered_labels(expected.labels)[decided])


class _Recorder:
    """Stands in for a scene's websocket interface: keeps the queued messages."""

    def __init__(self) -> None:
        self.messages = []

    def queue_message(self, message) -> None:
        self.messages.append(message)


def test_background_with_reused_depth_is_the_message_viser_sends():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    depth = rng.uniform(0.5, 200.0, (48, 64)).astype(np.float32)  # beyond viser's range too: clipped alike

    class Scene:
        _websock_interface = _Recorder()

    viser.SceneApi.set_background_image(Scene(), image, format="jpeg", jpeg_quality=90, depth=depth)
    send_background(Scene(), image, encode_depth(depth))
    theirs, ours = Scene._websock_interface.messages
    assert type(ours) is type(theirs) and ours.format == theirs.format == "jpeg"
    assert ours.rgb_data == theirs.rgb_data
    # The depth PNG is compressed less, so compare its pixels.
    assert np.array_equal(decode_png(ours.depth_data), decode_png(theirs.depth_data))


def decode_png(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        assert image.mode == "RGBA"
        return np.asarray(image)


def spread_scene(count: int, seed: int) -> tuple[Gaussians, Cameras, torch.Tensor]:
    """Gaussians of every size all around two cameras (behind, beside, far off, at the image's edges)."""
    gaussians, cameras, labels = random_scene(count, seed)
    generator = torch.Generator().manual_seed(seed + 100)
    means = 4.0 * torch.randn(count, 3, generator=generator)
    scales = torch.empty(count, 3).uniform_(-6.0, 0.5, generator=generator)
    return Gaussians(means, scales, gaussians.quats, gaussians.opacities, gaussians.sh0, gaussians.shN, gaussians.features), cameras, labels


@pytest.mark.parametrize("mode", ["classic", "antialiased"])
@pytest.mark.parametrize("seed", [0, 1])
def test_the_frame_pre_cull_keeps_every_gaussian_the_projection_keeps(seed, mode):
    gaussians, cameras, _ = spread_scene(20_000, seed)
    settings = RasterSettings(rasterize_mode=mode)
    projected = project(
        gaussians.means, gaussians.activated_quats, gaussians.activated_scales, gaussians.activated_opacities,
        cameras.viewmats, cameras.Ks, cameras.width, cameras.height, settings,
    )
    for camera in range(cameras.num_cameras):
        kept = (projected.radii[camera] > 0).any(-1)
        reach = may_reach_image(
            gaussians.means, gaussians.activated_scales.amax(-1), cameras.viewmats[camera], cameras.Ks[camera],
            cameras.width, cameras.height, settings,
        )
        assert kept.sum() > 100 and not (kept & ~reach).any()
        assert reach.sum() < 0.5 * len(gaussians)  # it does cull: most of the scene is out of view


@pytest.mark.parametrize("lifted", [True, False])
def test_a_frame_of_the_pre_culled_gaussians_is_the_frame_of_all_of_them(lifted):
    gaussians, cameras, labels = spread_scene(20_000, 3)
    camera = cameras[0]
    prototypes = Prototypes(torch.arange(1, NUM_LABELS + 1), torch.randn(NUM_LABELS, gaussians.feature_dim), torch.ones(NUM_LABELS, dtype=torch.int64))
    frame = render_frame(gaussians, camera, "segmentation", prototypes, FeaturePca.fit(gaussians.features), labels=labels if lifted else None)
    full = render(gaussians, camera, sh_degree=0, extras=None if lifted else gaussians.features, depth="ED", labels=labels if lifted else None)
    assert len(frame_subset(gaussians, camera, with_features=False).index) < 0.5 * len(gaussians)
    assert np.array_equal(frame.rgb, full.colors[0].clamp(0.0, 1.0).numpy())
    covered = full.alphas[0, ..., 0] > COVERED_ALPHA
    expected = covered_labels(full.labels)[0] if lifted else classify(full.extras[0], prototypes)
    assert np.array_equal(frame.labels, torch.where(covered, expected, 0).numpy())


@pytest.mark.parametrize("tile_size", [4, 8])
def test_reaches_tile_keeps_every_intersection_that_reaches_a_pixel(tile_size):
    """Against every pixel centre of the tile: no intersection with an alpha at or above the threshold is
    dropped, and most of those whose alphas all fall short are (the test is exact up to its margin)."""
    generator = torch.Generator().manual_seed(tile_size)
    count = 20_000
    # Conics of covariances from thin and diagonal to round, centres up to three tiles away.
    angle = torch.rand(count, generator=generator) * torch.pi
    sigmas = torch.exp(torch.rand(count, 2, generator=generator) * 4.0 - 0.5)
    rot = torch.stack([angle.cos(), -angle.sin(), angle.sin(), angle.cos()], -1).view(count, 2, 2)
    cov = rot @ torch.diag_embed(sigmas**2) @ rot.transpose(1, 2) + 0.3 * torch.eye(2)
    inverse = torch.linalg.inv(cov)
    a, b, c = inverse[:, 0, 0], inverse[:, 0, 1], inverse[:, 1, 1]
    u, v = ((torch.rand(count, 2, generator=generator) - 0.5) * 6 * tile_size).unbind(-1)
    log_opacity = torch.log(torch.rand(count, generator=generator) * 0.999 + 1.0 / 255.0)
    coeffs = torch_backend._quadratic(u, v, a, b, c, log_opacity).T
    alphas = composite.slot_alphas(coeffs, composite.pixel_basis(tile_size, torch.float32, torch.device("cpu")))
    reaching = (alphas >= composite.ALPHA_THRESHOLD).any(-1)
    kept = composite.reaches_tile(coeffs, tile_size)
    assert reaching.sum() > count // 10 and (~reaching).sum() > count // 10
    assert not (reaching & ~kept).any()
    assert (kept & ~reaching).sum() < 0.01 * (~reaching).sum()


def test_forward_frames_equal_without_the_intersections_that_reach_no_pixel(monkeypatch):
    """The forward-only path drops the intersections `reaches_tile` rules out: its images and label maps
    are those of compositing every intersection binned, up to float rounding."""
    gaussians, cameras, labels = random_scene(3000, seed=5)
    dropped = []

    def counted(coeffs, tile_size):
        kept = composite.reaches_tile(coeffs, tile_size)
        dropped.append(int((~kept).sum()))
        return kept

    with torch.no_grad():
        monkeypatch.setattr(torch_backend, "reaches_tile", counted)
        culled = render(gaussians, cameras, extras=gaussians.features, labels=labels)
        monkeypatch.setattr(torch_backend, "reaches_tile", lambda coeffs, tile_size: torch.ones(len(coeffs), dtype=torch.bool))
        full = render(gaussians, cameras, extras=gaussians.features, labels=labels)
    assert dropped[0] > 0.05 * culled.info["isect_ids"].numel()  # the meta keeps gsplat's intersections
    torch.testing.assert_close(culled.colors, full.colors, atol=1e-5, rtol=0)
    torch.testing.assert_close(culled.extras, full.extras, atol=1e-5, rtol=0)
    torch.testing.assert_close(culled.alphas, full.alphas, atol=1e-5, rtol=0)
    assert torch.equal(culled.labels.ids, full.labels.ids)
    torch.testing.assert_close(culled.labels.best, full.labels.best, atol=1e-5, rtol=0)
