"""Server-side frames of the browser camera: live per-pixel prototype segmentation and feature PCA.

A frame renders the visible Gaussians through the one render interface (gsplat on a GPU, the torch
rasterizer on the CPU) with their colours, features and expected depth, then:
- segmentation: the scene's per-Gaussian labels rendered (the instance with the largest blended weight at
  each pixel, as `protosaga segment --method lifted` does, without a channel per instance on the CPU:
  `render(labels=...)`), or, for scenes labelled by the paper's rule,
  Eq. 19 per pixel (argmax of τ·cos between the rendered feature and each prototype), drawn as instance
  colours over the image, the selection highlighted;
- pca: the rendered features projected on the three principal axes of the Gaussians' features.
The label map of every frame is kept, so a click reads the instance under the cursor from it (picking).
`render_view` is a document's frame from a browser pose: what each tab's `LiveView` (live_view.py, on
viser) shows.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from protosaga_core.cameras import Cameras
from protosaga_core.gaussians import Gaussians
from protosaga_core.method.lifting import covered_labels
from protosaga_core.method.prototypes import Prototypes, classify
from protosaga_core.palette import instance_color
from protosaga_core.render import render
from protosaga_core.render.projection import may_reach_image
from protosaga_core.render.settings import RasterSettings

from .browser_camera import BrowserPose, camera_from_pose
from .document import SceneDocument
from .splats import DIMMED, HIGHLIGHT_MIX, HIGHLIGHT_RGB

RenderMode = Literal["rgb", "instances", "segmentation", "prototypes", "pca"]
SERVER_MODES: tuple[RenderMode, ...] = ("segmentation", "prototypes", "pca")
"""Modes drawn by the server as the background image; the others are the browser's own splats."""
OVERLAID_MODES: tuple[RenderMode, ...] = ("segmentation", "prototypes")
"""Server modes that colour the rendered image by the label map: the lifted labels where the scene has
them (else Eq. 19), and Eq. 19 on the rendered features, the paper's inference."""
FEATURE_MODES: tuple[RenderMode, ...] = ("prototypes", "pca")
"""Modes that read per-Gaussian features: not for an imported scene without them."""
COVERED_ALPHA = 0.5
"""A pixel shows a Gaussian (and gets a label) where the accumulated opacity exceeds this."""
OVERLAY_MIX = 0.55
FAR_DEPTH = 1.0e3
"""Depth given to empty pixels so that every scene element (frustums) draws in front of them."""


@dataclass(frozen=True)
class Frame:
    """One server-rendered view.

    Attributes:
        image: what the browser shows. [H, W, 3] uint8
        depth: camera depth per pixel, FAR_DEPTH where nothing is drawn. [H, W] float32
        labels: the segmentation's instance id per pixel, 0 where nothing is drawn. [H, W] int64
        camera: the camera it was rendered from.
        mode: the render mode it shows.
        rgb: the rendered colours under the overlay, kept so a selection change recolours the frame
            without rendering it again. [H, W, 3] float32 in [0, 1]
    """

    image: np.ndarray
    depth: np.ndarray
    labels: np.ndarray
    camera: Cameras
    mode: RenderMode
    rgb: np.ndarray


@dataclass(frozen=True)
class FeaturePca:
    """A fixed projection of unit features to RGB, fitted once on the Gaussians' features.

    Attributes:
        mean: [D]
        axes: the three principal axes. [D, 3]
        low, high: the 1st and 99th percentile of each projected channel. [3]
    """

    mean: Tensor
    axes: Tensor
    low: Tensor
    high: Tensor

    @classmethod
    def fit(cls, features: Tensor, max_samples: int = 200_000, seed: int = 0) -> "FeaturePca":
        """Fit on (a seeded sample of) the per-Gaussian features. [N, D]"""
        unit = F.normalize(features.detach().float(), dim=-1)
        if len(unit) > max_samples:
            generator = torch.Generator(device="cpu").manual_seed(seed)
            unit = unit[torch.randperm(len(unit), generator=generator)[:max_samples].to(unit.device)]
        mean = unit.mean(dim=0)
        centred = unit - mean
        # Full SVD of the small [D, D] covariance: deterministic, unlike a randomised low-rank solver.
        _, _, vh = torch.linalg.svd(centred.T @ centred)
        axes = vh[:3].T
        if axes.shape[1] < 3:  # fewer than three feature channels
            axes = F.pad(axes, (0, 3 - axes.shape[1]))
        projected = centred @ axes
        low, high = torch.quantile(projected, 0.01, dim=0), torch.quantile(projected, 0.99, dim=0)
        return cls(mean, axes, low, high)

    def colors(self, features: Tensor) -> Tensor:
        """Colours in [0, 1] of features. [..., D] -> [..., 3]"""
        projected = (F.normalize(features, dim=-1) - self.mean.to(features)) @ self.axes.to(features)
        span = (self.high - self.low).clamp_min(1e-6).to(features)
        return ((projected - self.low.to(features)) / span).clamp(0.0, 1.0)


