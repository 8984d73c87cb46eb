"""SAM automatic masks with Gaga's settings, from a checkpoint loaded without unpickling arbitrary code.

Gaga (`mask/get_raw_mask.py`, `mask/config.json`) runs `SamAutomaticMaskGenerator` on ViT-H with
points_per_side=64, points_per_batch=64 and pred_iou_thresh=0.7, leaving every other SAM default
(stability_score_thresh=0.95, box_nms_thresh=0.7, no crops, no small-region removal); its extra
confidence threshold of 0.5 on the predicted IoU is implied by 0.7. Gaga reads images with `cv2.imread`
and feeds them as BGR; SAM expects RGB, which is what this module takes. The generator is upstream's; its
point prompts are decoded by `sam_decoder.predict_points` (the same masks, several times faster on a CPU).

segment-anything is an optional dependency (`pip install protosaga[sam]`): it is imported on use.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch

from ..device import default_device
from .records import MaskRecord
from .sam_decoder import predict_points

if TYPE_CHECKING:
    from segment_anything import SamPredictor
    from segment_anything.modeling import Sam

SamModel = Literal["vit_h", "vit_l", "vit_b", "vit_t"]

# Width of `image_encoder.patch_embed.proj` per registry model: enough to name a mismatched checkpoint.
_EMBED_DIMS: dict[int, SamModel] = {1280: "vit_h", 1024: "vit_l", 768: "vit_b"}
_TINY_VIT_KEY = "image_encoder.patch_embed.seq.0.c.weight"
"""A key only MobileSAM's TinyViT encoder has."""


def _segment_anything() -> ModuleType:
    try:
        import segment_anything
    except ImportError as error:
        raise ImportError(
            "--method sam needs segment-anything: pip install 'protosaga[sam]' (or use --method fallback)"
        ) from error
    return segment_anything


def _mobile_sam() -> ModuleType:
    try:
        with warnings.catch_warnings():  # timm's deprecation notices about the imports mobile_sam uses
            warnings.simplefilter("ignore")
            import mobile_sam
    except ImportError as error:
        raise ImportError(
            "--model vit_t needs MobileSAM's code: pip install 'protosaga[sam]' (mobilesam-mirror and timm)"
        ) from error
    return mobile_sam


def build_architecture(model: SamModel) -> Sam:
    """An untrained SAM of a registry architecture: vit_h / vit_l / vit_b from segment-anything, vit_t
    (MobileSAM: a TinyViT encoder with SAM's prompt encoder and mask decoder) from mobile_sam."""
    if model == "vit_t":
        return _mobile_sam().sam_model_registry["vit_t"](checkpoint=None)
    registry = _segment_anything().sam_model_registry
    if model not in registry:
        raise ValueError(f"unknown SAM model {model!r}; choose vit_h, vit_l, vit_b or vit_t")
    return registry[model](checkpoint=None)


def load_sam(checkpoint: Path, model: SamModel | Callable[[], Sam] = "vit_h") -> Sam:
    """Build a SAM architecture and load a checkpoint's weights into it, strictly.

    The checkpoint is read with `torch.load(weights_only=True)`, never with full unpickling (which
    segment-anything's own `build_sam` does).

    Args:
        checkpoint: a state-dict file such as `sam_vit_h_4b8939.pth`.
        model: a registry name ("vit_h", "vit_l", "vit_b", "vit_t") or a function that builds the architecture.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file cannot be read as a state dict, or its keys/shapes do not fit `model`.
    """
    checkpoint = Path(checkpoint)
    name = model if isinstance(model, str) else getattr(model, "__name__", "the given architecture")
    if not checkpoint.is_file():
        raise FileNotFoundError(
            f"SAM checkpoint {checkpoint} ({name}) not found; download it from "
            "https://github.com/facebookresearch/segment-anything#model-checkpoints or use --method fallback"
        )
    sam = build_architecture(model) if isinstance(model, str) else model()
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(f"cannot read SAM checkpoint {checkpoint} ({name}): {error}") from error
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"SAM checkpoint {checkpoint} ({name}) is not a state dict of tensors")
    _check_state(checkpoint, name, sam.state_dict(), state)
    sam.load_state_dict(state, strict=True)
    return sam.eval()


