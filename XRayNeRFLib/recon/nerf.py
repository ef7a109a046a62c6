"""Hash-grid neural-field reconstruction (issue 4, item 3), pure torch.

mu(x) is a :class:`hashgrid.HashGridField` (multiresolution hash encoding, optional LayerNorm, small
MLP, softplus >= 0). Rendering: each step evaluates the field on the output voxel grid (separable
interpolation, :meth:`HashGridField.evaluate_grid`) and renders ray mini-batches of that grid with the
exact renderer through :func:`optimise.fit` (L1 on line integrals + lambda_TV * TV, Adam, linear decay),
so the data term, the TV term, the learned loss weights, progress, cancellation and the NaN checks are
the voxel method's. ``coarse_to_fine`` spends the first ``coarse_fraction`` of the steps on a grid of
half the resolution over the same box (8x fewer field evaluations), then refines on the output grid.

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
from typing import Callable, Optional

import torch
from torch import Tensor, nn

from ..geometry import Cameras
from ..progress import Progress, ProgressCallback
from ..volume import Volume
from .fdk import check_projections
from .fov import check_fov_hits_object, default_grid
from .hashgrid import GridPlan, HashGridConfig, HashGridField
from .optimise import FitHistory, FitSettings, fit

MODELS_DIR = Path(__file__).resolve().parents[2] / "Resources" / "Models"


def default_mci_path(normalize: bool) -> Path:
    """The shipped pre-fitted head for the default layout, with or without the LayerNorm."""
    return MODELS_DIR / ("hashgrid_head_prior_norm.pt" if normalize else "hashgrid_head_prior_plain.pt")


@dataclass
class NerfSettings:
    """Fitting (as :class:`optimise.FitSettings`) and hash-grid settings.

    iterations, lr, final_lr_fraction, rays_per_view, tv_weight, learned_weights, renderer, seed,
    report_every, snapshot_every, on_snapshot: as FitSettings (``seed`` also seeds the hash table and a
    random MLP). levels ... hidden_layers: :class:`hashgrid.HashGridConfig` (resolutions in cells per
    longest box side). normalize: LayerNorm over the level features. mci: path of a pre-fitted head,
    "default" (the shipped Resources/Models/hashgrid_head_prior_{norm,plain}.pt, by ``normalize``; made
    for the default layout) or None (random MLP).
    coarse_to_fine: first ``coarse_fraction`` of the steps on a half-resolution grid.
    chunk_points: MLP evaluation chunk (bounds memory; checkpointed under autograd).
    """

    iterations: int = 300
    lr: float = 0.01
    final_lr_fraction: float = 0.1
    rays_per_view: Optional[int] = 256
    tv_weight: float = 1.0
    learned_weights: bool = False
    renderer: str = "siddon"
    seed: int = 0
    report_every: int = 10
    snapshot_every: int = 0
    on_snapshot: Optional[Callable[[int, float, Tensor], None]] = None
    levels: int = 12
    features_per_level: int = 2
    log2_table_size: int = 17
    base_resolution: int = 8
    finest_resolution: int = 128
    hidden_width: int = 32
    hidden_layers: int = 1
    normalize: bool = True
    mci: Optional[str] = "default"
    coarse_to_fine: bool = True
    coarse_fraction: float = 0.6
    chunk_points: int = 1 << 21

    def hash_config(self) -> HashGridConfig:
        return HashGridConfig(
            levels=self.levels,
            features_per_level=self.features_per_level,
            log2_table_size=self.log2_table_size,
            base_resolution=self.base_resolution,
            finest_resolution=self.finest_resolution,
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
    """``forward()`` -> mu (K, J, I) 1/mm: the field evaluated on one planned grid (for :func:`fit`)."""

    def __init__(self, field: HashGridField, plan: GridPlan):
        super().__init__()
        self.field = field
        self.plan = plan

    def forward(self) -> Tensor:
        mu = self.field.evaluate_grid(self.plan)
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


def make_field(settings: NerfSettings, device=None) -> HashGridField:
    """The field for ``settings``: MCI head loaded (hash table re-drawn with the seed) or a random MLP."""
    field = HashGridField(settings.hash_config(), seed=settings.seed, chunk_points=settings.chunk_points)
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
):
    """Hash-grid neural-field reconstruction.

    projections: (V, H, W) line integrals; cameras: V views.
    volume / grid / spacing_mm: output grid (default: the scanned cylinder, see :func:`fov.default_grid`).
    settings: :class:`NerfSettings`.
    progress: called with the overall step count and a preview slice; returning False stops and returns
        the current field on the output grid (``history.cancelled``).
    returns: Volume of mu (1/mm) on the output grid (and the :class:`FitHistory`, both stages'
        steps concatenated, with ``return_history``).
    """
    projections = check_projections(projections, cameras)
    check_fov_hits_object(projections)
    s = settings if settings is not None else NerfSettings()
    if s.iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {s.iterations}")
    if not 0.0 <= s.coarse_fraction < 1.0:
        raise ValueError(f"coarse_fraction must be in [0, 1), got {s.coarse_fraction}")
    like = volume if volume is not None else default_grid(cameras, grid=grid, spacing_mm=spacing_mm)
    field = make_field(s)
    fine_plan = field.plan_grid(grid_axes(like))
    n_coarse = int(round(s.iterations * s.coarse_fraction)) if s.coarse_to_fine and min(like.data.shape) >= 8 else 0
    stages = ([(coarser_grid(like), n_coarse)] if n_coarse > 0 else []) + [(like, s.iterations - n_coarse)]
    history = FitHistory()
    done, seconds_done = 0, 0.0
    out = None
    for stage_like, n_it in stages:
        if n_it < 1:
            continue
        fine = stage_like is like
        plan = fine_plan if fine else field.plan_grid(grid_axes(stage_like))
        model = NerfGridModel(field, plan)
        offset_steps, offset_s = done, seconds_done
        last_s = [0.0]

        def on_snapshot(step, sec, mu, _fine=fine, _o=offset_steps, _t=offset_s):
            last_s[0] = sec
            if not _fine:
                with torch.no_grad():
                    mu = field.evaluate_grid(fine_plan)
            s.on_snapshot(_o + step, _t + sec, mu)

        def stage_progress(p: Progress, _o=offset_steps):
            return progress(Progress(_o + p.done, s.iterations, p.message.replace(f"/{p.total}", f"/{s.iterations}", 1), p.preview))

        fs = s.fit_settings(n_it, on_snapshot if (s.on_snapshot is not None and s.snapshot_every > 0) else None)
        t0 = time.perf_counter()
        out, h = fit(model, projections, cameras, stage_like, fs, stage_progress if progress is not None else None)
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
            out = Volume(field.evaluate_grid(fine_plan).detach(), like.ras_from_ijk, "mu")
    out = Volume(out.data, like.ras_from_ijk, "mu")
    return (out, history) if return_history else out
