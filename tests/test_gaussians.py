import math

import pytest
import torch

from protosaga_core.cameras import Cameras, intrinsics, look_at
from protosaga_core.gaussians import (
    SH_C0,
    Gaussians,
    activate_opacities,
    num_sh_rest,
    rgb_to_sh0,
    sh0_to_rgb,
    sh_degree_from_rest,
)


def test_from_points_matches_3dgs_initialisation():
    # Four corners of a unit square plus a far point: the corners' 3 nearest neighbours are known.
    points = torch.tensor([[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0], [10, 10, 10]], dtype=torch.float32)
    colors = torch.tensor([[1.0, 0.0, 0.5]]).repeat(5, 1)
    g = Gaussians.from_points(points, colors, sh_degree=2, feature_dim=16, generator=torch.Generator().manual_seed(0))
    corner_rms = math.sqrt((1 + 1 + 2) / 3)  # distances 1, 1, sqrt(2)
    assert torch.allclose(g.scales[0], torch.full((3,), math.log(corner_rms)), atol=1e-6)
    assert torch.allclose(activate_opacities(g.opacities), torch.full((5,), 0.1), atol=1e-6)
    assert torch.allclose(sh0_to_rgb(g.sh0[:, 0]), colors, atol=1e-6)
    assert g.shN.shape == (5, 8, 3) and g.shN.abs().max() == 0
    assert torch.equal(g.quats, torch.tensor([[1.0, 0, 0, 0]]).repeat(5, 1))
    assert g.features.shape == (5, 16) and 0 < g.features.std() < 0.05
    assert g.sh_degree == 2 and g.feature_dim == 16 and len(g) == 5


def test_sh_helpers_round_trip():
    rgb = torch.rand(10, 3)
    assert torch.allclose(sh0_to_rgb(rgb_to_sh0(rgb)), rgb, atol=1e-6)
    assert rgb_to_sh0(torch.tensor([0.5 + SH_C0])).item() == pytest.approx(1.0)
    assert [num_sh_rest(d) for d in range(4)] == [0, 3, 8, 15]
    assert [sh_degree_from_rest(k) for k in (0, 3, 8, 15)] == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="no SH degree"):
        sh_degree_from_rest(5)


def test_random_box_stays_in_box_and_is_seeded():
    a = Gaussians.random_box(200, (0, 1, 2), (1, 2, 3), generator=torch.Generator().manual_seed(3))
    b = Gaussians.random_box(200, (0, 1, 2), (1, 2, 3), generator=torch.Generator().manual_seed(3))
    assert torch.equal(a.means, b.means) and torch.equal(a.features, b.features)
    assert (a.means >= torch.tensor([0.0, 1, 2])).all() and (a.means <= torch.tensor([1.0, 2, 3])).all()
    with pytest.raises(ValueError):
        Gaussians.random_box(0)


def test_shape_validation_names_the_field():
    g = Gaussians.random_box(4, sh_degree=1)
    fields = g.tensors()
    fields["opacities"] = torch.zeros(4, 1)
    with pytest.raises(ValueError, match="opacities"):
        Gaussians(**fields)
    fields = g.tensors()
    fields["shN"] = torch.zeros(4, 5, 3)
    with pytest.raises(ValueError, match="SH degree"):
        Gaussians(**fields)


def test_parameter_dict_round_trip_and_selection():
    g = Gaussians.random_box(10, sh_degree=1, feature_dim=4)
    params = g.as_parameter_dict()
    assert set(params) == {"means", "scales", "quats", "opacities", "sh0", "shN", "features"}
    assert all(p.requires_grad for p in params.values())
    back = Gaussians.from_tensors(params)
    assert torch.equal(back.means, g.means)
    picked = g.select(torch.tensor([1, 3]))
    assert len(picked) == 2 and torch.equal(picked.features, g.features[[1, 3]])
    assert len(g.select(g.means[:, 0] > 2)) == 0


def test_cameras_look_at_and_centres():
    eye = torch.tensor([[0.0, 0.0, -3.0], [2.0, 1.0, 0.0]])
    target = torch.zeros(2, 3)
    viewmats = look_at(eye, target, torch.tensor([0.0, -1.0, 0.0]))
    cams = Cameras(viewmats, intrinsics(50, 50, 20, 15, count=2), 40, 30)
    assert torch.allclose(cams.centers, eye, atol=1e-6)
    # The target lies on each camera's optical axis, in front of it.
    target_cam = viewmats[:, :3, :3] @ target[:, :, None] + viewmats[:, :3, 3:]
    assert torch.allclose(target_cam[:, :2, 0], torch.zeros(2, 2), atol=1e-6)
    assert (target_cam[:, 2, 0] > 0).all()
    assert cams[1].num_cameras == 1
    with pytest.raises(ValueError, match="Ks"):
        Cameras(viewmats, intrinsics(50, 50, 20, 15, count=3), 40, 30)
