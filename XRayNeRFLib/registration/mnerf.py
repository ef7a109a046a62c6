"""mNeRF: a masked neural field of one patient, fitted to that patient's X-rays at known poses, as the DRR
source of a registration (issue 18, seed 002).

The CT's DRR lacks what the X-ray system adds (beam hardening, scatter, the detector's curve, anatomy the CT
has since lost or gained); NeTT (nett.py) re-weights the CT's tissues, voxel by voxel. mNeRF instead fits
an attenuation field to X-rays of the same patient whose poses are known (earlier registered frames, a
calibrated spin) and renders that field during the registration of another X-ray. The field is the
reconstruction module's hash-grid field (:func:`XRayNeRFLib.recon.nerf.reconstruct_nerf`), constrained:

1. grid: the CT's box (outer voxel boundaries, CT frame) with about ``spacing_mm`` voxels (never finer
   than the CT's), so that the field is not asked for more detail than a few X-rays can give;
2. body mask: CT voxels above ``body_threshold_hu`` (air excluded, lung kept), grown by ``dilate_voxels``
   on that grid; the field is 0 outside it (``reconstruct_nerf(support=)``), which makes a few views
   enough: the X-rays decide the values, the CT decides where the patient is;
3. start: the CT (mu) on that grid, distilled into the field (``reconstruct_nerf(start=)``) before the
   projection fit, so the field starts as the CT's own DRR source and the views correct it;
4. X-ray values to line integrals: the X-rays are any increasing function of the line integral ("brighter =
   more attenuation", as the NCC losses need); one monotone map (for all views) matches their quantiles to
   those of the CT's DRR at their known poses, over the pixels whose rays cross the CT's whole extent
   (:func:`.coverage.ct_coverage_mask`): the detector's curve is undone there, not learnt as density (the
   failure NeTT's docstring describes). Pixels whose rays leave the CT through its end faces see anatomy the
   masked field cannot hold: their target is the CT's own DRR (no pull either way). What stays (the bone's
   excess, scatter, anatomy that changed) the field absorbs.

The result, :class:`MNeRF`, is a callable CT -> mu volume in the CT's frame (the field on the grid), the
``drr_source`` of :class:`.optimize.RegistrationSettings`: ``register(ct, xray, cam, drr_source=model)``
renders it instead of the CT, through the one optimiser. It is tied to the CT it was fitted with (a CT
of another box raises :class:`~XRayNeRFLib.errors.MNeRFError`). Measured accuracy and time against the CT
DRR and NeTT: benchmarks/RESULTS_registration.md ("mNeRF").
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import MNeRFError
from ..geometry import Cameras
from ..progress import ProgressCallback
from ..recon.nerf import NerfSettings, reconstruct_nerf
from ..render import DEFAULT_RENDERER, render
from ..volume import Volume, as_mu, hu_to_mu
from .coverage import ct_coverage_mask
from .simulate import resample_volume


def default_nerf_settings() -> NerfSettings:
    """The field and fit for mNeRF: the reconstruction's hash-grid field distilled from the CT on every voxel
    each step (``init_points`` None), then a short, gentle projection fit on one grid (a few views: the field
    must stay near the CT, see benchmarks/RESULTS_registration.md, "mNeRF")."""
    return NerfSettings(
        iterations=100, lr=0.003, rays_per_view=1024, tv_weight=0.1, coarse_to_fine=False, init_steps=300, init_lr=0.03, init_points=None
    )


@dataclass
class MNeRFSettings:
    """spacing_mm: the field's grid spacing (mm; the CT's where it is coarser). body_threshold_hu: body mask
    threshold (HU; lung is about -800, air -1000). dilate_voxels: mask growth on the field's grid (voxels).
    nerf: the hash-grid field and its fit (:class:`~XRayNeRFLib.recon.nerf.NerfSettings`; its ``init`` "fdk"
    distils the CT). renderer: the projector of the calibration DRRs."""

    spacing_mm: float = 3.0
    body_threshold_hu: float = -900.0
    dilate_voxels: int = 1
    nerf: NerfSettings = field(default_factory=default_nerf_settings)
    renderer: str = DEFAULT_RENDERER


@dataclass
class MNeRF:
    """A fitted mNeRF. volume: mu (K, J, I) float32 1/mm on the field's grid (CT frame, RAS mm), 0 outside
    ``mask`` (K, J, I) bool. knots_x / knots_y: (Q,) float64, the monotone map X-ray value -> line integral of
    step 4 (:func:`calibrate`). ct_box_ras: (8, 3) the CT's corners (RAS mm) it was fitted for. data_loss: the fit's
    per-step L1 (line-integral units); seconds: the fit's wall time."""

    volume: Volume
    mask: Tensor
    knots_x: Tensor
    knots_y: Tensor
    ct_box_ras: Tensor
    data_loss: list = field(default_factory=list, repr=False)
    seconds: float = 0.0

    def __call__(self, ct: Volume) -> Volume:
        """The DRR source for ``ct`` (the CT being registered, HU or mu, in its frame): the field's volume;
        raises MNeRFError (reason "other-ct") when ``ct`` is not the CT the field was fitted with."""
        corners = ct.corners_ras().to(torch.float64)
        tol = 0.5 * float(ct.spacing_mm.min())
        if corners.shape != self.ct_box_ras.shape or float((corners - self.ct_box_ras).abs().max()) > tol:
            raise MNeRFError(
                "this mNeRF was fitted for another CT (its box differs by more than half a voxel): fit it again with the CT "
                "you register, at the CT's position",
                reason="other-ct",
            )
        return self.volume

    def line_integrals(self, xray: Tensor) -> Tensor:
        """X-ray values (any shape) on the field's line-integral scale (step 4)."""
        return apply_calibration(xray, self.knots_x, self.knots_y)


