"""Siddon's exact radiological path: sum over crossed voxels of (intersection length x mu).

Vectorised over rays: for each ray only the voxel planes it actually crosses between its entry and exit
are generated (per axis, a padded run of consecutive plane indices), merged by one sort, and the voxel
of each segment is found from the segment's midpoint. Differentiable w.r.t. mu (gather -> scatter-add)
and, where the set of crossed voxels does not change, w.r.t. the ray end points (pose, intrinsics).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .rays import IndexRays, box_intersection


def siddon_line_integrals(mu: Tensor, rays: IndexRays) -> Tensor:
    """mu: (K, J, I) 1/mm; rays in index space. Returns (R,) line integrals (dimensionless)."""
    k, j, i = mu.shape
    dtype = rays.origin.dtype
    shape = torch.tensor([i, j, k], dtype=dtype, device=mu.device)
    amin, amax = box_intersection(rays, shape)  # (R,)
    o, d = rays.origin, rays.direction
    c_in = o + amin[:, None] * d  # (R, 3) index coords at entry / exit
    c_out = o + amax[:, None] * d
    c_lo = torch.minimum(c_in, c_out)
    c_hi = torch.maximum(c_in, c_out)
    # Planes between voxels p-1 and p sit at p - 0.5; the ray crosses those strictly inside (c_lo, c_hi).
    first = torch.floor(c_lo.detach() + 0.5) + 1  # (R, 3) first plane index p
    last = torch.ceil(c_hi.detach() + 0.5) - 1
    count = (last - first + 1).clamp_min(0)
    alphas = [amin[:, None]]
    tiny = torch.finfo(dtype).tiny ** 0.5
    for axis in range(3):
        n_max = int(count[:, axis].max().item()) if count.shape[0] else 0
        if n_max == 0:
            continue
        steps = torch.arange(n_max, dtype=dtype, device=mu.device)
        # Walk the planes in the direction of travel so the runs are already sorted per axis.
        forward = d[:, axis : axis + 1] >= 0
        start = torch.where(forward, first[:, axis : axis + 1], last[:, axis : axis + 1])
        p = torch.where(forward, start + steps, start - steps)  # (R, n_max)
        da = d[:, axis : axis + 1]
        da = torch.where(da.abs() < tiny, torch.full_like(da, tiny), da)
        a = (p - 0.5 - o[:, axis : axis + 1]) / da
        a = torch.where(steps[None, :] < count[:, axis : axis + 1], a, amax[:, None])
        alphas.append(a)
    alphas.append(amax[:, None])
    a_all = torch.cat(alphas, dim=1)
    a_sorted, _ = torch.sort(a_all, dim=1)  # (R, M)
    seg = a_sorted[:, 1:] - a_sorted[:, :-1]  # (R, M-1) parameter lengths
    mid = 0.5 * (a_sorted[:, 1:] + a_sorted[:, :-1]).detach()
    flat = None
    strides = (1, i, i * j)
    sizes = (i, j, k)
    for axis in range(3):
        idx = torch.floor(o[:, axis : axis + 1].detach() + mid * d[:, axis : axis + 1].detach() + 0.5)
        idx = idx.clamp_(0, sizes[axis] - 1).long()
        flat = idx * strides[axis] if flat is None else flat + idx * strides[axis]
    values = mu.reshape(-1)[flat]  # (R, M-1)
    return (seg * values).sum(dim=1) * rays.length_mm


def siddon_bytes_per_ray(shape_kji, dtype: torch.dtype) -> int:
    """Upper bound of working memory per ray in bytes (for chunking)."""
    m = sum(shape_kji) + 3
    return m * (8 * torch.finfo(dtype).bits // 8 + 48)
