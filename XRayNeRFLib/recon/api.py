"""One entry point for every reconstruction method: :func:`reconstruct`.

    result = reconstruct(projections, cameras, "voxel", grid=128, iterations=300, uncertainty=True)
    result.volume        # Volume on the output grid, mu (1/mm) or HU
    result.uncertainty   # same grid and units: grouped-jackknife spread over an ensemble, or None

Methods: "fdk" (filtered backprojection, :func:`fdk.fdk`), "voxel" (voxel grid + TV through the
renderer, :func:`voxel.reconstruct_voxel`), "nerf" (hash-grid neural field, :func:`nerf.reconstruct_nerf`).
Units: "mu" (1/mm) or "hu" (HU = 1000 (mu / mu_water - 1), mu_water from NIST XCOM at the effective
energy ``options["energy_kev"]``, default 60 keV: 0.02059 /mm, the default of :func:`volume.hu_to_mu`).
Masks (V, H, W) bool (True: the pixel saw the beam): the iterative methods leave False pixels out of the
data term; FDK cannot leave rays out of a filtered backprojection and uses the pixels as measured
(a RuntimeWarning says so).
"""

from __future__ import annotations

import dataclasses
import inspect
import time
import warnings
from dataclasses import dataclass
from typing import Any, Dict, Optional

import torch
from torch import Tensor

from ..geometry import Cameras
from ..progress import ProgressCallback
from ..render import DEFAULT_RENDERER, RENDERERS
from ..volume import DEFAULT_EFFECTIVE_ENERGY_KEV, Volume, mu_to_hu, mu_water_per_mm
from .checks import check_masks, check_projections
from .fov import analyse_orbit, cameras_float64
from .grid import REGIONS, FieldOfView, check_memory, cylinder_grid, field_of_view, view_counts
from .optimize import FitHistory, FitSettings
from .truncation import Truncation, crop_to, detect_truncation, extended_grid
from .uncertainty import ensemble
from .voxel import VOXEL_SOLVERS as _VOXEL_SOLVERS

__all__ = [
    "ReconstructionResult",
    "FieldOfViewReport",
    "reconstruct",
    "METHODS",
    "COMMON_OPTIONS",
    "FDK_OPTIONS",
    "VOXEL_OPTIONS",
    "VOXEL_SOLVERS",
    "NERF_FIT_OPTIONS",
]

METHODS = ("fdk", "voxel", "nerf")
COMMON_OPTIONS = ("energy_kev",)
FDK_OPTIONS = ("window", "window_cutoff", "short_scan", "truncation_correction", "displaced_detector", "max_memory_mb")
_FIT_KEYS = ("lr", "final_lr_fraction", "rays_per_view", "tv_weight", "learned_weights", "report_every", "snapshot_every", "on_snapshot")
_OSTV_KEYS = (
    "subsets",
    "relaxation",
    "relaxation_decay",
    "tv_inner",
    "statistical_weights",
    "momentum",
    "backprojector",
    "coarse_passes",
    "tv_steps_per_pass",
    "bp_cache_mb",
    "max_memory_mb",
)
VOXEL_OPTIONS = _FIT_KEYS + ("init", "positivity", "coarse_to_fine", "solver") + _OSTV_KEYS
VOXEL_SOLVERS = _VOXEL_SOLVERS  # ("adam", "os-tv"): options["solver"] of method "voxel"
DEFAULT_VOXEL_SOLVER = "os-tv"  # iterations count passes (ostv.default_passes: 12 at 30 views) for it; Adam steps (300) for "adam"
NERF_FIT_OPTIONS = _FIT_KEYS  # plus every NerfSettings field (normalize, mci, levels, ...)


@dataclass
class ReconstructionResult:
    """volume: the reconstruction on the output grid, units "mu" (1/mm) or "hu".
    uncertainty: same grid and units, per-voxel spread (grouped-jackknife std, see
        :mod:`uncertainty`) over an ensemble, or None.
    history: :class:`FitHistory` of the iterative methods (the first member's with an ensemble), else None.
    seconds: wall time of the whole call.
    cancelled: a progress callback returned False: volume is the best so far.
    fov: :class:`FieldOfViewReport` (truncation, the regions, and with ``fov_counts`` the views that see
        each output voxel), or None."""

    volume: Volume
    uncertainty: Optional[Volume]
    history: Optional[FitHistory]
    seconds: float
    cancelled: bool
    fov: Optional["FieldOfViewReport"] = None


