"""How a short schedule spends its iterations: a resolution warm-up and a Gaussian budget.

On a 2-core CPU a training iteration costs about (Gaussians x the screen tiles each covers); the cpu preset
therefore starts at a fraction of the training resolution, doubling it every `warmup_every` iterations until
it is full (nerfstudio splatfacto's `num_downscales` / `resolution_schedule`), and keeps at most
`max_gaussians`, pruning the least opaque when densification (or a dense SfM start) exceeds it. The paper's
preset uses neither: 3DGS trains at full resolution with an unbounded `DefaultStrategy`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from gsplat.strategy.ops import remove

from ..cameras import Cameras

MIN_WARMUP_SIDE = 16
"""The warm-up never shrinks a view's shorter side below this many pixels (SSIM's window is 11)."""


def warmup_factor(step: int, downscales: int, every: int, width: int, height: int) -> int:
    """The factor the training views are shrunk by at iteration `step`: 2^downscales at the start, halved
    every `every` iterations down to 1, and never so large that a side falls below MIN_WARMUP_SIDE."""
    factor = 2 ** max(downscales - step // max(every, 1), 0)
    while factor > 1 and min(width, height) // factor < MIN_WARMUP_SIDE:
        factor //= 2
    return factor


def shrink(image: torch.Tensor, target: torch.Tensor, cameras: Cameras, factor: int) -> tuple[torch.Tensor, torch.Tensor, Cameras]:
    """A view `factor` times smaller: the image area-averaged, the mask targets sampled at each block's
    centre (classifier rows are not blended), the intrinsics scaled. Rows and columns beyond a multiple
    of `factor` are dropped, so every new pixel covers exactly `factor` x `factor` old ones.

    Args:
        image: RGB. [H, W, 3]
        target: classifier row of each pixel. [H, W] int64
        cameras: the view's camera (one).
    Returns:
        image [H', W', 3], target [H', W'], the camera at W' x H' (W' = W // factor, H' = H // factor).
    """
    if factor == 1:
        return image, target, cameras
    height, width = image.shape[0] // factor, image.shape[1] // factor
    cropped = image[: height * factor, : width * factor].permute(2, 0, 1)[None]
    small_image = F.avg_pool2d(cropped, factor)[0].permute(1, 2, 0)
    small_target = target[factor // 2 :: factor, factor // 2 :: factor][:height, :width]
    Ks = cameras.Ks.clone()
    Ks[:, :2] /= factor  # pixel coordinates shrink with the image (the edge stays at 0)
    return small_image, small_target, Cameras(cameras.viewmats, Ks, width, height)


@torch.no_grad()
def cap_gaussians(params: torch.nn.ParameterDict, optimizers: dict, strategy_state: dict, max_count: int | None) -> int:
    """Remove the least opaque Gaussians beyond `max_count` (None: no budget), with their optimizer and
    densification state (gsplat's `ops.remove`). Returns how many were removed."""
    count = len(params["means"])
    if max_count is None or count <= max_count:
        return 0
    least_opaque = torch.topk(params["opacities"].flatten(), count - max_count, largest=False).indices
    doomed = torch.zeros(count, dtype=torch.bool, device=params["means"].device)
    doomed[least_opaque] = True
    remove(params, optimizers, strategy_state, doomed)
    return count - max_count
