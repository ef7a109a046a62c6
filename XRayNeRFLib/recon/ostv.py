"""OS-TV: ordered-subset, SART-preconditioned penalised least squares with a TV proximal step.

Objective (mu x >= 0 on the output grid, A the renderer's projector, p the measured line integrals)::

    0.5 * sum_i (w_i / r_i) (A x - p)_i^2  +  beta * TV(x),        r = A 1 (ray lengths through the grid, mm)

w_i: 1 for a used pixel, 0 for a masked one (and for rays that miss the grid); with
``statistical_weights`` w_i = exp(-p_i) / mean (Poisson: the variance of p_i is ~ 1 / counts, counts ~
exp(-p_i)). Dividing each row by its length is SART's row normalisation.

One *pass* visits every view once, as ``subsets`` ordered subsets of interleaved views (subset s holds
views s, s + S, s + 2S, ... of the views in the given order, which should be the angular order; the
subsets are visited in bit-reversal order so that consecutive subsets look from far-apart angles).
Subset step (SART / OS-SQS with the column normalisation of the subset)::

    x <- max(0, x + lambda * A_s^T (w (p - A_s x) / r) / A_s^T w)

(columns with A_s^T w below 1e-3 of its maximum are not updated). A^T is the renderer's autograd, the
exact adjoint of its forward projector. After every pass, the TV proximal step::

    x <- argmin_z>=0  0.5 ||z - x||^2 + t TV(z),     t = lambda * beta / mean(A^T w over the grid voxels seen)

solved by FGP (Beck & Teboulle 2009, fast gradient projection on the dual) with ``tv_inner`` iterations,
warm-started from the previous pass's dual. TV is the isotropic 3D TV with differences divided by the
spacing of each grid axis and multiplied by the smallest spacing (per voxel step on an isotropic grid),
so anisotropic voxels are handled. With ``momentum`` the passes are accelerated by Nesterov's
extrapolation (as in OS-SQS with momentum, Kim, Ramani & Fessler 2015); ordered subsets with momentum
are not guaranteed to converge, so it is off by default. ``beta`` is dimensionless with respect to the
data scale only through the SART normalisation; a value of order 1e-3 suits mu in 1/mm with a
few percent Poisson noise (tuned on a chest CT, see docs/reconstruction.md).

The initial volume is Hann-windowed FDK clamped at 0 (``init="fdk"``) or zeros.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional

import torch
from torch import Tensor

from ..geometry import Cameras
from ..progress import Progress, ProgressCallback
from ..render import render
from ..volume import Volume

__all__ = ["OSTVSettings", "OSTVHistory", "reconstruct_ostv", "tv_prox", "subset_order", "isotropic_tv"]


@dataclass
class OSTVSettings:
    """passes: passes over all views; subsets: ordered subsets per pass (clamped to the view count);
    relaxation: lambda of the subset step (0 < lambda < 2; 1 is plain SART); tv_weight: beta (0: no TV,
    plain OS-SART); tv_inner: FGP iterations per TV proximal step; statistical_weights: w = exp(-p);
    momentum: Nesterov extrapolation across passes; renderer: "trilinear" | "siddon"; max_memory_mb:
    the renderer's bound per chunk of rays; report_every: passes between progress reports (a progress
    call also follows every subset so that cancellation is prompt); snapshot_every / on_snapshot: call
    ``on_snapshot(pass, seconds, mu)`` every that many passes (0: never) and once at the end (``seconds``:
    wall time so far without the callbacks; ``mu`` (K, J, I) float32 1/mm, detached)."""

    passes: int = 6
    subsets: int = 15
    relaxation: float = 1.0
    tv_weight: float = 0.002
    tv_inner: int = 10
    statistical_weights: bool = False
    momentum: bool = False
    renderer: str = "trilinear"
    max_memory_mb: float = 1024.0
    report_every: int = 1
    snapshot_every: int = 0
    on_snapshot: Optional[Callable[[int, float, Tensor], None]] = None


@dataclass
class OSTVHistory:
    """data: weighted data term 0.5 sum w/r (A x - p)^2 / sum w, evaluated during each pass (sum over its
    subsets, before their updates); tv: TV(x) after each pass; cancelled: a progress callback returned
    False (the volume returned is the last finished subset step's); passes_done."""

    data: List[float] = field(default_factory=list)
    tv: List[float] = field(default_factory=list)
    cancelled: bool = False
    passes_done: int = 0
    best_step: int = -1


def subset_order(n_subsets: int) -> List[int]:
    """Bit-reversal order of 0..n_subsets-1 (any n: the bit-reversed indices of the next power of two,
    those < n kept)."""
    if n_subsets < 1:
        raise ValueError(f"subsets must be >= 1, got {n_subsets}")
    bits = max(1, math.ceil(math.log2(n_subsets)))
    order = [int(format(k, f"0{bits}b")[::-1], 2) for k in range(2**bits)]
    return [k for k in order if k < n_subsets]


def _axis_weights(like: Volume) -> Tensor:
    """(3,) weights of the differences along (K, J, I): smallest spacing / spacing of the axis."""
    a = like.ras_from_ijk.double()[:3, :3]
    sp = a.norm(dim=0)  # spacing of i, j, k (columns of the affine)
    sp_kji = torch.stack([sp[2], sp[1], sp[0]])
    return (sp_kji.min() / sp_kji).float()


def _grad(z: Tensor, c: Tensor) -> Tensor:
    """Forward differences (3, K, J, I), zero on the last slice of each axis, weighted by c."""
    g = torch.zeros((3,) + tuple(z.shape), dtype=z.dtype, device=z.device)
    g[0, :-1] = (z[1:] - z[:-1]) * c[0]
    g[1, :, :-1] = (z[:, 1:] - z[:, :-1]) * c[1]
    g[2, :, :, :-1] = (z[:, :, 1:] - z[:, :, :-1]) * c[2]
    return g


def _grad_t(p: Tensor, c: Tensor) -> Tensor:
    """Adjoint of :func:`_grad` (minus the divergence): (3, K, J, I) -> (K, J, I)."""
    out = torch.zeros(p.shape[1:], dtype=p.dtype, device=p.device)
    for a in range(3):
        u = p[a].movedim(a, 0)
        o = out.movedim(a, 0)
        o[:-1] -= u[:-1] * c[a]
        o[1:] += u[:-1] * c[a]
    return out


def isotropic_tv(x: Tensor, axis_weights: Optional[Tensor] = None) -> float:
    """Isotropic TV sum |grad x| of a (K, J, I) volume (differences per smallest-spacing step)."""
    c = torch.ones(3) if axis_weights is None else axis_weights
    g = _grad(x.float(), c)
    return float(g.pow(2).sum(0).sqrt().sum())


def tv_prox(b: Tensor, t: float, iterations: int, axis_weights: Optional[Tensor] = None, dual: Optional[Tensor] = None, nonneg: bool = True):
    """argmin_z (z >= 0) 0.5 ||z - b||^2 + t TV(z) by FGP on the dual; b: (K, J, I). Returns (z, dual)
    where dual (3, K, J, I) may warm-start the next call."""
    c = torch.ones(3) if axis_weights is None else axis_weights.to(b.dtype)
    c = c.to(b.device)
    p = torch.zeros((3,) + tuple(b.shape), dtype=b.dtype, device=b.device) if dual is None else dual
    if t <= 0 or iterations < 1:
        return (b.clamp_min(0) if nonneg else b), p
    lip = 4.0 * float((c**2).sum())  # ||grad||^2 bound
    r, tk = p.clone(), 1.0
    for _ in range(iterations):
        z = b - t * _grad_t(r, c)
        if nonneg:
            z = z.clamp_min(0)
        q = r + _grad(z, c) / (lip * t)
        q = q / q.pow(2).sum(0, keepdim=True).sqrt().clamp_min(1.0)
        tn = (1.0 + math.sqrt(1.0 + 4.0 * tk * tk)) / 2.0
        r = q + ((tk - 1.0) / tn) * (q - p)
        p, tk = q, tn
    z = b - t * _grad_t(p, c)
    return (z.clamp_min(0) if nonneg else z), p


def _project(x: Tensor, like: Volume, cams: Cameras, settings: OSTVSettings) -> Tensor:
    return render(Volume(x, like.ras_from_ijk, "mu"), cams, method=settings.renderer, max_memory_mb=settings.max_memory_mb)


def reconstruct_ostv(
    projections: Tensor,
    cameras: Cameras,
    like: Volume,
    start: Tensor,
    settings: Optional[OSTVSettings] = None,
    masks: Optional[Tensor] = None,
    progress: ProgressCallback = None,
) -> tuple:
    """OS-TV reconstruction (see the module docstring).

    projections: (V, H, W) line integrals; cameras: V views (angular order); like: output grid;
    start: (K, J, I) initial mu (1/mm); masks: None or (V, H, W) bool (False pixels are left out).
    returns: (Volume of mu in 1/mm, :class:`OSTVHistory`).
    Raises RuntimeError when the iterate becomes non-finite (naming the step) and ValueError on bad
    settings or non-finite projections.
    """
    s = settings if settings is not None else OSTVSettings()
    if s.passes < 1:
        raise ValueError(f"passes (iterations) must be >= 1, got {s.passes}")
    if s.subsets < 1:
        raise ValueError(f"subsets must be >= 1, got {s.subsets}")
    if not 0.0 < s.relaxation < 2.0:
        raise ValueError(f"relaxation must be in (0, 2), got {s.relaxation}")
    if s.tv_weight < 0:
        raise ValueError(f"tv_weight must be >= 0, got {s.tv_weight}")
    if s.tv_inner < 0:
        raise ValueError(f"tv_inner must be >= 0, got {s.tv_inner}")
    if s.renderer not in ("siddon", "trilinear"):
        raise ValueError(f"unknown renderer {s.renderer!r}; use 'siddon' or 'trilinear'")
    p = projections.detach().to(torch.float32)
    if not bool(torch.isfinite(p).all()):
        raise ValueError(f"the projections contain {int((~torch.isfinite(p)).sum())} non-finite values (NaN/inf); fix or mask those pixels")
    x = start.detach().to(torch.float32).clamp_min(0).clone()
    if not bool(torch.isfinite(x).all()):
        raise RuntimeError("the initial volume (FDK) is not finite; check the projections and the geometry")
    cams = cameras.to(dtype=torch.float32)
    n_views = p.shape[0]
    n_sub = min(int(s.subsets), n_views)
    c = _axis_weights(like)

    # row normalisation: ray lengths through the grid; rays that (nearly) miss the grid are not used
    ones = torch.ones_like(x)
    r = _project(ones, like, cams, s)  # (V, H, W) mm
    w = (r > 1e-3 * float(r.max())).float()
    if masks is not None:
        w = w * masks.to(torch.float32)
    if s.statistical_weights:
        sw = torch.exp(-p.clamp_min(0))
        w = w * sw / float((sw * w).sum() / w.sum().clamp_min(1))
    rw = w / r.clamp_min(1e-6)  # w / r, 0 where unused

    groups = [list(range(k, n_views, n_sub)) for k in range(n_sub)]
    order = subset_order(n_sub)
    sub_cams = [cams[torch.tensor(g)] for g in groups]
    # column normalisation per subset, A_s^T w: computed in the first pass from the same forward pass
    # as the subset's update (a second backward), then kept; the full-set A^T w (for the TV step size)
    # is A^T w restricted to the grid voxels that any ray sees
    inv_col: List[Optional[Tensor]] = [None] * n_sub
    col_all = torch.zeros_like(x)
    t_tv = None
    hist = OSTVHistory()
    snap = s.on_snapshot if s.snapshot_every > 0 and s.on_snapshot is not None else None
    t0, t_snap = time.perf_counter(), 0.0
    wsum = float(w.sum().clamp_min(1))

    def snapshot(n_done: int, vol: Tensor) -> None:
        nonlocal t_snap
        ts = time.perf_counter()
        snap(n_done, ts - t0 - t_snap, vol.detach().to(torch.float32).clone())
        t_snap += time.perf_counter() - ts

    dual = None
    x_prev, tk = x.clone(), 1.0
    y = x.clone()
    total_steps = s.passes * n_sub
    for it in range(s.passes):
        data = 0.0
        for j, si in enumerate(order):
            g = groups[si]
            yr = y.detach().requires_grad_(True)
            ax_g = _project(yr, like, sub_cams[si], s)
            ax = ax_g.detach()
            res = (p[g] - ax) * rw[g]  # (v, H, W)
            data += 0.5 * float(((p[g] - ax) ** 2 * rw[g]).sum()) / wsum
            if inv_col[si] is None:
                (cs,) = torch.autograd.grad(ax_g, yr, grad_outputs=w[g], retain_graph=True)
                col_all += cs
                inv_col[si] = torch.where(cs > 1e-3 * float(cs.max()), 1.0 / cs.clamp_min(1e-12), torch.zeros_like(cs))
            (bt,) = torch.autograd.grad(ax_g, yr, grad_outputs=res)
            del ax_g, yr
            y = (y + s.relaxation * bt * inv_col[si]).clamp_min(0)
            if not bool(torch.isfinite(y).all()):
                raise RuntimeError(
                    f"the OS-TV iterate became non-finite at pass {it + 1}, subset {j + 1}: lower the relaxation (now {s.relaxation}) "
                    "or check the projections for extreme values"
                )
            if progress is not None and j < n_sub - 1:
                done = it * n_sub + j + 1
                if progress(Progress(done, total_steps, f"pass {it + 1}/{s.passes}, subset {j + 1}/{n_sub}", None)) is False:
                    hist.cancelled = True
                    x = y  # the last finished subset step (non-negative)
                    break
        if hist.cancelled:
            break
        if t_tv is None:
            # the subset steps of a pass add up to about lambda * n_sub / mean(A^T w) per unit gradient of the
            # data term; the prox step uses the same effective step size (SQS with a scalar majoriser)
            seen = col_all > 1e-3 * float(col_all.max())
            t_tv = s.relaxation * s.tv_weight * n_sub / float(col_all[seen].mean()) if s.tv_weight > 0 and bool(seen.any()) else 0.0
        if t_tv > 0:
            y, dual = tv_prox(y, t_tv, s.tv_inner, c, dual)
        if s.momentum:
            tn = (1.0 + math.sqrt(1.0 + 4.0 * tk * tk)) / 2.0
            x_new = y
            y = (x_new + ((tk - 1.0) / tn) * (x_new - x_prev)).clamp_min(0)
            x_prev, x, tk = x_new, x_new, tn
        else:
            x = y
        hist.data.append(data)
        hist.tv.append(isotropic_tv(x, c) if s.tv_weight > 0 else 0.0)
        hist.passes_done = it + 1
        hist.best_step = it + 1
        if snap is not None and (it + 1) % s.snapshot_every == 0 and it + 1 < s.passes:
            snapshot(it + 1, x)
        if progress is not None and ((it + 1) % max(1, s.report_every) == 0 or it == s.passes - 1):
            msg = f"pass {it + 1}/{s.passes}: data {data:.4g}"
            if progress(Progress((it + 1) * n_sub, total_steps, msg, x[x.shape[0] // 2].clone())) is False:
                hist.cancelled = True
                break
    if snap is not None:
        snapshot(hist.passes_done, x)
    return Volume(x, like.ras_from_ijk, "mu"), hist
