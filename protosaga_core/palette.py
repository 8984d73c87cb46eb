"""The instance colours: one deterministic colour per id, the same in the viewer, the label maps and the
contact sheets."""

from __future__ import annotations

import colorsys
import math

GOLDEN_RATIO_CONJUGATE = (math.sqrt(5) - 1) / 2


def instance_color(instance_id: int) -> tuple[int, int, int]:
    """A deterministic RGB colour per id: golden-ratio hue steps spread consecutive ids around the wheel;
    saturation and value cycle with other periods so that ids whose hues coincide after rounding still differ."""
    hue = (instance_id * GOLDEN_RATIO_CONJUGATE) % 1.0
    saturation = 0.55 + 0.4 * ((instance_id * math.sqrt(2)) % 1.0)
    value = 0.7 + 0.3 * ((instance_id * math.sqrt(3)) % 1.0)
    return tuple(int(round(255 * c)) for c in colorsys.hsv_to_rgb(hue, saturation, value))
