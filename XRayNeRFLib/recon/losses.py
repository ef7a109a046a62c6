"""Losses for iterative reconstruction.

- :func:`l1_photometric`: mean absolute difference of line integrals (dimensionless).
- :func:`total_variation`: anisotropic TV of mu, in 1/mm per voxel step (mean over voxels).
- :class:`LearnedLossWeights`: task-uncertainty weighting (Kendall et al. 2018, as in UMedNeRF):
  ``sum_i L_i / (2 sigma_i^2) + log sigma_i`` with learned log sigma_i^2, replacing a hand-set lambda.
"""

from __future__ import annotations

from typing import Dict, Sequence

import torch
from torch import Tensor, nn


def l1_photometric(predicted: Tensor, measured: Tensor) -> Tensor:
    """Mean |predicted - measured| over rays: scalar. Both (V, N) or (V, H, W) line integrals."""
    return (predicted - measured).abs().mean()


def total_variation(mu: Tensor) -> Tensor:
    """Anisotropic total variation of a (K, J, I) volume: mean over voxels of |d_i| + |d_j| + |d_k|,
    1/mm per voxel step (scale by the spacing for per-mm units). Scalar."""
    dk = (mu[1:] - mu[:-1]).abs().mean() if mu.shape[0] > 1 else mu.new_zeros(())
    dj = (mu[:, 1:] - mu[:, :-1]).abs().mean() if mu.shape[1] > 1 else mu.new_zeros(())
    di = (mu[:, :, 1:] - mu[:, :, :-1]).abs().mean() if mu.shape[2] > 1 else mu.new_zeros(())
    return di + dj + dk


class LearnedLossWeights(nn.Module):
    """Learned loss weights: total = sum_i exp(-s_i) L_i / 2 + s_i / 2 with s_i = log sigma_i^2, which
    is L_i / (2 sigma_i^2) + log sigma_i. ``init_weights`` sets the initial effective weights
    1 / (2 sigma_i^2) (e.g. the hand-set lambdas), so learning starts where the fixed weighting is."""

    def __init__(self, names: Sequence[str], init_weights: Sequence[float] | None = None):
        super().__init__()
        self.names = list(names)
        w = torch.tensor(list(init_weights) if init_weights is not None else [1.0] * len(self.names), dtype=torch.float64)
        if (w <= 0).any():
            raise ValueError(f"initial loss weights must be > 0, got {w.tolist()}")
        self.log_var = nn.Parameter(torch.log(1.0 / (2.0 * w)).float())

    def forward(self, losses: Dict[str, Tensor]) -> Tensor:
        total = 0.0
        for i, name in enumerate(self.names):
            s = self.log_var[i]
            total = total + 0.5 * torch.exp(-s) * losses[name] + 0.5 * s
        return total

    def weights(self) -> Dict[str, float]:
        """Current effective weights 1 / (2 sigma_i^2)."""
        return {n: float(0.5 * torch.exp(-self.log_var[i].detach())) for i, n in enumerate(self.names)}
