"""Self-calibration of a C-arm's per-view geometry: joint reconstruction and small rigid pose corrections
through the differentiable renderer.

A flexing C-arm without a calibration is off by about a millimetre and half a degree per view; the nominal
orbit then blurs and streaks the reconstruction. The data themselves say where each view was: with a
volume x reconstructed from the current cameras, each view's pose correction delta_v (a twist: rotation
vector omega in rad and translation t in mm, in the view's camera frame, whose origin is the source,
``world_from_camera <- world_from_camera @ exp(delta_v)``) is fitted through the renderer::

    min_delta  mean_pixels (A(x; cam_v(delta_v)) - p_v)^2 / mean(p^2)  +  sum_k w_k (D_vk / scale_k)^2

where D_v is the view's TOTAL correction from the nominal camera (this round's delta composed with the
earlier rounds'), ``scale`` = 1 degree and 1 mm, and the prior weights w_k follow what one view can see
(the observability rule, :func:`prior_weights`): the two tilts about the source (rotations about the camera
x and y axes) move the whole image across the detector and are well determined (``reg``); the rotation about
the principal ray (it moves only pixels far from the principal point), the translations (a sideways shift
is nearly a tilt about the source; a shift along the beam only changes the magnification) and the principal
point are weakly determined at clinical pixel sizes and are held by a stronger prior (``weak_reg``), so that
the errors of the volume do not drive them (freeing them made them drift over the rounds). Each view's fit
is a damped Gauss-Newton (Levenberg-Marquardt) on its 6 (or 8) parameters; the Jacobian is the renderer's
exact pose derivative (:func:`pose_jacobian`: forward-mode differentiation of the trilinear renderer, all
parameters in one pass over copies of the views), on a fixed set of pixels per view.

Rounds alternate: reconstruct (``start``: "fdk" or "os-tv") with the current cameras, fit the corrections,
apply them, remove their common rigid motion (a rigid motion of all views together moves the reconstruction
with them, which the data cannot see: the corrected cameras are aligned back onto the nominal ones by the
rigid transform that best maps the corrected sources and detector centres onto the nominal ones, Kabsch, and
by the common scale, since moving every view along its principal ray looks like a scaled volume), and repeat.
Pose errors against a known truth mean something only modulo that gauge (benchmarks/bench_carm.py measures
them so, and also as the reprojection error of body points, the part the images see).

Leave-group-out (``holdout_groups`` K >= 2, the default): each of K interleaved view groups is fitted
against a volume reconstructed without it, so that no view is fitted to a volume that already took on its
own error (the joint fit, K = 0, finds cameras that fit the data better than the true ones). It costs K
extra reconstructions per round. The groups are fitted in turn (Gauss-Seidel): a group's volume is
reconstructed with the corrections of the groups fitted before it in the same round, which converges in
fewer rounds than fitting every group against the round's starting cameras; each round starts with the
next group, so that no group is always the one fitted against uncorrected cameras (with the same group
first in every round, the cameras drifted slowly after three rounds while the data term still fell). Rounds
are few: each group's cameras were fitted to volumes holding the other groups' data, so over many rounds
the groups can co-adapt. What is left
(benchmarks/RESULTS_carm.md, docs/reconstruction.md): errors that vary slowly along a short-scan arc
(nearly a rigid motion of the volume, but not quite) are seen only through the consistency of distant
views.
Optionally (``intrinsics``) each view's principal point is corrected too.

Stopping: each round's corrected cameras are judged by the data term of the reconstruction from all views
with them (the volume the next round starts from); a round that lowers it by less than ``min_gain``
(relative) is not applied and the refinement stops, keeping the previous round's cameras and volume. On
exact geometry nothing moves (tested): the fits against the held-out volumes find small corrections (those
volumes are imperfect), but they do not make the data more consistent.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import torch
import torch.autograd.forward_ad as fwad
from torch import Tensor

from ..geometry import Cameras
from ..progress import Cancelled, ProgressCallback, report
from ..render import DEFAULT_RENDERER, render
from ..volume import Volume
from .fov import cameras_float64

__all__ = [
    "RefineSettings",
    "RefineResult",
    "refine_geometry",
    "apply_corrections",
    "remove_common_motion",
    "prior_weights",
    "pose_jacobian",
    "twist_matrix",
    "twists_between",
]


@dataclass
class RefineSettings:
    """rounds: alternations of reconstruction and pose fitting; steps: Gauss-Newton (Levenberg-Marquardt)
    iterations per view group and round; rays_per_view: pixels per view in the fit (a fixed random set per
    round; 0 or more than the detector has: all); reg: prior weight of the tilts about the source (units of
    ``scale``: 1 degree) against the normalised data term; weak_reg: prior weight of the weakly observable
    parameters (rotation about the principal ray in degrees, translations in mm, principal point in pixels;
    :func:`prior_weights`); min_gain: relative decrease of the data term (of the reconstruction from all views
    at the round's cameras) a round must bring to be applied; start: "os-tv" (default) or "fdk" reconstruction
    (FDK volumes are not data-consistent enough for the pose fit on truncated short scans: :meth:`for_method`);
    passes: os-tv passes per reconstruction (None: the reconstruction's own default,
    ``ostv.default_passes``; the default is more, since the pose fit needs a converged volume:
    benchmarks/RESULTS_carm.md); intrinsics: also correct each view's principal point (pixels); renderer: the
    os-tv start's projector (default ``render.DEFAULT_RENDERER``; the pose fit itself always marches
    trilinearly); seed: the pixel draw; holdout_groups: K >= 2 fits each of K interleaved view groups against
    a volume reconstructed without that group (leave-group-out: no view is fitted to a volume that already
    took on its own error; K reconstructions
    per round), 0 or 1: every view against the volume of all views (joint fit)."""

    rounds: int = 4
    steps: int = 3
    rays_per_view: int = 4096
    reg: float = 1e-4
    weak_reg: float = 2e-3
    min_gain: float = 0.01
    start: str = "os-tv"
    passes: Optional[int] = 20
    intrinsics: bool = False
    renderer: str = DEFAULT_RENDERER
    seed: int = 0
    holdout_groups: int = 3

    @classmethod
    def for_method(cls, method: str, seed: int = 0) -> "RefineSettings":
        """The settings ``reconstruct --refine-geometry`` and the modules use before reconstructing with ``method``
        (recon.api.METHODS): every default, the os-tv start included whatever ``method`` is (it only decides the
        final reconstruction at the refined cameras). The pose fit needs data-consistent volumes: with FDK volumes
        of held-out groups (a third of a truncated short scan's views missing) the refinement moved exact cameras
        by several millimetres of reprojection error and did not correct jittered ones (benchmarks/RESULTS_carm.md)."""
        return cls(seed=int(seed))


@dataclass
class RefineResult:
    """cameras: the corrected cameras (float64); volume: the reconstruction with them (mu 1/mm);
    corrections: (V, 6) total twist per view (rad, rad, rad, mm, mm, mm in the nominal camera frame,
    common motion removed); principal_shift_px: (V, 2) or None; data_terms: the data term before the first
    and after each applied round; stopped: why the refinement ended; seconds."""

    cameras: Cameras
    volume: Volume
    corrections: Tensor
    principal_shift_px: Optional[Tensor]
    data_terms: List[float] = field(default_factory=list)
    stopped: str = ""
    seconds: float = 0.0


def twist_matrix(delta: Tensor) -> Tensor:
    """(V, 6) twists (omega rad, t mm) -> (V, 4, 4) rigid transforms exp(hat(delta)), differentiable."""
    v = delta.shape[0]
    hat = torch.zeros(v, 4, 4, dtype=delta.dtype, device=delta.device)
    w, t = delta[:, :3], delta[:, 3:]
    hat[:, 0, 1], hat[:, 0, 2], hat[:, 1, 2] = -w[:, 2], w[:, 1], -w[:, 0]
    hat[:, 1, 0], hat[:, 2, 0], hat[:, 2, 1] = w[:, 2], -w[:, 1], w[:, 0]
    hat[:, :3, 3] = t
    return torch.linalg.matrix_exp(hat)


def apply_corrections(cameras: Cameras, delta: Tensor, principal_shift_px: Optional[Tensor] = None) -> Cameras:
    """Cameras with ``world_from_camera @ exp(delta_v)`` and the principal points shifted (differentiable)."""
    w = cameras.world_from_camera @ twist_matrix(delta.to(cameras.dtype))
    pp = cameras.principal_point_px if principal_shift_px is None else cameras.principal_point_px + principal_shift_px.to(cameras.dtype)
    return Cameras(w, cameras.sdd_mm, cameras.pixel_spacing_mm, pp, cameras.size_px)


def _anchor_points(cams: Cameras) -> Tensor:
    """(2V, 3) sources and detector centres, RAS mm."""
    return torch.cat([cams.source_positions(), cams.detector_centers()])


def remove_common_motion(corrected: Cameras, nominal: Cameras) -> Cameras:
    """``corrected`` moved by the one rigid transform that best maps its sources and detector centres onto
    ``nominal``'s (Kabsch), then rescaled about the nominal sources' centroid c so that its sources best
    match the nominal ones (each camera translated rigidly: source c + k (S - c), orientation and intrinsics
    unchanged): what remains are the per-view differences, the part the data can see.

    The scale is a gauge freedom as the rigid motion is: scaling the volume by k about c and moving every
    source to c + k (S - c) with the camera's orientation and source-detector distance kept gives the same
    projections, so a common shift of all views along their principal rays cannot be told from a scaled
    reconstruction."""
    a, b = _anchor_points(corrected).double(), _anchor_points(nominal).double()
    ca, cb = a.mean(0), b.mean(0)
    h = (a - ca).T @ (b - cb)
    u, _, vt = torch.linalg.svd(h)
    d = torch.sign(torch.linalg.det(vt.T @ u.T))
    r = vt.T @ torch.diag(torch.tensor([1.0, 1.0, float(d)], dtype=torch.float64)) @ u.T
    g = torch.eye(4, dtype=torch.float64)
    g[:3, :3] = r
    g[:3, 3] = cb - r @ ca
    w = g @ corrected.world_from_camera.double()  # (V, 4, 4)
    src, src_nom = w[:, :3, 3], nominal.world_from_camera.double()[:, :3, 3]
    c = src_nom.mean(0)
    k = float(((src - c) * (src_nom - c)).sum() / ((src - c) ** 2).sum().clamp_min(1e-12))
    w = w.clone()
    w[:, :3, 3] = c + k * (src - c)
    return Cameras(w.to(corrected.dtype), corrected.sdd_mm, corrected.pixel_spacing_mm, corrected.principal_point_px, corrected.size_px)


def _reconstruct(projections, cameras, like, s: RefineSettings, masks):
    from .api import reconstruct

    if s.start == "fdk":
        return reconstruct(projections, cameras, "fdk", volume=like).volume
    return reconstruct(projections, cameras, "voxel", volume=like, iterations=s.passes, masks=masks, renderer=s.renderer).volume


def _data_term(vol: Volume, cams: Cameras, projections: Tensor, pixels: Optional[Tensor], norm: float) -> Tensor:
    pred = render(vol, cams, renderer="trilinear", pixels=pixels, check_finite=False)
    if pixels is None:
        target = projections
    else:
        idx = pixels.round().long()
        target = projections[torch.arange(len(cams))[:, None], idx[..., 1], idx[..., 0]]
    return ((pred - target) ** 2).mean() / norm


def prior_weights(s: RefineSettings) -> Tensor:
    """(P,) float64 prior weight per fitted parameter, P = 6 (8 with ``intrinsics``): the observability rule.
    Order: rotation about the camera x, y, z axes (z: the principal ray; degrees), translation along x, y, z
    (mm), then the principal point shift (u, v pixels). Only the two tilts about the source, which move the
    whole image, get ``reg``; the rest get ``weak_reg``."""
    w = [s.reg, s.reg] + [s.weak_reg] * (4 + (2 if s.intrinsics else 0))
    return torch.tensor(w, dtype=torch.float64)


def _scale(n_params: int) -> Tensor:
    """(P,) float64 unit of each parameter: 1 degree (rad), 1 mm, 1 pixel."""
    return torch.tensor([math.radians(1.0)] * 3 + [1.0] * (n_params - 3), dtype=torch.float64)


def _corrected(cams: Cameras, x: Tensor) -> Cameras:
    """Cameras corrected by x (V, P) in units of :func:`_scale` (twist, then principal shift if P = 8)."""
    y = x * _scale(x.shape[1])
    return apply_corrections(cams, y[:, :6], y[:, 6:] if x.shape[1] > 6 else None)


def _totals(current: Cameras, nominal: Cameras, n_params: int) -> Tensor:
    """(V, P) float64 total correction of ``current`` from ``nominal`` in units of :func:`_scale`."""
    t = [twists_between(nominal, current).double()]
    if n_params > 6:
        t.append((current.principal_point_px - nominal.principal_point_px).double())
    return torch.cat(t, 1) / _scale(n_params)


def pose_jacobian(vol: Volume, cams: Cameras, x: Tensor, pixels: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """The renderer's derivatives of each view's pixels w.r.t. that view's corrections, at x.

    vol: the volume (mu 1/mm); cams: V views; x: (V, P) float64 corrections in units of :func:`_scale` (P = 6:
    twist; 8: and the principal point shift); pixels: (V, R, 2) pixel centres (col, row) or None for all.
    Returns (jac (V, R, P), pred (V, R)), both float64: d line integral / d parameter unit, and the trilinear
    render at x. Forward-mode differentiation (render.trilinear supplies grid sampling's forward derivative):
    the views are rendered P times, copy k with tangent e_k, in one call."""
    n, n_params = x.shape
    tangent = torch.zeros(n_params, n, n_params, dtype=x.dtype)
    for k in range(n_params):
        tangent[k, :, k] = 1.0
    copies = cams[list(range(n)) * n_params]
    pix = None if pixels is None else pixels.repeat(n_params, 1, 1)
    with torch.no_grad(), fwad.dual_level():
        xd = fwad.make_dual(x.repeat(n_params, 1), tangent.reshape(n * n_params, n_params))
        out = fwad.unpack_dual(render(vol, _corrected(copies, xd), renderer="trilinear", pixels=pix, check_finite=False))
    jac = out.tangent.reshape(n_params, n, -1).permute(1, 2, 0).double()
    return jac, out.primal[:n].reshape(n, -1).double()


def _view_groups(n_views: int, k: int) -> List[List[int]]:
    """K interleaved groups of view indices (k < 2: one group of all views)."""
    k = max(1, min(int(k), n_views))
    return [list(range(g, n_views, k)) for g in range(k)]


def _fit_views(p, current, nominal, like, vol, s: RefineSettings, masks, norm, gen, progress, rnd):
    """One round's pose fit: returns (x (V, P) this round's corrections in units of :func:`_scale`, cancelled).
    With ``holdout_groups`` >= 2 the groups are fitted in turn, each against a volume reconstructed from the
    other views with the corrections of the groups fitted before it this round (Gauss-Seidel), round ``rnd``
    starting with group ``rnd mod K`` (the first group of a round sees none of that round's corrections, so the
    groups take that place in turn); else every view against ``vol``."""
    n_views = len(current)
    groups = _view_groups(n_views, s.holdout_groups) if s.holdout_groups >= 2 else [list(range(n_views))]
    groups = groups[rnd % len(groups) :] + groups[: rnd % len(groups)]  # each round starts with the next group
    n_params = 8 if s.intrinsics else 6
    x = torch.zeros(n_views, n_params, dtype=torch.float64)
    totals = _totals(current, nominal, n_params)
    work = current  # the cameras the next group's volume is reconstructed with
    for gi, g in enumerate(groups):
        if len(groups) == 1:
            vg = Volume(vol.data.detach(), vol.ras_from_ijk, "mu")
        else:
            rest = [v for v in range(n_views) if v not in set(g)]
            vg = _reconstruct(p[rest], work[rest], like, s, None if masks is None else masks[rest])
            vg = Volume(vg.data.detach(), vg.ras_from_ijk, "mu")
        where = ((rnd * len(groups) + gi) * s.steps, s.rounds * s.steps * len(groups), rnd)
        x[g], cancelled = _fit_group(p[g], current[g], totals[g], vg, s, norm, gen, progress, where)
        work = _corrected(current, x)
        if cancelled:
            return x, True
    return x, False


def _pixel_subset(cams: Cameras, s: RefineSettings, gen) -> Optional[Tensor]:
    """(V, R, 2) float pixel centres (col, row) drawn without replacement per view, or None for all pixels."""
    n_pix = cams.width * cams.height
    if not s.rays_per_view or s.rays_per_view >= n_pix:
        return None
    idx = torch.stack([torch.randperm(n_pix, generator=gen)[: s.rays_per_view] for _ in range(len(cams))])
    return torch.stack([idx % cams.width, idx // cams.width], -1).float()


def _fit_group(p, cams0, totals, vol, s: RefineSettings, norm, gen, progress, where):
    """Levenberg-Marquardt on each view's parameters x (V, P) (units of :func:`_scale`) against ``vol``, with the
    prior on the total correction ``totals + x`` (module docstring). ``where``: (steps done before, total steps,
    round) for the progress report. Returns (x, cancelled)."""
    n, n_params = len(cams0), totals.shape[1]
    pix = _pixel_subset(cams0, s, gen)
    if pix is None:
        target = p.reshape(n, -1).double()
    else:
        idx = pix.long()
        target = p[torch.arange(n)[:, None], idx[..., 1], idx[..., 0]].double()
    w = prior_weights(s)

    def residuals(x):  # (V, R) float64
        pred = render(vol, _corrected(cams0, x), renderer="trilinear", pixels=pix, check_finite=False)
        return pred.reshape(n, -1).double() - target

    def objective(r, x):  # (V,)
        return (r**2).mean(1) / norm + (w * (totals + x) ** 2).sum(1)

    x = torch.zeros(n, n_params, dtype=torch.float64)
    damping = torch.full((n, 1, 1), 1e-3, dtype=torch.float64)
    with torch.no_grad():
        for step in range(s.steps):
            jac, pred = pose_jacobian(vol, cams0, x, pix)  # (V, R, P), and the render at x
            r = pred - target
            m = float(r.shape[1]) * norm
            h = jac.transpose(1, 2) @ jac / m + torch.diag_embed(w.expand(n, -1))
            g = (jac.transpose(1, 2) @ r[..., None])[..., 0] / m + w * (totals + x)
            trial = x - torch.linalg.solve(h + damping * torch.diag_embed(h.diagonal(dim1=1, dim2=2)), g[..., None])[..., 0]
            r_trial = residuals(trial)
            better = objective(r_trial, trial) < objective(r, x)
            x = torch.where(better[:, None], trial, x)
            damping = torch.where(better[:, None, None], damping / 3, damping * 4)
            try:
                report(progress, where[0] + step + 1, where[1], f"geometry refinement: round {where[2] + 1}, step {step + 1}")
            except Cancelled:
                return x, True
    return x, False


def refine_geometry(
    projections: Tensor,
    cameras: Cameras,
    like: Volume,
    *,
    settings: Optional[RefineSettings] = None,
    masks: Optional[Tensor] = None,
    progress: ProgressCallback = None,
) -> RefineResult:
    """Correct each view's pose (and optionally principal point) from the data (module docstring).

    projections: (V, H, W) line integrals; cameras: the nominal V views; like: the grid to reconstruct on
    (a descriptor or a volume; its data is ignored). Returns :class:`RefineResult`; a progress callback
    returning False stops after the current step with the best cameras so far.
    """
    t0 = time.perf_counter()
    s = settings or RefineSettings()
    if s.start not in ("fdk", "os-tv"):
        raise ValueError(f"refine start must be 'fdk' or 'os-tv', got {s.start!r}")
    if s.rounds < 1 or s.steps < 1:
        raise ValueError("refine rounds and steps must be >= 1")
    nominal = cameras_float64(cameras).to(dtype=torch.float32)
    p = projections.detach().float()
    n_views = len(nominal)
    norm = max(float((p**2).mean()), 1e-12)
    gen = torch.Generator().manual_seed(int(s.seed))
    total = torch.zeros(n_views, 6)
    shift = torch.zeros(n_views, 2) if s.intrinsics else None
    current = nominal
    vol = _reconstruct(p, current, like, s, masks)
    full = _data_term(vol, current, p, None, norm).item()
    terms = [full]
    stopped = f"{s.rounds} rounds done"
    for rnd in range(s.rounds):
        x, cancelled = _fit_views(p, current, nominal, like, vol, s, masks, norm, gen, progress, rnd)
        if cancelled:
            stopped = "cancelled"
            break
        with torch.no_grad():
            trial = remove_common_motion(_corrected(current, x), nominal)
        trial_vol = _reconstruct(p, trial, like, s, masks)
        term = _data_term(trial_vol, trial, p, None, norm).item()
        gain = (terms[-1] - term) / max(terms[-1], 1e-12)
        if gain < s.min_gain:
            stopped = (
                f"round {rnd + 1}: the reconstruction with its corrections lowered the data term by {100 * gain:.2f}% "
                f"(< {100 * s.min_gain:g}%): nothing (more) to correct; the round is not applied"
            )
            break
        current, vol = trial, trial_vol
        terms.append(term)
        total = twists_between(nominal, current)
        if shift is not None:
            shift = (current.principal_point_px - nominal.principal_point_px).float()
    return RefineResult(current.to(dtype=torch.float64), vol, total, shift, terms, stopped, time.perf_counter() - t0)


def twists_between(nominal: Cameras, corrected: Cameras) -> Tensor:
    """(V, 6) twist (rotation vector rad, translation mm) of corrected relative to nominal, camera frame."""
    rel = torch.linalg.inv(nominal.world_from_camera.double()) @ corrected.world_from_camera.double()
    r = rel[:, :3, :3]
    cos = ((r.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2).clamp(-1, 1)
    ang = torch.acos(cos)
    axis = torch.stack([r[:, 2, 1] - r[:, 1, 2], r[:, 0, 2] - r[:, 2, 0], r[:, 1, 0] - r[:, 0, 1]], -1)
    sin = torch.sin(ang).clamp_min(1e-12)
    omega = torch.where(ang[:, None] > 1e-9, axis * (ang / (2 * sin))[:, None], axis / 2)
    return torch.cat([omega, rel[:, :3, 3]], -1).float()