@dataclass
class FieldOfViewReport:
    """What the views cover. truncation: :class:`truncation.Truncation` (which views are laterally
    truncated); every_radius_mm / any_radius_mm: the cylinders of :mod:`grid`; displaced: offset detector;
    reconstructed_on: shape (K, J, I) of the grid the method ran on (larger than the output when it was
    extended for truncated data); counts: (K, J, I) int16 views that see each output voxel (None unless
    asked for); n_views."""

    truncation: Truncation
    every_radius_mm: float
    any_radius_mm: float
    displaced: bool
    reconstructed_on: tuple
    n_views: int
    counts: Optional[Tensor] = None

    @property
    def truncated(self) -> bool:
        return self.truncation.any

    def summary(self) -> str:
        """One or two lines for a user: truncation, the regions, and the share of voxels every view sees."""
        parts = []
        if self.truncated:
            parts.append(
                f"the projections are laterally truncated in {self.truncation.count} of {self.n_views} views (the object is wider "
                f"than the region every view sees, radius {self.every_radius_mm:.1f} mm); voxels outside that region are less "
                f"reliable; the region seen by any view (radius {self.any_radius_mm:.1f} mm) is reconstructed with "
                "fov_region='any' (--fov-region any)"
            )
        elif self.displaced:
            parts.append(
                f"offset detector: every view sees a cylinder of radius {self.every_radius_mm:.1f} mm, the half-fan field of view has "
                f"radius {self.any_radius_mm:.1f} mm (fov_region='any', --fov-region any)"
            )
        if self.counts is not None:
            n = self.counts.numel()
            every = int((self.counts >= self.n_views).sum())
            none = int((self.counts == 0).sum())
            parts.append(f"{100.0 * every / n:.1f}% of the output voxels are seen by every view, {100.0 * none / n:.1f}% by none")
        return "; ".join(parts)


def _nerf_module():
    try:
        from . import nerf
    except ImportError as exc:
        raise ValueError(f"method 'nerf' is not available in this installation ({exc}); use 'fdk' or 'voxel'") from None
    return nerf


def _accepted_options(method: str) -> tuple:
    if method == "fdk":
        return COMMON_OPTIONS + FDK_OPTIONS
    if method == "voxel":
        return COMMON_OPTIONS + VOXEL_OPTIONS
    nerf = _nerf_module()
    names = tuple(f.name for f in dataclasses.fields(nerf.NerfSettings) if f.name not in ("iterations", "renderer", "seed"))
    return COMMON_OPTIONS + tuple(dict.fromkeys(NERF_FIT_OPTIONS + names))


def _check_options(method: str, options: Dict[str, Any]) -> None:
    accepted = _accepted_options(method)
    for key in options:
        if key not in accepted:
            raise ValueError(f"unknown option {key!r} for method {method!r}; accepted: {', '.join(accepted)}")


