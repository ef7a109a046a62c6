"""Image-quality metrics for reconstructed volumes (used by ``xraynerf reconstruct --reference`` and the
benchmarks). All take (K, J, I) tensors of the same shape and units (mu 1/mm or HU).

- :func:`psnr`: 10 log10(data_range^2 / MSE) in dB; ``data_range`` default: max - min of the reference.
- :func:`ssim`: 3D SSIM (Wang et al. 2004) with a separable Gaussian window (sigma 1.5 voxels, truncated
  at 3.5 sigma, 11 voxels wide), K1 = 0.01, K2 = 0.03, ``data_range`` default: max - min of the reference;
  the mean SSIM map over voxels whose full window lies inside the volume (no padding), and inside
  ``mask`` when given.
- :func:`mae`: mean absolute error, inside ``mask`` when given (e.g. the body: reference above a threshold).
- :func:`body_mask`: reference > threshold.

Pass the same explicit ``data_range`` to compare methods fairly across references.
"""

from __future__ import annotations

import math
from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["psnr", "ssim", "mae", "body_mask", "all_metrics", "resample_like"]


def _pair(x: Tensor, ref: Tensor, name: str = "volume") -> tuple:
    x = torch.as_tensor(x).detach().double()
    ref = torch.as_tensor(ref).detach().double()
    if x.shape != ref.shape:
        raise ValueError(
            f"{name} {tuple(x.shape)} and reference {tuple(ref.shape)} have different shapes; resample one onto the other's grid"
        )
    if not (torch.isfinite(x).all() and torch.isfinite(ref).all()):
        raise ValueError(f"{name} or reference contains NaN or infinite values")
    return x, ref


def _range(ref: Tensor, data_range: Optional[float]) -> float:
    r = float(ref.max() - ref.min()) if data_range is None else float(data_range)
    if not r > 0:
        raise ValueError(f"data range must be > 0 (the reference is constant?); got {r}")
    return r


def psnr(x: Tensor, ref: Tensor, data_range: Optional[float] = None, mask: Optional[Tensor] = None) -> float:
    """Peak signal-to-noise ratio in dB: 10 log10(data_range^2 / mean((x - ref)^2)) (inside ``mask``).
    Identical volumes give +inf."""
    x, ref = _pair(x, ref)
    r = _range(ref, data_range)
    d = (x - ref) ** 2
    mse = float(d[_mask(mask, ref)].mean()) if mask is not None else float(d.mean())
    return math.inf if mse == 0 else 10.0 * math.log10(r * r / mse)


def mae(x: Tensor, ref: Tensor, mask: Optional[Tensor] = None) -> float:
    """Mean |x - ref| (units of the volumes) over all voxels or inside ``mask``."""
    x, ref = _pair(x, ref)
    d = (x - ref).abs()
    return float(d[_mask(mask, ref)].mean()) if mask is not None else float(d.mean())


def body_mask(ref: Tensor, threshold: float) -> Tensor:
    """Boolean mask of voxels whose reference value exceeds ``threshold`` (e.g. 0.005 /mm or -500 HU)."""
    return torch.as_tensor(ref) > threshold


def _mask(mask: Tensor, ref: Tensor) -> Tensor:
    m = torch.as_tensor(mask).to(torch.bool)
    if m.shape != ref.shape:
        raise ValueError(f"mask {tuple(m.shape)} and volume {tuple(ref.shape)} have different shapes")
    if not bool(m.any()):
        raise ValueError("the mask selects no voxel")
    return m


def _gaussian_window(sigma: float = 1.5, truncate: float = 3.5) -> Tensor:
    radius = int(truncate * sigma + 0.5)
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    g = torch.exp(-0.5 * (t / sigma) ** 2)
    return g / g.sum()


def _filter3(v: Tensor, g: Tensor) -> Tensor:
    """Separable 'valid' Gaussian filtering of (1, 1, K, J, I)."""
    n = g.numel()
    v = F.conv3d(v, g.reshape(1, 1, n, 1, 1))
    v = F.conv3d(v, g.reshape(1, 1, 1, n, 1))
    return F.conv3d(v, g.reshape(1, 1, 1, 1, n))


def ssim(x: Tensor, ref: Tensor, data_range: Optional[float] = None, mask: Optional[Tensor] = None, sigma: float = 1.5) -> float:
    """Mean 3D structural similarity (see the module docstring). Volumes must be at least 11 voxels
    along every axis (the window); ``mask`` selects the window centres averaged."""
    x, ref = _pair(x, ref)
    r = _range(ref, data_range)
    g = _gaussian_window(sigma)
    n = g.numel()
    if min(x.shape) < n:
        raise ValueError(f"SSIM needs volumes at least {n} voxels along every axis, got {tuple(x.shape)}")
    c1, c2 = (0.01 * r) ** 2, (0.03 * r) ** 2
    a, b = x[None, None], ref[None, None]
    mu_a, mu_b = _filter3(a, g), _filter3(b, g)
    saa = _filter3(a * a, g) - mu_a**2
    sbb = _filter3(b * b, g) - mu_b**2
    sab = _filter3(a * b, g) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * sab + c2)) / ((mu_a**2 + mu_b**2 + c1) * (saa + sbb + c2))
    s = s[0, 0]
    if mask is not None:
        h = n // 2
        m = _mask(mask, ref)[h : h + s.shape[0], h : h + s.shape[1], h : h + s.shape[2]]
        if not bool(m.any()):
            raise ValueError("the mask selects no voxel at least 5 voxels away from the volume's faces (SSIM window)")
        return float(s[m].mean())
    return float(s.mean())


def all_metrics(x: Tensor, ref: Tensor, data_range: Optional[float] = None, mask: Optional[Tensor] = None) -> Dict[str, float]:
    """{"psnr_db", "ssim", "mae", "mae_masked" (when mask given), "data_range"} of x against ref."""
    _, r64 = _pair(x, ref)
    r = _range(r64, data_range)
    out = {
        "psnr_db": psnr(x, ref, r),
        "ssim": ssim(x, ref, r) if min(r64.shape) >= 11 else float("nan"),
        "mae": mae(x, ref),
        "data_range": r,
    }
    if mask is not None:
        out["mae_masked"] = mae(x, ref, mask)
    return out


def resample_like(volume, like) -> Tensor:
    """Trilinear resampling of ``volume`` (a :class:`Volume`) at the voxel centres of ``like`` (a
    :class:`Volume`, any grid, RAS mm); points outside ``volume`` get the nearest edge value.
    Returns (K, J, I) float32 on ``like``'s grid, in ``volume``'s units."""
    from .recon.voxel import upsample_to

    return upsample_to(volume, like)
