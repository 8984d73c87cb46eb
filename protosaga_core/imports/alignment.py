"""Do imported Gaussians sit where the dataset's cameras look? A few training views rendered against their photos.

The criterion (numbers measured on the demo room, README's "Segment a scene you already trained"):

- **coverage**: the share of a view's pixels the Gaussians cover (alpha > 0.5). Gaussians in another frame (a
  missing or wrong transform, another scene's dataset) mostly lie outside the cameras' frusta or behind them,
  so the views render (nearly) empty. Refused when the median over the views checked is below MIN_COVERAGE:
  the demo room moved 3 times its size away covers 0 %, seen 20 times too small 1 %; a room surrounds
  its cameras, so any misfit within it still covers 100 % and only the next test catches it.
- **gain over a flat guess**, on the covered pixels of all views checked together: 10·log10(E_flat / E_render),
  where E_render is the squared error of the render against the photo and E_flat that of the photo's own mean
  colour over those pixels (the best a render that knows nothing of the picture's layout could do). Gaussians
  in the right place reproduce the photo's edges and shading and beat the flat guess by many dB: the demo
  trained by `protosaga run` (1,500 iterations, SH degree 3) +18.8 dB, the tests' 300 iterations at SH
  degree 0 +7.2 dB. Misplaced ones show the scene's colours in the wrong places, little better than the
  flat guess and often worse (two uncorrelated pictures: about -3 dB): on the 300-iteration demo, cameras moved
  by 5 % of the scene's size +1.1 dB, by 10 % -1.3, turned by 10° +2.4, by 30° +0.3, by 90° -1.1, scaled
  by 0.5 -0.2, by 2 -3.8; another room of the same generator with the same camera path +1.2, the statue
  photos -5.9, the Gaussians' centres shuffled (an unfinished model) -2.1. Refused below MIN_GAIN_DB = 3:
  between the worst fit (7.2, a barely trained model) and the best misfit (2.4, a 10° turn); smaller
  errors pass (turned by 5° +4.6, moved by 2 % +3.8, scaled by 0.9 +4.7). Taking the covered pixels only keeps a cropped scene (its background deleted) from failing, and comparing with the
  photo's own flat guess makes the criterion independent of how textured or bright the photos are, where a
  PSNR threshold would not be. (A per-channel affine colour fit before the comparison, to forgive exposure
  changes, was tried: it lifted the other room to +2.4 dB, too close to the threshold, and was dropped.)

The renders are small (at most ALIGN_SIDE pixels on the longer side), without gradients, at SH degree 0..3 as
stored, over the background the model was trained with (INRIA: cfg_args' white_background).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..cameras import Cameras
from ..datasets.scene import View
from ..gaussians import Gaussians
from ..render import render

ALIGN_VIEWS = 6
"""Training views checked, evenly spread over the name order (a capture's path)."""
ALIGN_SIDE = 200
"""Longer side of the renders in pixels: the layout of a picture shows at that size, and a render of a
million Gaussians stays a few seconds on a CPU."""
COVERED_ALPHA = 0.5
MIN_COVERAGE = 0.05
"""Median share of covered pixels below which the Gaussians are not where the cameras look."""
MIN_GAIN_DB = 3.0
"""The smallest gain (dB) over the photos' flat colour accepted (see the module docstring's calibration)."""


@dataclass(frozen=True)
class ViewFit:
    """One view checked: its name, covered share, and the squared errors summed over its covered pixels."""

    name: str
    coverage: float
    render_error: float
    flat_error: float
    covered_values: int

    @property
    def gain_db(self) -> float:
        return _gain(self.flat_error, self.render_error)


@dataclass(frozen=True)
class Alignment:
    """The check's result.

    Attributes:
        views: per view checked.
        coverage: median covered share.
        gain_db: 10·log10(E_flat / E_render) over the covered pixels of every view (-inf: nothing covered).
    """

    views: tuple[ViewFit, ...]
    coverage: float
    gain_db: float

    @property
    def passed(self) -> bool:
        return self.coverage >= MIN_COVERAGE and self.gain_db >= MIN_GAIN_DB

    def summary(self) -> str:
        return (
            f"{len(self.views)} training views: the Gaussians cover {self.coverage:.0%} of the median view and beat the "
            f"photos' flat colour by {self.gain_db:+.1f} dB (needed: {MIN_COVERAGE:.0%} and {MIN_GAIN_DB:+.1f} dB)"
        )

    def to_json(self) -> dict[str, object]:
        return {
            "coverage": round(self.coverage, 4),
            "gain_db": round(self.gain_db, 2) if math.isfinite(self.gain_db) else None,
            "min_coverage": MIN_COVERAGE,
            "min_gain_db": MIN_GAIN_DB,
            "views": {v.name: {"coverage": round(v.coverage, 4), "gain_db": round(v.gain_db, 2) if math.isfinite(v.gain_db) else None} for v in self.views},
        }


def _gain(flat_error: float, render_error: float) -> float:
    if flat_error <= 0 and render_error <= 0:
        return -math.inf
    return 10.0 * math.log10(max(flat_error, 1e-12) / max(render_error, 1e-12))


def spread_views(views: Sequence[View], count: int = ALIGN_VIEWS) -> list[View]:
    """`count` views evenly spread over `views` in name order (all of them when there are fewer)."""
    ordered = sorted(views, key=lambda view: view.name)
    if len(ordered) <= count:
        return ordered
    picks = np.unique(np.linspace(0, len(ordered) - 1, count).round().astype(int))
    return [ordered[i] for i in picks]


def small_camera(view: View, side: int = ALIGN_SIDE) -> Cameras:
    """The view's camera with its image shrunk to at most `side` pixels on the longer side (K scaled)."""
    factor = min(1.0, side / max(view.width, view.height))
    width, height = max(1, round(view.width * factor)), max(1, round(view.height * factor))
    K = view.K.clone()
    K[0] *= width / view.width
    K[1] *= height / view.height
    return Cameras(view.viewmat[None], K[None], width, height)


def check_alignment(
    gaussians: Gaussians, views: Sequence[View], background: float = 0.0, side: int = ALIGN_SIDE
) -> Alignment:
    """Render `views` (already moved into the Gaussians' frame) small and compare them with their photos.

    Args:
        gaussians: on the device to render on.
        background: grey level the model was trained over (0 black, 1 white).
    """
    fits = []
    for view in views:
        camera = small_camera(view, side)
        photo = view.load_image().permute(2, 0, 1)[None]
        photo = F.interpolate(photo, size=(camera.height, camera.width), mode="area")[0].permute(1, 2, 0).double()
        with torch.no_grad():
            out = render(gaussians, camera.to(gaussians.device), backgrounds=torch.full((3,), float(background), device=gaussians.device))
        image = out.colors[0].clamp(0, 1).double().cpu()
        covered = (out.alphas[0, ..., 0] > COVERED_ALPHA).cpu()
        pixels = photo[covered]  # [P, 3]
        if len(pixels):
            render_error = float((image[covered] - pixels).square().sum())
            flat_error = float((pixels - pixels.mean(0)).square().sum())
        else:
            render_error = flat_error = 0.0
        fits.append(ViewFit(view.name, float(covered.double().mean()), render_error, flat_error, int(pixels.numel())))
    coverage = float(np.median([fit.coverage for fit in fits])) if fits else 0.0
    gain = _gain(sum(f.flat_error for f in fits), sum(f.render_error for f in fits))
    return Alignment(tuple(fits), coverage, gain)