def _check_state(
    checkpoint: Path, name: str, expected: Mapping[str, torch.Tensor], found: Mapping[str, torch.Tensor]
) -> None:
    """Explain a key/shape mismatch before `load_state_dict` does so in a wall of text."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    reshaped = sorted(k for k in set(expected) & set(found) if expected[k].shape != found[k].shape)
    if not (missing or unexpected or reshaped):
        return
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
    if reshaped:
        key = reshaped[0]
        problems.append(
            f"{len(reshaped)} shape mismatches (e.g. {key}: {list(found[key].shape)} "
            f"in the file, {list(expected[key].shape)} in {name})"
        )
    message = f"checkpoint {checkpoint} does not match {name}: {', '.join(problems)}"
    patch = found.get("image_encoder.patch_embed.proj.weight")
    guess = _EMBED_DIMS.get(int(patch.shape[0])) if patch is not None and patch.ndim == 4 else None
    if _TINY_VIT_KEY in found:
        guess = "vit_t"
    if guess is not None and guess != name:
        message += f" (is it a {guess} checkpoint? pass --model {guess})"
    raise ValueError(message)


def _point_predictor(sam: Sam) -> SamPredictor:
    """segment-anything's predictor with point prompts decoded by `sam_decoder.predict_points`: the
    same masks, several times faster for the automatic generator's hundreds of prompts per image."""

    class PointPredictor(_segment_anything().SamPredictor):
        def predict_torch(self, point_coords, point_labels, boxes=None, mask_input=None, multimask_output=True, return_logits=False):
            if point_coords is None or boxes is not None or mask_input is not None:
                return super().predict_torch(point_coords, point_labels, boxes, mask_input, multimask_output, return_logits)
            return predict_points(self, point_coords, point_labels, multimask_output, return_logits)

    return PointPredictor(sam)


class SamMaskGenerator:
    """SAM's automatic mask generator with Gaga's defaults, returning `MaskRecord`s.

    Args:
        checkpoint: the SAM state-dict file.
        model: the registry architecture of the checkpoint, or a function building a custom one.
        points_per_side: prompt grid resolution (Gaga: 64; SAM's default is 32).
        pred_iou_thresh: keep masks whose predicted IoU exceeds this (Gaga: 0.7; SAM: 0.88).
        stability_score_thresh: keep masks at least this stable (SAM's and Gaga's 0.95).
        points_per_batch: prompts decoded at once: memory and speed only; by default 64 on a GPU, 16 on a
            CPU, where smaller temporaries are ~30 % faster than 64 (fewer fresh pages per batch).
        device: where SAM runs; CUDA when available, else CPU.
    """

    def __init__(
        self,
        checkpoint: Path,
        model: SamModel | Callable[[], Sam] = "vit_h",
        points_per_side: int = 64,
        pred_iou_thresh: float = 0.7,
        stability_score_thresh: float = 0.95,
        points_per_batch: int | None = None,
        device: str | torch.device | None = None,
    ) -> None:
        sam = load_sam(checkpoint, model)
        self._setup(sam, points_per_side, pred_iou_thresh, stability_score_thresh, points_per_batch, device)

    @classmethod
    def from_model(
        cls,
        sam: Sam,
        points_per_side: int = 64,
        pred_iou_thresh: float = 0.7,
        stability_score_thresh: float = 0.95,
        points_per_batch: int | None = None,
        device: str | torch.device | None = None,
    ) -> SamMaskGenerator:
        """Wrap an already-built (and loaded) SAM module."""
        generator = cls.__new__(cls)
        generator._setup(sam, points_per_side, pred_iou_thresh, stability_score_thresh, points_per_batch, device)
        return generator

    def _setup(
        self,
        sam: Sam,
        points_per_side: int,
        pred_iou_thresh: float,
        stability_score_thresh: float,
        points_per_batch: int | None,
        device: str | torch.device | None,
    ) -> None:
        if device is None:
            device = default_device()
        self.device = torch.device(device)
        if points_per_batch is None:
            points_per_batch = 64 if self.device.type == "cuda" else 16
        sam = sam.to(self.device).eval()
        self.automatic = _segment_anything().SamAutomaticMaskGenerator(
            sam,
            points_per_side=points_per_side,
            points_per_batch=points_per_batch,
            pred_iou_thresh=pred_iou_thresh,
            stability_score_thresh=stability_score_thresh,
            output_mode="binary_mask",
        )
        self.automatic.predictor = _point_predictor(sam)

    def __call__(self, image: np.ndarray) -> list[MaskRecord]:
        """Mask proposals for one RGB image. image: [H, W, 3] uint8, RGB channel order"""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"SAM needs an RGB uint8 [H, W, 3] image, got {image.dtype} {list(image.shape)}")
        return [MaskRecord.from_sam(record) for record in self.automatic.generate(image)]
