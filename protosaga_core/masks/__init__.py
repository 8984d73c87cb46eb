"""Per-view 2D instance masks (paper Sec. 3.1): SAM, a weight-free fallback, or simulated from GT."""

from .fallback import FallbackMaskGenerator
from .generate import MaskMethod, MasksConfig, build_source, generate_masks
from .records import FlattenRule, MaskRecord, flatten
from .sam import SamMaskGenerator, SamModel, load_sam
from .simulated import NOISE_LEVELS, NoiseLevel, NoiseName, simulate_sam_masks

__all__ = [
    "NOISE_LEVELS",
    "FallbackMaskGenerator",
    "FlattenRule",
    "MaskMethod",
    "MaskRecord",
    "MasksConfig",
    "NoiseLevel",
    "NoiseName",
    "SamMaskGenerator",
    "SamModel",
    "build_source",
    "flatten",
    "generate_masks",
    "load_sam",
    "simulate_sam_masks",
]
