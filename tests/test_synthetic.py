import json
from pathlib import Path

import numpy as np
import pytest
import torch

from protosaga_core.cli import main
from protosaga_core.datasets import load_scene
from protosaga_core.io.labelmaps import load_label_map
from protosaga_core.io.ply import read_ply
from protosaga_core.synthetic import PRESETS, build_objects, objects_to_gaussians, scaled_preset, synthesize

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    return synthesize(tmp_path_factory.mktemp("synth") / "demo", "demo", seed=3, progress=False)


def test_scene_content_has_room_furniture_and_side_by_side_duplicates():
    for seed in range(5):
        objects = build_objects(np.random.default_rng(seed), PRESETS["bench"])
        names = [o.name for o in objects]
        assert names[:7] == ["floor", "wall_north", "wall_east", "wall_south", "wall_west", "table", "cabinet"]
        free = [o for o in objects if o.instance_id > 7]
        assert PRESETS["bench"].min_objects - 2 <= len(free)
        assert [o.instance_id for o in objects] == list(range(1, len(objects) + 1))
    # Over a few seeds some identical copies stand in a row, each its own instance.
    duplicates = [
        o for seed in range(5) for o in build_objects(np.random.default_rng(seed), PRESETS["demo"]) if o.duplicate_of
    ]
    assert duplicates
    for seed in range(5):
        objects = {o.instance_id: o for o in build_objects(np.random.default_rng(seed), PRESETS["demo"])}
        for original_id in {o.duplicate_of for o in objects.values() if o.duplicate_of}:
            group = [objects[original_id]] + [o for o in objects.values() if o.duplicate_of == original_id]
            assert len({(o.shape, o.pattern, o.colors, o.parts[0][1]) for o in group}) == 1  # identical copies
            xs = sorted(o.parts[0][0][0] for o in group)
            half_width = group[0].parts[0][1][0]
            gaps = [b - a - 2 * half_width for a, b in zip(xs, xs[1:])]
            assert all(0 < gap < 0.05 for gap in gaps)  # side by side, nearly touching


def test_gaussians_carry_instance_ids():
    rng = np.random.default_rng(0)
    objects = build_objects(rng, PRESETS["demo"])
    gaussians, ids = objects_to_gaussians(objects, PRESETS["demo"], rng)
    assert len(gaussians) == len(ids)
    assert set(ids.unique().tolist()) == {o.instance_id for o in objects}
    assert torch.isfinite(gaussians.quats).all() and torch.allclose(gaussians.activated_quats.norm(dim=1), torch.ones(len(ids)))


def test_density_scale_multiplies_the_gaussians_of_the_same_objects():
    counts = {}
    for scale in (1.0, 3.0):
        rng = np.random.default_rng(0)
        objects = build_objects(rng, scaled_preset("demo", scale))
        counts[scale] = len(objects_to_gaussians(objects, scaled_preset("demo", scale), rng)[0])
    assert objects == build_objects(np.random.default_rng(0), PRESETS["demo"])  # only the splats get finer
    assert 2.9 < counts[3.0] / counts[1.0] < 3.1
    for bad in (0.0, -1.0, float("nan"), 1e4):
        with pytest.raises(ValueError, match="--density-scale"):
            scaled_preset("demo", bad)


def test_written_gaussians_are_the_ones_that_render_the_images(tmp_path, capsys):
    assert main(["synth", str(tmp_path / "data"), "--density-scale", "0.25", "--write-gaussians"]) == 0
    written = read_ply(tmp_path / "data" / "gaussians.ply")
    rng = np.random.default_rng(0)
    expected, _ = objects_to_gaussians(build_objects(rng, PRESETS["demo"]), scaled_preset("demo", 0.25), rng)
    assert written.instance_ids is None and written.gaussians.feature_dim == 0 and written.gaussians.sh_degree == 0
    for name in ("means", "scales", "quats", "opacities", "sh0"):
        assert torch.equal(getattr(written.gaussians, name), getattr(expected, name)), name
    assert json.loads((tmp_path / "data" / "synth.json").read_text())["density_scale"] == 0.25


def test_synthesize_writes_a_loadable_dataset_with_ground_truth(demo):
    scene = load_scene(demo)
    preset = PRESETS["demo"]
    assert scene.format == "nerf" and len(scene.views) == preset.num_views
    train, test = scene.split("train"), scene.split("test")
    assert len(test) == preset.num_views // preset.test_every
    assert all(v.mask_path is not None for v in train) and all(v.mask_path is None for v in test)
    assert all(v.instance_path is not None for v in scene.views)
    assert scene.points is not None and scene.points.shape[1] == 3
    # Test views are interleaved with the training trajectory, not a separate block.
    names = [v.name for v in scene.views]
    test_positions = [names.index(v.name) for v in test]
    assert max(test_positions) - min(test_positions) > len(scene.views) // 2
    view = train[0]
    image, gt, mask = view.load_image(), view.load_instances(), view.load_mask()
    assert image.shape == (preset.height, preset.width, 3) and image.std() > 0.05
    assert gt.shape == mask.shape == (preset.height, preset.width)
    assert len(gt.unique()) >= 6  # floor, walls and several objects are visible
    objects = json.loads((demo / "synth.json").read_text())["objects"]
    assert set(np.unique(np.concatenate([v.load_instances().unique().numpy() for v in scene.views]))) <= {0} | {
        o["instance_id"] for o in objects
    }


