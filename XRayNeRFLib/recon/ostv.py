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

(columns with A_s^T w below 1e-3 of its maximum are not updated). ``backprojector="voxel"`` (default)
uses the voxel-driven back projector B of :mod:`backproject` (each voxel projected with the view's
matrix, bilinear on the detector, weighted by the ray density; RTK's SART does the same) in place of A^T
in both the numerator and the column sum; it approximates A^T within a few percent on smooth data and
its per-view sampling grids are cached (``bp_cache_mb``), so a back projection costs a gather instead of
autograd's scatter-add. ``"matched"`` uses the renderer's autograd, the exact adjoint. Only the pixels
that some view of the subset uses are rendered (w > 0: rays that miss the grid or are masked are
skipped); each subset's rays are built once (:func:`render.prepare_rays`), with the trilinear renderer as
sampling plans while ``bp_cache_mb`` has room after the back projector's grids. The relaxation of
pass k (0-based, on the output grid) is ``relaxation / (1 + relaxation_decay * k)``.

TV proximal step, ``tv_steps_per_pass`` times per pass (after equal shares of the subsets)::

    x <- argmin_z>=0  0.5 ||z - x||^2 + t TV(z),     t = lambda * beta * S / mean(A^T w) / tv_steps_per_pass

(A^T w over the grid voxels seen; the subset steps of a pass add up to about lambda S / mean(A^T w) per
unit gradient of the data term, so the prox uses the same step), solved by FGP (Beck & Teboulle 2009, fast
gradient projection on the dual) with ``tv_inner`` iterations, warm-started from the previous step's dual.
TV is the isotropic 3D TV with differences divided by the spacing of each grid axis and multiplied by the
smallest spacing (per voxel step on an isotropic grid), so anisotropic voxels are handled. With
``momentum`` (default on) the passes are accelerated by Nesterov's extrapolation (as in OS-SQS with
momentum, Kim, Ramani & Fessler 2015; ordered subsets with momentum are not guaranteed to converge: the
pass count is the regulariser of last resort, and the data term is reported per pass). ``beta`` is
dimensionless with respect to the data scale only through the SART normalisation; a value of order 1e-3
suits mu in 1/mm with a few percent Poisson noise (tuned on a chest CT, see docs/reconstruction.md).

``coarse_passes`` > 0 runs that many passes first on a grid with twice the spacing (:func:`coarse_grid`)
against 2 x 2-binned projections; their correction (coarse result minus the downsampled start) is
upsampled trilinearly and added to the fine start, keeping the start's fine detail.

The initial volume is Hann-windowed FDK clamped at 0 (``init="fdk"``) or zeros.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ..geometry import Cameras
from ..progress import Progress, ProgressCallback
from ..render import DEFAULT_RENDERER, RENDERERS, prepare_rays, prepared_bytes, render, render_prepared
from ..volume import Volume
from .backproject import VoxelBackprojector

BACKPROJECTORS = ("voxel", "matched")
DEFAULT_VIEW_UPDATES = 240  # default passes x views (see default_passes)
MIN_DEFAULT_PASSES = 12  # the floor of default_passes (docs/reconstruction.md: why 12)

__all__ = ["OSTVSettings", "default_passes", "coarse_grid", "OSTVHistory", "reconstruct_ostv", "tv_prox", "subset_order", "isotropic_tv"]


