"""The training cameras in the viewer: their frustums, the view new tabs start with, and jumping into one.

Where things stand is computed by `framing.py` (pure, viser-free); this module puts it on a viser server.
"""

from __future__ import annotations

import logging

import numpy as np
import viser
import viser.transforms as vtf

from protosaga_core.datasets.scene import View

from .browser_camera import frustum_scale
from .framing import (
    CONTROL_PANEL_PX,
    DEFAULT_FOV,
    TYPICAL_CANVAS,
    behind_frustum,
    framed_objects,
    frustum_depth_for,
    near_plane,
    overview_pose,
    scene_extent,
    scene_up,
    training_poses,
)

logger = logging.getLogger(__name__)

THUMBNAIL_SIDE = 96
"""Longer side of a frustum's thumbnail: enough to recognise the view, small enough for hundreds."""
FRUSTUM_LINE = 0.025
"""Frustum line thickness as a share of its depth."""


class TrainingCameras:
    """The training views' cameras on one viser server, sized and framed for one scene."""

    def __init__(
        self, server: viser.ViserServer, views: list[View], centers: np.ndarray, opacities: np.ndarray, drawable: np.ndarray
    ) -> None:
        """
        Args:
            views: the training views (those without a usable pose or intrinsics get no frustum).
            centers, opacities: every Gaussian's ([N, 3], [N, 1]): the scene's size comes from the finite
                centres, what the cameras look at from the `drawable` ([N] bool) Gaussians.
        """
        self.server = server
        self.views = views
        self.poses = training_poses(views)
        self.extent = scene_extent(centers)
        self.focus = framed_objects(centers[drawable], opacities[drawable], [view for view in views if view.name in self.poses])
        """Centre and radius of what the training cameras look at; None when nothing is framed."""
        positions = np.stack([pose.position for pose in self.poses.values()]) if self.poses else np.zeros((0, 3))
        self.frustum_depth = frustum_depth_for(positions, self.extent)
        self.near = near_plane(self.frustum_depth, self.extent)
        """Every tab's near plane: close enough for the objects, far enough to clip a frustum behind it."""
        self._frustums: list[viser.CameraFrustumHandle] = []

    def add_frustums(self) -> None:
        """One frustum per training camera with a usable pose, all `frustum_depth` deep; a click on one
        moves the clicking tab into it."""
        for view in self.views:
            pose = self.poses.get(view.name)
            if pose is None:
                continue
            image = view.load_image()
            step = max(1, max(image.shape[:2]) // THUMBNAIL_SIDE)
            thumbnail = (image[::step, ::step].clamp(0, 1) * 255).byte().numpy()
            scale = frustum_scale(pose.fov, pose.aspect, self.frustum_depth)
            frustum = self.server.scene.add_camera_frustum(
                f"/cameras/{view.name}", pose.fov, pose.aspect, scale=scale, thickness=FRUSTUM_LINE * self.frustum_depth,
                image=thumbnail, wxyz=pose.wxyz, position=pose.position,
            )
            frustum.on_click(lambda event, name=view.name: self.go_to(event.client, name))
            self._frustums.append(frustum)

    def set_visible(self, visible: bool) -> None:
        with self.server.atomic():
            for frustum in self._frustums:
                frustum.visible = visible

    def set_initial_camera(self) -> None:
        """New tabs (and viser's Reset View) start with what the training cameras look at framed in the part
        of the canvas the control panel leaves free, seen from the first training camera's side and from
        above: an overview (not viser's origin, nor a view filled by a training camera's thumbnail)."""
        if self.focus is None:
            return
        centre, radius = self.focus
        poses = list(self.poses.values())
        if poses:
            up = scene_up(np.stack([vtf.SO3(p.wxyz).as_matrix() for p in poses]))
            towards, fov = poses[0].position - centre, poses[0].fov
        else:
            up, towards, fov = np.array([0.0, 0.0, 1.0]), np.array([1.0, -1.0, 0.0]), DEFAULT_FOV
        width, height = TYPICAL_CANVAS
        position, look_at = overview_pose(centre, radius, up, towards, fov, width / height, CONTROL_PANEL_PX / width)
        initial = self.server.initial_camera
        initial.position = position
        initial.look_at = look_at
        initial.up = up
        initial.fov = fov
        initial.near = self.near

    def go_to(self, client: viser.ClientHandle, view_name: str) -> None:
        """Move a tab's camera to look through a training camera: just behind its frustum, with its
        orientation and field of view, and the orbit point at the objects' depth on its axis.

        Standing at the camera itself would put the tab inside the frustum, whose photo then covers the
        whole view; from BEHIND_FRUSTUM depths back the near plane clips that frustum, and the view is the
        training view widened by a few per cent.
        """
        pose = self.poses.get(view_name)
        if pose is None:
            logger.warning("training view %s has no usable camera to go to", view_name)
            return
        position = behind_frustum(pose, self.frustum_depth)
        forward = vtf.SO3(pose.wxyz).as_matrix()[:, 2]
        target = self.focus[0] if self.focus is not None else position + forward * self.extent
        # The orbit point: on the axis, as deep as the objects (never behind the near plane).
        look_at = position + forward * max(float((target - position) @ forward), 2.0 * self.near)
        with client.atomic():
            client.camera.near = self.near
            client.camera.fov = pose.fov
            client.camera.position = position
            client.camera.wxyz = pose.wxyz
            client.camera.look_at = look_at