def reconstruct(
    projections: Tensor,
    cameras: Cameras,
    method: str = "fdk",
    *,
    volume: Optional[Volume] = None,
    grid: Optional[int] = None,
    spacing_mm: Optional[float] = None,
    fov_region: str = "every",
    extend_grid: Optional[bool] = None,
    fov_counts: bool = False,
    renderer: str = DEFAULT_RENDERER,
    iterations: Optional[int] = None,
    units: str = "mu",
    uncertainty: bool = False,
    ensemble_size: int = 4,
    masks: Optional[Tensor] = None,
    seed: int = 0,
    progress: ProgressCallback = None,
    options: Optional[dict] = None,
) -> ReconstructionResult:
    """Reconstruct a volume from cone-beam projections.

    projections: (V, H, W) line integrals (dimensionless), image[row, column] in our camera layout.
    cameras: the V views. method: "fdk" | "voxel" | "nerf".
    volume / grid / spacing_mm: output grid (its data is ignored; a :mod:`grid` descriptor costs no memory);
        default the ``fov_region`` cylinder ("every": seen by every view, as :func:`fov.default_grid`; "any":
        the larger region of :mod:`grid`) with ``grid`` voxels across (128) or ``spacing_mm``.
    extend_grid: the iterative methods run on the output grid extended to the "any" region and return the
        output grid cut out of it, so that mass outside the output grid is not folded into it
        (:mod:`truncation`); None (default): when the projections are laterally truncated.
    fov_counts: also count the views that see each output voxel (``result.fov.counts``).
        The estimated memory of the run is checked before anything is allocated
        (:func:`grid.check_memory`, a :class:`grid.GridMemoryError` with both numbers).
    renderer: "trilinear" (:data:`DEFAULT_RENDERER`, ray marching) | "siddon" (exact path lengths), the projector of the
        iterative methods; their accuracy and speed are compared in benchmarks/RESULTS_reconstruction.md.
        iterations: default the method's: for voxel's "os-tv" solver (the default) passes over all views,
        ostv.default_passes (12 at 30 views, 24 at 10); for voxel's "adam" solver and for nerf, Adam steps (300).
        units: "mu" (1/mm) or "hu".
    uncertainty: also return the grouped-jackknife spread over ``ensemble_size`` members, each
        reconstructed without a different random 1/ensemble_size of the views and with seed + m; the
        returned volume is then the members' mean (cost: ensemble_size reconstructions).
    masks: (V, H, W) or (H, W) bool collimator masks (see the module docstring). seed: ray sampling,
        network initialisation and view grouping.
    progress: ``Progress`` callback; returning False stops: the iterative methods return the best so
        far (``cancelled``), FDK raises :class:`progress.Cancelled` (a partial FDK is meaningless).
    options: method-specific settings; fdk: window ("hann" | "shepp-logan" | "ram-lak"), window_cutoff
        (the window's cut-off, fraction of Nyquist, (0, 1], default 1), short_scan,
        max_memory_mb; voxel: solver ("os-tv" (default) | "adam"), init ("fdk" | "zeros"), tv_weight,
        report_every, snapshot_every, on_snapshot (for "os-tv" counted in passes) and
        - solver "os-tv" (:mod:`ostv`): subsets (30), relaxation (1.4), tv_weight (beta, 0.00075),
          tv_inner (FGP iterations per TV step, 3), tv_steps_per_pass (1), statistical_weights (False:
          w = exp(-p) when True), momentum (True), backprojector ("voxel" | "matched"), coarse_passes (0),
          relaxation_decay (0), bp_cache_mb (back and forward projectors' cache, 1024), max_memory_mb (renderer chunk bound, 1024);
        - solver "adam" (:mod:`optimize`): lr, tv_weight (1.0), rays_per_view, learned_weights,
          final_lr_fraction, positivity ("softplus" | "sigmoid"), coarse_to_fine;
        options of the other solver raise ValueError; nerf: the same fit settings and any ``NerfSettings`` field
        (normalize, mci, ...); all: energy_kev (HU conversion). Unknown keys raise ValueError.
    """
    t0 = time.perf_counter()
    options, energy = _check_request(method, units, renderer, iterations, options)
    projections = check_projections(projections, cameras)  # once per request: the methods get checked=True
    masks = check_masks(masks, projections)
    if masks is not None and method == "fdk":
        warnings.warn(
            f"FDK cannot leave collimated pixels out of a filtered backprojection: the {int((~masks).sum())} masked pixels are "
            "used as measured; use method 'voxel' or 'nerf' to exclude them",
            RuntimeWarning,
            stacklevel=2,
        )
    plan = _plan_grids(projections, cameras, method, volume, grid, spacing_mm, fov_region, extend_grid, options, uncertainty)
    mean, std, history, cancelled = _run_request(
        plan, projections, cameras, masks, method, renderer, iterations, uncertainty, ensemble_size, seed, progress, options
    )
    return _assemble_result(plan, mean, std, history, cancelled, units, energy, fov_counts, len(cameras), t0)