@dataclass
class OSTVSettings:
    """passes: passes over all views on the output grid (None: :func:`default_passes`); subsets: ordered subsets per pass (clamped to
    the view count: 30 gives one view per subset at 30 views); relaxation: lambda of the subset step
    (0 < lambda < 2; 1 is plain SART); relaxation_decay: lambda / (1 + decay * pass); tv_weight: beta
    (0: no TV, plain OS-SART); tv_inner: FGP iterations per TV proximal step; tv_steps_per_pass: TV
    proximal steps per pass; statistical_weights: w = exp(-p); momentum: Nesterov extrapolation across
    passes; backprojector: "voxel" (voxel-driven, unmatched, fast) | "matched" (the renderer's autograd);
    bp_cache_mb: memory for cached sampling geometry: first the voxel back projector's per-view grids (12
    bytes per voxel and view: 755 MB at 128^3 and 30 views; views beyond it are recomputed each time), then
    the trilinear forward projector's per-subset sampling plans (8 bytes per plane and ray; subsets beyond
    it keep their rays, 28 bytes per ray, and recompute the plan each time); 0: no cache;
    coarse_passes: passes on the 2x coarser grid first; renderer: "trilinear" | "siddon"; max_memory_mb:
    the renderer's bound per chunk of rays; report_every: passes between progress reports (a progress
    call also follows every subset so that cancellation is prompt); snapshot_every / on_snapshot: call
    ``on_snapshot(pass, seconds, mu)`` every that many passes (0: never) and once at the end (``seconds``:
    wall time so far without the callbacks; ``mu`` (K, J, I) float32 1/mm, detached).

    Defaults: 30 one-view subsets with momentum, voxel back projection, relaxation 1.4, one TV step of 3 FGP
    iterations per pass, beta 0.00075, ``passes`` None: :func:`default_passes` (12 at 30 views, 24 at 10; a pass
    costs about its view count). They were chosen on the chest benchmark's tuning case; the measurements (and
    why relaxation 1.8 was not taken) are in docs/reconstruction.md and benchmarks/RESULTS_reconstruction.md."""

    passes: Optional[int] = None
    subsets: int = 30
    relaxation: float = 1.4
    tv_weight: float = 0.00075
    tv_inner: int = 3
    statistical_weights: bool = False
    momentum: bool = True
    backprojector: str = "voxel"
    coarse_passes: int = 0
    tv_steps_per_pass: int = 1
    relaxation_decay: float = 0.0
    bp_cache_mb: float = 1024.0
    renderer: str = DEFAULT_RENDERER
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


def default_passes(n_views: int) -> int:
    """Passes when ``OSTVSettings.passes`` is None: about DEFAULT_VIEW_UPDATES one-view updates in all
    (a pass costs about its view count), at least MIN_DEFAULT_PASSES: 12 passes at 30 views (and at 20 or 50), 24 at 10.
    The floor is where the chest benchmark reached its SSIM target (docs/reconstruction.md)."""
    return max(MIN_DEFAULT_PASSES, math.ceil(DEFAULT_VIEW_UPDATES / max(1, int(n_views))))


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


def tv_prox(
    b: Tensor, t: float, iterations: int, axis_weights: Optional[Tensor] = None, dual: Optional[Tensor] = None, nonneg: bool = True
):
    """argmin_z (z >= 0) 0.5 ||z - b||^2 + t TV(z) by FGP on the dual; b: (K, J, I). Returns (z, dual)
    where dual (3, K, J, I) may warm-start the next call. In-place on preallocated buffers (the
    differences of :func:`_grad` and the divergence of :func:`_grad_t` written slice-wise)."""
    c = torch.ones(3) if axis_weights is None else axis_weights
    cw = [float(v) for v in c]
    p = torch.zeros((3,) + tuple(b.shape), dtype=b.dtype, device=b.device) if dual is None else dual
    if t <= 0 or iterations < 1:
        return (b.clamp_min(0) if nonneg else b), p
    lip = 4.0 * sum(v * v for v in cw)  # ||grad||^2 bound
    r, q = p.clone(), torch.empty_like(p)
    z = torch.empty_like(b)
    nrm = torch.empty_like(b)
    tk = 1.0

    def primal(u: Tensor) -> None:  # z = b - t grad^T u
        z.copy_(b)
        for a in range(3):
            ua = u[a].narrow(a, 0, b.shape[a] - 1)
            z.narrow(a, 0, b.shape[a] - 1).add_(ua, alpha=t * cw[a])
            z.narrow(a, 1, b.shape[a] - 1).sub_(ua, alpha=t * cw[a])
        if nonneg:
            z.clamp_min_(0)

    for _ in range(iterations):
        primal(r)
        # q = r + grad z / (lip t), projected on the unit ball per voxel
        s = 1.0 / (lip * t)
        for a in range(3):
            n = b.shape[a] - 1
            qa, ra = q[a], r[a]
            torch.sub(z.narrow(a, 1, n), z.narrow(a, 0, n), out=qa.narrow(a, 0, n))
            qa.narrow(a, 0, n).mul_(s * cw[a]).add_(ra.narrow(a, 0, n))
            qa.narrow(a, n, 1).copy_(ra.narrow(a, n, 1))
        torch.mul(q[0], q[0], out=nrm)
        nrm.addcmul_(q[1], q[1]).addcmul_(q[2], q[2]).sqrt_().clamp_min_(1.0)
        q.div_(nrm)
        tn = (1.0 + math.sqrt(1.0 + 4.0 * tk * tk)) / 2.0
        # r = q + ((tk - 1) / tn) (q - p); then p <- q (buffers swapped)
        torch.sub(q, p, out=r)
        r.mul_((tk - 1.0) / tn).add_(q)
        p, q = q, p
        tk = tn
    primal(p)
    return z, p


