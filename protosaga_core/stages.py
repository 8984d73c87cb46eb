"""What every stage that renders the training views shares: the device to render on, batches of views,
their rendered features, and their consistent masks.

Association, prototypes, segmentation, evaluation and the viewer all use these; none of them belongs to
one paper equation (the equations live in method/).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import Tensor
from tqdm import tqdm

from .cameras import Cameras
from .datasets.scene import Scene, View
from .gaussians import Gaussians
from .io.labelmaps import load_label_map
from .io.scene_dir import SceneDir, SceneDirError
from .memory import release_freed_memory
from .render import render
from .render.sparse import WeightsCache, frozen_weights

DEFAULT_CHUNK_VIEWS = 4
"""Views rendered at once."""


def view_batches(views: Sequence[View], size: int) -> Iterator[list[View]]:
    """Consecutive runs of at most `size` views sharing one image size, in the given order."""
    if size < 1:
        raise ValueError(f"batch size must be positive, got {size}")
    batch: list[View] = []
    for view in views:
        if batch and (len(batch) == size or (view.width, view.height) != (batch[0].width, batch[0].height)):
            yield batch
            batch = []
        batch.append(view)
    if batch:
        yield batch


def render_features(
    gaussians: Gaussians,
    scene: Scene,
    views: Sequence[View],
    chunk_views: int = DEFAULT_CHUNK_VIEWS,
    progress: bool = True,
    desc: str = "features",
    weights: WeightsCache | None = None,
) -> Iterator[tuple[View, Tensor]]:
    """Each view with its rendered features F̂ [H, W, D] (on the CPU, no gradient), in the given order.

    `gaussians` should already be on the device to render on (`default_device()`). Views whose blending
    weights `weights` holds (an earlier stage computed them) are rendered from them; the others, and all
    without a cache, are rasterized: weights are never computed here, as one render costs less.
    """
    with tqdm(total=len(views), desc=desc, unit="view", disable=not progress) as bar:
        for batch in view_batches(views, chunk_views):
            cameras = scene.cameras(batch).to(gaussians.device)
            with torch.no_grad():
                cached = frozen_weights(gaussians, cameras, weights, "never")
                if gaussians.feature_dim == 0:  # an imported scene: empty maps, without rendering anything
                    features = gaussians.features.new_zeros(len(batch), cameras.height, cameras.width, 0)
                elif cached is not None:
                    features = torch.stack([view.render(gaussians.features) for view in cached])
                else:
                    features = render(gaussians, cameras, rgb=False, extras=gaussians.features).extras
            bar.update(len(batch))
            release_freed_memory()  # the rasterizer's temporaries, before the next batch adds its own
            yield from zip(batch, features.cpu())


def frozen_feature_map(frozen: Gaussians, camera: Cameras, features: Tensor, weights: WeightsCache | None = None) -> Tensor:
    """`features` rendered from one camera with the geometry of `frozen`, differentiable in the features
    (what trains them with the geometry frozen): the view's blending weights from `weights` where they
    apply (on the CPU; computed and kept there on first use), else the rasterizer (always without a
    cache). [N, D] -> [H, W, D]"""
    cached = frozen_weights(frozen, camera, weights)
    if cached is not None:
        return cached[0].render(features)
    return render(frozen, camera, rgb=False, extras=features).extras[0]


def read_consistent_mask(scene_dir: SceneDir, view: View) -> Tensor:
    """The associated mask of a training view at its render size. [H, W] int64"""
    path = scene_dir.association_dir / f"{view.name}.png"
    if not path.is_file():
        raise SceneDirError(f"{path}: missing consistent mask of training view {view.name}; run protosaga associate first")
    return load_label_map(path, view.width, view.height)
