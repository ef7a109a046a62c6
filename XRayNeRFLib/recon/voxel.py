"""Voxel-grid reconstruction with TV, optimised through the differentiable renderer.

mu = scale * softplus(theta) (or scale * mu_max_factor * sigmoid(theta)) keeps mu >= 0; theta is fitted
by :func:`optimize.fit` (L1 on line integrals + lambda_TV * TV, Adam, linear decay, ray mini-batches,
Siddon or trilinear renderer). Initialisation: zeros (a tiny positive mu) or FDK.

Coarse to fine (``coarse_to_fine=True``): the first half of the Adam steps fit a grid with twice the
voxel spacing to the projections binned 2 x 2 (``Cameras.downsampled(2)``); the result, trilinearly
upsampled, starts the fine fit (the remaining steps). A coarse step renders half as many voxels per ray
and (with all pixels) a quarter of the rays, so the whole run is cheaper for a similar or better result.
"""

from __future__ import annotations

import inspect
import math
import warnings
from dataclasses import replace
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..geometry import Cameras
from ..progress import Progress, ProgressCallback
from ..volume import Volume
from .checks import check_masks, check_projections
from .fdk import fdk
from .fov import default_grid
from .optimize import FitHistory, FitSettings, fit
from .ostv import OSTVSettings, reconstruct_ostv

VOXEL_SOLVERS = ("adam", "os-tv")  # reconstruct_voxel's solver argument; "adam" is the default

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


def coarse_grid(like: Volume) -> Volume:
    """A grid with twice the voxel spacing over the same box: (ceil(K/2), ceil(J/2), ceil(I/2)) voxels,
    coarse voxel c centred on fine index 2c + 1/2 (the middle of the fine pair it covers)."""
    k, j, i = like.data.shape
    scale = torch.eye(4, dtype=torch.float64)
    scale[:3, :3] *= 2.0
    scale[:3, 3] = 0.5
    a = like.ras_from_ijk.double() @ scale
    shape = (max(1, math.ceil(k / 2)), max(1, math.ceil(j / 2)), max(1, math.ceil(i / 2)))
    return Volume(torch.zeros(shape, dtype=like.data.dtype), a.to(like.ras_from_ijk.dtype), like.units)


def upsample_to(coarse: Volume, like: Volume) -> Tensor:
    """Trilinear resampling of ``coarse`` at the voxel centres of ``like`` (any grids, RAS mm); points
    outside the coarse grid take the nearest edge value. Returns (K, J, I) float32."""
    k, j, i = like.data.shape
    m = coarse.ijk_from_ras().double() @ like.ras_from_ijk.double()  # coarse ijk <- fine ijk
    kk, jj, ii = torch.meshgrid(
        torch.arange(k, dtype=torch.float64), torch.arange(j, dtype=torch.float64), torch.arange(i, dtype=torch.float64), indexing="ij"
    )
    fine = torch.stack([ii, jj, kk, torch.ones_like(ii)], -1)  # (K, J, I, 4)
    c = fine @ m.T  # (K, J, I, 4) coarse continuous indices
    ck, cj, ci = coarse.data.shape
    norm = torch.stack([(2 * c[..., 0] + 1) / ci - 1, (2 * c[..., 1] + 1) / cj - 1, (2 * c[..., 2] + 1) / ck - 1], -1)
    out = F.grid_sample(coarse.data.float()[None, None], norm.float()[None], mode="bilinear", padding_mode="border", align_corners=False)
    return out[0, 0]


def bin_projections(projections: Tensor, factor: int) -> Tensor:
    """Mean over factor x factor pixel blocks (the rule of ``Cameras.downsampled``): (V, H, W) ->
    (V, H // factor, W // factor)."""
    v, h, w = projections.shape
    f = int(factor)
    hh, ww = h // f, w // f
    return projections[:, : hh * f, : ww * f].reshape(v, hh, f, ww, f).mean((2, 4))


def _fit_accepts_masks() -> bool:
    return "masks" in inspect.signature(fit).parameters