def body_mask(ct: Volume, threshold_hu: float = -900.0) -> Tensor:
    """(K, J, I) bool: CT voxels above ``threshold_hu`` (HU, or the same in mu for a mu CT)."""
    mu = ct.data if ct.units == "mu" else hu_to_mu(ct.data)
    return mu > float(hu_to_mu(torch.tensor(float(threshold_hu))))


def field_grid_shape(ct: Volume, spacing_mm: float) -> tuple:
    """(K, J, I): the CT's box divided into voxels of about ``spacing_mm`` (never more than the CT's)."""
    if not spacing_mm > 0:
        raise ValueError(f"spacing_mm must be > 0 mm, got {spacing_mm}")
    sp = ct.spacing_mm.double().cpu()  # (3,) along i, j, k
    k, j, i = ct.data.shape
    return tuple(max(2, min(n, round(n * float(s) / spacing_mm))) for n, s in ((k, sp[2]), (j, sp[1]), (i, sp[0])))


def _checked_views(images, cameras, ct_shape, body):
    """(V, H, W) float32 X-rays and a V-view Cameras, after MNeRFError checks (no views, counts, sizes, mask)."""
    if body is not None and tuple(body.shape) != tuple(ct_shape):
        raise MNeRFError(
            f"the body mask is {tuple(body.shape)} (K, J, I) but the CT is {tuple(ct_shape)}: give a mask on the CT's grid",
            reason="mask-shape",
        )
    imgs = [images] if torch.is_tensor(images) and images.ndim == 2 else list(images)
    cams = list(cameras) if not isinstance(cameras, Cameras) else [cameras[i] for i in range(len(cameras))]
    if not imgs or not cams:
        raise MNeRFError("mNeRF needs at least one X-ray with its known camera (pose); none was given", reason="no-views")
    if len(imgs) != len(cams):
        raise MNeRFError(f"{len(imgs)} X-ray(s) but {len(cams)} camera(s): give one known camera per X-ray", reason="views")
    sizes = {tuple(c.size_px) for c in cams}
    if len(sizes) != 1:
        raise MNeRFError(
            f"the X-rays' cameras have different sizes {sorted(sizes)}: mNeRF fits X-rays of one detector grid", reason="views"
        )
    for n, (img, c) in enumerate(zip(imgs, cams)):
        img = torch.as_tensor(img)
        if (img.shape[-1], img.shape[-2]) != tuple(c.size_px) or not bool(torch.isfinite(img).all()):
            raise MNeRFError(
                f"X-ray {n + 1} is {tuple(img.shape)} or not finite; its camera says {list(c.size_px)} (columns, rows)", reason="views"
            )
    stack = torch.stack([torch.as_tensor(i).reshape(i.shape[-2], i.shape[-1]).float() for i in imgs])
    return stack, Cameras.concatenate([c.to(dtype=torch.float64) for c in cams])