def interior(labels: torch.Tensor) -> torch.Tensor:
    """Pixels whose 3x3 neighbourhood has one label: away from silhouettes, where depth blends surfaces. [H, W]"""
    padded = torch.nn.functional.pad(labels[None, None].float(), (1, 1, 1, 1), mode="replicate")
    neighbours = torch.nn.functional.unfold(padded, 3)[0].reshape(9, *labels.shape)
    return (neighbours == labels.float()).all(dim=0)


def test_synthetic_depth_puts_room_pixels_on_the_room_planes(demo):
    """Back-projected room pixels lie on the floor (top at z = 0) and the inner wall faces (1 cm inside +-2.5).

    Expected depth is not the plane's exact depth on oblique surfaces: the room's flat splats (tangent sigma
    0.75 / sqrt(220) = 5 cm, opacity 0.98) overlap, and front-to-back compositing favours those whose centres
    are nearer the camera, so a pixel's depth leans a few cm toward the camera (exact facing a wall head-on).
    """
    planes = {1: (2, 0.0, 1.0), 2: (1, 2.49, -1.0), 3: (0, 2.49, -1.0), 4: (1, -2.49, 1.0), 5: (0, -2.49, 1.0)}
    meta = json.loads((demo / "transforms_train.json").read_text())
    assert meta["depth_unit_scale_factor"] == 0.001 and meta["frames"][0]["depth_file_path"].startswith("depths/")
    offsets = []  # along each plane's normal into the room, i.e. toward the cameras
    for view in load_scene(demo).views[::3]:
        depth, labels = view.load_depth(), view.load_instances()
        assert depth.shape == labels.shape and torch.equal(depth == 0, labels == 0)  # unknown exactly where no GT
        v, u = torch.meshgrid(torch.arange(view.height) + 0.5, torch.arange(view.width) + 0.5, indexing="ij")
        rays = torch.stack([u, v, torch.ones_like(u)], -1) @ torch.linalg.inv(view.K).T  # z = 1 [H, W, 3]
        camera_to_world = torch.linalg.inv(view.viewmat)
        world = (rays * depth[..., None]) @ camera_to_world[:3, :3].T + camera_to_world[:3, 3]
        keep = interior(labels)
        for instance_id, (axis, value, inward) in planes.items():
            on = keep & (labels == instance_id)
            offsets.append((world[on][:, axis] - value) * inward)
    offsets = torch.cat(offsets)
    assert len(offsets) > 10_000
    low, median, high = torch.quantile(offsets, torch.tensor([0.01, 0.5, 0.99])).tolist()
    assert low > -0.002 and median < 0.05 and high < 0.1, (low, median, high)  # never behind, within a splat


def test_synthetic_depth_places_the_scene_gaussians_on_their_objects(demo):
    # The generating Gaussians, assigned from the written GT maps, get back their own instance ids.
    from protosaga_core.metrics.objects3d import gaussian_gt_objects

    rng = np.random.default_rng(3)
    gaussians, ids = objects_to_gaussians(build_objects(rng, PRESETS["demo"]), PRESETS["demo"], rng)
    assigned = gaussian_gt_objects(gaussians.means, load_scene(demo).views)
    seen = assigned > 0
    assert seen.float().mean() > 0.5  # the rest are hidden (undersides, backs) or outside every view
    assert (assigned[seen] == ids[seen]).float().mean() > 0.98


def test_synthesize_is_deterministic(demo, tmp_path):
    again = synthesize(tmp_path / "again", "demo", seed=3, progress=False)
    for name in ("frame_0000.png", "frame_0005.png"):
        assert torch.equal(load_label_map(demo / "instances" / name), load_label_map(again / "instances" / name))
        assert (demo / "images" / name).read_bytes() == (again / "images" / name).read_bytes()
    assert (demo / "masks" / "frame_0000.png").read_bytes() == (again / "masks" / "frame_0000.png").read_bytes()


def test_masks_and_metrics_commands_on_a_synthetic_dataset(demo, tmp_path, capsys):
    for mask in (demo / "masks").iterdir():
        mask.unlink()
    assert main(["masks", str(demo), "--method", "simulated", "--noise", "low"]) == 0
    predictions = tmp_path / "pred"
    predictions.mkdir()
    for view in load_scene(demo).split("train"):
        (predictions / f"{view.name}.png").write_bytes((demo / "instances" / f"{view.name}.png").read_bytes())
    capsys.readouterr()
    # the masks cover the training views only; the GT folder holds every view's map
    assert main(["metrics", "--gt", str(demo / "instances"), "--pred", str(predictions), "--json", "--allow-missing"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["miou"] == pytest.approx(1.0) and result["precision"] == 1.0 and result["recall"] == 1.0


def test_committed_demo_dataset_is_complete():
    demo = ROOT / "assets" / "demo"
    scene = load_scene(demo)
    preset = PRESETS["demo"]
    assert len(scene.views) == preset.num_views
    assert all(v.mask_path is not None and v.mask_path.exists() for v in scene.split("train"))
    assert all(v.instance_path is not None for v in scene.views)
    assert sum(p.stat().st_size for p in demo.rglob("*") if p.is_file()) <= 5 * 2**20
