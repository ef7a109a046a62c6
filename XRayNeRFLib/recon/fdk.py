"""Feldkamp-Davis-Kress (FDK) cone-beam filtered backprojection for arbitrary per-view geometry.

Pipeline, per view v (detector coordinates u along the filtered direction, t across it, mm on the
real detector at distance D_v = sdd_mm from the source; R_v = source-to-isocentre distance):

1. cosine weight   p * D / sqrt(D^2 + u^2 + t^2)
2. Parker weight   (short scans, Parker 1982 with the scan's actual over-scan), Wang's displaced-detector
                   weight (offset detectors), both normalised per line (both, :mod:`parker`) or 1/2 (full scans)
3. ramp filter     along u (the detector direction perpendicular to the orbit axis), discrete Ram-Lak
                   kernel (Kak & Slaney eq. 3.61) on the isocentre-scaled sampling du * R / D, with an
                   optional Hann or Shepp-Logan window, zero padded to avoid wrap-around
4. backprojection  voxel driven through the projection matrix P_v: voxel X lands on pixel
                   (c, r) = (P X)_{0,1} / (P X)_2 and (P X)_2 is its depth along the principal ray;
                   contribution dbeta_v * (R_v / depth)^2 * q_v(c, r) (bilinear interpolation, zero
                   outside the detector).

Angular weights dbeta_v come from the fitted orbit (non-uniform spacing is handled). Input: line
integrals (dimensionless), output mu in 1/mm on the requested grid (default: the scanned cylinder).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
from torch import Tensor

from ..geometry import Cameras
from ..progress import ProgressCallback, report
from ..volume import Volume
from .backproject import VoxelBackprojector
from .checks import check_projections  # noqa: F401  (also re-exported: older code imports it from here)
from .displaced import displaced_detector_weights
from .fov import Orbit, analyse_orbit, cameras_float64, default_grid
from .grid import DISPLACED_FRACTION, lateral_axis_is_columns
from .parker import parker_weights, short_scan_displaced_weights
from .truncation import (
    DEFAULT_EXTENSION,
    detect_truncation,
    extension_pixels,
    extrapolate_rows,
)

WINDOWS = ("ram-lak", "shepp-logan", "hann")


def line_integrals_from_intensities(intensities: Tensor, i0: float, *, floor: float = 0.5) -> Tensor:
    """-log(I / I0) with photon counts below ``floor`` clamped (zero counts would give infinity).
    Raises ValueError for NaN or negative intensities."""
    if not torch.isfinite(intensities).all():
        raise ValueError("intensities contain NaN or infinite values; fix them before reconstructing")
    if (intensities < 0).any():
        raise ValueError("intensities contain negative values; detector counts must be >= 0 (dark-field correction?)")
    if i0 <= 0:
        raise ValueError(f"I0 must be > 0, got {i0}")
    return -torch.log(intensities.clamp_min(floor) / i0)


def ramp_filter_response(n: int, window: str = "hann", dtype=torch.float64, cutoff: float = 1.0) -> Tensor:
    """Frequency response (rfft layout, length n // 2 + 1) of the discrete Ram-Lak kernel for unit sample
    spacing, times the window. n: padded length (even). cutoff: the window's cut-off as a fraction of the
    Nyquist frequency, in (0, 1]: the window is stretched to reach its end (0 for Hann) at cutoff x Nyquist
    and the response is 0 above it (1: the window spans the whole band; RTK's HannCutFrequency has the same
    meaning for Hann)."""
    if window not in WINDOWS:
        raise ValueError(f"unknown ramp window {window!r}; use one of {WINDOWS}")
    check_window_cutoff(cutoff)
    k = torch.arange(n, dtype=dtype)
    k = torch.where(k < n // 2, k, k - n)  # signed offsets, circularly arranged
    g = torch.zeros(n, dtype=dtype)
    g[0] = 0.25
    odd = k.remainder(2) == 1
    g[odd] = -1.0 / (math.pi**2 * k[odd] ** 2)
    response = torch.fft.rfft(g).real
    f = torch.fft.rfftfreq(n, dtype=dtype) / cutoff  # cycles / sample, 0 .. 0.5 at the cut-off
    if window == "hann":
        response = response * 0.5 * (1 + torch.cos(2 * math.pi * f))
    elif window == "shepp-logan":
        response = response * torch.sinc(f)
    return torch.where(f <= 0.5 + 1e-12, response, torch.zeros_like(response))


def check_window_cutoff(cutoff: float) -> None:
    if not (isinstance(cutoff, (int, float)) and 0.0 < float(cutoff) <= 1.0):
        raise ValueError(f"window_cutoff must be in (0, 1] (a fraction of the Nyquist frequency), got {cutoff!r}")


def fdk(
    projections: Tensor,
    cameras: Cameras,
    *,
    volume: Optional[Volume] = None,
    grid: Optional[int] = None,
    spacing_mm: Optional[float] = None,
    window: str = "hann",
    window_cutoff: float = 1.0,
    short_scan: Optional[bool] = None,
    truncation_correction: Optional[float] = None,
    displaced_detector: Optional[bool] = None,
    max_memory_mb: float = 256.0,
    progress: ProgressCallback = None,
    checked: bool = False,
) -> Volume:
    """FDK reconstruction.

    projections: (V, H, W) line integrals (dimensionless), image[row, column] as the cameras.
    cameras: V views with any projection matrices whose sources lie on a (roughly) circular orbit.
    volume: output grid (its data is ignored); default the scanned cylinder (``grid`` voxels across or
        ``spacing_mm``), see :func:`fov.default_grid`.
    window: "ram-lak", "shepp-logan" or "hann" apodisation of the ramp filter.
    window_cutoff: the window's cut-off as a fraction of the detector's Nyquist frequency, (0, 1]
        (default 1: the whole band); lower values smooth more (noisy or fine detectors; see
        :func:`ramp_filter_response`).
    short_scan: force Parker weighting on/off; default: on when the views cover less than 360 degrees.
    truncation_correction: rows extrapolated before filtering by this fraction of the detector width on
        each side (:mod:`truncation`; RTK's ``--tc``); None (default): ``truncation.DEFAULT_EXTENSION`` when
        :func:`truncation.detect_truncation` finds truncated views, else none; 0: never.
    displaced_detector: Wang's weights for an offset detector (:mod:`displaced`) instead of the full scan's
        1/2, on a short scan combined with Parker's per line (:mod:`parker`); None (default): when a view's two
        lateral sides differ by more than ``grid.DISPLACED_FRACTION`` of the detector width. A short scan with an
        offset detector warns: FDK is exact only in the region every view sees.
    progress: called per view; returning False raises ``Cancelled`` (a partial FDK is meaningless).
    checked: the caller already ran :func:`checks.check_projections` on these inputs.
    returns: Volume of mu (1/mm), float32, on the given grid.
    """
    if not checked:
        projections = check_projections(projections, cameras)
    if window not in WINDOWS:
        raise ValueError(f"unknown ramp window {window!r}; use one of {WINDOWS}")
    check_window_cutoff(window_cutoff)
    cams = cameras_float64(cameras)
    orbit = analyse_orbit(cams)
    if volume is None:
        volume = default_grid(cams, grid=grid, spacing_mm=spacing_mm, orbit=orbit)
    p, det = _cosine_weighted(projections, cams, orbit)
    if truncation_correction is None:
        truncation_correction = DEFAULT_EXTENSION if detect_truncation(projections, cams, orbit).any else 0.0
    p, dbeta, displaced, short = _angular_weighted(p, det, cams, orbit, short_scan, displaced_detector)
    if displaced:
        p, det, cams = _symmetric_detector(p, det, cams, orbit if short else None)
    q = _ramp_filtered(p, det, orbit, window, window_cutoff, truncation_correction)
    return _backproject(q, dbeta, cams, orbit, volume, max_memory_mb, progress)


@dataclass(frozen=True)
class _Detector:
    """FDK's detector sampling (float64, per view): u along the filtered direction, i.e. the detector axis
    (camera x or y) most perpendicular to the orbit axis. along_columns: that axis is camera x (the
    projections' last axis); du: (V,) pixel spacing along it, mm; cu: (V,) principal point on it, pixels;
    u: (V, U) mm of the pixel centres from the principal point; n_u: U; sdd: (V,) cams.sdd_mm."""

    along_columns: bool
    du: Tensor
    cu: Tensor
    u: Tensor
    n_u: int
    sdd: Tensor


def _cosine_weighted(projections: Tensor, cams: Cameras, orbit: Orbit) -> Tuple[Tensor, _Detector]:
    """Step 1: (V, T, U) float64 CPU projections with the filtered axis last, times the cosine weight
    D / sqrt(D^2 + u^2 + t^2), and the detector sampling."""
    p = projections.detach().to(torch.float64).cpu()
    along_columns = lateral_axis_is_columns(cams, orbit)
    du = cams.pixel_spacing_mm[:, 0] if along_columns else cams.pixel_spacing_mm[:, 1]
    dt = cams.pixel_spacing_mm[:, 1] if along_columns else cams.pixel_spacing_mm[:, 0]
    cu = cams.principal_point_px[:, 0] if along_columns else cams.principal_point_px[:, 1]
    ct = cams.principal_point_px[:, 1] if along_columns else cams.principal_point_px[:, 0]
    if not along_columns:
        p = p.transpose(1, 2)  # (V, W', H') with the filtered axis last
    n_u, n_t = p.shape[2], p.shape[1]
    sdd = cams.sdd_mm
    u = (torch.arange(n_u, dtype=torch.float64)[None, :] - cu[:, None]) * du[:, None]  # (V, U) mm
    t = (torch.arange(n_t, dtype=torch.float64)[None, :] - ct[:, None]) * dt[:, None]  # (V, T) mm
    cosine = sdd[:, None, None] / torch.sqrt(sdd[:, None, None] ** 2 + u[:, None, :] ** 2 + t[:, :, None] ** 2)
    return p * cosine, _Detector(along_columns, du, cu, u, n_u, sdd)


def _angular_weighted(
    p: Tensor, det: _Detector, cams: Cameras, orbit: Orbit, short_scan: Optional[bool], displaced_detector: Optional[bool]
) -> Tuple[Tensor, Tensor, bool, bool]:
    """Step 2: p times Parker's weights (short scans), the displaced-detector weights (offset detectors) or 1/2
    (full scans, centred); the angular step dbeta (V,) of each view; whether the detector is treated as displaced
    (then padded to symmetric next) and whether the scan is short. A short scan with a displaced detector is
    returned unweighted: it is weighted after the padding (:func:`_symmetric_detector`). Warnings are attributed
    to the caller of :func:`fdk`."""
    n_views = p.shape[0]
    step = float(orbit.angular_range_rad) / max(1, n_views - 1)
    full = orbit.angular_range_rad + step >= 2 * math.pi - 0.5 * step
    if short_scan is None:
        short_scan = not full
    dbeta = _angular_steps(orbit.angles_rad, periodic=full and not short_scan)
    near = det.cu * det.du  # mm from the principal point to the outermost pixel centres (RTK's Delta)
    far = (det.n_u - 1 - det.cu) * det.du
    offset = bool(((far - near).abs() > DISPLACED_FRACTION * (near + far)).any())
    if displaced_detector is None:
        displaced_detector = offset
    if offset and short_scan:
        warnings.warn(
            "an offset detector on a short scan: some lines beyond the detector's narrow side are measured in no view, "
            "so FDK is exact only in the region every view sees; use an iterative method (voxel) for the rest",
            RuntimeWarning,
            stacklevel=3,
        )
    if short_scan and displaced_detector:
        return p, dbeta, True, True  # weighted on the symmetric detector (_symmetric_detector)
    if short_scan:
        w = _short_scan_weights(det, cams, orbit)
    elif displaced_detector:
        w = displaced_detector_weights(det.u, near, far)
    else:
        w = torch.full_like(det.u, 0.5)
    return p * w[:, None, :], dbeta, bool(displaced_detector), bool(short_scan)


def _short_scan_weights(det: _Detector, cams: Cameras, orbit: Orbit, narrow_far: Optional[Tuple[Tensor, Tensor]] = None) -> Tensor:
    """(V, U) Parker's weights of each view's filtered columns, or with ``narrow_far`` (the real detector's (near,
    far), (V,) mm each, ``det`` then the padded symmetric detector) the redundancy-normalised product with the
    displaced-detector weights (:func:`parker.short_scan_displaced_weights`)."""
    n_views = det.u.shape[0]
    beta = orbit.angles_rad
    # orientation of the filtered camera axis relative to the direction of rotation decides the sign of gamma
    tangent = torch.linalg.cross(orbit.axis.expand(n_views, 3), cams.principal_directions())
    camera_axis = 0 if det.along_columns else 1
    sign = float(torch.sign((cams.world_from_camera[:, :3, camera_axis] * tangent).sum(-1).mean()))
    gamma = sign * torch.atan2(det.u, det.sdd[:, None])  # (V, U)
    half_fan = float(torch.atan2(det.u.abs().max(), det.sdd.min()))
    delta = (orbit.angular_range_rad - math.pi) / 2.0
    if delta < half_fan - 1e-3:
        warnings.warn(
            f"the views cover {math.degrees(orbit.angular_range_rad):.1f} degrees, less than a short scan "
            f"(180 + fan angle {math.degrees(2 * half_fan):.1f} degrees): expect missing-wedge artefacts",
            RuntimeWarning,
            stacklevel=4,
        )
    delta = max(delta, 1e-3)
    if narrow_far is not None:
        return short_scan_displaced_weights(beta, gamma, det.u, narrow_far[0], narrow_far[1], delta)
    return torch.stack([parker_weights(beta[v : v + 1], gamma[v], delta)[0] for v in range(n_views)])  # (V, U)


def _symmetric_detector(
    p: Tensor, det: _Detector, cams: Cameras, short_scan_orbit: Optional[Orbit] = None
) -> Tuple[Tensor, _Detector, Cameras]:
    """Step 2b (displaced detector): the narrow side padded until the filtered axis reaches as far on both sides of
    every view's principal point, as RTK's ``DisplacedDetectorImageFilter`` pads. The ramp filter's response beyond
    the narrow edge is then back-projected (a voxel that projects there in one view is seen from the other side in
    the opposite view); cut at the edge, it is lost and the region seen once comes out too bright. p: (V, T, U),
    weighted with Wang's weights (full scan: padded with zeros), or unweighted with ``short_scan_orbit``: then
    padded with the narrow edge's extrapolation (:func:`truncation.extrapolate_rows`) and weighted with Parker's
    and Wang's weights normalised per line (:mod:`parker`; the padded pixels stand in for the lines that no view
    measured, weight EXTRAPOLATED_WEIGHT times Wang's floor). Returns p (V, T, U'), its sampling, and cams
    (float64) with the larger detector (principal points shifted by the pixels added before index 0)."""
    near = det.cu * det.du
    far = (det.n_u - 1 - det.cu) * det.du
    n_low = max(0, int(math.ceil(float(((far - near) / det.du).max()) - 1e-6)))
    n_high = max(0, int(math.ceil(float(((near - far) / det.du).max()) - 1e-6)))
    if n_low == 0 and n_high == 0:
        return p, det, cams
    if short_scan_orbit is None:
        p = torch.nn.functional.pad(p, (n_low, n_high))
    else:
        n = max(n_low, n_high)
        ext = extrapolate_rows(p, n)
        p = ext[..., n - n_low : n + det.n_u + n_high]
    n_u = det.n_u + n_low + n_high
    cu = det.cu + n_low
    u = (torch.arange(n_u, dtype=torch.float64)[None, :] - cu[:, None]) * det.du[:, None]
    axis = 0 if det.along_columns else 1
    pp = cams.principal_point_px.clone()
    pp[:, axis] = pp[:, axis] + n_low
    w, h = cams.size_px
    size = (w + n_low + n_high, h) if det.along_columns else (w, h + n_low + n_high)
    padded = Cameras(cams.world_from_camera, cams.sdd_mm, cams.pixel_spacing_mm, pp, size)
    sym = _Detector(det.along_columns, det.du, cu, u, n_u, det.sdd)
    if short_scan_orbit is not None:
        p = p * _short_scan_weights(sym, padded, short_scan_orbit, (near, far))[:, None, :]
    return p, sym, padded


def _ramp_filtered(p: Tensor, det: _Detector, orbit: Orbit, window: str, window_cutoff: float, truncation_correction: float) -> Tensor:
    """Step 3: ramp filter along the last axis, sampling du * R / D at the isocentre, after the rows were
    extrapolated beyond truncated edges (truncation.py). -> (V, H, W) float32."""
    n_u = det.n_u
    n_ext = extension_pixels(n_u, truncation_correction)
    p = extrapolate_rows(p, n_ext)
    n_fft = 1 << int(math.ceil(math.log2(2 * p.shape[-1])))
    response = ramp_filter_response(n_fft, window, cutoff=window_cutoff)
    q = torch.fft.irfft(torch.fft.rfft(p, n=n_fft, dim=-1) * response, n=n_fft, dim=-1)[..., n_ext : n_ext + n_u]
    du_iso = det.du * orbit.sid_mm / det.sdd
    q = q / du_iso[:, None, None]
    if not det.along_columns:
        q = q.transpose(1, 2)  # back to (V, H, W)
    return q.to(torch.float32)


def _backproject(
    q: Tensor, dbeta: Tensor, cams: Cameras, orbit: Orbit, volume: Volume, max_memory_mb: float, progress: ProgressCallback
) -> Volume:
    """Step 4: voxel-driven back projection: sum_v q_v(P_v X) * weight_v / depth_v(X)^2, which is the iterative
    solvers' voxel back projector (backproject.py: the projection and grid matrices folded into one, one
    division and a bilinear gather per voxel and view) applied to q_v * weight_v / its pixel weights;
    views in groups, for the progress reports (one back projector for FDK and the iterative solvers)."""
    n_views = q.shape[0]
    weight = (dbeta * orbit.sid_mm**2).to(torch.float32)  # (V,)
    bp = VoxelBackprojector(cams, volume, max_memory_mb=min(max_memory_mb, 16.0))  # cache-sized chunks: faster
    images = q * weight[:, None, None] / bp.pix_w.cpu()
    out = torch.zeros(volume.data.shape, dtype=torch.float32)
    group = max(1, -(-n_views // 8))
    for v0 in range(0, n_views, group):
        v1 = min(n_views, v0 + group)
        out += bp(images[v0:v1], range(v0, v1)).cpu()
        report(progress, v1, n_views, f"FDK back projection: view {v1}/{n_views}")
    return Volume(out, volume.ras_from_ijk.to(torch.float32), "mu")


def _angular_steps(beta: Tensor, periodic: bool) -> Tensor:
    """Angular weight of each view: half the gap to its neighbours (in view order). (V,)"""
    n = beta.shape[0]
    if n == 1:
        return torch.ones(1, dtype=beta.dtype)
    order = torch.argsort(beta)
    b = beta[order]
    gaps = b[1:] - b[:-1]
    steps = torch.empty(n, dtype=beta.dtype)
    if periodic:
        wrap = 2 * math.pi - (b[-1] - b[0])
        left = torch.cat([wrap.reshape(1), gaps])
        right = torch.cat([gaps, wrap.reshape(1)])
    else:
        left = torch.cat([gaps[:1], gaps])
        right = torch.cat([gaps, gaps[-1:]])
    steps[order] = 0.5 * (left + right)
    return steps
