"""Siddon's exact radiological path: sum over crossed voxels of (intersection length x mu).

Two exact implementations of the same quantity:

``siddon_line_integrals`` (used by ``render``) walks each ray slab by slab along its dominant index
axis (the axis along which it moves fastest in voxel units). Inside one slab the ray moves by at most
one voxel along each other axis, so it crosses at most one plane of each: the slab's part of the ray
splits into at most three segments, found without sorting. All rays' slabs p are processed together,
and values are gathered from one slice, which keeps memory access local.

``siddon_line_integrals_sorted`` is the textbook form: the parameters of all plane crossings of a ray
(only those between its entry and exit) merged by one sort, each segment's voxel found from its
midpoint. It is slower; tests use it as an independent check.

Both are differentiable w.r.t. mu (gather -> scatter-add) and, where the set of crossed voxels does
not change, w.r.t. the ray end points (pose, intrinsics).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .rays import IndexRays, box_intersection
from .trilinear import _SLICING, SliceStacks

_COMPILED = {}


def _slab_kernel(compiled: bool):
    """The slab walk, eager or through ``torch.compile`` (fuses its ~40 elementwise passes into a few
    loops, after a one-off compilation; timings: benchmarks/RESULTS.md, rows "ours siddon compiled")."""
    if not compiled:
        return _slabs
    if "slabs" not in _COMPILED:
        _COMPILED["slabs"] = torch.compile(_slabs, dynamic=True)
    return _COMPILED["slabs"]


def siddon_line_integrals(mu: Tensor, rays: IndexRays, stacks: Optional[SliceStacks] = None, *, compiled: bool = False) -> Tensor:
    """mu: (K, J, I) 1/mm; rays in index space. Returns (R,) line integrals (dimensionless).

    stacks: slice stacks of mu with one plane per voxel (reused across chunks by ``render``).
    compiled: run the slab walk through ``torch.compile`` (worth it for long runs: reconstruction)."""
    if stacks is None or stacks.spv != 1:
        stacks = SliceStacks(mu, 1)
    k, j, i = mu.shape
    shape = torch.tensor([i, j, k], dtype=rays.origin.dtype, device=mu.device)
    amin, amax = box_intersection(rays, shape)  # (R,)
    d = rays.direction
    dominant = d.detach().abs().argmax(dim=-1)
    axes = torch.nonzero(torch.bincount(dominant, minlength=3)).flatten().tolist()
    kernel = _slab_kernel(compiled)
    if len(axes) == 1:
        return kernel(stacks.planes(axes[0]), axes[0], rays.origin, d, rays.length_mm, amin, amax)
    out = torch.zeros(d.shape[0], dtype=d.dtype, device=d.device)
    for axis in axes:
        sel = torch.nonzero(dominant == axis).squeeze(1)
        part = kernel(stacks.planes(axis), axis, rays.origin[sel], d[sel], rays.length_mm[sel], amin[sel], amax[sel])
        out = out.index_put((sel,), part)
    return out


def _slabs(planes: Tensor, axis: int, o: Tensor, d: Tensor, length_mm: Tensor, amin: Tensor, amax: Tensor) -> Tensor:
    """planes: (P, 1, H, W) mu re-stacked along ``axis``; o, d: (R, 3) index-space rays; -> (R,)."""
    _, w_axis, h_axis = _SLICING[axis]
    n_a, _, height, width = planes.shape
    dtype, device = o.dtype, o.device
    da = d[:, axis]
    p = torch.arange(n_a, dtype=dtype, device=device)[:, None]  # (P, 1)
    # Ray parameters where the ray crosses the slab's two faces, ordered, clipped to the box [amin, amax].
    f0 = (p - 0.5 - o[None, :, axis]) / da[None, :]  # (P, R)
    f1 = f0 + 1.0 / da[None, :]
    b0 = torch.maximum(torch.minimum(f0, f1), amin[None, :])
    b1 = torch.minimum(torch.maximum(f0, f1), amax[None, :])
    b1 = torch.maximum(b1, b0)  # empty slabs: zero length

    def crossing(ax: int) -> Tensor:
        # The only plane of axis ``ax`` that can lie inside the slab's part of the ray is the
        # half-integer nearest to the ray's coordinate at the middle of that part.
        dx = d[None, :, ax]
        mid = o[None, :, ax] + 0.5 * (b0 + b1) * dx
        plane = torch.floor(mid.detach()) + 0.5
        tiny = torch.finfo(dtype).tiny ** 0.5
        dx_safe = torch.where(dx.abs() < tiny, torch.full_like(dx, tiny), dx)
        return torch.minimum(torch.maximum((plane - o[None, :, ax]) / dx_safe, b0), b1)

    gw, gh = crossing(w_axis), crossing(h_axis)
    g1, g2 = torch.minimum(gw, gh), torch.maximum(gw, gh)
    total = None
    flat_planes = planes.reshape(-1)
    slice_offset = (torch.arange(n_a, device=device) * (height * width))[:, None]  # (P, 1)
    with torch.no_grad():
        o_w, o_h, d_w, d_h = o[None, :, w_axis], o[None, :, h_axis], d[None, :, w_axis], d[None, :, h_axis]
    for lo, hi in ((b0, g1), (g1, g2), (g2, b1)):
        with torch.no_grad():
            m = 0.5 * (lo + hi)
            iw = torch.floor(o_w + m * d_w + 0.5).clamp_(0, width - 1).long()
            ih = torch.floor(o_h + m * d_h + 0.5).clamp_(0, height - 1).long()
            idx = slice_offset + ih * width + iw
        term = (hi - lo) * flat_planes[idx]
        total = term if total is None else total + term
    return total.sum(dim=0) * length_mm


def siddon_line_integrals_sorted(mu: Tensor, rays: IndexRays) -> Tensor:
    """Reference implementation (sort-based). mu: (K, J, I) 1/mm. Returns (R,) line integrals."""
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
    """Working memory per ray in bytes (for chunking): about 20 tensors of one value per slab."""
    return max(shape_kji) * (20 * torch.finfo(dtype).bits // 8 + 24)