def _fit(model, projections, cameras, like, settings, progress, masks):
    if masks is None:
        return fit(model, projections, cameras, like, settings, progress)
    return fit(model, projections, cameras, like, settings, progress, masks=masks)


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
    coarse_to_fine: bool = False,
    masks: Optional[Tensor] = None,
    progress: ProgressCallback = None,
    return_history: bool = False,
    solver: str = "adam",
    ostv: Optional[OSTVSettings] = None,
    checked: bool = False,
):
    """Voxel + TV reconstruction.

    solver: "adam" (L1 + TV through Adam on ray mini-batches, ``settings``) or "os-tv" (ordered-subset
        SART-preconditioned weighted least squares with a TV proximal step, ``ostv``: an
        :class:`ostv.OSTVSettings`; see :mod:`ostv`). ``settings``, ``positivity`` and
        ``coarse_to_fine`` apply to "adam" only; with "os-tv" the history is an :class:`ostv.OSTVHistory`.

    projections: (V, H, W) line integrals; cameras: V views.
    volume / grid / spacing_mm: output grid (default: the scanned cylinder, see :func:`fov.default_grid`).
    init: "zeros" or "fdk" (Hann-windowed FDK, clamped at >= 0).
    settings: :class:`optimize.FitSettings` (iterations, lr, rays per view, lambda_TV, learned
        weights, renderer, seed).
    coarse_to_fine: spend ``iterations // 2`` Adam steps on a 2x coarser grid and 2x2-binned detector
        first (see the module docstring); the fine fit gets the rest.
    masks: optional (V, H, W) bool, True where a pixel saw the beam; False pixels are left out of the
        data term (needs ``optimize.fit`` with mask support; otherwise a RuntimeWarning says they are used).
    returns: Volume of mu (1/mm) (and the :class:`FitHistory` with ``return_history``; with
        coarse_to_fine its lists hold the coarse steps then the fine ones).
    checked: the caller already ran :func:`checks.check_projections` and :func:`checks.check_masks`.
    """
    if not checked:
        projections = check_projections(projections, cameras)
        masks = check_masks(masks, projections)
    if masks is not None and solver == "adam" and not _fit_accepts_masks():
        warnings.warn(
            f"this version of optimize.fit cannot leave pixels out of the data term: the {int((~masks).sum())} masked "
            "(collimated) pixels are fitted as measured",
            RuntimeWarning,
            stacklevel=2,
        )
        masks = None
    settings = settings if settings is not None else FitSettings()
    if init not in ("zeros", "fdk"):
        raise ValueError(f"init must be 'zeros' or 'fdk', got {init!r}")
    if solver not in VOXEL_SOLVERS:
        raise ValueError(f"unknown voxel solver {solver!r}; use one of {', '.join(VOXEL_SOLVERS)}")
    like = volume if volume is not None else default_grid(cameras, grid=grid, spacing_mm=spacing_mm)
    if solver == "os-tv":
        if coarse_to_fine:
            raise ValueError("coarse_to_fine is an option of the 'adam' solver; the 'os-tv' solver starts from FDK on the output grid")
        like32 = Volume(torch.zeros(like.data.shape, dtype=torch.float32), like.ras_from_ijk.float(), "mu")
        out, history = reconstruct_ostv(
            projections,
            cameras,
            like32,
            _start(init, projections, cameras, like32),
            ostv if ostv is not None else OSTVSettings(),
            masks,
            progress,
        )
        return (out, history) if return_history else out
    if not coarse_to_fine:
        model = VoxelGrid(_start(init, projections, cameras, like), positivity)
        out, history = _fit(model, projections, cameras, like, settings, progress, masks)
        return (out, history) if return_history else out

    n_coarse = settings.iterations // 2
    n_fine = settings.iterations - n_coarse
    if n_coarse < 1 or min(cameras.size_px) < 4 or min(like.data.shape[1:]) < 4:
        raise ValueError(
            f"coarse_to_fine needs at least 2 iterations, a detector of at least 4 x 4 pixels and a grid at least 4 voxels "
            f"across; got {settings.iterations} iterations, {cameras.size_px} pixels, grid {tuple(like.data.shape)}"
        )
    total = settings.iterations

    def stage(offset: int, label: str) -> ProgressCallback:
        if progress is None:
            return None
        return lambda p: progress(Progress(offset + p.done, total, f"{label}: {p.message}", p.preview))

    c_like = coarse_grid(like)
    c_cams = cameras.downsampled(2)
    c_proj = bin_projections(projections, 2)
    c_masks = (
        None if masks is None else bin_projections(masks.float(), 2) > 0.999
    )  # a binned pixel is used only when all of it saw the beam
    if c_masks is not None and not all(bool(c_masks[v].any()) for v in range(len(cameras))):
        c_masks = bin_projections(masks.float(), 2) > 0.0
    c_settings = replace(settings, iterations=n_coarse, snapshot_every=0, on_snapshot=None)
    c_model = VoxelGrid(_start(init, c_proj, c_cams, c_like), positivity)
    c_out, c_hist = _fit(c_model, c_proj, c_cams, c_like, c_settings, stage(0, "coarse"), c_masks)
    start = upsample_to(c_out, like)
    if c_hist.cancelled:
        out = Volume(start, like.ras_from_ijk, "mu")
        return (out, c_hist) if return_history else out
    f_settings = replace(settings, iterations=n_fine, seed=settings.seed + 1)
    model = VoxelGrid(start, positivity)
    out, f_hist = _fit(model, projections, cameras, like, f_settings, stage(n_coarse, "fine"), masks)
    history = FitHistory(
        data=c_hist.data + f_hist.data,
        tv=c_hist.tv + f_hist.tv,
        total=c_hist.total + f_hist.total,
        weights=c_hist.weights + f_hist.weights,
        cancelled=f_hist.cancelled,
        best_step=n_coarse + f_hist.best_step,
    )
    return (out, history) if return_history else out


def _start(init: str, projections: Tensor, cameras: Cameras, like: Volume) -> Tensor:
    if init == "fdk":
        return fdk(projections, cameras, volume=like, window="hann", checked=True).data.clamp_min(0)
    return torch.zeros_like(like.data)
