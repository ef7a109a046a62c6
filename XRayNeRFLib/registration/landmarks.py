"""Landmark start for 2D/3D registration: the X-ray camera pose from point pairs (PnP with known intrinsics).

A user marks N >= 4 anatomical points twice: on the CT (3D, patient RAS mm) and on the X-ray (2D detector
pixel coordinates). With the camera's intrinsics known (source-detector distance, pixel spacing, principal
point: :class:`~XRayNeRFLib.geometry.Cameras`), the pose ``world_from_camera`` that projects every CT point
onto its pixel is a Perspective-n-Point problem:

    [c_i, r_i, 1]^T  ~  K [R | t] [X_i, 1]^T,        [R | t] = camera_from_world[:3]   (docs/geometry.md, 5)

Conventions (docs/geometry.md): ``X_i`` RAS mm; ``(c_i, r_i)`` [column, row], 0-based pixel-centre
coordinates of the image as the engine uses it (row 0 = first stored row; after any flip a reader made);
the pixel's outer edges are at -0.5 and W-0.5 / H-0.5.

Solve (all float64):

1. Linear starts. EPnP (Lepetit, Moreno-Noguer, Fua, IJCV 2009): the points as barycentric combinations
   of 4 control points (3 for coplanar points), the control points' camera coordinates from the null space
   of a 2N x 12 (2N x 9) linear system, the scale from the control points' distances (null spaces of
   dimension 1, 2 and 3 are tried), then the rigid fit of the points. For non-coplanar points also the
   scaled-orthographic start refined by POSIT iterations (DeMenthon & Davis 1995), which suits X-ray
   geometry (landmarks far from the source compared with their spread in depth).
2. Levenberg-Marquardt on the reprojection error in pixels from every start; the pose with the smallest
   error and every point in front of the source wins.

Registration moves the camera and reports the CT's correction relative to a reference camera (pose.py,
docs/registration.md); :meth:`LandmarkPose.ct_correction_ras` gives it for the landmark pose, so the pose
can start the optimiser (``register(..., cameras with world_from_camera = pose.world_from_camera)``) or move
the CT in a scene whose camera stays at its nominal (e.g. DICOM) pose.

Depth (along the beam) is the weakest direction: it changes the image only through magnification, so
landmarks spread widely in-plane and in depth determine it best. Coplanar landmarks seen nearly
orthographically (a flat object far from the source) can fit two mirror-image tilts equally well.

Bad input raises :class:`~XRayNeRFLib.errors.LandmarkError` (a ``ValueError``) whose ``reason`` and
``index`` say which check failed for which pair.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from ..errors import LandmarkError
from ..geometry import Cameras, homogeneous, rigid_inverse
from .pose import ct_correction_from_poses, skew, so3_exp

__all__ = ["LandmarkPairs", "LandmarkPose", "read_landmarks_json", "solve_landmark_pose", "MIN_PAIRS"]

MIN_PAIRS = 4
# Relative flatness below which points count as collinear (RMS distance from the best line over RMS extent).
_COLLINEAR_RTOL = 1e-3
# Relative flatness below which CT points count as coplanar (chooses the 3-control-point EPnP).
_COPLANAR_RTOL = 1e-6

_DT = torch.float64


@dataclass
class LandmarkPairs:
    """N point pairs.

    points_ras: (N, 3) float64, CT points, patient RAS mm.
    pixels: (N, 2) float64, the same points on the X-ray, [column, row] 0-based pixel-centre coordinates.
    labels: N names (for messages and reports); default "1".."N".
    """

    points_ras: Tensor
    pixels: Tensor
    labels: List[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.points_ras = torch.as_tensor(self.points_ras, dtype=_DT)
        self.pixels = torch.as_tensor(self.pixels, dtype=_DT)
        if self.points_ras.ndim != 2 or self.points_ras.shape[-1] != 3:
            raise LandmarkError(f"CT landmark points must be (N, 3) RAS mm, got shape {tuple(self.points_ras.shape)}", reason="shape")
        if self.pixels.ndim != 2 or self.pixels.shape[-1] != 2:
            raise LandmarkError(f"X-ray landmark pixels must be (N, 2) [column, row], got shape {tuple(self.pixels.shape)}", reason="shape")
        if self.points_ras.shape[0] != self.pixels.shape[0]:
            raise LandmarkError(
                f"{self.points_ras.shape[0]} CT points but {self.pixels.shape[0]} X-ray points: every landmark needs both", reason="shape"
            )
        n = self.points_ras.shape[0]
        if not self.labels:
            self.labels = [str(i + 1) for i in range(n)]
        self.labels = [str(s) for s in self.labels]
        if len(self.labels) != n:
            raise LandmarkError(f"{len(self.labels)} labels for {n} landmark pairs", reason="shape")

    def __len__(self) -> int:
        return self.points_ras.shape[0]


@dataclass
class LandmarkPose:
    """Result of :func:`solve_landmark_pose`.

    world_from_camera: (4, 4) float64, rigid, RAS mm <- camera mm (source at the origin).
    cameras: the input camera (1 view, float64) with this pose.
    residual_px: (N, 2) float64, projected minus marked pixel, [column, row] px.
    error_px: (N,) float64, |residual| in px.
    error_detector_mm: (N,) float64, |residual| on the detector plane in mm (pixel spacing applied per axis).
    error_object_mm: (N,) float64, the same divided by each point's magnification (sdd / depth): mm at the
        landmark, the scale of a target registration error.
    depth_mm: (N,) float64, each point's distance from the source along the principal ray.
    rms_px, rms_detector_mm, rms_object_mm: root mean squares of the three errors.
    labels: the pairs' labels; iterations: Levenberg-Marquardt iterations of the winning start.
    """

    world_from_camera: Tensor
    cameras: Cameras
    residual_px: Tensor
    error_px: Tensor
    error_detector_mm: Tensor
    error_object_mm: Tensor
    depth_mm: Tensor
    rms_px: float
    rms_detector_mm: float
    rms_object_mm: float
    labels: List[str]
    iterations: int

    def ct_correction_ras(self, reference_world_from_camera: Tensor) -> Tensor:
        """The CT's rigid correction (4, 4) float64, RAS 'to parent', that makes the CT seen from the
        reference camera (e.g. the DICOM pose) look as it does from the landmark pose:
        ``reference @ inverse(world_from_camera)``, the convention of ``RegistrationResult.ct_correction_ras``."""
        return ct_correction_from_poses(self.world_from_camera, reference_world_from_camera)

    def to_json(self) -> dict:
        """A JSON-ready summary: the pose, the RMS errors and one row per pair."""
        return {
            "world_from_camera": self.world_from_camera.tolist(),
            "frame": "patient RAS, mm",
            "rms_px": self.rms_px,
            "rms_detector_mm": self.rms_detector_mm,
            "rms_object_mm": self.rms_object_mm,
            "pairs": [
                {
                    "label": lab,
                    "error_px": float(e),
                    "error_detector_mm": float(d),
                    "error_object_mm": float(o),
                    "residual_px": r.tolist(),
                    "depth_mm": float(z),
                }
                for lab, e, d, o, r, z in zip(
                    self.labels, self.error_px, self.error_detector_mm, self.error_object_mm, self.residual_px, self.depth_mm
                )
            ],
        }


# ---------------------------------------------------------------------------------------------------------
# File format
# ---------------------------------------------------------------------------------------------------------
def read_landmarks_json(path: str) -> LandmarkPairs:
    """Read a landmark file (docs/registration.md, "Landmark start")::

        {"frame": "RAS",
         "pairs": [{"label": "T4 spinous", "ct_mm": [x, y, z], "pixel": [column, row]}, ...]}

    ``ct_mm`` in the CT file's patient frame in mm, RAS by default or LPS with ``"frame": "LPS"`` (converted
    here: x and y change sign); ``pixel`` [column, row], 0-based pixel-centre. ``label`` is optional.
    Raises ValueError (LandmarkError with reason "shape" for a malformed pair) naming the file and pair."""
    if not os.path.exists(path):
        raise ValueError(f"landmark file {path!r} does not exist")
    try:
        with open(path) as f:
            data = json.load(f)
    except json.JSONDecodeError as exc:
        raise ValueError(f"landmark file {path!r} is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("pairs"), list):
        raise ValueError(f'landmark file {path!r} must hold {{"pairs": [{{"ct_mm": [x, y, z], "pixel": [column, row]}}, ...]}}')
    frame = str(data.get("frame", "RAS")).upper()
    if frame not in ("RAS", "LPS"):
        raise ValueError(f'landmark file {path!r}: frame must be "RAS" or "LPS", got {data.get("frame")!r}')
    pts, pix, labels = [], [], []
    for i, pair in enumerate(data["pairs"]):
        label = str(pair.get("label", i + 1)) if isinstance(pair, dict) else str(i + 1)
        try:
            p = [float(v) for v in pair["ct_mm"]]
            q = [float(v) for v in pair["pixel"]]
        except (TypeError, KeyError, ValueError):
            raise LandmarkError(
                f'landmark file {path!r}, pair {i} ({label}): needs "ct_mm": [x, y, z] (mm) and "pixel": [column, row] numbers',
                reason="shape",
                index=i,
                label=label,
            ) from None
        if len(p) != 3 or len(q) != 2:
            raise LandmarkError(
                f"landmark file {path!r}, pair {i} ({label}): ct_mm needs 3 numbers and pixel 2, got {len(p)} and {len(q)}",
                reason="shape",
                index=i,
                label=label,
            )
        if frame == "LPS":
            p = [-p[0], -p[1], p[2]]
        pts.append(p)
        pix.append(q)
        labels.append(label)
    if not pts:
        raise LandmarkError(f"landmark file {path!r} has no pairs; mark at least {MIN_PAIRS}", reason="too-few")
    return LandmarkPairs(torch.tensor(pts, dtype=_DT), torch.tensor(pix, dtype=_DT), labels)


# ---------------------------------------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------------------------------------
def _line_flatness(x: Tensor) -> float:
    """RMS distance of points (N, D) from their best-fit line over their RMS extent along it (0: collinear)."""
    s = torch.linalg.svdvals(x - x.mean(0))
    return float(s[1:].norm() / s[0]) if float(s[0]) > 0 else 0.0


def _check_pairs(pairs: LandmarkPairs, cameras: Cameras) -> None:
    pts, pix, labels = pairs.points_ras, pairs.pixels, pairs.labels
    for name, t, what in (("CT point", pts, "RAS mm"), ("X-ray pixel", pix, "[column, row]")):
        bad = ~torch.isfinite(t).all(-1)
        if bad.any():
            i = int(torch.nonzero(bad)[0, 0])
            raise LandmarkError(
                f"landmark {i} ({labels[i]}): the {name} {t[i].tolist()} ({what}) is not finite (NaN or inf); "
                "place it again or remove the pair",
                reason="not-finite",
                index=i,
                label=labels[i],
            )
    w, h = cameras.size_px
    outside = (pix[:, 0] < -0.5) | (pix[:, 0] > w - 0.5) | (pix[:, 1] < -0.5) | (pix[:, 1] > h - 0.5)
    if outside.any():
        i = int(torch.nonzero(outside)[0, 0])
        raise LandmarkError(
            f"landmark {i} ({labels[i]}): pixel [column, row] = [{pix[i, 0]:.6g}, {pix[i, 1]:.6g}] lies outside the {w} x {h} "
            "X-ray (columns -0.5 .. W-0.5, rows -0.5 .. H-0.5); pixels are 0-based [column, row], not mm or RAS",
            reason="outside-image",
            index=i,
            label=labels[i],
        )
    n = len(pairs)
    if n >= 2:
        extent = float((pts - pts.mean(0)).norm(dim=-1).max())
        d = torch.cdist(pts, pts) + torch.eye(n, dtype=_DT) * (extent + 1.0)
        if float(d.min()) <= 1e-9 * max(extent, 1.0):
            i, j = (int(v) for v in torch.nonzero(d <= 1e-9 * max(extent, 1.0))[0])
            raise LandmarkError(
                f"landmarks {i} ({labels[i]}) and {j} ({labels[j]}) are the same CT point; each pair needs its own point",
                reason="too-few",
                index=j,
                label=labels[j],
            )
    if n < MIN_PAIRS:
        raise LandmarkError(
            f"{n} landmark pair{'s' if n != 1 else ''}: a pose needs at least {MIN_PAIRS} (CT point, X-ray pixel) pairs, "
            "spread over the anatomy and not on one line",
            reason="too-few",
        )
    if _line_flatness(pts) < _COLLINEAR_RTOL:
        raise LandmarkError(
            f"the {n} CT landmarks lie on one line: they cannot fix the rotation about it; add points off that line", reason="degenerate"
        )
    if _line_flatness(pix) < _COLLINEAR_RTOL:
        raise LandmarkError(
            f"the {n} X-ray landmarks lie on one line of the image (the CT points are in a plane through the source); "
            "add points off that line",
            reason="degenerate",
        )


# ---------------------------------------------------------------------------------------------------------
# Linear starts
# ---------------------------------------------------------------------------------------------------------
def _rigid_fit(p: Tensor, q: Tensor) -> Tuple[Tensor, Tensor]:
    """Least-squares rotation R (3, 3) and translation t (3,) with q ~ R p + t (Kabsch, det +1)."""
    pm, qm = p.mean(0), q.mean(0)
    u, _, vh = torch.linalg.svd((p - pm).T @ (q - qm))
    d = torch.sign(torch.linalg.det(vh.T @ u.T))
    d = d if float(d) != 0 else torch.ones((), dtype=_DT)
    r = vh.T @ torch.diag(torch.stack([torch.ones((), dtype=_DT), torch.ones((), dtype=_DT), d])) @ u.T
    return r, qm - r @ pm


def _epnp_starts(pts: Tensor, xn: Tensor, planar: bool) -> List[Tuple[Tensor, Tensor]]:
    """EPnP starts (R, t) (camera_from_world) for null-space dimensions 1..3. pts: (N, 3) RAS mm;
    xn: (N, 2) normalised image coordinates (x/z, y/z in the camera frame)."""
    n = pts.shape[0]
    c0 = pts.mean(0)
    _, s, vh = torch.linalg.svd(pts - c0, full_matrices=False)
    nc = 3 if planar else 4
    ctrl = torch.stack([c0] + [c0 + s[k] / math.sqrt(n) * vh[k] for k in range(nc - 1)])  # (nc, 3)
    # Barycentric coordinates: pts_i = sum_j alpha_ij ctrl_j with sum_j alpha_ij = 1.
    a_sys = torch.cat([ctrl.T, torch.ones(1, nc, dtype=_DT)])  # (4, nc)
    b_sys = torch.cat([pts.T, torch.ones(1, n, dtype=_DT)])  # (4, N)
    alphas = torch.linalg.lstsq(a_sys, b_sys).solution.T  # (N, nc)
    m = torch.zeros(2 * n, 3 * nc, dtype=_DT)
    for j in range(nc):
        m[0::2, 3 * j] = alphas[:, j]
        m[0::2, 3 * j + 2] = -alphas[:, j] * xn[:, 0]
        m[1::2, 3 * j + 1] = alphas[:, j]
        m[1::2, 3 * j + 2] = -alphas[:, j] * xn[:, 1]
    _, _, vh_m = torch.linalg.svd(m.T @ m)
    kernel = vh_m.flip(0)  # rows: right singular vectors, smallest singular value first
    pairs = [(a, b) for a in range(nc) for b in range(a + 1, nc)]
    dc2 = torch.stack([(ctrl[a] - ctrl[b]).pow(2).sum() for a, b in pairs])  # (P,)
    starts = []
    for k in range(1, (2 if planar else 3) + 1):
        v = kernel[:k].reshape(k, nc, 3)  # (k, nc, 3)
        dv = torch.stack([v[:, a] - v[:, b] for a, b in pairs], 1)  # (k, P, 3)
        if k == 1:
            beta = torch.stack([(dv[0].norm(dim=-1) * dc2.sqrt()).sum() / dv[0].pow(2).sum()])
        else:
            # |sum_k beta_k dv_k|^2 = |dc|^2: linear in the products beta_k beta_l (k <= l).
            idx = [(i, j) for i in range(k) for j in range(i, k)]
            lin = torch.stack([(dv[i] * dv[j]).sum(-1) * (1.0 if i == j else 2.0) for i, j in idx], -1)  # (P, len(idx))
            bb = torch.linalg.lstsq(lin, dc2[:, None]).solution[:, 0]
            b11 = float(bb[0])
            if b11 <= 0:
                continue
            b1 = math.sqrt(b11)
            beta = torch.tensor([b1] + [float(bb[idx.index((0, j))]) / b1 for j in range(1, k)], dtype=_DT)
        ctrl_cam = (beta[:, None, None] * v).sum(0)  # (nc, 3)
        cam = alphas @ ctrl_cam  # (N, 3)
        if float(cam[:, 2].mean()) < 0:
            cam = -cam
        starts.append(_rigid_fit(pts, cam))
    return starts


def _posit_start(pts: Tensor, xn: Tensor, iterations: int = 50) -> Optional[Tuple[Tensor, Tensor]]:
    """Scaled-orthographic start refined by POSIT iterations (non-coplanar points). (R, t) or None."""
    c0 = pts.mean(0)
    d = pts - c0  # (N, 3)
    a = torch.cat([d, torch.ones_like(d[:, :1])], -1)  # (N, 4)
    eps = torch.zeros(pts.shape[0], dtype=_DT)
    r = t = None
    for _ in range(iterations):
        rhs = xn * (1 + eps)[:, None]  # (N, 2)
        sol = torch.linalg.lstsq(a, rhs).solution  # (4, 2): rows of the affine camera, per image axis
        i_vec, j_vec = sol[:3, 0], sol[:3, 1]
        si, sj = float(i_vec.norm()), float(j_vec.norm())
        if si <= 0 or sj <= 0:
            return None
        z0 = 2.0 / (si + sj)
        r1 = i_vec / si
        r2 = j_vec - (j_vec @ r1) * r1
        r2 = r2 / r2.norm()
        r3 = torch.linalg.cross(r1, r2)
        r = torch.stack([r1, r2, r3])
        cam0 = torch.stack([sol[3, 0] * z0, sol[3, 1] * z0, torch.tensor(z0, dtype=_DT)])
        t = cam0 - r @ c0
        new_eps = (d @ r3) / z0
        if float((new_eps - eps).abs().max()) < 1e-15:
            break
        eps = new_eps
    return r, t


# ---------------------------------------------------------------------------------------------------------
# Levenberg-Marquardt on the reprojection error
# ---------------------------------------------------------------------------------------------------------
def _residuals(r: Tensor, t: Tensor, pts: Tensor, pix: Tensor, k: Tensor) -> Tensor:
    """Projected minus marked pixels (N, 2) for camera_from_world = (r, t)."""
    cam = pts @ r.T + t  # (N, 3) camera mm
    uv = cam @ k.T
    return uv[:, :2] / uv[:, 2:3] - pix


def _jacobian(r: Tensor, t: Tensor, pts: Tensor, k: Tensor) -> Tensor:
    """d residuals (2N,) / d step (6,) at step 0 for the update of :func:`_levenberg_marquardt`: (2N, 6)."""
    cam = pts @ r.T + t  # (N, 3)
    x, y, z = cam.unbind(-1)
    fx, fy = k[0, 0], k[1, 1]
    zero = torch.zeros_like(z)
    dproj = torch.stack([fx / z, zero, -fx * x / z**2, zero, fy / z, -fy * y / z**2], -1).reshape(-1, 2, 3)  # (N, 2, 3)
    eye = torch.eye(3, dtype=_DT).expand(cam.shape[0], 3, 3)
    dcam = torch.cat([-skew(cam - cam.mean(0)), eye], -1)  # (N, 3, 6): d cam / d (w, dt)
    return (dproj @ dcam).reshape(-1, 6)


def _levenberg_marquardt(
    r: Tensor, t: Tensor, pts: Tensor, pix: Tensor, k: Tensor, max_iterations: int
) -> Tuple[Tensor, Tensor, float, int]:
    """Minimise the summed squared reprojection error (px^2) over the pose. The update rotates the camera-frame
    points about their centroid: cam' = exp(w) (cam - m) + m + dt, which keeps rotation and translation
    decoupled for landmarks far from the source."""

    def apply(r, t, step):
        m = (pts @ r.T + t).mean(0)
        rot = so3_exp(step[:3])
        return rot @ r, rot @ (t - m) + m + step[3:]

    def cost_of(r, t):
        res = _residuals(r, t, pts, pix, k)
        return float(res.pow(2).sum()) if torch.isfinite(res).all() else math.inf

    cost = cost_of(r, t)
    lam = 1e-3
    it = 0
    for it in range(1, max_iterations + 1):  # noqa: B007 (it is returned: the iterations used)
        res = _residuals(r, t, pts, pix, k).reshape(-1)
        jac = _jacobian(r, t, pts, k)  # (2N, 6)
        a = jac.T @ jac
        g = jac.T @ res
        improved = False
        while lam < 1e16:
            step = torch.linalg.solve(a + lam * torch.diag(a.diagonal().clamp(min=1e-12)), -g)
            r2, t2 = apply(r, t, step)
            c2 = cost_of(r2, t2)
            if c2 < cost:
                improved = True
                small = cost - c2 <= 1e-14 * max(cost, 1e-300) or float(step.abs().max()) < 1e-13
                r, t, cost = r2, t2, c2
                lam = max(lam / 10, 1e-12)
                break
            lam *= 10
        if not improved or small:
            break
    # Re-orthonormalise (the exponential keeps R in SO(3) up to rounding).
    u, _, vh = torch.linalg.svd(r)
    return u @ vh, t, cost, it


# ---------------------------------------------------------------------------------------------------------
# Public entry point
# ---------------------------------------------------------------------------------------------------------
def solve_landmark_pose(
    points_ras,
    pixels=None,
    cameras: Optional[Cameras] = None,
    *,
    labels: Optional[Sequence[str]] = None,
    max_iterations: int = 50,
) -> LandmarkPose:
    """Camera pose from N >= 4 landmark pairs and known intrinsics (see the module docstring).

    points_ras: (N, 3) CT points, RAS mm, or a :class:`LandmarkPairs` (then ``pixels`` is omitted).
    pixels: (N, 2) [column, row], 0-based pixel-centre coordinates on the X-ray.
    cameras: one view; its sdd_mm, pixel_spacing_mm, principal_point_px and size_px are used, its pose is
        ignored (any rigid placeholder will do).
    Returns a :class:`LandmarkPose` (float64). Raises :class:`~XRayNeRFLib.errors.LandmarkError` for fewer than
    4 distinct pairs, NaN/inf coordinates, pixels outside the image, collinear CT points or pixels, or when no
    pose puts every point in front of the source.
    """
    pairs = points_ras if isinstance(points_ras, LandmarkPairs) else LandmarkPairs(points_ras, pixels, list(labels or []))
    if cameras is None or len(cameras) != 1:
        raise ValueError("solve_landmark_pose needs the X-ray's camera (one view) for its intrinsics")
    cam = cameras.to(dtype=_DT)
    _check_pairs(pairs, cam)
    pts, pix = pairs.points_ras, pairs.pixels
    k = cam.intrinsic_matrices()[0]  # (3, 3)
    xn = torch.linalg.solve(k, torch.cat([pix, torch.ones_like(pix[:, :1])], -1).T).T[:, :2]  # (N, 2)

    s = torch.linalg.svdvals(pts - pts.mean(0))
    planar = float(s[2]) <= _COPLANAR_RTOL * float(s[0])
    starts = _epnp_starts(pts, xn, planar)
    if not planar:
        posit = _posit_start(pts, xn)
        if posit is not None:
            starts.append(posit)

    best = None
    for r0, t0 in starts:
        if not (torch.isfinite(r0).all() and torch.isfinite(t0).all()):
            continue
        r, t, cost, its = _levenberg_marquardt(r0, t0, pts, pix, k, max_iterations)
        depth = (pts @ r.T + t)[:, 2]
        if not math.isfinite(cost) or bool((depth <= 0).any()):
            continue
        if best is None or cost < best[2]:
            best = (r, t, cost, its)
    if best is None:
        raise LandmarkError(
            "no camera pose puts every CT landmark in front of the X-ray source: check that each pixel belongs "
            "to its CT point (same order) and that the image is not mirrored",
            reason="no-solution",
        )
    r, t, _, its = best
    world_from_camera = rigid_inverse(homogeneous(r, t))
    posed = Cameras(world_from_camera[None], cam.sdd_mm, cam.pixel_spacing_mm, cam.principal_point_px, cam.size_px)
    proj, depth = posed.project(pts)
    residual = proj[0] - pix  # (N, 2)
    err_px = residual.norm(dim=-1)
    err_det = (residual * cam.pixel_spacing_mm[0]).norm(dim=-1)
    err_obj = err_det * depth[0] / cam.sdd_mm[0]

    def rms(x: Tensor) -> float:
        return float(x.pow(2).mean().sqrt())

    return LandmarkPose(
        world_from_camera,
        posed,
        residual,
        err_px,
        err_det,
        err_obj,
        depth[0],
        rms(err_px),
        rms(err_det),
        rms(err_obj),
        list(pairs.labels),
        its,
    )
