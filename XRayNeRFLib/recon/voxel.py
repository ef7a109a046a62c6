"""Voxel-grid reconstruction with TV, optimised through the differentiable renderer.

mu = scale * softplus(theta) (or scale * mu_max_factor * sigmoid(theta)) keeps mu >= 0; theta is fitted
by :func:`optimise.fit` (L1 on line integrals + lambda_TV * TV, Adam, linear decay, ray mini-batches,
Siddon or trilinear renderer). Initialisation: zeros (a tiny positive mu) or FDK.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..geometry import Cameras
from ..progress import ProgressCallback
from ..volume import Volume
from .fdk import check_projections, fdk
from .fov import check_fov_hits_object, default_grid
from .optimise import FitHistory, FitSettings, fit

MU_SCALE = 0.01  # 1/mm: theta of order 1 <-> soft tissue


class VoxelGrid(nn.Module):
    """mu (K, J, I) = MU_SCALE * softplus(theta) or 0.1/mm * sigmoid(theta)."""

    def __init__(self, initial_mu: Tensor, positivity: str = "softplus"):
        super().__init__()
        if positivity not in ("softplus", "sigmoid"):
            raise ValueError(f"positivity must be 'softplus' or 'sigmoid', got {positivity!r}")
        self.positivity = positivity
        m = initial_mu.detach().float()
        if positivity == "softplus":
            y = (m / MU_SCALE).clamp_min(1e-3)
            theta = y + torch.log(-torch.expm1(-y))  # softplus^-1
        else:
            y = (m / (10 * MU_SCALE)).clamp(1e-3, 1 - 1e-3)
            theta = torch.log(y / (1 - y))
        self.theta = nn.Parameter(theta)

    def forward(self) -> Tensor:
        if self.positivity == "softplus":
            return MU_SCALE * F.softplus(self.theta)
        return 10 * MU_SCALE * torch.sigmoid(self.theta)


def reconstruct_voxel(
    projections: Tensor,
    cameras: Cameras,
    *,
    volume: Optional[Volume] = None,
    grid: Optional[int] = None,
    spacing_mm: Optional[float] = None,
    init: str = "fdk",
    positivity: str = "softplus",
    settings: Optional[FitSettings] = None,
    progress: ProgressCallback = None,
    return_history: bool = False,
):
    """Voxel + TV reconstruction.

    projections: (V, H, W) line integrals; cameras: V views.
    volume / grid / spacing_mm: output grid (default: the scanned cylinder, see :func:`fov.default_grid`).
    init: "zeros" or "fdk" (Hann-windowed FDK, clamped at >= 0).
    settings: :class:`optimise.FitSettings` (iterations, lr, rays per view, lambda_TV, learned
        weights, renderer, seed).
    returns: Volume of mu (1/mm) (and the :class:`FitHistory` with ``return_history``).
    """
    projections = check_projections(projections, cameras)
    check_fov_hits_object(projections)
    settings = settings if settings is not None else FitSettings()
    like = volume if volume is not None else default_grid(cameras, grid=grid, spacing_mm=spacing_mm)
    if init == "fdk":
        start = fdk(projections, cameras, volume=like, window="hann").data.clamp_min(0)
    elif init == "zeros":
        start = torch.zeros_like(like.data)
    else:
        raise ValueError(f"init must be 'zeros' or 'fdk', got {init!r}")
    model = VoxelGrid(start, positivity)
    out, history = fit(model, projections, cameras, like, settings, progress)
    return (out, history) if return_history else out
