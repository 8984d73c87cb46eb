"""The browser camera as a render camera and back: a training camera survives the round trip."""

import math

import numpy as np
import pytest
import torch

from protosaga_app.browser_camera import BrowserPose, camera_from_pose, pose_from_camera, render_size
from protosaga_core.cameras import intrinsics, look_at


def test_a_training_camera_round_trips_through_the_browser_pose():
    viewmat = look_at(torch.tensor([[1.5, -2.0, 1.2]]), torch.tensor([[0.1, 0.2, 0.3]]), torch.tensor([0.0, 0.0, 1.0]))[0]
    K = intrinsics(90.0, 90.0, 64.0, 48.0)[0]
    pose = pose_from_camera(viewmat, K, 128, 96)
    assert pose.aspect == pytest.approx(128 / 96)
    assert pose.fov == pytest.approx(2 * math.atan(48.0 / 90.0))
    camera = camera_from_pose(pose, 128, 96)
    torch.testing.assert_close(camera.viewmats[0], viewmat.float(), atol=1e-5, rtol=0)
    torch.testing.assert_close(camera.Ks[0], K.float(), atol=1e-4, rtol=0)


def test_the_render_size_scales_focal_length_with_the_image():
    pose = BrowserPose(np.array([1.0, 0.0, 0.0, 0.0]), np.zeros(3), fov=1.0, aspect=2.0)
    small, large = camera_from_pose(pose, *render_size(2.0, 100)), camera_from_pose(pose, *render_size(2.0, 400))
    assert (small.width, small.height, large.width, large.height) == (100, 50, 400, 200)
    assert float(large.Ks[0, 1, 1]) == pytest.approx(4 * float(small.Ks[0, 1, 1]))
    # A point on the optical axis lands on the image centre at any size.
    assert float(large.Ks[0, 0, 2]) == 200.0 and float(large.Ks[0, 1, 2]) == 100.0


def test_render_size_keeps_the_aspect_and_the_longer_side():
    assert render_size(16 / 9, 256) == (256, 144)
    assert render_size(0.5, 256) == (128, 256)
    with pytest.raises(ValueError):
        render_size(0.0, 256)
    with pytest.raises(ValueError):
        camera_from_pose(BrowserPose(np.array([1.0, 0, 0, 0]), np.zeros(3), fov=math.pi, aspect=1.0), 10, 10)