def color_table(ids: np.ndarray | list[int]) -> np.ndarray:
    """Instance colours indexed by id (row 0, no instance, is black). [max_id + 1, 3] float32 in [0, 1]"""
    ids = np.asarray(ids, dtype=np.int64)
    table = np.zeros((int(ids.max(initial=0)) + 1, 3), dtype=np.float32)
    for instance_id in ids.tolist():  # one row per instance, not per pixel
        table[instance_id] = np.asarray(instance_color(instance_id), dtype=np.float32) / 255.0
    return table


@dataclass(frozen=True)
class FrameSubset:
    """The Gaussians one frame renders: those that may reach it, with what a degree-0 frame reads.

    Attributes:
        index: their indices in the Gaussians given. [M] int64
        gaussians: them, without higher SH bands, their features only when asked for.
    """

    index: Tensor
    gaussians: Gaussians


def frame_subset(gaussians: Gaussians, camera: Cameras, with_features: bool) -> FrameSubset:
    """Gaussians whose projection may touch the frame (`may_reach_image`): the others have no pixel, so the
    frame is the same without them, and a frame of a big scene then projects, colours and bins only the
    part in front of the camera (a room seen from inside: about half). One camera."""
    settings = RasterSettings()  # the settings `render` uses below
    reach = may_reach_image(
        gaussians.means, gaussians.activated_scales.amax(-1), camera.viewmats[0], camera.Ks[0], camera.width, camera.height, settings
    )
    index = torch.nonzero(reach)[:, 0]
    features = gaussians.features[index] if with_features else gaussians.features[:, :0][index]
    subset = Gaussians(
        gaussians.means[index], gaussians.scales[index], gaussians.quats[index], gaussians.opacities[index],
        gaussians.sh0[index], gaussians.shN[:, :0][index], features,
    )
    return FrameSubset(index, subset.detach())


def render_frame(
    gaussians: Gaussians,
    camera: Cameras,
    mode: RenderMode,
    prototypes: Prototypes,
    pca: FeaturePca,
    selected: frozenset[int] = frozenset(),
    labels: Tensor | None = None,
) -> Frame:
    """Render one server-side frame of the Gaussians (only the visible ones should be passed).

    Args:
        gaussians: on the device to render on.
        camera: exactly one camera.
        mode: "segmentation", "prototypes" or "pca".
        prototypes: the classifier of Eq. 19 (after any merges).
        selected: instances to highlight in the segmentation.
        labels: per-Gaussian ids of `gaussians` [M] int64; when given, the frame's label map renders them
            instead of classifying rendered features by Eq. 19, except in the "prototypes" mode.
    """
    if mode not in SERVER_MODES:
        raise ValueError(f"the server renders {SERVER_MODES}, not {mode!r}")
    if camera.num_cameras != 1:
        raise ValueError(f"a frame needs exactly one camera, got {camera.num_cameras}")
    camera = camera.to(gaussians.device)
    height, width = camera.height, camera.width
    if len(gaussians) == 0:
        return Frame(
            np.zeros((height, width, 3), np.uint8),
            np.full((height, width), FAR_DEPTH, np.float32),
            np.zeros((height, width), np.int64),
            camera,
            mode,
            np.zeros((height, width, 3), np.float32),
        )
    lifted = labels is not None and mode != "prototypes"
    with torch.no_grad():
        # Lifted labels need no features (the renderer returns each pixel's best label itself), and the
        # PCA colours' label map (what clicks there read) is the same one, so clicks never reach a hidden
        # instance through a prototype.
        with_features = mode == "pca" or not lifted
        reaching = frame_subset(gaussians, camera, with_features)
        extras = reaching.gaussians.features if with_features else None
        labels = labels.to(gaussians.device)[reaching.index] if lifted else None
        out = render(reaching.gaussians, camera, sh_degree=0, extras=extras, depth="ED", labels=labels)
        rgb = out.colors[0].clamp(0.0, 1.0)
        covered = out.alphas[0, ..., 0] > COVERED_ALPHA
        predicted = covered_labels(out.labels)[0] if lifted else classify(out.extras[0], prototypes)
        label_map = torch.where(covered, predicted, torch.zeros((), dtype=torch.int64))
        if mode in OVERLAID_MODES:
            image = _overlay(rgb, label_map, selected)
        else:
            image = torch.where(covered[..., None], pca.colors(out.extras[0]), rgb)
        depth = torch.where(covered, out.depths[0, ..., 0], torch.full_like(out.alphas[0, ..., 0], FAR_DEPTH))
    return Frame(_to_uint8(image), depth.float().cpu().numpy(), label_map.cpu().numpy(), camera, mode, rgb.float().cpu().numpy())


