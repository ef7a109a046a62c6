"""Pose optimisation of one or more X-rays against a CT through the differentiable renderer.

``register(volume, image, cameras, settings)`` (settings: :class:`RegistrationSettings`) finds the camera pose
(``world_from_camera``, RAS mm) under which the CT's DRR best matches the X-ray. Several X-rays of one patient
position (a biplane pair, frames of a run) are registered together: each view keeps its own camera and pixel
grid, one rigid correction moves every view's initial pose (``world_from_camera_v = M @ world_from_camera_v_init``: the patient moved, the
views did not move relative to each other), and the loss is the sum of the views' losses, each over its
own mask and CT-coverage mask. The steps:

1. checks the inputs (finite, non-constant image; rigid pose; the CT's projection overlaps the image);
2. optional coarse global search: ``n_starts`` poses spread over a capture range (deterministic
   low-discrepancy samples, the initial pose first) scored at the coarsest level in one batched
   render; the best ``keep_starts`` are optimised at the coarsest level and the winner goes on;
3. coarse-to-fine pyramid (``levels`` = binning factors, e.g. (8, 4, 2)): at each level the detector is
   :meth:`Cameras.downsampled` and the X-ray binned with the same rule, the CT average-pooled to about
   the coarse pixel footprint; only pixels whose rays cross the CT's whole extent count (the CT-coverage
   mask of :mod:`.coverage`, made at the level's starting pose); Adam (or L-BFGS) on the pose parameters
   of :mod:`.pose` (and the width of the X-ray's blur, :mod:`.psf`, with ``fit_psf``), with early stop
   when the loss has not improved by ``tol`` for ``patience`` iterations;
4. optional intrinsics refinement (source-detector distance, principal point) for uncalibrated C-arms.

A ``progress`` callback receives a :class:`~XRayNeRFLib.progress.Progress` every ``progress_every``
iterations whose ``preview`` is a dict with the current ``world_from_camera`` (4, 4), the current
``drr`` (h, w) at the current level (the first view's; ``drrs``: every view's), the ``loss`` and the ``level``;
returning False stops and returns the best pose found so far (``result.cancelled`` is True).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, fields, replace
from typing import Callable, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import GeometryError, NoOverlapError
from ..geometry import Cameras
from ..progress import Progress, ProgressCallback
from ..render import DEFAULT_RENDERER, render
from ..render.trilinear import sliced_layout
from ..threads import torch_threads
from ..volume import Volume, as_mu
from .coverage import beam_axes, ct_coverage_mask
from .intensity import bin_image
from .losses import make_loss
from .pose import PoseParametrization, check_rigid
from .psf import gaussian_blur, within_reach


@dataclass
class RegistrationResult:
    """world_from_camera: (4, 4) float64 RAS mm, the registered pose (of the first view).
    cameras: the registered camera (1 view, the first; with refined intrinsics when asked).
    ct_correction_ras: (4, 4) float64, the CT's rigid correction 'to parent' in RAS (see pose.py), shared by
        every view.
    loss / initial_loss: the loss at full resolution at the registered / initial pose (the sum over views; with
        ``fit_psf`` under the fitted / starting PSF).
    view_cameras / view_losses: every view's registered camera (1 view each) and loss at the registered pose
        (their sum is ``loss``); one entry for one X-ray.
    iterations: optimiser iterations in all (all levels and starts); seconds: wall time.
    trace: one dict per iteration (level, start, iteration, loss, parameters).
    cancelled: True when the progress callback stopped the run (the best pose so far is returned).
    parameters: the optimised parameters (pose, then intrinsics, then the PSF's; see RegistrationSettings).
    psf_sigma_px: the fitted Gaussian PSF of the X-ray relative to the DRR (``fit_psf``), standard deviation
        in the X-ray's full-resolution pixels; None when not fitted."""

    world_from_camera: Tensor
    cameras: Cameras
    ct_correction_ras: Tensor
    loss: float
    initial_loss: float
    iterations: int
    seconds: float
    parameters: List[float]
    trace: List[dict] = field(default_factory=list, repr=False)
    cancelled: bool = False
    loss_name: str = "mi"
    view_cameras: List[Cameras] = field(default_factory=list, repr=False)
    view_losses: List[float] = field(default_factory=list)
    psf_sigma_px: Optional[float] = None

    def to_json(self) -> dict:
        """Plain JSON types; with several views also ``views``: per view its registered world_from_camera,
        intrinsics and loss."""
        out = {
            "world_from_camera": self.world_from_camera.tolist(),
            "sdd_mm": float(self.cameras.sdd_mm[0]),
            "pixel_spacing_mm": [float(v) for v in self.cameras.pixel_spacing_mm[0]],
            "principal_point_px": [float(v) for v in self.cameras.principal_point_px[0]],
            "size_px": list(self.cameras.size_px),
            "ct_correction_ras": self.ct_correction_ras.tolist(),
            "loss_name": self.loss_name,
            "loss": self.loss,
            "initial_loss": self.initial_loss,
            "iterations": self.iterations,
            "seconds": self.seconds,
            "cancelled": self.cancelled,
            "parameters": self.parameters,
            "trace": self.trace,
            "view_losses": self.view_losses,
            "psf_sigma_px": self.psf_sigma_px,
        }
        if len(self.view_cameras) > 1:
            out["views"] = [
                {
                    "world_from_camera": c.world_from_camera[0].tolist(),
                    "sdd_mm": float(c.sdd_mm[0]),
                    "pixel_spacing_mm": [float(v) for v in c.pixel_spacing_mm[0]],
                    "principal_point_px": [float(v) for v in c.principal_point_px[0]],
                    "size_px": list(c.size_px),
                    "loss": v,
                }
                for c, v in zip(self.view_cameras, self.view_losses)
            ]
        return out


LBFGS_LINE_SEARCH_EVALS = 25  # loss evaluations one L-BFGS step (its strong-Wolfe line search) may use


class _Stop(Exception):
    pass


def pooled_volume(volume: Volume, factor: int) -> Volume:
    """Average-pool a volume by ``factor`` along each axis (trailing voxels dropped); ras_from_ijk is
    updated so that the new voxel centres are the centres of the pooled blocks."""
    p = int(factor)
    if p <= 1:
        return volume
    k, j, i = volume.data.shape
    if min(k, j, i) // p < 2:
        return volume
    data = F.avg_pool3d(volume.data[None, None], p, stride=p)[0, 0]
    scale = torch.eye(4, dtype=volume.ras_from_ijk.dtype, device=volume.ras_from_ijk.device)
    scale[:3, :3] *= p
    scale[:3, 3] = (p - 1) / 2.0
    return Volume(data.contiguous(), volume.ras_from_ijk @ scale, volume.units)


def _halton(n: int, dim: int) -> Tensor:
    """n points of the Halton sequence in [0, 1)^dim (deterministic, well spread)."""
    primes = [2, 3, 5, 7, 11, 13, 17, 19, 23][:dim]
    out = torch.zeros(n, dim, dtype=torch.float64)
    for d, b in enumerate(primes):
        for idx in range(n):
            f, r, k = 1.0, 0.0, idx + 1
            while k > 0:
                f /= b
                r += f * (k % b)
                k //= b
            out[idx, d] = r
    return out


def check_overlap(volume: Volume, cams: Cameras, mask: Tensor, name: str = "the X-ray") -> None:
    """Raise NoOverlapError when the CT's projected bounding box misses the (masked) image ``name``."""
    corners = volume.corners_ras().to(torch.float64)
    c = cams.to(dtype=torch.float64)
    cam_pts = (c.camera_from_world()[0, :3, :3] @ corners.T).T + c.camera_from_world()[0, :3, 3]
    if (cam_pts[:, 2] <= 0).all():
        raise NoOverlapError(
            f"the CT lies behind the X-ray source at the initial pose: {name} does not overlap the CT's "
            "projection. Check the initial world_from_camera (camera +z must point from the source towards the patient)",
            behind_source=True,
        )
    if (cam_pts[:, 2] <= 0).any():
        return  # the source is inside the CT box: its projection covers the whole image
    uv, _ = c.project(corners[None])
    uv = uv[0]
    rows = torch.nonzero(mask.any(1))[:, 0]
    cols = torch.nonzero(mask.any(0))[:, 0]
    if rows.numel() == 0:
        raise ValueError("the image mask is empty: no pixel to register")
    inside_u = (uv[:, 0].max() >= float(cols.min()) - 0.5) and (uv[:, 0].min() <= float(cols.max()) + 0.5)
    inside_v = (uv[:, 1].max() >= float(rows.min()) - 0.5) and (uv[:, 1].min() <= float(rows.max()) + 0.5)
    if not (inside_u and inside_v):
        raise NoOverlapError(
            f"{name} does not overlap the CT's projection at the initial pose (the CT's projected box spans "
            f"columns {float(uv[:, 0].min()):.0f}..{float(uv[:, 0].max()):.0f}, rows {float(uv[:, 1].min()):.0f}.."
            f"{float(uv[:, 1].max()):.0f} of a {cams.width}x{cams.height} image). Fix the initial pose (init.json) "
            "or the camera (principal point, pixel spacing) so that the anatomy is roughly in place"
        )


@dataclass
class RegistrationSettings:
    """How :func:`register` optimises (everything but the data). Defaults are the shipped recipe.

    loss: a name of :func:`~.losses.make_loss` (``LOSS_NAMES``: "mi", "ncc", "gncc", "mncc", "pncc", "ssim",
        "mse", "bgfit") or a callable
        (drr (B, h, w), image (B, h, w), mask) -> (B,) loss to minimise; loss_options go to make_loss.
    rotation_scale_deg, translation_scale_mm: size of one parameter unit (translation per camera axis
        x, y, z: the depth z is the least observable, so it gets a larger unit).
    optimizer: "adam" or "lbfgs".
    levels: pyramid binning factors, coarse to fine; None (default): :func:`auto_levels` (the finest
        has about ``finest_px`` pixels on the image's shorter side, full resolution for small images;
        several X-rays: of :func:`pyramid_size_px`, the smallest grid;
        the coarsest about 20-40). max_iterations, learning_rate: per level or one
        value for all (Adam step in parameter units; default 80 iterations at the coarsest level and 50 at
        the others, learning rate 1.0 halved at every level). patience / tol: a level stops when its loss
        has not improved by ``tol`` for ``patience`` iterations.
    capture_range_deg / capture_range_mm / n_starts / keep_starts: coarse global search over +- these
        offsets (rotations about the centre, translations in camera axes); ``n_starts`` = 1 turns it off;
        the best ``keep_starts`` candidates are optimised at the coarsest level (both >= 1; the command line's
        ``--starts`` sets n_starts only).
    refine_intrinsics: also optimise sdd (unit sdd_scale_mm) and the principal point (unit
        principal_point_scale_px full-resolution pixels).
    renderer / samples_per_voxel: the projector and its sampling (see :func:`XRayNeRFLib.render.render`;
        default ``DEFAULT_RENDERER``).
    pool_volume: average-pool the CT at each level to about the level's pixel footprint.
    ct_coverage: compare only pixels whose rays cross the CT's whole extent along the beam (see
        :func:`~.coverage.ct_coverage_mask`). The mask is made at the start of each level from that
        level's starting pose (and per candidate in the coarse search) and held fixed during the level,
        so that the loss compares one set of pixels; a level where the mask would leave fewer than 16
        pixels compares every pixel instead. ``coverage_margin_px``: how far (in the level's
        pixels, at the CT centre's depth) covered rays must stay inside the CT's side faces, room for
        the pose to move during the level.
    fit_psf: fit the X-ray's blur relative to the DRR with the pose: the DRR is blurred by a Gaussian PSF
        (:mod:`.psf`) whose standard deviation, bounded to [0, ``psf_max_px``] pixels of the finest pyramid
        level, is one more parameter (sigma^2 = psf_max_px^2 * sigmoid(p), starting at p = 0); at a coarser
        level the same width in that level's pixels. A blurred pixel depends on its neighbours up to the PSF's
        reach (3 ``psf_max_px``, in the level's pixels), so only pixels whose whole reach lies on the detector
        and inside the pixels that count (image mask, CT coverage) are compared: the others would mix in what
        the DRR cannot predict (beyond the detector's edge, anatomy beyond the CT's end). False: the DRR as
        rendered, every pixel that counts compared.
    progress_every: iterations between progress calls.
    num_threads: torch CPU threads during the run (restored afterwards); None leaves the setting. The
        small coarse-level tensors run fastest on 1 thread, and far faster when the CPU is shared.
    drr_source: what is rendered instead of the CT: a map from the CT (mu, its frame) to a mu volume in the
        same frame, e.g. a fitted :class:`~.mnerf.MNeRF`; None renders the CT. The CT still gives the
        rotation centre; not combined with ``appearance`` (which tunes the CT itself).
    """

    loss: Union[str, Callable] = "mi"
    loss_options: Optional[dict] = None
    rotation_scale_deg: float = 1.0
    translation_scale_mm: Sequence[float] = (1.0, 1.0, 4.0)
    optimizer: str = "adam"
    levels: Optional[Sequence[int]] = None
    finest_px: int = 128
    max_iterations: Optional[Union[Sequence[int], int]] = None
    learning_rate: Optional[Union[Sequence[float], float]] = None
    patience: int = 12
    tol: float = 1e-4
    capture_range_deg: float = 0.0
    capture_range_mm: float = 0.0
    n_starts: int = 1
    keep_starts: int = 2
    refine_intrinsics: bool = False
    sdd_scale_mm: float = 5.0
    principal_point_scale_px: float = 2.0
    renderer: str = DEFAULT_RENDERER
    samples_per_voxel: float = 1.0
    pool_volume: bool = True
    ct_coverage: bool = True
    coverage_margin_px: float = 1.0
    fit_psf: bool = True
    psf_max_px: float = 1.5
    progress_every: int = 5
    num_threads: Optional[int] = None
    drr_source: Optional[Callable[[Volume], Volume]] = None

    def per_level(self, size_px: Sequence[int]) -> Tuple[List[int], List[int], List[float]]:
        """(levels, iterations per level, learning rate per level) for an image of ``size_px``
        (columns, rows), checked."""
        levels = auto_levels(size_px, self.finest_px) if self.levels is None else [int(f) for f in self.levels]
        if not levels or min(levels) < 1:
            raise ValueError(f"pyramid levels must be positive binning factors, got {levels}")
        n = len(levels)
        it = [80] + [50] * (n - 1) if self.max_iterations is None else self.max_iterations
        lr = [0.5**i for i in range(n)] if self.learning_rate is None else self.learning_rate
        iters = [int(it)] * n if isinstance(it, (int, float)) else [int(v) for v in it]
        lrs = [float(lr)] * n if isinstance(lr, (int, float)) else [float(v) for v in lr]
        if len(iters) != n or len(lrs) != n:
            raise ValueError(f"max_iterations and learning_rate need one value per level ({n})")
        if self.n_starts < 1 or self.keep_starts < 1:
            raise ValueError(f"the coarse search needs n_starts >= 1 and keep_starts >= 1, got {self.n_starts} and {self.keep_starts}")
        if not self.psf_max_px > 0:
            raise ValueError(f"psf_max_px must be > 0 pixels, got {self.psf_max_px}")
        if self.optimizer not in ("adam", "lbfgs"):
            raise ValueError(f"unknown optimizer {self.optimizer!r}; use 'adam' or 'lbfgs'")
        return levels, iters, lrs


_SETTING_NAMES = tuple(f.name for f in fields(RegistrationSettings))


def pyramid_size_px(sizes_px: Sequence[Sequence[int]]) -> Tuple[int, int]:
    """The (columns, rows) the pyramid of several X-rays is planned for: the smallest of each (one
    pyramid, the same binning factors, for every view)."""
    return min(int(v[0]) for v in sizes_px), min(int(v[1]) for v in sizes_px)


def auto_levels(size_px: Sequence[int], finest_px: int = 128, coarsest_px: int = 20) -> List[int]:
    """Default pyramid: binning factors (F, ..., 2f, f), powers of two, coarse to fine. f is the largest
    power of two that leaves at least ``finest_px`` pixels on the image's shorter side (f = 1, full
    resolution, for images of up to 2 * finest_px - 1 pixels); F is the largest that leaves at least
    ``coarsest_px`` pixels there, and at least 4f (three levels or more). size_px: (columns, rows).
    E.g. 128 px: 4 2 1; 160 px: 8 4 2 1; 256 px: 8 4 2."""
    side = min(int(v) for v in size_px)
    f = 1
    while side // (2 * f) >= int(finest_px):
        f *= 2
    coarsest = 4 * f
    while side // (2 * coarsest) >= int(coarsest_px):
        coarsest *= 2
    levels = [coarsest]
    while levels[-1] > f:
        levels.append(levels[-1] // 2)
    return levels


def register(
    volume: Volume,
    image: Union[Tensor, Sequence[Tensor]],
    cameras: Union[Cameras, Sequence[Cameras]],
    settings: Optional[RegistrationSettings] = None,
    *,
    mask: Union[None, Tensor, Sequence[Optional[Tensor]]] = None,
    center_ras: Optional[Sequence[float]] = None,
    appearance: Optional[Callable[[Volume], Volume]] = None,
    progress: ProgressCallback = None,
    **overrides,
) -> RegistrationResult:
    """Register the CT ``volume`` (HU or mu) to the X-ray ``image`` (H, W) seen by ``cameras`` (1 view,
    its world_from_camera the initial pose), or to several X-rays at once (see the module docstring).

    image: (H, W) float, any monotone function of the line integral for "mi"; for the NCC losses,
        brighter must mean more attenuation (log-linearise and/or invert first: see intensity.py).
        Several views: a sequence of V images (each (H_v, W_v), grids may differ) with a sequence of V
        one-view Cameras, or a (V, H, W) tensor with a V-view Cameras.
    settings: a :class:`RegistrationSettings` (default: its defaults); ``overrides`` replace single
        fields of it by name (``register(v, x, c, loss="ncc", levels=(4, 2, 1))``).
    mask: (H, W) bool, pixels that count (e.g. :func:`~.intensity.collimator_mask`); several views: a
        sequence of V masks (or None entries), or a (V, H, W) tensor.
    center_ras: (3,) rotation centre, RAS mm (default the CT centre).
    appearance: optional map Volume -> Volume applied to the mu volume first (a NeTT model).
    progress: see the module docstring.
    Views and cameras of different counts, or a view without a camera, raise ``GeometryError``.
    """
    unknown = sorted(set(overrides) - set(_SETTING_NAMES))
    if unknown:
        hint = " (the projector is chosen by renderer=, as in render())" if "method" in unknown else ""
        raise TypeError(f"register() got unknown option(s) {unknown}{hint}; RegistrationSettings has {list(_SETTING_NAMES)}")
    s = replace(settings or RegistrationSettings(), **overrides)
    with torch_threads(s.num_threads):
        return _Run(volume, split_views(image, cameras, mask), s, center_ras, appearance, progress).execute()


def split_views(
    image: Union[Tensor, Sequence[Tensor]],
    cameras: Union[Cameras, Sequence[Cameras]],
    mask: Union[None, Tensor, Sequence[Optional[Tensor]]] = None,
) -> List[Tuple[Tensor, Cameras, Optional[Tensor]]]:
    """(image, 1-view Cameras, mask or None) per view from :func:`register`'s arguments; counts checked
    (``GeometryError``, name "cameras" or "mask")."""
    if isinstance(cameras, Cameras):
        cams = [cameras[i] for i in range(len(cameras))]
    else:
        cams = list(cameras)
        for i, c in enumerate(cams):
            if not isinstance(c, Cameras):
                raise GeometryError(
                    f"X-ray {i + 1} of {len(cams)} has no camera (got {type(c).__name__}); give each X-ray its camera", name="cameras"
                )
            if len(c) != 1:
                raise GeometryError(f"camera {i + 1} of {len(cams)} has {len(c)} views; give one camera per X-ray", name="cameras")
    one = torch.is_tensor(image) and (image.ndim == 2 or (image.ndim == 3 and image.shape[0] == 1))
    images = [image] if one else list(image)
    if len(images) != len(cams) or not cams:
        raise GeometryError(f"{len(images)} X-ray(s) but {len(cams)} camera(s): give one camera per X-ray", name="cameras")
    if mask is None:
        masks = [None] * len(images)
    else:
        masks = [mask] if (one or len(images) == 1) and torch.is_tensor(mask) and mask.ndim == 2 else list(mask)
        if len(masks) != len(images):
            raise GeometryError(f"{len(masks)} mask(s) for {len(images)} X-ray(s): give one mask per X-ray (or None)", name="mask")
    return list(zip(images, cams, masks))


def _checked_image_and_mask(image: Tensor, cameras: Cameras, mask: Optional[Tensor], name: str = "the X-ray") -> Tuple[Tensor, Tensor]:
    """The X-ray as (H, W) and its mask (H, W) bool, after the input checks (size, finite, not constant
    inside the mask). cameras: its 1-view camera; name: how messages call it."""
    img = torch.as_tensor(image)
    if img.ndim == 3 and img.shape[0] == 1:
        img = img[0]
    if img.ndim != 2:
        raise ValueError(f"{name} must be a 2D image (H, W), got shape {tuple(img.shape)}")
    if (img.shape[1], img.shape[0]) != tuple(cameras.size_px):
        raise ValueError(
            f"{name} is {img.shape[1]}x{img.shape[0]} (columns x rows) but its camera's size_px is "
            f"{list(cameras.size_px)}: fix size_px in the camera JSON"
        )
    if not torch.isfinite(img).all():
        raise ValueError(f"{name} contains {int((~torch.isfinite(img)).sum())} NaN or infinite pixels; mask or fix them")
    if mask is None:
        mask = torch.ones(img.shape, dtype=torch.bool)
    mask = torch.as_tensor(mask).bool()
    if tuple(mask.shape) != tuple(img.shape):
        raise ValueError(f"the mask of {name} must match the image {tuple(img.shape)}, got {tuple(mask.shape)}")
    sel = img[mask]
    if sel.numel() == 0 or float(sel.max() - sel.min()) <= 1e-12 * max(1.0, float(sel.abs().max())):
        raise ValueError(
            f"{name} is constant (inside the mask): nothing to register to; check the file, its windowing and the collimator mask"
        )
    return img, mask


class _Run:
    """One registration: the prepared data (pyramid per view, parametrisation, loss) and the named steps
    (coarse search, one pyramid level, result) that :meth:`execute` chains."""

    def __init__(self, volume, views, settings: RegistrationSettings, center_ras, appearance, progress):
        self.t_start = time.perf_counter()
        self.s = s = settings
        self.progress = progress
        n = len(views)
        names = ["the X-ray"] if n == 1 else [f"X-ray {i + 1} of {n}" for i in range(n)]
        if n > 1 and s.refine_intrinsics:
            raise ValueError("refine_intrinsics works with one X-ray; register the views without it (or one at a time)")
        checked = [_checked_image_and_mask(img, cam, m, nm) for (img, cam, m), nm in zip(views, names)]
        w0 = [check_rigid(cam.world_from_camera[0].detach(), f"initial world_from_camera of {nm}") for (_, cam, _), nm in zip(views, names)]
        if volume.units == "hu":
            volume = as_mu(volume)
        if s.drr_source is not None:
            if appearance is not None:
                raise ValueError("a DRR source (mNeRF) replaces the CT's DRR: do not combine it with a NeTT appearance model")
            volume = s.drr_source(volume)
        if appearance is not None:
            with torch.no_grad():
                volume = appearance(volume)
        self.dtype = dtype = torch.float32
        vol = volume.to(dtype=dtype)
        # Checked once, as rendered: the levels render it or its average-pooled copies without a scan per render.
        vol.check_finite("the CT" if appearance is None else "the CT under the appearance model")
        self.cams0 = [cam.to(dtype=torch.float64) for _, cam, _ in views]
        for c, (_, m), nm in zip(self.cams0, checked, names):
            check_overlap(vol, c, m, nm)
        self.levels, self.iters, self.lrs = s.per_level(pyramid_size_px([c.size_px for c in self.cams0]))
        self.centre_ras = vol.center_ras().double()
        centre = self.centre_ras if center_ras is None else torch.as_tensor(center_ras, dtype=torch.float64)
        self.param = PoseParametrization(w0[0], centre, math.radians(s.rotation_scale_deg), s.translation_scale_mm)
        self.w0 = [w.to(dtype=torch.float64) for w in w0]  # every view's initial pose; M(x) moves them all
        self.loss_fn = s.loss if callable(s.loss) else make_loss(s.loss, **(s.loss_options or {}))
        self.loss_label = getattr(s.loss, "__name__", "custom") if callable(s.loss) else s.loss
        self.n_pose = 9 if s.refine_intrinsics else 6  # pose (and intrinsics) parameters; then the PSF's
        self.n_par = self.n_pose + (1 if s.fit_psf else 0)
        self.level_images, self.level_volume = self._pyramid(checked, vol)
        self.vol = self.level_volume[1]  # the same CT, in slicing order: the run holds one full-resolution copy
        self.trace: List[dict] = []
        self.iterations = 0
        self.total_budget = sum(self.iters)

    # -- data ------------------------------------------------------------------------------------
    def _pyramid(self, checked, vol: Volume) -> Tuple[dict, dict]:
        """Per binning factor: [(binned image (h, w), binned mask (h, w) bool) per view], and the pooled volume, stored
        in the order in which the renderer slices it for the first view (:func:`~..render.trilinear.sliced_layout`
        along its beam axis: no copy of the volume per render; one copy per pooling factor, shared by the levels that
        render it)."""
        images, volumes, laid = {}, {}, {}
        axis = int(beam_axes(vol, self.cams0[0])[0])
        for f in sorted(set(self.levels) | {1}):
            images[f] = []
            for img, mask in checked:
                im_f, m_f = bin_image(img.to(self.dtype), f, mask)
                if m_f.sum() < 16:
                    raise ValueError(f"pyramid level {f} leaves fewer than 16 pixels in the mask; use smaller binning factors")
                images[f].append((im_f, m_f))
            pool = max(1, f // 2) if self.s.pool_volume else 1
            if pool not in laid:
                v_p = pooled_volume(vol, pool)
                laid[pool] = Volume(sliced_layout(v_p.data, axis), v_p.ras_from_ijk, v_p.units)
            volumes[f] = laid[pool]
        return images, volumes

    @property
    def n_views(self) -> int:
        return len(self.cams0)

    def build(self, x: Tensor, factor: int, view: int = 0) -> Cameras:
        """Cameras (B views) of one X-ray ``view`` for parameters x (B, n_par) at a pyramid level."""
        s, c0 = self.s, self.cams0[view]
        w = self.param.correction(x[:, :6].double()) @ self.w0[view]
        b = x.shape[0]
        if s.refine_intrinsics:
            sdd = c0.sdd_mm[0] + x[:, 6].double() * s.sdd_scale_mm
            pp = c0.principal_point_px[0] + x[:, 7:9].double() * s.principal_point_scale_px
        else:
            sdd, pp = c0.sdd_mm[0].expand(b), c0.principal_point_px[0].expand(b, 2)
        c = Cameras(w, sdd, c0.pixel_spacing_mm[0].expand(b, 2), pp, c0.size_px)
        return c.downsampled(factor) if factor > 1 else c

    def pixel_mask(self, x: Tensor, factor: int) -> List[Tensor]:
        """Pixels that count at a level for parameters x (B, n_par), per view: the image mask within the PSF's
        reach (:meth:`within_psf_reach`), and with ``ct_coverage`` the CT-coverage mask at that pose:
        (h, w) or (B, h, w) bool each."""
        out = []
        for v, (_, m_f) in enumerate(self.level_images[factor]):
            m_f = self.within_psf_reach(m_f, factor)
            if not self.s.ct_coverage:
                out.append(m_f)
                continue
            cams = self.build(x.detach(), factor, v)
            depth = (cams.camera_from_world()[:, :3, :3] @ self.centre_ras + cams.camera_from_world()[:, :3, 3])[:, 2]
            footprint_mm = cams.pixel_spacing_mm.amax(-1) * depth / cams.sdd_mm  # (B,) one pixel at the CT centre
            # each pose with its own margin, so that it scores the same in a batch as alone
            m = m_f & torch.cat(
                [ct_coverage_mask(self.vol, cams[b], self.s.coverage_margin_px * float(footprint_mm[b])) for b in range(len(cams))]
            )  # (B, h, w)
            # A level too coarse (or a CT too small) for the mask: every pixel of the view counts there (per pose,
            # so that a pose scores the same in a batch as alone).
            few = m.flatten(1).sum(1) < 16  # (B,)
            out.append(torch.where(few[:, None, None], m_f, m))
        return out

    def psf_reach_px(self, factor: int) -> int:
        """How far (pixels of level ``factor``) the widest allowed PSF reaches: 3 ``psf_max_px`` finest pixels,
        rounded up (2 left a measurable bias: docs/registration.md)."""
        return int(math.ceil(3.0 * self.s.psf_max_px * self.levels[-1] / factor))

    def within_psf_reach(self, mask: Tensor, factor: int) -> Tensor:
        """The image mask (h, w) bool without the pixels whose PSF reach leaves the detector or the mask
        (:func:`.psf.within_reach`): what lies beyond is unknown to the DRR. Unchanged without ``fit_psf``, or
        where nothing would be left. (The CT-coverage mask is not eroded: pose-dependent, it would make the
        coarse search's candidates compare different pixel sets.)"""
        if not self.s.fit_psf:
            return mask
        eroded = within_reach(mask, self.psf_reach_px(factor))
        return eroded if bool(eroded.any()) else mask

    def view_losses(self, x: Tensor, factor: int, masks: Optional[List[Tensor]] = None) -> Tuple[Tensor, List[Tensor]]:
        """Per-view losses (B, V) of parameters x (B, n_par) at a level, and the DRRs [(B, h, w) per view];
        ``masks``: the pixels that count per view (default :meth:`pixel_mask` at x)."""
        masks = self.pixel_mask(x, factor) if masks is None else masks
        vol_f, vals, drrs = self.level_volume[factor], [], []
        for v, (im_f, _) in enumerate(self.level_images[factor]):
            cams = self.build(x, factor, v)
            drr = render(vol_f, cams, renderer=self.s.renderer, samples_per_voxel=self.s.samples_per_voxel, check_finite=False)
            if not torch.isfinite(drr).all():
                raise RuntimeError("the DRR contains NaN or infinite values (renderer); check the CT and the pose")
            drr = self.blurred(drr, x, factor)
            vals.append(self.loss_fn(drr, im_f, masks[v]))
            drrs.append(drr)
        return torch.stack(vals, dim=-1), drrs

    def psf_sigma_px(self, x: Tensor, factor: int) -> Optional[Tensor]:
        """The fitted PSF's standard deviation (B,) in pixels of pyramid level ``factor`` for parameters x
        (B, n_par); None without ``fit_psf``."""
        if not self.s.fit_psf:
            return None
        finest = self.s.psf_max_px * torch.sigmoid(x[:, self.n_pose]).sqrt()  # (B,) finest-level pixels
        return finest * (self.levels[-1] / factor)

    def blurred(self, drr: Tensor, x: Tensor, factor: int) -> Tensor:
        """The DRRs (B, h, w) of parameters x (B, n_par) at level ``factor`` under the fitted PSF."""
        sigma = self.psf_sigma_px(x, factor)
        if sigma is None:
            return drr
        pad = self.psf_reach_px(factor) + 1
        return gaussian_blur(drr, sigma.to(drr.dtype), pad)

    def evaluate(self, x: Tensor, factor: int, with_drr: bool = False, mask: Optional[List[Tensor]] = None):
        """Loss (B,) of parameters x (B, n_par) at a level: the sum of the views' losses (and the DRRs,
        [(B, h, w) per view]); ``mask``: the pixels that count per view (default :meth:`pixel_mask` at x)."""
        vals, drrs = self.view_losses(x, factor, mask)
        val = vals.sum(-1)
        return (val, drrs) if with_drr else val

    def check_value(self, v: Tensor, where: str) -> None:
        if not torch.isfinite(v).all():
            raise RuntimeError(
                f"the registration loss {self.loss_label!r} became NaN/infinite {where}; the DRR or the X-ray is degenerate "
                "there (flat image, pose far outside the CT). Lower the learning rate, use a smaller capture range "
                "or another loss"
            )

    def call_progress(self, x: Tensor, factor: int, val: float, drrs: Optional[List[Tensor]], message: str) -> bool:
        if self.progress is None:
            return True
        preview = {
            "world_from_camera": self.param.world_from_camera(x[:6].detach().double()),
            "drr": None if drrs is None else drrs[0].detach()[0],
            "drrs": None if drrs is None else [d.detach()[0] for d in drrs],
            "loss": val,
            "level": factor,
        }
        return self.progress(Progress(self.iterations, self.total_budget, message, preview)) is not False

    # -- steps -----------------------------------------------------------------------------------
    def initial_loss(self, x0: Tensor) -> float:
        """Loss at the initial pose (full resolution); raises when the DRR is flat over the X-ray."""
        with torch.no_grad():
            initial = float(self.evaluate(x0[None], 1).sum())
            _, drr0 = self.evaluate(x0[None], self.levels[0], with_drr=True)
        self.check_value(torch.tensor(initial), "at the initial pose")
        for v, (drr, (_, m_f)) in enumerate(zip(drr0, self.level_images[self.levels[0]])):
            if float(drr[0][m_f].std()) <= 0:
                which = "the X-ray" if self.n_views == 1 else f"X-ray {v + 1} of {self.n_views}"
                raise NoOverlapError(
                    f"the CT's DRR is flat over {which} at the initial pose: the X-ray does not overlap the CT's "
                    "projection. Fix the initial pose (init.json) or the camera"
                )
        return initial

    def coarse_search(self, x0: Tensor) -> List[Tensor]:
        """Starting parameters for the coarsest level: x0 alone, or the best ``keep_starts`` of
        ``n_starts`` Halton-spread poses over the capture range (x0 first), scored in batches."""
        s = self.s
        if not (s.n_starts > 1 and (s.capture_range_deg > 0 or s.capture_range_mm > 0)):
            return [x0]
        h = _halton(s.n_starts - 1, 6) * 2 - 1  # (n-1, 6) in [-1, 1)
        cand = torch.zeros(s.n_starts, self.n_par, dtype=self.dtype)
        cand[1:, :3] = (h[:, :3] * s.capture_range_deg / s.rotation_scale_deg).to(self.dtype)
        cand[1:, 3:6] = (h[:, 3:6] * s.capture_range_mm / self.param.translation_scale_mm).to(self.dtype)
        scores = []
        with torch.no_grad():
            for b0 in range(0, s.n_starts, 16):
                scores.append(self.evaluate(cand[b0 : b0 + 16], self.levels[0]))
        scores = torch.cat(scores)
        self.check_value(scores.min(), "during the coarse search")
        order = torch.argsort(torch.nan_to_num(scores, nan=float("inf")))
        self.trace.append(
            {
                "level": self.levels[0],
                "start": -1,
                "iteration": -1,
                "loss": float(scores.min()),
                "parameters": cand[int(order[0])].tolist(),
                "coarse_search_candidates": s.n_starts,
            }
        )
        return [cand[int(i)] for i in order[: s.keep_starts]]

    def optimize_level(self, x_init: Tensor, li: int, start: int) -> Tuple[Tensor, float, bool]:
        """Run pyramid level ``li`` from x_init: (best x, best loss, stopped by the user)."""
        s, factor = self.s, self.levels[li]
        mask = self.pixel_mask(x_init[None], factor)  # held fixed during the level
        x = x_init.clone().to(self.dtype).requires_grad_(True)
        best_x, best_v = x_init.clone().to(self.dtype), float("inf")
        since, stopped = 0, False
        if s.optimizer == "adam":
            opt = torch.optim.Adam([x], lr=self.lrs[li])
        else:
            # One L-BFGS iteration per step, its strong-Wolfe line search allowed up to LBFGS_LINE_SEARCH_EVALS
            # evaluations. torch's default max_eval (max_iter * 5 // 4 = 1) left the line search a single trial
            # step: when that step rose, it returned t = 0 and every later step repeated it (a stall).
            opt = torch.optim.LBFGS([x], lr=1.0, max_iter=1, max_eval=LBFGS_LINE_SEARCH_EVALS, line_search_fn="strong_wolfe")
        for it in range(self.iters[li]):
            state = {}

            def closure():
                opt.zero_grad()
                v, drr = self.evaluate(x[None], factor, with_drr=True, mask=mask)
                v = v.sum()
                self.check_value(v, f"at pyramid level {factor}, iteration {it}")
                v.backward()
                if not torch.isfinite(x.grad).all():
                    raise RuntimeError(
                        f"the gradient of the loss {self.loss_label!r} became NaN at level {factor}, "
                        f"iteration {it}; lower the learning rate or use another loss"
                    )
                if "v" not in state:
                    state.update(v=float(v.detach()), x=x.detach().clone(), drr=[d.detach() for d in drr])
                return v

            x_before = x.detach().clone()
            opt.step(closure)
            self.iterations += 1
            # An L-BFGS step whose line search found no decrease leaves x and the optimiser's memory as they
            # were, so every later step would repeat it: the level has converged at its resolution.
            no_move = s.optimizer == "lbfgs" and torch.equal(x.detach(), x_before)
            v = state["v"]
            self.trace.append({"level": factor, "start": start, "iteration": it, "loss": v, "parameters": state["x"].tolist()})
            since = 0 if v < best_v - s.tol else since + 1
            if v < best_v:
                best_v, best_x = v, state["x"].clone()
            if self.progress is not None and (it % max(1, s.progress_every) == 0):
                if not self.call_progress(state["x"], factor, v, state["drr"], f"level {factor}: iteration {it}, loss {v:.4f}"):
                    stopped = True
                    break
            if since >= s.patience or no_move:
                break
        # The final iterate is usually the best; score it too.
        with torch.no_grad():
            v_last = float(self.evaluate(x.detach()[None], factor, mask=mask).sum())
        self.check_value(torch.tensor(v_last), f"at the end of pyramid level {factor}")
        if v_last < best_v:
            best_v, best_x = v_last, x.detach().clone()
        return best_x, best_v, stopped

    def result(self, best_x: Tensor, initial_loss: float, cancelled: bool) -> RegistrationResult:
        with torch.no_grad():
            per_view = self.view_losses(best_x[None], 1)[0][0]  # (V,)
        cams = []
        for v in range(self.n_views):
            c = self.build(best_x[None].double(), 1, v)
            cams.append(
                Cameras(
                    c.world_from_camera.detach(), c.sdd_mm.detach(), c.pixel_spacing_mm.detach(), c.principal_point_px.detach(), c.size_px
                )
            )
        c = cams[0]
        return RegistrationResult(
            world_from_camera=c.world_from_camera[0].clone(),
            cameras=c,
            ct_correction_ras=self.param.ct_correction_ras(best_x[:6]),
            loss=float(per_view.sum()),
            initial_loss=initial_loss,
            iterations=self.iterations,
            seconds=time.perf_counter() - self.t_start,
            parameters=best_x.tolist(),
            trace=self.trace,
            cancelled=cancelled,
            loss_name=self.loss_label,
            view_cameras=cams,
            view_losses=[float(v) for v in per_view],
            psf_sigma_px=None if not self.s.fit_psf else float(self.psf_sigma_px(best_x[None], 1)[0]),
        )

    def execute(self) -> RegistrationResult:
        x0 = torch.zeros(self.n_par, dtype=self.dtype)
        initial = self.initial_loss(x0)
        best_x, best_v, cancelled = x0, float("inf"), False
        for start, xs in enumerate(self.coarse_search(x0)):
            xb, vb, stopped = self.optimize_level(xs, 0, start)
            if vb < best_v:
                best_x, best_v = xb, vb
            if stopped:
                cancelled = True
                break
        for li in range(1, len(self.levels)):
            if cancelled:
                break
            best_x, best_v, cancelled = self.optimize_level(best_x, li, 0)
        return self.result(best_x, initial, cancelled)