def calibrate(images: Tensor, ct_drr: Tensor, covered: Tensor, knots: int = 65) -> tuple:
    """Step 4: the monotone map X-ray value -> line integral that matches the quantiles of ``images`` to those
    of ``ct_drr`` over ``covered`` pixels (all (V, H, W)): (x knots (Q,), y knots (Q,)) float64, x strictly
    increasing, y non-decreasing; raises MNeRFError (reason "intensity") when the X-rays are flat there or
    fall where the DRR rises (negative correlation)."""
    x, y = images[covered].double(), ct_drr[covered].double()
    if x.numel() < 16 or float(x.std()) <= 0:
        raise MNeRFError("the X-rays are flat (or miss the CT) over the pixels that cross the CT at their poses", reason="intensity")
    if float(((x - x.mean()) * (y - y.mean())).mean()) <= 0:
        raise MNeRFError(
            "the X-rays get darker where the CT attenuates more: invert them (or log-linearise intensities) so that "
            "brighter means more attenuation, as for the NCC losses (registration/intensity.py)",
            reason="intensity",
        )
    q = torch.linspace(0.0, 1.0, int(knots), dtype=torch.float64)
    xq, yq = torch.quantile(x, q), torch.quantile(y, q)
    keep = torch.cat([torch.tensor([True]), xq[1:] > xq[:-1]])  # ties (flat X-ray regions): one knot
    return xq[keep], yq[keep]


def apply_calibration(xray: Tensor, knots_x: Tensor, knots_y: Tensor) -> Tensor:
    """Piecewise-linear map of X-ray values (any shape) through the knots of :func:`calibrate`, continued with
    the end segments' slopes (float64)."""
    v = xray.double()
    if knots_x.numel() < 2:
        return torch.full_like(v, float(knots_y[0]))
    idx = torch.searchsorted(knots_x, v.reshape(-1).contiguous()).clamp(1, knots_x.numel() - 1).reshape(v.shape)
    x0, x1, y0, y1 = knots_x[idx - 1], knots_x[idx], knots_y[idx - 1], knots_y[idx]
    return y0 + (v - x0) * (y1 - y0) / (x1 - x0)


def fit_mnerf(
    ct: Volume,
    images: Union[Tensor, Sequence[Tensor]],
    cameras: Union[Cameras, Sequence[Cameras]],
    settings: Optional[MNeRFSettings] = None,
    *,
    mask: Optional[Tensor] = None,
    progress: ProgressCallback = None,
) -> MNeRF:
    """Fit an mNeRF (module docstring) to the patient's X-rays at known poses.

    ct: the patient's CT (HU or mu), in the frame of the poses (RAS mm). images: (V, H, W) or a sequence of
    (H, W) X-rays, brighter = more attenuation; cameras: their V known cameras (one Cameras of V views or a
    sequence of 1-view ones). mask: (K, J, I) bool body mask on the CT's grid (default :func:`body_mask`).
    progress: the nerf fit's (returning False stops with the field so far).
    Raises MNeRFError: no views ("no-views"), counts or sizes that disagree ("views"), a mask of another
    shape ("mask-shape"), X-rays that do not rise with attenuation ("intensity").
    """
    s = settings if settings is not None else MNeRFSettings()
    t0 = time.perf_counter()
    stack, cams = _checked_views(images, cameras, ct.data.shape, mask)
    mu_ct = (as_mu(ct) if ct.units == "hu" else ct).to(dtype=torch.float32)
    mu_ct.check_finite("the CT")
    body = body_mask(mu_ct, s.body_threshold_hu) if mask is None else mask.bool()
    shape = field_grid_shape(mu_ct, s.spacing_mm)
    start = resample_volume(mu_ct, shape)
    support = resample_volume(Volume(body.float(), mu_ct.ras_from_ijk, "mu"), shape).data > 0.0
    if s.dilate_voxels > 0:
        r = int(s.dilate_voxels)
        support = F.max_pool3d(support[None, None].float(), 2 * r + 1, stride=1, padding=r)[0, 0] > 0
    with torch.no_grad():
        ct_drr = render(start, cams.to(dtype=torch.float32), renderer=s.renderer).double()  # (V, H, W)
    covered = ct_coverage_mask(start, cams)
    knots_x, knots_y = calibrate(stack, ct_drr, covered)
    target = torch.where(covered, apply_calibration(stack, knots_x, knots_y), ct_drr).clamp_min(0.0)
    like = Volume(torch.zeros(shape), start.ras_from_ijk, "mu")
    vol, history = reconstruct_nerf(
        target.float(), cams, volume=like, settings=s.nerf, progress=progress, return_history=True, support=support, start=start
    )
    return MNeRF(
        volume=Volume(vol.data.detach() * support, vol.ras_from_ijk, "mu"),
        mask=support,
        knots_x=knots_x,
        knots_y=knots_y,
        ct_box_ras=ct.corners_ras().to(torch.float64),
        data_loss=list(history.data),
        seconds=time.perf_counter() - t0,
    )