def render_view(document: SceneDocument, pca: FeaturePca, pose: BrowserPose, mode: RenderMode, width: int, height: int) -> Frame:
    """The frame a tab sees from `pose` at `width` x `height`: the document's visible Gaussians at its
    current edit state, its selection highlighted, and in the segmentation mode its per-Gaussian labels
    rendered when they were lifted (`SceneDocument.lifted`), else Eq. 19 per pixel; in the "prototypes"
    mode Eq. 19 per pixel. Every tab's `LiveView` and bench/viewer.py render through it.

    mode: "segmentation", "prototypes" or "pca".
    """
    state = document.model.state
    visible = document.visible(state)
    return render_frame(
        visible.gaussians,
        camera_from_pose(pose, width, height),
        mode,
        # Eq. 19 over the visible instances only: a hidden or deleted one is neither drawn nor named.
        document.prototypes(state).only(document.model.visible_instances(state)),
        pca,
        state.selected,
        torch.from_numpy(visible.labels) if document.lifted else None,
    )


def reselect_frame(frame: Frame, selected: frozenset[int]) -> Frame:
    """A segmentation frame with another selection highlighted, from its kept colours and labels: the
    click feedback of the segmentation modes, without rendering again. Other modes are returned as they are."""
    if frame.mode not in OVERLAID_MODES:
        return frame
    image = _overlay(torch.from_numpy(frame.rgb), torch.from_numpy(frame.labels), selected)
    return replace(frame, image=_to_uint8(image))


def _to_uint8(image: Tensor) -> np.ndarray:
    return (image * 255.0 + 0.5).clamp(0, 255).to(torch.uint8).cpu().numpy()


def _overlay(rgb: Tensor, labels: Tensor, selected: frozenset[int]) -> Tensor:
    """Instance colours blended over the image [H, W, 3] by its labels [H, W]; while something is selected,
    the selection in the highlight colour and everything else dimmed, as the browser's splats are. [H, W, 3]"""
    # The table covers the ids on screen, which instances made by a split (with no prototype yet) may be.
    table = torch.from_numpy(color_table(torch.unique(labels).cpu().numpy())).to(rgb)
    brightness = torch.ones(len(table), 1, dtype=rgb.dtype, device=rgb.device)
    if selected:
        rows = torch.tensor(sorted(i for i in selected if i < len(table)), dtype=torch.int64, device=rgb.device)
        table[rows] = (1.0 - HIGHLIGHT_MIX) * table[rows] + HIGHLIGHT_MIX * torch.from_numpy(HIGHLIGHT_RGB).to(rgb)
        brightness.fill_(DIMMED)
        brightness[rows] = 1.0
    blended = (1.0 - OVERLAY_MIX) * rgb + OVERLAY_MIX * table[labels]
    return torch.where((labels > 0)[..., None], blended, rgb) * brightness[labels]
