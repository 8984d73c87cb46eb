"""Splat arrays for viser: covariances, colours, per-instance grouping, the browser subset."""

import math

import numpy as np
import torch
from builders import gaussians_from, random_gaussians

from protosaga_app.splats import HIGHLIGHT_RGB, browser_subset, highlighted, instance_groups, splat_arrays


def rodrigues(axis: torch.Tensor, angle: float) -> torch.Tensor:
    """The rotation by `angle` radians about the unit `axis`: I + sin θ K + (1 - cos θ) K², K the cross-product
    matrix of the axis. [3, 3] float64"""
    x, y, z = axis.double().tolist()
    K = torch.tensor([[0.0, -z, y], [z, 0.0, -x], [-y, x, 0.0]], dtype=torch.float64)
    return torch.eye(3, dtype=torch.float64) + math.sin(angle) * K + (1.0 - math.cos(angle)) * K @ K


def quaternion(axis: torch.Tensor, angle: float) -> torch.Tensor:
    """The wxyz unit quaternion of the same rotation: (cos θ/2, sin θ/2 · axis). [4]"""
    return torch.cat([torch.tensor([math.cos(angle / 2)]), math.sin(angle / 2) * axis])


def covariances_of(scales: torch.Tensor, quats: torch.Tensor) -> np.ndarray:
    """splat_arrays' covariances of Gaussians at the origin with these scales (not logs) and wxyz quats."""
    return splat_arrays(gaussians_from(torch.zeros(len(scales), 3), scales, quats=quats)).covariances


SCALES = torch.tensor([[0.5, 0.2, 0.1], [3.0, 1.0, 0.01]])


def test_an_axis_aligned_gaussian_has_the_squared_scales_on_the_diagonal():
    """The identity rotation leaves the local axes on the world axes: Σ = diag(s²), nothing off the diagonal."""
    identity = torch.tensor([1.0, 0.0, 0.0, 0.0]).repeat(2, 1)
    expected = np.stack([np.diag(s**2) for s in SCALES.double().numpy()])
    np.testing.assert_allclose(covariances_of(SCALES, identity), expected, rtol=1e-6, atol=1e-12)


def test_a_quarter_turn_about_z_swaps_the_x_and_y_variances():
    """(cos 45°, 0, 0, sin 45°) turns the local x axis onto world y and y onto -x: the variances swap."""
    quarter = torch.tensor([math.sqrt(0.5), 0.0, 0.0, math.sqrt(0.5)]).repeat(2, 1)
    expected = np.stack([np.diag([sy**2, sx**2, sz**2]) for sx, sy, sz in SCALES.double().numpy()])
    np.testing.assert_allclose(covariances_of(SCALES, quarter), expected, rtol=1e-6, atol=1e-7)


def test_covariances_are_r_s2_rt_with_r_from_rodrigues_formula():
    """Rotations about tilted axes (so that a transposed or re-ordered rotation shows), built from axis and
    angle by Rodrigues' formula, independently of any quaternion code. A quaternion and its negative are
    the same rotation, and a quaternion of any length stands for its unit one."""
    generator = torch.Generator().manual_seed(0)
    axes = torch.nn.functional.normalize(torch.randn(6, 3, generator=generator), dim=1)
    angles = [0.3, 1.1, 2.0, -0.7, 2.9, 1.6]
    scales = 0.05 + torch.rand(6, 3, generator=generator)
    rotations = torch.stack([rodrigues(a, t) for a, t in zip(axes, angles)])
    expected = (rotations @ torch.diag_embed(scales.double() ** 2) @ rotations.transpose(1, 2)).numpy()
    quats = torch.stack([quaternion(a, t) for a, t in zip(axes, angles)])
    for stored in (quats, -quats, 3.7 * quats, -0.2 * quats):
        np.testing.assert_allclose(covariances_of(scales, stored), expected, rtol=1e-5, atol=1e-7)


def test_splat_arrays_carry_centres_activated_opacities_and_shapes():
    gaussians = random_gaussians(200, sh_degree=1, feature_dim=4)
    splats = splat_arrays(gaussians)
    np.testing.assert_allclose(splats.centers, gaussians.means.numpy())
    np.testing.assert_allclose(splats.opacities[:, 0], 1.0 / (1.0 + np.exp(-gaussians.opacities.double().numpy())), rtol=1e-6)
    assert splats.rgbs.min() >= 0.0 and splats.rgbs.max() <= 1.0
    assert splats.covariances.shape == (200, 3, 3) and splats.opacities.shape == (200, 1) and len(splats) == 200
    assert all(a.dtype == np.float32 for a in (splats.centers, splats.covariances, splats.rgbs, splats.opacities))


def test_splat_colour_is_the_clamped_degree_zero_term():
    wanted = torch.tensor([[0.2, 0.4, 0.6], [1.3, -0.2, 0.5], [0.0, 1.0, 0.5]])
    gaussians = gaussians_from(torch.zeros(3, 3), torch.ones(3, 3), colors=wanted)
    np.testing.assert_allclose(splat_arrays(gaussians).rgbs, wanted.clamp(0, 1).numpy(), atol=1e-6)


def test_instance_groups_partition_the_chosen_gaussians():
    labels = np.array([3, 0, 3, 7, 7, 7, 0, 3])
    groups = instance_groups(labels)
    assert {k: v.tolist() for k, v in groups.items()} == {0: [1, 6], 3: [0, 2, 7], 7: [3, 4, 5]}
    subset = instance_groups(labels, np.array([0, 3, 6]))
    assert {k: v.tolist() for k, v in subset.items()} == {0: [6], 3: [0], 7: [3]}


def test_browser_subset_keeps_the_most_opaque_in_index_order():
    opacities = np.array([[0.1], [0.9], [0.5], [0.95], [0.2]])
    assert browser_subset(opacities, 2).tolist() == [1, 3]
    assert browser_subset(opacities, None).tolist() == [0, 1, 2, 3, 4]
    assert browser_subset(opacities, 10).tolist() == [0, 1, 2, 3, 4]
    assert browser_subset(opacities, 0).tolist() == []


def test_highlight_moves_colours_towards_the_highlight_colour():
    rgbs = np.array([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]], dtype=np.float32)
    out = highlighted(rgbs)
    assert np.all(np.linalg.norm(out - HIGHLIGHT_RGB, axis=1) < np.linalg.norm(rgbs - HIGHLIGHT_RGB, axis=1))
