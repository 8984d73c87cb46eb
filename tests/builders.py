"""Small objects that several test modules build the same way."""

from __future__ import annotations

import torch

from protosaga_core.gaussians import Gaussians, num_sh_rest, rgb_to_sh0


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


def gaussians_from(
    means: torch.Tensor,
    scales: torch.Tensor,
    *,
    quats: torch.Tensor | None = None,
    colors: torch.Tensor | None = None,
    opacities: torch.Tensor | float = 0.5,
    features: torch.Tensor | None = None,
) -> Gaussians:
    """Degree-0 Gaussians given by the values they stand for, so a test can place and predict them by hand.

    Args:
        means: centres. [N, 3]
        scales: standard deviations (not their logs). [N, 3]
        quats: wxyz rotations, stored as given (unnormalised ones too); default the identity. [N, 4]
        colors: RGB in [0, 1]; default mid grey. [N, 3]
        opacities: in (0, 1), one for all or [N].
        features: [N, D]; default one zero channel.
    """
    n = means.shape[0]
    quats = torch.tensor([1.0, 0.0, 0.0, 0.0]).repeat(n, 1) if quats is None else quats
    colors = torch.full((n, 3), 0.5) if colors is None else colors
    return Gaussians(
        means=means,
        scales=scales.log(),
        quats=quats,
        opacities=torch.logit(torch.as_tensor(opacities, dtype=torch.float32).expand(n)).clone(),
        sh0=rgb_to_sh0(colors)[:, None, :],
        shN=torch.zeros(n, 0, 3),
        features=torch.zeros(n, 1) if features is None else features,
    )
