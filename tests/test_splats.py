"""Splat arrays for viser: covariances, colours, per-instance grouping, the browser subset."""

import numpy as np
import torch
from gsplat.cuda._torch_impl import _quat_scale_to_covar_preci

from protosaga_app.splats import HIGHLIGHT_RGB, browser_subset, highlighted, instance_groups, splat_arrays
from protosaga_core.gaussians import Gaussians, rgb_to_sh0


def test_splat_arrays_match_gsplats_covariances_and_the_dc_colour():
    torch.manual_seed(0)
    gaussians = Gaussians.random_box(200, sh_degree=1, feature_dim=4)
    splats = splat_arrays(gaussians)
    covariances, _ = _quat_scale_to_covar_preci(
        gaussians.activated_quats.double(), gaussians.activated_scales.double(), compute_preci=False
    )
    np.testing.assert_allclose(splats.covariances, covariances.float().numpy(), rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(splats.centers, gaussians.means.numpy())
    np.testing.assert_allclose(splats.opacities[:, 0], torch.sigmoid(gaussians.opacities).numpy(), rtol=1e-6)
    assert splats.rgbs.min() >= 0.0 and splats.rgbs.max() <= 1.0
    assert splats.covariances.shape == (200, 3, 3) and splats.opacities.shape == (200, 1)


def test_splat_colour_is_the_clamped_degree_zero_term():
    gaussians = Gaussians.random_box(3, sh_degree=0, feature_dim=2)
    wanted = torch.tensor([[0.2, 0.4, 0.6], [1.3, -0.2, 0.5], [0.0, 1.0, 0.5]])
    gaussians = Gaussians(**{**gaussians.tensors(), "sh0": rgb_to_sh0(wanted)[:, None, :]})
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