def _project(x: Tensor, like: Volume, cams: Cameras, settings: OSTVSettings) -> Tensor:
    return render(Volume(x, like.ras_from_ijk, "mu"), cams, renderer=settings.renderer, max_memory_mb=settings.max_memory_mb)


def coarse_grid(like: Volume) -> Volume:
    """The grid with twice the spacing over (about) the same box: (ceil(K/2), ceil(J/2), ceil(I/2)) voxels;
    coarse index c sits at fine index 2 c + 0.5 (the centre of the fine 2x2x2 block)."""
    a = like.ras_from_ijk.double()
    s = torch.eye(4, dtype=torch.float64)
    s[:3, :3] *= 2.0
    s[:3, 3] = 0.5
    shape = tuple((n + 1) // 2 for n in like.data.shape)
    return Volume(torch.zeros(shape, dtype=torch.float32, device=like.data.device), (a @ s).to(like.ras_from_ijk.dtype), "mu")


def _downsample(x: Tensor) -> Tensor:
    """(K, J, I) -> coarse_grid's shape: means of 2x2x2 blocks (partial blocks at odd ends)."""
    return F.avg_pool3d(x[None, None], 2, ceil_mode=True)[0, 0]


def _upsample(xc: Tensor, shape) -> Tensor:
    """Coarse (K', J', I') -> fine ``shape`` by trilinear interpolation (fine i at coarse i / 2 - 0.25)."""
    up = F.interpolate(xc[None, None], scale_factor=2.0, mode="trilinear", align_corners=False)[0, 0]
    return up[: shape[0], : shape[1], : shape[2]].contiguous()


def _bin2(img: Tensor, cams: Cameras) -> Tensor:
    """(V, H, W) -> (V, H // 2, W // 2) means of 2x2 pixels, the layout of ``cams.downsampled(2)``."""
    v, h, w = img.shape
    hh, ww = h // 2, w // 2
    return img[:, : 2 * hh, : 2 * ww].reshape(v, hh, 2, ww, 2).mean((2, 4))


class _Level:
    """One grid of the solver: its data, weights, subsets and (lazily) per-subset column sums."""

    def __init__(self, p: Tensor, cams: Cameras, like: Volume, masks: Optional[Tensor], s: OSTVSettings, n_sub: int) -> None:
        self.cams, self.like, self.s = cams, like, s
        shape = tuple(like.data.shape)
        ones = torch.ones(shape, dtype=torch.float32, device=p.device)
        with torch.no_grad():
            r = _project(ones, like, cams, s)  # (V, H, W) mm: ray lengths through the grid
        w = (r > 1e-3 * float(r.max())).float()  # rays that (nearly) miss the grid are not used
        if masks is not None:
            w = w * masks.to(torch.float32)
        if s.statistical_weights:
            sw = torch.exp(-p.clamp_min(0))
            w = w * sw / float((sw * w).sum() / w.sum().clamp_min(1))
        self.wsum = float(w.sum().clamp_min(1))
        n_views = p.shape[0]
        self.groups = [list(range(k, n_views, n_sub)) for k in range(n_sub)]
        self.sub_cams = [cams[torch.tensor(g)] for g in self.groups]
        # only the pixels some view of the subset uses are rendered (rays that miss the grid or are masked
        # carry no weight); pix per subset: (flat pixel indices (N,), None when all are used; its rays)
        grid_px = cams.pixel_grid().reshape(-1, 2)  # (H*W, 2) [column, row]
        self.pix: List[tuple] = []
        # bp_cache_mb is shared: the voxel back projector's grids (12 bytes per voxel and view) first, the forward
        # projector's sampling plans get what they leave
        bp_mb = min(s.bp_cache_mb, 12 * math.prod(shape) * n_views / 2**20) if s.backprojector == "voxel" else 0.0
        cache_mb = s.bp_cache_mb - bp_mb
        for g, sub_cams in zip(self.groups, self.sub_cams):
            used = (w[g] > 0).any(0).flatten()  # (H*W,)
            idx = torch.nonzero(used).squeeze(1)
            # the subset's rays (or sampling plans), built once and marched through every iterate
            rays = None
            if idx.numel():
                rays = prepare_rays(like, sub_cams, grid_px[idx], renderer=s.renderer, max_memory_mb=s.max_memory_mb, cache_mb=cache_mb)
                cache_mb = max(0.0, cache_mb - prepared_bytes(rays) / 2**20)
            self.pix.append((None if idx.numel() == used.numel() else idx, rays))
        rw = w / r.clamp_min(1e-6)  # w / r, 0 where unused
        # per subset (v, H, W) each: the data p, w / r, the weights w
        self.sub = [(p[g].contiguous(), rw[g].contiguous(), w[g].contiguous()) for g in self.groups]
        self.inv_col: List[Optional[Tensor]] = [None] * n_sub
        self.col_all = torch.zeros(shape, dtype=torch.float32, device=p.device)
        self.t_tv: Optional[float] = None
        self.axis_w = _axis_weights(like)
        self.dual: Optional[Tensor] = None
        self.lam = s.relaxation  # the relaxation of the current pass
        self.bp = VoxelBackprojector(cams, like, cache_mb=bp_mb) if s.backprojector == "voxel" else None

    def forward(self, y: Tensor, si: int) -> Tensor:
        """A_s y: (v, H, W) line integrals of subset si, zero at pixels no view of the subset uses."""
        s, cams = self.s, self.sub_cams[si]
        idx, rays = self.pix[si]
        if rays is None:  # every pixel of the subset masked or off the grid
            return y.new_zeros(len(cams), cams.height, cams.width) * y.sum()  # zeros, still attached to y's graph
        vals = render_prepared(y, rays, renderer=s.renderer).reshape(len(cams), -1)  # (v, N)
        if idx is not None:
            vals = vals.new_zeros(len(cams), cams.height * cams.width).index_copy(1, idx, vals)
        return vals.reshape(len(cams), cams.height, cams.width)

    def step(self, y: Tensor, si: int) -> tuple:
        """One subset update of y (not in place); returns (new y, this subset's data term)."""
        s, g = self.s, self.groups[si]
        p_s, rw_s, w_s = self.sub[si]
        if s.backprojector == "voxel":
            with torch.no_grad():
                diff = p_s - self.forward(y, si)  # (v, H, W)
            res = diff * rw_s
            if self.inv_col[si] is None:
                self._set_col(si, self.bp(w_s, g))
            bt = self.bp(res, g)
        else:
            yr = y.detach().requires_grad_(True)
            ax_g = self.forward(yr, si)
            diff = p_s - ax_g.detach()
            res = diff * rw_s
            if self.inv_col[si] is None:
                (cs,) = torch.autograd.grad(ax_g, yr, grad_outputs=w_s, retain_graph=True)
                self._set_col(si, cs)
            (bt,) = torch.autograd.grad(ax_g, yr, grad_outputs=res)
            del ax_g, yr
        data = 0.5 * float((diff * res).sum()) / self.wsum
        bt = bt.contiguous()  # autograd may return an expanded zero tensor (a subset with nothing to fit)
        return torch.addcmul(y, bt, self.inv_col[si], value=self.lam).clamp_min_(0), data  # y + lambda bt / col, >= 0

    def _set_col(self, si: int, cs: Tensor) -> None:
        # column normalisation of the subset, A_s^T w (or its voxel-driven approximation); the full-set sum
        # (for the TV step size) accumulates over the subsets of the first pass
        self.col_all += cs
        self.inv_col[si] = torch.where(cs > 1e-3 * float(cs.max()), 1.0 / cs.clamp_min(1e-12), torch.zeros_like(cs))

    def prox(self, y: Tensor, n_sub: int, fraction: float = 1.0) -> Tensor:
        """The TV proximal step after ``fraction`` of a pass's subsets."""
        s = self.s
        if s.tv_weight <= 0:
            return y.clamp_min(0)
        n_known = sum(c is not None for c in self.inv_col)
        if self.t_tv is None or n_known < n_sub:
            # the subset steps of a pass add up to about lambda * n_sub / mean(A^T w) per unit gradient of the
            # data term; the prox step uses the same effective step size (SQS with a scalar majoriser). Within
            # the first pass, A^T w is extrapolated from the subsets seen so far.
            seen = self.col_all > 1e-3 * float(self.col_all.max())
            mean_col = float(self.col_all[seen].mean()) * n_sub / max(1, n_known) if bool(seen.any()) else 0.0
            self.t_tv = s.tv_weight * n_sub / mean_col if mean_col > 0 else 0.0
        if self.t_tv > 0:
            y, self.dual = tv_prox(y, self.lam * self.t_tv * fraction, s.tv_inner, self.axis_w, self.dual)
        return y


def _check_settings(s: OSTVSettings) -> None:
    """ValueError naming the first setting out of its range."""
    if s.passes is not None and s.passes < 1:
        raise ValueError(f"passes (iterations) must be >= 1, got {s.passes}")
    if s.coarse_passes < 0:
        raise ValueError(f"coarse_passes must be >= 0, got {s.coarse_passes}")
    if s.subsets < 1:
        raise ValueError(f"subsets must be >= 1, got {s.subsets}")
    if not 0.0 < s.relaxation < 2.0:
        raise ValueError(f"relaxation must be in (0, 2), got {s.relaxation}")
    if s.relaxation_decay < 0:
        raise ValueError(f"relaxation_decay must be >= 0, got {s.relaxation_decay}")
    if s.tv_weight < 0:
        raise ValueError(f"tv_weight must be >= 0, got {s.tv_weight}")
    if s.tv_steps_per_pass < 1:
        raise ValueError(f"tv_steps_per_pass must be >= 1, got {s.tv_steps_per_pass}")
    if s.tv_inner < 0:
        raise ValueError(f"tv_inner must be >= 0, got {s.tv_inner}")
    if s.renderer not in RENDERERS:
        raise ValueError(f"unknown renderer {s.renderer!r}; use one of {RENDERERS}")
    if s.backprojector not in BACKPROJECTORS:
        raise ValueError(f"unknown backprojector {s.backprojector!r}; use one of {', '.join(BACKPROJECTORS)}")


@dataclass(frozen=True)
class _Schedule:
    """The order of one run's work: passes per level, the subsets of a pass and where its TV steps fall."""

    fine_passes: int  # passes on the output grid
    coarse_passes: int  # passes on the 2x coarser grid first (0: no coarse level)
    n_sub: int  # subsets per pass (at most one per view)
    order: List[int]  # the subsets' visiting order (bit reversal)
    prox_after: List[int]  # subset counts after which a TV step runs (the last one ends the pass)
    tv_fraction: float  # each TV step's share of the pass's TV step size

    @staticmethod
    def make(s: OSTVSettings, n_views: int, fine_shape: tuple, cams: Cameras) -> "_Schedule":
        n_sub = min(int(s.subsets), n_views)
        n_tv = max(1, min(int(s.tv_steps_per_pass), n_sub))
        coarse = s.coarse_passes > 0 and min(fine_shape) >= 4 and min(cams.width, cams.height) >= 4
        return _Schedule(
            fine_passes=int(s.passes) if s.passes is not None else default_passes(n_views),
            coarse_passes=s.coarse_passes if coarse else 0,
            n_sub=n_sub,
            order=subset_order(n_sub),
            prox_after=[round((k + 1) * n_sub / n_tv) for k in range(n_tv)],
            tv_fraction=1.0 / n_tv,
        )

    @property
    def total_passes(self) -> int:
        return self.coarse_passes + self.fine_passes

    @property
    def total_steps(self) -> int:
        return self.total_passes * self.n_sub


class _Run:
    """One call of :func:`reconstruct_ostv`: the settings, schedule, history and callbacks its passes share."""

    def __init__(self, s: OSTVSettings, sched: _Schedule, like: Volume, progress: ProgressCallback) -> None:
        self.s, self.sched, self.like, self.progress = s, sched, like, progress
        self.hist = OSTVHistory()
        self.snap = s.on_snapshot if s.snapshot_every > 0 and s.on_snapshot is not None else None
        self.t0, self.t_snap = time.perf_counter(), 0.0

    def snapshot(self, n_done: int, vol: Tensor) -> None:
        """on_snapshot(pass, seconds without the callbacks, mu (K, J, I) float32 1/mm)."""
        ts = time.perf_counter()
        self.snap(n_done, ts - self.t0 - self.t_snap, vol.detach().to(torch.float32).clone())
        self.t_snap += time.perf_counter() - ts

    def sweep(self, lvl: _Level, y: Tensor) -> tuple:
        """One pass's subset steps (and its intermediate TV steps) from y: (y, data term, cancelled)."""
        s, sched, done_passes = self.s, self.sched, self.hist.passes_done
        data = 0.0
        for j, si in enumerate(sched.order):
            y, d = lvl.step(y, si)
            data += d
            if j + 1 in sched.prox_after[:-1]:  # intermediate TV steps (tv_steps_per_pass > 1)
                y = lvl.prox(y, sched.n_sub, sched.tv_fraction)
            # a non-finite voxel reaches the next subset's data term; the full check runs once per pass
            if not math.isfinite(d) or (j == sched.n_sub - 1 and not bool(torch.isfinite(y).all())):
                raise RuntimeError(
                    f"the OS-TV iterate became non-finite at pass {done_passes + 1}, subset {j + 1}: lower the relaxation "
                    f"(now {s.relaxation}) or check the projections for extreme values"
                )
            if self.progress is not None and j < sched.n_sub - 1:
                done = done_passes * sched.n_sub + j + 1
                msg = f"pass {done_passes + 1}/{sched.total_passes}, subset {j + 1}/{sched.n_sub}"
                if self.progress(Progress(done, sched.total_steps, msg, None)) is False:
                    return y, data, True
        return y, data, False

    def level(self, lvl: _Level, x: Tensor, n_passes: int, is_fine: bool, to_fine: Callable[[Tensor], Tensor]) -> Tensor:
        """n_passes passes on one level from x (each: subset steps, TV step, momentum); returns the iterate
        (the last finished subset step's when cancelled; the history records each pass)."""
        s, sched, hist = self.s, self.sched, self.hist
        x_prev, tk = x.clone(), 1.0
        y = x.clone()
        for it in range(n_passes):
            lvl.lam = s.relaxation / (1.0 + s.relaxation_decay * it)
            y, data, cancelled = self.sweep(lvl, y)
            if cancelled:
                hist.cancelled = True
                return y  # the last finished subset step (non-negative)
            y = lvl.prox(y, sched.n_sub, sched.tv_fraction)
            if s.momentum:
                tn = (1.0 + math.sqrt(1.0 + 4.0 * tk * tk)) / 2.0
                x_new = y
                y = (x_new + ((tk - 1.0) / tn) * (x_new - x_prev)).clamp_min(0)
                x_prev, x, tk = x_new, x_new, tn
            else:
                x = y
            if self.after_pass(data, x if is_fine else to_fine(x), is_fine) is False:
                hist.cancelled = True
                return x
        return x

    def after_pass(self, data: float, x_out: Tensor, is_fine: bool) -> bool:
        """Record a finished pass (x_out: the iterate on the output grid), snapshot and report it; False: cancelled."""
        s, sched, hist = self.s, self.sched, self.hist
        hist.passes_done += 1
        done_passes = hist.passes_done
        hist.data.append(data)
        hist.tv.append(isotropic_tv(x_out, _axis_weights(self.like)) if s.tv_weight > 0 else 0.0)
        hist.best_step = done_passes
        if self.snap is not None and done_passes % s.snapshot_every == 0 and done_passes < sched.total_passes:
            self.snapshot(done_passes, x_out)
        if self.progress is not None and (done_passes % max(1, s.report_every) == 0 or done_passes == sched.total_passes):
            msg = f"pass {done_passes}/{sched.total_passes}{'' if is_fine else ' (coarse grid)'}: data {data:.4g}"
            return (
                self.progress(Progress(done_passes * sched.n_sub, sched.total_steps, msg, x_out[x_out.shape[0] // 2].clone())) is not False
            )
        return True


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
    _check_settings(s)
    p = projections.detach().to(torch.float32)
    if not bool(torch.isfinite(p).all()):
        raise ValueError(f"the projections contain {int((~torch.isfinite(p)).sum())} non-finite values (NaN/inf); fix or mask those pixels")
    x = start.detach().to(torch.float32).clamp_min(0).clone()
    if not bool(torch.isfinite(x).all()):
        raise RuntimeError("the initial volume (FDK) is not finite; check the projections and the geometry")
    cams = cameras.to(dtype=torch.float32)
    fine_shape = tuple(x.shape)
    sched = _Schedule.make(s, p.shape[0], fine_shape, cams)
    run = _Run(s, sched, like, progress)

    # (level, passes): the 2x coarser grid and detector first (coarse_passes), then the output grid
    plan = []
    if sched.coarse_passes > 0:
        like_c = coarse_grid(like)
        m_c = None if masks is None else _bin2(masks.to(torch.float32), cams) > 0.999  # a coarse pixel needs all four
        plan.append((lambda: _Level(_bin2(p, cams), cams.downsampled(2), like_c, m_c, s, sched.n_sub), sched.coarse_passes))
        x_fine0 = x
        x = _downsample(x)
        x_coarse0 = x.clone()
    plan.append((lambda: _Level(p, cams, like, masks, s, sched.n_sub), sched.fine_passes))

    def to_fine(xc: Tensor) -> Tensor:
        # the coarse passes' correction, upsampled, is added to the fine start: the fine detail of the start
        # (FDK) is kept, the coarse grid fixes the low frequencies
        return (x_fine0 + _upsample(xc - x_coarse0, fine_shape)).clamp_min(0)

    for li, (make, n_passes) in enumerate(plan):
        lvl = make()
        if li > 0:
            x = to_fine(x)
        x = run.level(lvl, x, n_passes, li == len(plan) - 1, to_fine)
        if run.hist.cancelled:
            break
    if x.shape != fine_shape:  # cancelled on the coarse grid
        x = to_fine(x)
    if run.snap is not None:
        run.snapshot(run.hist.passes_done, x)
    return Volume(x, like.ras_from_ijk, "mu"), run.hist