def _check_request(method: str, units: str, renderer: str, iterations: Optional[int], options: Optional[dict]):
    """The argument checks of :func:`reconstruct` that need no data. -> (options: a copy without
    energy_kev, energy_kev)"""
    if method not in METHODS:
        raise ValueError(f"unknown reconstruction method {method!r}; use one of {', '.join(METHODS)}")
    if units not in ("mu", "hu"):
        raise ValueError(f"units must be 'mu' (1/mm) or 'hu', got {units!r}")
    if renderer not in RENDERERS:
        raise ValueError(f"unknown renderer {renderer!r}; use one of {', '.join(RENDERERS)}")
    if iterations is not None and int(iterations) < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    options = dict(options or {})
    _check_options(method, options)
    energy = float(options.pop("energy_kev", DEFAULT_EFFECTIVE_ENERGY_KEV))
    mu_water_per_mm(energy)  # validates the energy range before any work
    return options, energy


@dataclass
class _GridPlan:
    """Where :func:`reconstruct` runs: like, the output grid; run_like, the grid the method runs on
    (``like`` itself, or ``like`` extended for truncated data, which is cropped back at ``offset``); both
    zero-filled float32 mu volumes. cams64, fov and truncation describe the views."""

    cams64: Cameras
    fov: FieldOfView
    truncation: Truncation
    like: Volume
    run_like: Volume
    offset: tuple


def _plan_grids(projections, cameras, method, volume, grid, spacing_mm, fov_region, extend_grid, options, uncertainty) -> _GridPlan:
    """Grid and field-of-view preparation: the output grid (``volume`` or the ``fov_region`` cylinder), the
    grid the method runs on (extended when the data are truncated), and the memory check before allocating."""
    if fov_region not in REGIONS:
        raise ValueError(f"unknown fov_region {fov_region!r}; use one of {', '.join(REGIONS)}")
    cams64 = cameras_float64(cameras)
    orbit = analyse_orbit(cams64)
    fov = field_of_view(cams64, orbit)
    truncation = detect_truncation(projections, cams64, orbit)
    like = volume if volume is not None else cylinder_grid(cams64, region=fov_region, grid=grid, spacing_mm=spacing_mm, orbit=orbit)
    if extend_grid is None:
        extend_grid = truncation.any
    run_like, offset = like, (0, 0, 0)
    if extend_grid and method != "fdk":
        run_like, offset = extended_grid(like, fov.any_radius_mm, fov.any_half_height_mm, orbit)
    check_memory(method, tuple(run_like.data.shape), len(cameras), cameras.size_px, options=options, uncertainty=uncertainty)
    like = Volume(torch.zeros(like.data.shape, dtype=torch.float32), like.ras_from_ijk.float(), "mu")
    run_like = (
        like
        if run_like.data.shape == like.data.shape and offset == (0, 0, 0)
        else Volume(torch.zeros(run_like.data.shape, dtype=torch.float32), run_like.ras_from_ijk.float(), "mu")
    )
    return _GridPlan(cams64, fov, truncation, like, run_like, offset)


def _run_request(plan, projections, cameras, masks, method, renderer, iterations, uncertainty, ensemble_size, seed, progress, options):
    """Method dispatch: one reconstruction on ``plan.run_like`` cropped to ``plan.like``, or an ensemble of them
    (``uncertainty``). -> (mean Volume mu, std Volume mu or None, history or None, cancelled)"""
    like, run_like, offset = plan.like, plan.run_like, plan.offset

    def one(keep: Optional[Tensor], member_seed: int, member_progress: ProgressCallback):
        p = projections if keep is None else projections[keep]
        c = cameras if keep is None else cameras[keep]
        mk = None if masks is None else (masks if keep is None else masks[keep])
        vol, hist, stopped = _run_method(method, p, c, run_like, renderer, iterations, mk, member_seed, member_progress, options)
        if run_like is not like:
            vol = crop_to(vol, like, offset)
        return vol, hist, stopped

    if uncertainty:
        ens = ensemble(one, len(cameras), ensemble_size=ensemble_size, seed=seed, progress=progress)
        mean, std, cancelled = ens.mean, ens.std, ens.cancelled
        history = ens.histories[0] if ens.histories else None
    else:
        mean, history, cancelled = one(None, seed, progress)
        std = None
    return mean, std, history, cancelled


