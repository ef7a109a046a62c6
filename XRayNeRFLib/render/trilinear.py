"""Trilinear ray marching: midpoint quadrature of trilinearly interpolated mu along each ray.

Each ray is sampled only between its entry into and exit from the voxel box, at N points per ray with
N = ceil(longest path in the chunk, in voxels, x samples_per_voxel); the quadrature weight of a sample
is (exit - entry) / N times the ray length in mm. Differentiable w.r.t. mu and the sample positions
(hence pose and intrinsics) through ``grid_sample``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .rays import IndexRays, box_intersection


def trilinear_line_integrals(mu: Tensor, rays: IndexRays, samples_per_voxel: float = 1.0) -> Tensor:
    """mu: (K, J, I) 1/mm; rays in index space. Returns (R,) line integrals (dimensionless).

    Outside the voxel centres (the outer half voxel) values are held constant (border padding), so a
    constant volume integrates exactly as in Siddon's model.
    """
    k, j, i = mu.shape
    dtype = rays.origin.dtype
    shape = torch.tensor([i, j, k], dtype=dtype, device=mu.device)
    amin, amax = box_intersection(rays, shape)
    span = amax - amin  # (R,)
    path_vox = (span.detach() * rays.direction.detach().norm(dim=-1)).max() if span.numel() else span.new_zeros(())
    n = max(1, int(math.ceil(float(path_vox) * samples_per_voxel)))
    t = (torch.arange(n, dtype=dtype, device=mu.device) + 0.5) / n  # (N,)
    a = amin[:, None] + span[:, None] * t[None, :]  # (R, N)
    pts = rays.origin[:, None, :] + a[..., None] * rays.direction[:, None, :]  # (R, N, 3) ijk
    # grid_sample, align_corners=False: normalised -1 / +1 are the outer faces (-0.5, n-0.5).
    grid = (2.0 * pts + 1.0) / shape - 1.0
    vals = F.grid_sample(
        mu[None, None],
        grid[None, None],  # (1, 1, R, N, 3) with (x, y, z) = (i, j, k)
        mode="bilinear",
        padding_mode="border",
        align_corners=False,
    )[0, 0, 0]  # (R, N)
    return vals.sum(dim=1) * (span / n) * rays.length_mm


def trilinear_bytes_per_ray(shape_kji, samples_per_voxel: float, dtype: torch.dtype) -> int:
    n = math.ceil(math.sqrt(sum(s * s for s in shape_kji)) * samples_per_voxel) + 1
    return n * (8 * torch.finfo(dtype).bits // 8 + 16)
