"""Uncertainty volumes from an ensemble of reconstructions (grouped jackknife over views + seeds).

The V views are split at random into ``E = ensemble_size`` disjoint groups of (nearly) equal size;
member m is reconstructed from all views *except* group m (so each keeps about (E-1)/E of them), with
its own seed (ray sampling / network initialisation of the iterative methods). From the members
theta_1..theta_E (per voxel):

    mean = (1/E) sum_m theta_m
    std  = sqrt((E-1)/E * sum_m (theta_m - mean)^2)      (grouped delete-d jackknife standard error)

``std`` estimates the standard error of a reconstruction caused by *which* views were measured (and by
the optimiser's randomness): it is large where the result depends on a few views (regions seen by
fewer views, streaks of sparse sampling, edges behind a missing angular range) and small where every
subset agrees. It does not see errors that all views share (a wrong geometry, beam hardening, a
systematic bias of the regulariser), so it is an indicator for where to distrust the volume, not a
calibrated error bar. Cost: ``E`` reconstructions, each from (E-1)/E of the views.

Works for any reconstruction function (FDK, voxel, nerf): see :func:`ensemble`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, List, Optional

import torch
from torch import Tensor

from ..progress import Progress, ProgressCallback
from ..volume import Volume

# member(views (idx,), seed, progress) -> (volume mu, history or None, cancelled)
MemberFn = Callable[[Tensor, int, ProgressCallback], tuple]


@dataclass
class EnsembleResult:
    """mean, std: Volumes (mu, 1/mm) on the members' grid; std is None with fewer than 2 members.
    view_groups: the left-out view indices of each member; histories: per member (or None);
    cancelled: a progress callback asked to stop (mean/std use the members finished by then)."""

    mean: Volume
    std: Optional[Volume]
    view_groups: List[List[int]]
    histories: List[Any] = field(default_factory=list)
    cancelled: bool = False

    @property
    def members(self) -> int:
        return len(self.histories)


def leave_out_groups(n_views: int, ensemble_size: int, seed: int = 0) -> List[Tensor]:
    """Random partition of range(n_views) into ``ensemble_size`` disjoint groups (sizes differ by at most
    one), each sorted. Member m of the ensemble leaves group m out."""
    if ensemble_size < 2:
        raise ValueError(f"an uncertainty ensemble needs at least 2 members, got ensemble_size={ensemble_size}")
    if n_views < 2 * ensemble_size:
        raise ValueError(
            f"{n_views} views are too few for an ensemble of {ensemble_size} (each member leaves out 1/{ensemble_size} of "
            f"the views); use ensemble_size <= {max(2, n_views // 2)} or more views"
        )
    gen = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(n_views, generator=gen)
    return [torch.sort(perm[m::ensemble_size]).values for m in range(ensemble_size)]


def jackknife_std(members: Tensor) -> Tensor:
    """members: (E, K, J, I) -> (K, J, I) grouped jackknife standard error sqrt((E-1)/E sum (x - mean)^2)."""
    e = members.shape[0]
    mean = members.mean(0)
    return torch.sqrt((e - 1) / e * ((members - mean) ** 2).sum(0))


def ensemble(
    member: MemberFn,
    n_views: int,
    *,
    ensemble_size: int = 4,
    seed: int = 0,
    progress: ProgressCallback = None,
) -> EnsembleResult:
    """Run ``member(keep_views, seed_m, progress_m)`` for each leave-one-group-out subset and combine.

    member: returns (Volume mu, history or None, cancelled: bool) for the views ``keep_views`` (sorted
        int64 indices); every member must return the same grid.
    progress: overall progress (member m of E maps to the m-th E-th of the bar); returning False stops:
        the finished members are combined (a member stopped half-way is used only if it is the first).
    """
    groups = leave_out_groups(n_views, ensemble_size, seed)
    vols: List[Tensor] = []
    hists: List[Any] = []
    like: Optional[Volume] = None
    cancelled = False
    scale = 1000
    for m, out in enumerate(groups):
        keep = torch.tensor([v for v in range(n_views) if v not in set(out.tolist())], dtype=torch.long)
        sub = None
        if progress is not None:

            def sub(p: Progress, m=m) -> bool:
                done = m * scale + int(scale * p.fraction)
                return progress(Progress(done, ensemble_size * scale, f"member {m + 1}/{ensemble_size}: {p.message}", p.preview))

        vol, hist, stopped = member(keep, seed + m, sub)
        if like is None:
            like = vol
        elif tuple(vol.data.shape) != tuple(like.data.shape) or not torch.allclose(vol.ras_from_ijk, like.ras_from_ijk):
            raise RuntimeError("ensemble members returned different grids; pass an explicit output volume")
        if stopped:
            cancelled = True
            if not vols:
                vols.append(vol.data.float())
                hists.append(hist)
            break
        vols.append(vol.data.float())
        hists.append(hist)
    stack = torch.stack(vols)  # (E', K, J, I)
    mean = Volume(stack.mean(0), like.ras_from_ijk, "mu")
    std = Volume(jackknife_std(stack), like.ras_from_ijk, "mu") if stack.shape[0] >= 2 else None
    return EnsembleResult(mean, std, [g.tolist() for g in groups[: len(vols)]], hists, cancelled)


def spearman(a: Tensor, b: Tensor) -> float:
    """Spearman rank correlation of two equally shaped tensors (flattened; ties get their mean rank)."""
    x = a.reshape(-1).double()
    y = b.reshape(-1).double()
    if x.numel() != y.numel() or x.numel() < 3:
        raise ValueError(f"spearman needs two tensors with the same number (>= 3) of values, got {x.numel()} and {y.numel()}")
    rx, ry = _ranks(x), _ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    den = float(rx.norm() * ry.norm())
    return float((rx * ry).sum()) / den if den > 0 else 0.0


def _ranks(x: Tensor) -> Tensor:
    order = torch.argsort(x)
    sx = x[order]
    ranks = torch.empty_like(x)
    ranks[order] = torch.arange(x.numel(), dtype=torch.float64)
    # average ranks over ties
    uniq, inv, counts = torch.unique_consecutive(sx, return_inverse=True, return_counts=True)
    if len(uniq) < x.numel():
        sums = torch.zeros(len(uniq), dtype=torch.float64).index_add_(0, inv, torch.arange(x.numel(), dtype=torch.float64))
        ranks[order] = (sums / counts)[inv]
    return ranks
