"""Small objects that several test modules build the same way."""

from __future__ import annotations

import torch

from protosaga_core.gaussians import Gaussians, num_sh_rest


def random_gaussians(n: int, sh_degree: int = 0, feature_dim: int = 4, seed: int = 0) -> Gaussians:
    """Gaussians with every raw value random, so any column mix-up shows. [N, ...]"""
    g = torch.Generator().manual_seed(seed)
    return Gaussians(
        means=torch.randn(n, 3, generator=g),
        scales=torch.randn(n, 3, generator=g),
        quats=torch.randn(n, 4, generator=g),
        opacities=torch.randn(n, generator=g),
        sh0=torch.randn(n, 1, 3, generator=g),
        shN=torch.randn(n, num_sh_rest(sh_degree), 3, generator=g),
        features=torch.randn(n, feature_dim, generator=g),
    )
