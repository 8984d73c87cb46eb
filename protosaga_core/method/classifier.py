"""The τ·cos classifier, the one scoring rule of the method: training's per-view classifiers (Eq. 2-3),
association's class probabilities (Eq. 14) and prototype inference (Eq. 19) all score a feature against a
set of vectors by τ times their cosine."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def cosine_logits(features: Tensor, vectors: Tensor, temperature: float) -> Tensor:
    """τ cos(f, w) for every feature and vector. [..., D] x [T, D] -> [..., T]

    A zero feature (a pixel no Gaussian reaches) has cosine 0 with every vector.
    """
    return temperature * F.normalize(features, dim=-1) @ F.normalize(vectors.to(features.dtype), dim=-1).T
