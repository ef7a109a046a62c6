"""Hash-grid neural-field reconstruction (issue 4, item 3), pure torch.

mu(x) is a :class:`hashgrid.HashGridField` (multiresolution hash encoding, optional LayerNorm, small
MLP, softplus >= 0). Rendering: each step evaluates the field on the output voxel grid (separable
interpolation, :meth:`HashGridField.evaluate_grid`) and renders ray mini-batches of that grid with the
exact renderer through :func:`optimize.fit` (L1 on line integrals + lambda_TV * TV, Adam, linear decay),
so the data term, the TV term, the learned loss weights, progress, cancellation and the NaN checks are
the voxel method's. By default the field first distils the Hann FDK volume (:func:`distill`, see
``NerfSettings.init``) and its finest level matches the output grid with every level dense.
``coarse_to_fine`` spends the first ``coarse_fraction`` of the steps on a grid of
half the resolution over the same box (8x fewer field evaluations), then refines on the output grid;
the learning rate follows one linear decay over both stages (rather than restarting it at the full rate:
docs/reconstruction.md) and the fine stage continues the coarse stage's Adam state (``optimize.fit``'s
``carry``).

Coordinates: the field's unit cube is the output box (voxel boundaries) scaled isotropically by its
longest side, x along the grid's i axis, y along j, z along k; voxel (k, j, i) has its centre at
p = ((i + 0.5) s_i, (j + 0.5) s_j, (k + 0.5) s_k) / L with s the spacing in mm and L the longest side.

Mapping-consistency initialisation (MCI, arXiv 2506.19742): ``mci`` names a head (MLP + LayerNorm)
pre-fitted on a prior CT's coordinate -> mu mapping (scripts/prefit_hashgrid_mlp.py); it is loaded and
the hash table is re-drawn (seeded). ``mci=None`` starts from a random MLP.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..geometry import Cameras
from ..progress import Progress, ProgressCallback
from ..volume import Volume
from .checks import check_projections
from .fdk import fdk
from .fov import default_grid
from .hashgrid import MU_SCALE, GridPlan, HashGridConfig, HashGridField
from .optimize import FitHistory, FitSettings, fit, make_adam


def default_mci_path(normalize: bool) -> Path:
    """The shipped pre-fitted head for the default layout, with or without the LayerNorm (Resources/Models, found
    by XRayNeRFLib.resources in the source tree, the Slicer extension and an installed wheel)."""
    from ..resources import resources_dir

    return resources_dir() / "Models" / ("hashgrid_head_prior_norm.pt" if normalize else "hashgrid_head_prior_plain.pt")


@dataclass
class NerfSettings(FitSettings):
    """Fitting settings (the fields of :class:`optimize.FitSettings`, with a smaller default ``lr``; ``seed``
    also seeds the hash table and a random MLP) and hash-grid settings.

    levels ... hidden_layers: :class:`hashgrid.HashGridConfig` (resolutions in cells per longest box side).
    finest_resolution None (default): the output grid's voxel count along its longest side, so the finest
    level has one cell per voxel; log2_table_size None (default): large enough that every level is dense
    (no hash collisions; at most 2^22 rows a level), chosen over a hashed, finer layout on the chest benchmark
    (docs/reconstruction.md).
    normalize: LayerNorm over the level features (the normalised encoder of arXiv 2506.19742); off by
    default (why: the rows "nerf norm" in benchmarks/RESULTS_reconstruction.md).
    mci: path of a pre-fitted head, "default" (the
    shipped Resources/Models/hashgrid_head_prior_{norm,plain}.pt, by ``normalize``; a head loads at any
    finest resolution / table size, the other layout fields must match) or None (random MLP).
    coarse_to_fine: first ``coarse_fraction`` of the steps on a half-resolution grid. Both stages share one
    learning-rate decay and one Adam state (``optimize.fit``'s ``carry``) rather than a restarted Adam at the
    switch (the comparison: benchmarks/RESULTS_reconstruction.md).
    init: "fdk" (default) fits the field to the Hann FDK volume (clamped >= 0) before the projection fit:
    ``init_steps`` Adam steps at ``init_lr`` of the squared error on ``init_points`` random voxels a step
    (None: every voxel each step, through the separable grid evaluation; no rendering, cheap), the field's
    counterpart of the voxel method's FDK start; "none": start from the initial field.
    chunk_points: points per chunk of the point-wise evaluation (:meth:`HashGridField.forward`, bounds
    memory); the grid evaluation's fused head works in cache-sized blocks (hashgrid.HEAD_CHUNK) anyway.
    """

    lr: float = 0.01
    levels: int = 12
    features_per_level: int = 2
    log2_table_size: Optional[int] = None
    base_resolution: int = 8
    finest_resolution: Optional[int] = None
    hidden_width: int = 32
    hidden_layers: int = 1
    normalize: bool = False
    mci: Optional[str] = "default"
    coarse_to_fine: bool = True
    coarse_fraction: float = 0.6
    chunk_points: int = 1 << 21
    init: str = "fdk"
    init_steps: int = 150
    init_lr: float = 0.01
    init_points: Optional[int] = 1 << 15

    def hash_config(self, grid_cells: Optional[int] = None) -> HashGridConfig:
        """The encoding layout; ``finest_resolution=None`` resolves to ``grid_cells`` (the output grid's
        voxel count along its longest side; 64 when not given) and ``log2_table_size=None`` to the
        smallest table in which every level is dense (at most 2^22 rows per level)."""
        finest = self.finest_resolution if self.finest_resolution is not None else int(grid_cells or 64)
        log2 = self.log2_table_size if self.log2_table_size is not None else min(22, max(4, math.ceil(math.log2((finest + 1) ** 3))))
        return HashGridConfig(
            levels=self.levels,
            features_per_level=self.features_per_level,
            log2_table_size=log2,
            base_resolution=min(self.base_resolution, finest),
            finest_resolution=finest,
            hidden_width=self.hidden_width,
            hidden_layers=self.hidden_layers,
            normalize=self.normalize,
        )

    def fit_settings(self, iterations: int, on_snapshot=None) -> FitSettings:
        names = {f.name for f in fields(FitSettings)}
        kw = {n: getattr(self, n) for n in names if hasattr(self, n)}
        kw.update(iterations=iterations, on_snapshot=on_snapshot, snapshot_every=self.snapshot_every if on_snapshot else 0)
        return FitSettings(**kw)


class NerfGridModel(nn.Module):
    """``forward()`` -> mu (K, J, I) 1/mm: the field evaluated on one planned grid (for :func:`fit`), times
    ``support`` (K, J, I) bool when given (mu is 0 outside it)."""

    def __init__(self, field: HashGridField, plan: GridPlan, support: Optional[Tensor] = None):
        super().__init__()
        self.field = field
        self.plan = plan
        self.support = support

    def forward(self) -> Tensor:
        mu = self.field.evaluate_grid(self.plan)
        if self.support is not None:
            mu = mu * self.support.to(mu.dtype)
        if not bool(torch.isfinite(mu.detach()).all()):
            bad = int((~torch.isfinite(mu.detach())).sum())
            raise RuntimeError(
                f"the hash-grid field gave non-finite mu in {bad} voxels: the optimisation diverged or the "
                "pre-fitted MLP (mci) holds NaN/inf weights; lower the learning rate or pass another mci file (or None)"
            )
        return mu


def grid_axes(like: Volume) -> tuple:
    """Normalised field coordinates of the voxel centres of ``like``: (z (K,), y (J,), x (I,)) float64."""
    k, j, i = like.data.shape
    sp = like.spacing_mm.double().cpu()  # (3,) along i, j, k
    ext = sp * torch.tensor([i, j, k], dtype=torch.float64)
    longest = float(ext.max())
    return tuple((torch.arange(n, dtype=torch.float64) + 0.5) * float(sp[a]) / longest for n, a in ((k, 2), (j, 1), (i, 0)))


def coarser_grid(like: Volume, factor: int = 2) -> Volume:
    """A grid over the same box (voxel boundaries) with ceil(n / factor) voxels per axis."""
    k, j, i = like.data.shape
    new = [max(1, math.ceil(n / factor)) for n in (i, j, k)]
    scale = torch.tensor([i / new[0], j / new[1], k / new[2]], dtype=torch.float64)
    a = like.ras_from_ijk.double().cpu()
    b = a.clone()
    b[:3, :3] = a[:3, :3] * scale[None, :]
    corner = a[:3, :3] @ torch.full((3,), -0.5, dtype=torch.float64) + a[:3, 3]
    b[:3, 3] = corner + b[:3, :3] @ torch.full((3,), 0.5, dtype=torch.float64)
    return Volume(torch.zeros(new[2], new[1], new[0], dtype=like.data.dtype), b.to(like.ras_from_ijk.dtype), "mu")


def coarser_support(support: Tensor, factor: int = 2) -> Tensor:
    """(K, J, I) bool -> the (ceil(K / f), ceil(J / f), ceil(I / f)) support of :func:`coarser_grid`: a coarse
    voxel is in when any fine voxel of its block is."""
    return F.max_pool3d(support[None, None].float(), factor, stride=factor, ceil_mode=True)[0, 0] > 0


def make_field(settings: NerfSettings, device=None, grid_cells: Optional[int] = None) -> HashGridField:
    """The field for ``settings`` (``grid_cells``: see :meth:`NerfSettings.hash_config`): MCI head
    loaded (hash table re-drawn with the seed) or a random MLP."""
    field = HashGridField(settings.hash_config(grid_cells), seed=settings.seed, chunk_points=settings.chunk_points)
    if settings.mci is not None:
        path = default_mci_path(settings.normalize) if settings.mci == "default" else Path(settings.mci)
        if not path.is_file():
            raise ValueError(
                f"the pre-fitted hash-grid MLP {path} is missing; run scripts/prefit_hashgrid_mlp.py to make it, "
                "give another file with mci=..., or start from a random MLP with mci=None"
            )
        field.load_head(path)
        field.reset_table(settings.seed)
    return field.to(device) if device is not None else field


def distill(
    field: HashGridField,
    target: Tensor,
    axes_zyx: tuple,
    steps: int,
    lr: float,
    points: Optional[int],
    seed: int,
    progress: ProgressCallback = None,
    support: Optional[Tensor] = None,
) -> bool:
    """Fit ``field`` to ``target`` (K, J, I) mu 1/mm on the grid with voxel-centre coordinates
    ``axes_zyx`` (:func:`grid_axes`): ``steps`` Adam steps (lr decaying linearly to lr / 10) of the mean
    squared error in units of MU_SCALE on ``points`` random voxels per step (seeded), or with ``points``
    None on every voxel each step (the separable :meth:`HashGridField.evaluate_grid`, times ``support``
    (K, J, I) bool when given). Returns False when ``progress`` asked to stop."""
    gen = torch.Generator().manual_seed(int(seed) + 17)
    k, j, i = target.shape
    tgt = (target.detach().to(torch.float32) / MU_SCALE).reshape(-1)
    dev = field.table.device
    z, y, x = (a.to(dev, torch.float32) for a in axes_zyx)
    opt = make_adam(field.parameters(), lr)  # fused: ~8x cheaper on the field's millions of table entries
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 - 0.9 * min(s, steps) / max(steps, 1))
    whole = NerfGridModel(field, field.plan_grid(axes_zyx), support) if points is None else None
    n = tgt.numel() if points is None else min(int(points), tgt.numel())
    for step in range(steps):
        opt.zero_grad(set_to_none=True)
        if whole is not None:
            loss = ((whole().reshape(-1) / MU_SCALE - tgt.to(dev)) ** 2).mean()
        else:
            idx = torch.randint(0, tgt.numel(), (n,), generator=gen).to(dev)
            pts = torch.stack([x[idx % i], y[(idx // i) % j], z[idx // (i * j)]], -1)  # (n, 3) normalised
            loss = ((field(pts) / MU_SCALE - tgt.to(dev)[idx]) ** 2).mean()
        if not torch.isfinite(loss):
            raise RuntimeError(
                f"fitting the hash-grid field to the FDK start gave a non-finite loss at step {step}; lower init_lr (now {lr})"
            )
        loss.backward()
        opt.step()
        sched.step()
        if progress is not None and step % 10 == 0:
            if (
                progress(Progress(0, 1, f"fitting the field to the FDK start: step {step + 1}/{steps}, MSE {float(loss.detach()):.3g}"))
                is False
            ):
                return False
    return True


def reconstruct_nerf(
    projections: Tensor,
    cameras: Cameras,
    *,
    volume: Optional[Volume] = None,
    grid: Optional[int] = None,
    spacing_mm: Optional[float] = None,
    settings: Optional[NerfSettings] = None,
    progress: ProgressCallback = None,
    return_history: bool = False,
    checked: bool = False,
    support: Optional[Tensor] = None,
    start: Optional[Volume] = None,
):
    """Hash-grid neural-field reconstruction.

    projections: (V, H, W) line integrals; cameras: V views.
    volume / grid / spacing_mm: output grid (default: the scanned cylinder, see :func:`fov.default_grid`).
    settings: :class:`NerfSettings`.
    progress: called with the overall step count and a preview slice; returning False stops and returns
        the current field on the output grid (``history.cancelled``).
    returns: Volume of mu (1/mm) on the output grid (and the :class:`FitHistory`, both stages'
        steps concatenated, with ``return_history``).
    checked: the caller already ran :func:`checks.check_projections` on these inputs.
    support: (K, J, I) bool on the output grid, or None: mu is held at 0 outside it (the coarse stage uses
        :func:`coarser_support`), e.g. a body mask (registration/mnerf.py).
    start: a mu volume (1/mm) on the output grid that ``init`` = "fdk" distils instead of the FDK volume
        (e.g. the patient's CT); None: the FDK volume.
    """
    if not checked:
        projections = check_projections(projections, cameras)
    s = settings if settings is not None else NerfSettings()
    if s.iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {s.iterations}")
    if not 0.0 <= s.coarse_fraction < 1.0:
        raise ValueError(f"coarse_fraction must be in [0, 1), got {s.coarse_fraction}")
    if s.init not in ("fdk", "none"):
        raise ValueError(f"init must be 'fdk' or 'none', got {s.init!r}")
    like = volume if volume is not None else default_grid(cameras, grid=grid, spacing_mm=spacing_mm)
    for name, t in (("support", support), ("start", None if start is None else start.data)):
        if t is not None and tuple(t.shape) != tuple(like.data.shape):
            raise ValueError(f"{name} must lie on the output grid {tuple(like.data.shape)} (K, J, I), got {tuple(t.shape)}")
    support = None if support is None else support.bool()
    field = make_field(s, grid_cells=max(like.data.shape))
    fine_plan = field.plan_grid(grid_axes(like))
    if s.init == "fdk" and s.init_steps > 0:
        if start is None:
            target = fdk(projections, cameras, volume=like, window="hann", checked=True).data.clamp_min(0.0)
        else:
            target = start.data.to(torch.float32).clamp_min(0.0)
        if support is not None:
            target = target * support.to(target.dtype)
        if not distill(field, target, grid_axes(like), s.init_steps, s.init_lr, s.init_points, s.seed, progress, support):
            with torch.no_grad():
                out = Volume(NerfGridModel(field, fine_plan, support)().detach(), like.ras_from_ijk, "mu")
            history = FitHistory()
            history.cancelled = True
            return (out, history) if return_history else out
    n_coarse = int(round(s.iterations * s.coarse_fraction)) if s.coarse_to_fine and min(like.data.shape) >= 8 else 0
    stages = ([(coarser_grid(like), n_coarse)] if n_coarse > 0 else []) + [(like, s.iterations - n_coarse)]
    history = FitHistory()
    done, seconds_done = 0, 0.0
    out = None
    carry: dict = {}  # the Adam state (and learned weights) continue across the stages
    for stage_like, n_it in stages:
        if n_it < 1:
            continue
        fine = stage_like is like
        plan = fine_plan if fine else field.plan_grid(grid_axes(stage_like))
        stage_support = support if (support is None or fine) else coarser_support(support)
        model = NerfGridModel(field, plan, stage_support)
        offset_steps, offset_s = done, seconds_done
        last_s = [0.0]

        def on_snapshot(step, sec, mu, _fine=fine, _o=offset_steps, _t=offset_s, _last=last_s):
            _last[0] = sec
            if not _fine:
                with torch.no_grad():
                    mu = NerfGridModel(field, fine_plan, support)()
            s.on_snapshot(_o + step, _t + sec, mu)

        def stage_progress(p: Progress, _o=offset_steps):
            return progress(Progress(_o + p.done, s.iterations, p.message.replace(f"/{p.total}", f"/{s.iterations}", 1), p.preview))

        fs = s.fit_settings(n_it, on_snapshot if (s.on_snapshot is not None and s.snapshot_every > 0) else None)
        if len(stages) > 1:  # one linear lr decay over both stages: the fine stage starts where the coarse one ended
            frac0, frac1 = (1.0 - (1.0 - s.final_lr_fraction) * k / s.iterations for k in (done, done + n_it))
            fs = replace(fs, lr=s.lr * frac0, final_lr_fraction=frac1 / frac0)
        t0 = time.perf_counter()
        out, h = fit(model, projections, cameras, stage_like, fs, stage_progress if progress is not None else None, carry=carry)
        elapsed = time.perf_counter() - t0
        for name in ("data", "tv", "total", "weights"):
            getattr(history, name).extend(getattr(h, name))
        history.best_step = done + h.best_step
        done += len(h.data)
        seconds_done += last_s[0] if fs.on_snapshot is not None else elapsed
        if h.cancelled:
            history.cancelled = True
            break
    if out is None or out.data.shape != like.data.shape:  # cancelled during the coarse stage
        with torch.no_grad():
            out = Volume(NerfGridModel(field, fine_plan, support)().detach(), like.ras_from_ijk, "mu")
    out = Volume(out.data, like.ras_from_ijk, "mu")
    return (out, history) if return_history else out