def _assemble_result(plan, mean, std, history, cancelled, units, energy, fov_counts, n_views, t0) -> ReconstructionResult:
    """Result assembly: the finiteness check, the conversion to ``units`` and the field-of-view report."""
    mean.check_finite("the reconstruction")
    if units == "hu":
        scale = 1000.0 / mu_water_per_mm(energy)
        mean = Volume(mu_to_hu(mean.data, energy), mean.ras_from_ijk, "hu")
        std = None if std is None else Volume(std.data * scale, std.ras_from_ijk, "hu")
    fov = plan.fov
    report = FieldOfViewReport(
        plan.truncation,
        fov.every_radius_mm,
        fov.any_radius_mm,
        fov.displaced,
        tuple(plan.run_like.data.shape),
        n_views,
        view_counts(plan.cams64, plan.like) if fov_counts else None,
    )
    return ReconstructionResult(mean, std, history, time.perf_counter() - t0, bool(cancelled), report)


def _fit_settings(cls, iterations, renderer, seed, options: Dict[str, Any], exclude=()) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    kw = {k: v for k, v in options.items() if k in names and k not in exclude}
    kw.update(renderer=renderer, seed=seed)
    if iterations is not None:
        kw["iterations"] = int(iterations)
    return cls(**kw)


def _run_method(method, projections, cameras, like, renderer, iterations, masks, seed, progress, options):
    """-> (Volume mu, history or None, cancelled)"""
    if method == "fdk":
        from .fdk import fdk

        vol = fdk(projections, cameras, volume=like, progress=progress, checked=True, **options)
        return vol, None, False
    if method == "voxel":
        from .voxel import reconstruct_voxel

        solver = options.get("solver", DEFAULT_VOXEL_SOLVER)
        if solver not in VOXEL_SOLVERS:
            raise ValueError(f"unknown voxel solver {solver!r}; use one of {', '.join(VOXEL_SOLVERS)}")
        if solver == "os-tv":
            from .ostv import OSTVSettings

            adam_only = [
                k for k in options if k in ("lr", "final_lr_fraction", "rays_per_view", "learned_weights", "positivity", "coarse_to_fine")
            ]
            if adam_only:
                raise ValueError(
                    f"options {', '.join(adam_only)} belong to the 'adam' voxel solver; drop them or set options['solver'] = 'adam'"
                )
            kw = {k: options[k] for k in ("tv_weight", "report_every", "snapshot_every", "on_snapshot") + _OSTV_KEYS if k in options}
            if iterations is not None:
                kw["passes"] = int(iterations)
            ostv = OSTVSettings(renderer=renderer, **kw)
            vol, hist = reconstruct_voxel(
                projections,
                cameras,
                volume=like,
                masks=masks,
                progress=progress,
                return_history=True,
                solver="os-tv",
                ostv=ostv,
                init=options.get("init", "fdk"),
                checked=True,
            )
            return vol, hist, hist.cancelled
        if any(k in options for k in _OSTV_KEYS):
            extra_keys = [k for k in _OSTV_KEYS if k in options]
            raise ValueError(
                f"options {', '.join(extra_keys)} belong to the 'os-tv' voxel solver; drop them or set options['solver'] = 'os-tv'"
            )
        settings = _fit_settings(FitSettings, iterations, renderer, seed, options)
        extra = {k: options[k] for k in ("init", "positivity", "coarse_to_fine") if k in options}
        vol, hist = reconstruct_voxel(
            projections, cameras, volume=like, settings=settings, masks=masks, progress=progress, return_history=True, checked=True, **extra
        )
        return vol, hist, hist.cancelled
    nerf = _nerf_module()
    settings = _fit_settings(nerf.NerfSettings, iterations, renderer, seed, options)
    kw = {}
    if masks is not None:
        if "masks" in inspect.signature(nerf.reconstruct_nerf).parameters:
            kw["masks"] = masks
        else:
            warnings.warn(
                f"reconstruct_nerf cannot leave pixels out of the data term: the {int((~masks).sum())} masked pixels are fitted "
                "as measured",
                RuntimeWarning,
                stacklevel=4,  # _run_method <- one <- _run_request <- reconstruct, as before the split
            )
    vol, hist = nerf.reconstruct_nerf(
        projections, cameras, volume=like, settings=settings, progress=progress, return_history=True, checked=True, **kw
    )
    return vol, hist, bool(getattr(hist, "cancelled", False))
