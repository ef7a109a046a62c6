"""Trilinear ray marching with samples on the planes of each ray's dominant axis.

Every ray is sampled where it crosses equally spaced planes perpendicular to its dominant index axis
(the axis along which it moves fastest in voxel units), ``samples_per_voxel`` planes per voxel: with
one sample per voxel the planes pass through the voxel centres, as in Joseph's projector. On a plane
the trilinear interpolant reduces to linear interpolation between the two neighbouring slices followed
by bilinear interpolation in the plane, so all rays' samples on one plane are a single 2D
``grid_sample`` of one slice: cache-friendly, and several times cheaper than 3D sampling.

Quadrature: each plane stands for a slab of thickness 1/samples_per_voxel (in voxels) along the
dominant axis; a sample's weight is the length in mm of the part of the source-to-pixel segment inside
its slab.

Boundary (the convention of docs/geometry.md, shared with Siddon): the CT is its voxel samples extended
by zero beyond the box. Along the dominant axis the outermost slabs reach the box faces (index -0.5 and
n - 0.5); in the plane, the bilinear interpolant between the edge voxels and the zeros beyond
(grid_sample's "zeros" padding) falls linearly from the edge value at the outermost centre to 0 one
voxel further, half the edge value at the face: the same mass as Siddon's box, spread over one voxel.

Differentiable w.r.t. mu and w.r.t. the ray end points (pose and intrinsics), through ``grid_sample``: in
reverse mode (torch's own derivatives), and in forward mode (:func:`torch.autograd.forward_ad`, which torch's
grid sampling lacks: :class:`_PlaneSample` supplies it), so a Jacobian w.r.t. a few pose parameters costs a few
forward passes (recon.selfcal).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
import torch.autograd.forward_ad as fwad
import torch.nn.functional as F
from torch import Tensor

from .rays import IndexRays

# For a dominant index axis (0=i, 1=j, 2=k): the permutation of mu (K, J, I) that puts that axis first,
# and the index axes that the slice's width (W) and height (H) run along.
_SLICING = {
    0: ((2, 0, 1), 1, 2),  # (I, K, J): W <- j, H <- k
    1: ((1, 0, 2), 0, 2),  # (J, K, I): W <- i, H <- k
    2: ((0, 1, 2), 0, 1),  # (K, J, I): W <- i, H <- j
}


class SliceStacks:
    """mu re-stacked along each axis (and resampled to the plane positions); built lazily, reused across
    the chunks of one render call. Holds autograd history, so gradients flow back to mu."""

    def __init__(self, mu: Tensor, samples_per_voxel: int) -> None:
        self.mu = mu
        self.spv = samples_per_voxel
        self._cache: Dict[int, Tensor] = {}

    def planes(self, axis: int) -> Tensor:
        """(P, 1, H, W) values on the sample planes of ``axis``, P = n_axis * samples_per_voxel."""
        if axis not in self._cache:
            perm, _, _ = _SLICING[axis]
            stack = self.mu.permute(*perm)
            if self.spv > 1:
                n = stack.shape[0]
                pos = plane_positions(n, self.spv, stack.dtype, stack.device)  # (P,)
                lo = torch.floor(pos).clamp(0, n - 1)
                frac = (pos - lo).clamp(0, 1)
                lo_i = lo.long()
                hi_i = (lo_i + 1).clamp(max=n - 1)
                stack = stack[lo_i] * (1 - frac)[:, None, None] + stack[hi_i] * frac[:, None, None]
            self._cache[axis] = stack.unsqueeze(1).contiguous()
        return self._cache[axis]


def sliced_layout(mu: Tensor, axis: int) -> Tensor:
    """mu (K, J, I) with the same values, stored in the memory order in which :class:`SliceStacks` slices it along
    index axis ``axis`` (0 = i, 1 = j, 2 = k): renders whose rays run mostly along that axis then take its
    slices without copying the volume on every call (one copy here instead). Shape (K, J, I), a permuted view."""
    perm, _, _ = _SLICING[int(axis)]
    inverse = [perm.index(d) for d in range(3)]
    return mu.permute(*perm).contiguous().permute(*inverse)


def plane_positions(n: int, samples_per_voxel: int, dtype, device) -> Tensor:
    """Index coordinates of the sample planes along an axis of n voxels: (n * spv,)."""
    q = torch.arange(n * samples_per_voxel, dtype=dtype, device=device)
    return -0.5 + (q + 0.5) / samples_per_voxel


@dataclass
class MarchPlan:
    """How rays sample the planes of one dominant index axis (the geometry of :func:`trilinear_line_integrals`,
    independent of mu): ``sel`` (R',) the rays among the R given (None: all of them), ``grid`` (P, 1, R', 2)
    grid_sample's normalised in-plane coordinates, ``weights`` (P, R') the slab weights (None when every
    segment spans the volume along the axis: all 1), ``mm`` (R',) mm of ray per plane. 8 (12 with weights)
    bytes per plane and ray in float32."""

    axis: int
    sel: Optional[Tensor]
    grid: Tensor
    weights: Optional[Tensor]
    mm: Tensor

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.grid, self.weights, self.mm, self.sel) if t is not None)


def trilinear_line_integrals(mu: Tensor, rays: IndexRays, samples_per_voxel: float = 1.0, stacks: Optional[SliceStacks] = None) -> Tensor:
    """mu: (K, J, I) 1/mm; rays in index space. Returns (R,) line integrals (dimensionless)."""
    spv = int(round(samples_per_voxel))
    if spv < 1 or abs(spv - samples_per_voxel) > 1e-9:
        raise ValueError(f"samples_per_voxel must be a positive integer, got {samples_per_voxel}")
    return march(stacks if stacks is not None else SliceStacks(mu, spv), march_plans(tuple(mu.shape), rays, spv))


def march_plans(shape_kji: Tuple[int, int, int], rays: IndexRays, spv: int) -> List[MarchPlan]:
    """The plans of rays through a (K, J, I) grid sampled ``spv`` (integer) planes per voxel, one per dominant
    axis present; differentiable w.r.t. the rays."""
    d = rays.direction
    dominant = d.detach().abs().argmax(dim=-1)  # (R,)
    axes = torch.nonzero(torch.bincount(dominant, minlength=3)).flatten().tolist()
    if len(axes) == 1:
        return [_plan_axis(shape_kji, axes[0], rays.origin, d, rays.length_mm, spv, None)]
    plans = []
    for axis in axes:
        sel = torch.nonzero(dominant == axis).squeeze(1)
        plans.append(_plan_axis(shape_kji, axis, rays.origin[sel], d[sel], rays.length_mm[sel], spv, sel))
    return plans


def march(stacks: SliceStacks, plans: List[MarchPlan]) -> Tensor:
    """Line integrals (R,) of the stacks' mu along the rays of ``plans`` (:func:`march_plans`)."""
    if len(plans) == 1 and plans[0].sel is None:
        return _sample(stacks, plans[0])
    n = sum(int(pl.sel.numel()) for pl in plans)
    ref = plans[0].mm
    out = torch.zeros(n, dtype=ref.dtype, device=ref.device)
    for pl in plans:
        out = out.index_put((pl.sel,), _sample(stacks, pl))
    return out


def _plan_axis(shape_kji, axis: int, origin: Tensor, direction: Tensor, length_mm: Tensor, spv: int, sel: Optional[Tensor]) -> MarchPlan:
    _, w_axis, h_axis = _SLICING[axis]
    n_ijk = (shape_kji[2], shape_kji[1], shape_kji[0])
    width, height, n_axis = n_ijk[w_axis], n_ijk[h_axis], n_ijk[axis]
    pos = plane_positions(n_axis, spv, origin.dtype, origin.device)  # (P,)
    da = direction[:, axis]  # (R,) never ~0: it is the dominant component
    # In-plane index coordinates are affine in the plane position: x = x0 + slope * pos. Fold the
    # normalisation of grid_sample (align_corners=False: -1/+1 at the outer faces) into slope and x0.
    size = torch.tensor([width, height], dtype=origin.dtype, device=origin.device)
    other = origin[:, [w_axis, h_axis]]  # (R, 2)
    slope = direction[:, [w_axis, h_axis]] / da[:, None]  # (R, 2) in-plane voxels per plane voxel
    x0 = other - origin[:, axis : axis + 1] * slope
    grid = torch.addcmul((2 * x0 + 1) / size - 1, pos[:, None, None], (2 * slope / size).unsqueeze(0))  # (P, R, 2)
    # Slab weights: the part of [pos - h, pos + h] inside the segment's extent along the axis. When every
    # segment spans the whole volume along the axis (source and detector outside), all weights are 1.
    a0 = origin[:, axis]
    a1 = a0 + da
    seg_lo, seg_hi = torch.minimum(a0, a1), torch.maximum(a0, a1)
    weights = None
    if not bool((seg_lo.detach() <= -0.5).all() and (seg_hi.detach() >= n_axis - 0.5).all()):
        half = 0.5 / spv
        overlap = (torch.minimum(pos[:, None] + half, seg_hi[None, :]) - torch.maximum(pos[:, None] - half, seg_lo[None, :])).clamp_min(0)
        weights = overlap * spv
    # Each plane stands for 1/spv voxel along the axis: mm per plane = length_mm / |d_axis| / spv.
    return MarchPlan(axis, sel, grid.unsqueeze(1), weights, length_mm / (da.abs() * spv))


def _sample(stacks: SliceStacks, plan: MarchPlan) -> Tensor:
    """(R',) line integrals along one plan. Outside the box the volume is zero ("zeros" padding: the outer
    half voxel blends towards 0)."""
    vals = _sample_planes(stacks.planes(plan.axis), plan.grid)[:, 0, 0, :]  # (P, R')
    total = vals.sum(dim=0) if plan.weights is None else (vals * plan.weights).sum(dim=0)
    return total * plan.mm


def _sample_planes(planes: Tensor, grid: Tensor) -> Tensor:
    """Bilinear samples (P, 1, 1, R') of planes (P, 1, H, W) at grid (P, 1, R', 2): torch's grid_sample, or with
    dual (forward-mode) inputs :class:`_PlaneSample`."""
    if fwad.unpack_dual(grid).tangent is None and fwad.unpack_dual(planes).tangent is None:
        return F.grid_sample(planes, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return _PlaneSample.apply(planes, grid)


class _PlaneSample(torch.autograd.Function):
    """grid_sample (bilinear, zeros padding, align_corners False) of single-channel planes, with the forward-mode
    derivative torch lacks: d out = sample(d planes, grid) + (d out / d grid) . d grid. The partials d out / d grid
    are grid_sample's own backward with a unit cotangent, exact because with one channel each output sample
    depends on its own grid point only."""

    @staticmethod
    def forward(ctx, planes: Tensor, grid: Tensor) -> Tensor:
        ctx.save_for_forward(planes, grid)
        ctx.save_for_backward(planes, grid)
        return F.grid_sample(planes, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    @staticmethod
    def jvp(ctx, d_planes: Optional[Tensor], d_grid: Optional[Tensor]) -> Tensor:
        planes, grid = ctx.saved_tensors
        out = None
        if d_grid is not None:
            ones = grid.new_ones(grid.shape[0], 1, grid.shape[1], grid.shape[2])
            _, partials = torch.ops.aten.grid_sampler_2d_backward(ones, planes, grid, 0, 0, False, [False, True])
            out = (partials * d_grid).sum(-1).unsqueeze(1)
        if d_planes is not None:
            tp = F.grid_sample(d_planes, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
            out = tp if out is None else out + tp
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        planes, grid = ctx.saved_tensors
        mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1]]
        d_planes, d_grid = torch.ops.aten.grid_sampler_2d_backward(grad_out.contiguous(), planes, grid, 0, 0, False, mask)
        return d_planes, d_grid


def trilinear_bytes_per_ray(shape_kji: Tuple[int, int, int], samples_per_voxel: float, dtype: torch.dtype) -> int:
    planes = max(shape_kji) * max(1, int(round(samples_per_voxel)))
    return planes * (12 * torch.finfo(dtype).bits // 8 + 8)
