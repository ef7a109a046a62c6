"""Simulated registration cases: a CT, a target X-ray rendered with an image model *different* from the
one the optimiser uses (Siddon, Poisson noise, blur, a nonlinear gray-level curve), landmarks inside the
CT, and perturbed initial poses. Used by the tests and by benchmarks/bench_registration.py."""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..geometry import Cameras, homogeneous
from ..render import beer_lambert, render
from ..volume import Volume
from .pose import so3_exp


def resample_volume(volume: Volume, shape_kji: Sequence[int]) -> Volume:
    """Trilinear resampling onto a (K, J, I) grid covering the same box (outer voxel boundaries kept)."""
    k, j, i = (int(s) for s in shape_kji)
    k0, j0, i0 = volume.data.shape
    data = F.interpolate(volume.data[None, None].float(), size=(k, j, i), mode="trilinear", align_corners=False)[0, 0]
    # new index n -> old continuous index (n + 0.5) * old / new - 0.5
    s = torch.tensor([i0 / i, j0 / j, k0 / k], dtype=torch.float64)
    m = torch.eye(4, dtype=torch.float64)
    m[:3, :3] = torch.diag(s)
    m[:3, 3] = 0.5 * s - 0.5
    return Volume(data.to(volume.data.dtype).contiguous(), (volume.ras_from_ijk.double() @ m).to(volume.ras_from_ijk.dtype), volume.units)


def gray_curve(line_integral: Tensor, gamma: float = 0.6, knee: float = 0.5) -> Tensor:
    """A nonlinear, monotone detector/display response: line integrals scaled to [0, 1] by their
    maximum, then ``x**gamma`` soft-clipped by ``x / (x + knee)`` (normalised). Dimensionless."""
    x = line_integral / line_integral.amax(dim=(-2, -1), keepdim=True).clamp(min=1e-12)
    y = x.clamp(min=0) ** gamma
    return y * (1 + knee) / (y + knee)


def simulate_xray(
    volume_mu: Volume,
    cameras: Cameras,
    *,
    photons: float = 2e4,
    blur_sigma_px: float = 1.0,
    gamma: float = 0.6,
    seed: int = 0,
) -> Tensor:
    """Target X-rays (V, H, W): Siddon line integrals -> Poisson photon counts (``photons`` per
    unattenuated pixel) -> log -> Gaussian blur -> :func:`gray_curve`. Brighter = more attenuation."""
    with torch.no_grad():
        line = render(volume_mu, cameras, renderer="siddon")
        gen = torch.Generator().manual_seed(seed)
        counts = beer_lambert(line.double(), photons, poisson=True, generator=gen).clamp(min=1)
        noisy = -torch.log(counts / photons)
        if blur_sigma_px > 0:
            r = max(1, int(math.ceil(3 * blur_sigma_px)))
            t = torch.arange(-r, r + 1, dtype=torch.float64)
            g = torch.exp(-0.5 * (t / blur_sigma_px) ** 2)
            g = g / g.sum()
            x = noisy[:, None]
            x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), g.reshape(1, 1, 1, -1))
            x = F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), g.reshape(1, 1, -1, 1))
            noisy = x[:, 0]
        return gray_curve(noisy, gamma=gamma).to(line.dtype)


def landmarks(volume_mu: Volume, n: int = 20, seed: int = 0, threshold_mu: Optional[float] = None) -> Tensor:
    """(n, 3) RAS mm points at random voxel centres inside the body (mu above ``threshold_mu``, default
    half the water value 0.01/mm), at least 15% of the extent away from the box faces."""
    data = volume_mu.data
    thr = 0.01 if threshold_mu is None else threshold_mu
    k, j, i = data.shape
    inner = torch.zeros_like(data, dtype=torch.bool)
    mk, mj, mi = (max(1, int(0.15 * s)) for s in (k, j, i))
    inner[mk : k - mk, mj : j - mj, mi : i - mi] = True
    idx = torch.nonzero((data > thr) & inner)
    if idx.shape[0] < n:
        raise ValueError("the CT has too few voxels inside the body for landmarks; lower threshold_mu")
    rng = np.random.default_rng(seed)
    pick = idx[torch.from_numpy(rng.choice(idx.shape[0], size=n, replace=False))]
    ijk1 = torch.cat([pick.flip(-1).double(), torch.ones(n, 1, dtype=torch.float64)], -1)
    return (ijk1 @ volume_mu.ras_from_ijk.double().T)[:, :3]


def perturb_pose(
    world_from_camera: Tensor, center_ras: Tensor, rotation_deg: float, translation_mm: float, rng: np.random.Generator
) -> Tensor:
    """A pose moved by a rotation of exactly ``rotation_deg`` about a random axis through ``center_ras``
    and a translation of exactly ``translation_mm`` in a random direction: (4, 4) float64."""
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    direction = rng.normal(size=3)
    direction /= np.linalg.norm(direction)
    r = so3_exp(torch.from_numpy(axis * math.radians(rotation_deg)))
    c = torch.as_tensor(center_ras, dtype=torch.float64)
    t = c + torch.from_numpy(direction * translation_mm) - r @ c
    return homogeneous(r, t) @ torch.as_tensor(world_from_camera, dtype=torch.float64)
