"""Output grids of a reconstruction: the scanned cylinders, a grid like an existing image, an explicit
grid; which voxels the views see (the field of view, FOV); a memory estimate before anything is allocated.

Grids are returned as *grid descriptors*: a :class:`~XRayNeRFLib.volume.Volume` whose ``data`` is a
zero-stride view of one zero (``torch.zeros(()).expand(K, J, I)``), so a grid of any size costs nothing
until a method allocates it; only ``data.shape`` and ``ras_from_ijk`` are meaningful.

Regions of a (circular or short-scan) orbit, about the orbit axis through the isocentre
(:func:`fov.analyse_orbit`)::

    every:  the cylinder each of whose points every view sees (radius from the narrower side of each
            view's fan; the default grid, as before)
    any:    a larger cylinder whose points are seen by some views: for a displaced (offset) detector
            the half-fan field of view (radius from the wider side of the fan; each point of it is seen
            over at least half a full orbit, which displaced-detector weighting needs); for a centred
            detector ANY_RADIUS_FACTOR x the every-view radius (a point at radius r is seen by the
            views within asin(r_every / r) of its direction on either side, about a third of a full
            orbit at twice the radius; the region seen by at least one view reaches almost to the
            source orbit and is not a useful grid)

Truncated data (an object wider than the every-view cylinder) need the larger grid for the iterative
methods: mass outside the grid would otherwise be pushed into it (recon/truncation.py).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor

from ..geometry import Cameras
from ..volume import Volume
from .fov import Orbit, analyse_orbit, cameras_float64, default_grid_layout

__all__ = [
    "REGIONS",
    "ANY_RADIUS_FACTOR",
    "FieldOfView",
    "field_of_view",
    "grid_descriptor",
    "cylinder_grid",
    "grid_like",
    "explicit_grid",
    "view_counts",
    "estimate_memory_bytes",
    "available_memory_bytes",
    "check_memory",
    "GridMemoryError",
]

REGIONS = ("every", "any")
DEFAULT_REGION = "every"  # the default cylinder (cylinder_grid, reconstruct's grid, the modules' default)
ANY_RADIUS_FACTOR = 2.0  # the "any" cylinder of a centred detector, in every-view radii (module docstring)
DISPLACED_FRACTION = 0.1  # a detector is displaced when its two sides differ by more than this fraction of its width (RTK's rule)


class GridMemoryError(ValueError):
    """The grid would not fit in memory; ``needed_bytes`` and ``available_bytes`` say by how much."""

    def __init__(self, message: str, *, needed_bytes: int, available_bytes: int):
        super().__init__(message)
        self.needed_bytes = needed_bytes
        self.available_bytes = available_bytes


@dataclass
class FieldOfView:
    """Cylinders about the orbit axis (float64 mm): ``every_*`` seen by every view, ``any_*`` the larger
    region (module docstring); ``displaced``: the detector is offset (its two lateral sides differ by more
    than DISPLACED_FRACTION of its width in some view)."""

    every_radius_mm: float
    every_half_height_mm: float
    any_radius_mm: float
    any_half_height_mm: float
    displaced: bool


def lateral_extents_mm(cameras: Cameras, along_columns: bool = True) -> Tuple[Tensor, Tensor]:
    """Per view (V,), the detector's extent on either side of the principal point along its columns
    (``along_columns``) or rows, mm on the detector: (near side from pixel 0, far side to the last pixel)."""
    cams = cameras_float64(cameras)
    if along_columns:
        c, n, s = cams.principal_point_px[:, 0], cams.width, cams.pixel_spacing_mm[:, 0]
    else:
        c, n, s = cams.principal_point_px[:, 1], cams.height, cams.pixel_spacing_mm[:, 1]
    return (c + 0.5) * s, (n - 0.5 - c) * s


def field_of_view(cameras: Cameras, orbit: Optional[Orbit] = None) -> FieldOfView:
    """The every-view and any-view cylinders of the cameras (module docstring)."""
    cams = cameras_float64(cameras)
    orbit = orbit if orbit is not None else analyse_orbit(cams)
    along_columns = lateral_axis_is_columns(cams, orbit)
    near, far = lateral_extents_mm(cams, along_columns)
    wide = torch.maximum(near, far)
    width = near + far
    displaced = bool(((far - near).abs() > DISPLACED_FRACTION * width).any())
    r_wide = float((orbit.sid_mm * torch.sin(torch.atan2(wide, cams.sdd_mm))).min())
    r_any = r_wide if displaced else ANY_RADIUS_FACTOR * orbit.radius_mm
    r_any = min(max(r_any, orbit.radius_mm), 0.9 * float(orbit.sid_mm.min()))
    tnear, tfar = lateral_extents_mm(cams, not along_columns)
    h_any = float((torch.minimum(tnear, tfar) * orbit.sid_mm / cams.sdd_mm).min())
    return FieldOfView(orbit.radius_mm, orbit.half_height_mm, r_any, max(h_any, orbit.half_height_mm), displaced)


def lateral_axis_is_columns(cameras: Cameras, orbit: Orbit) -> bool:
    """True when the detector columns (camera x) run across the orbit axis (the fan direction, FDK's
    filtered direction), False when the rows do."""
    cams = cameras_float64(cameras)
    cam_x = cams.world_from_camera[:, :3, 0] @ orbit.axis
    cam_y = cams.world_from_camera[:, :3, 1] @ orbit.axis
    return bool(cam_x.abs().mean() <= cam_y.abs().mean())


def grid_descriptor(shape_kji: Sequence[int], ras_from_ijk: Tensor) -> Volume:
    """A grid without memory: zero-stride ``data`` of ``shape_kji`` (K, J, I), float32 ``ras_from_ijk``."""
    k, j, i = (int(x) for x in shape_kji)
    if min(k, j, i) < 1:
        raise ValueError(f"a grid needs at least one voxel along each axis, got {i} x {j} x {k} (I x J x K)")
    return Volume(torch.zeros((), dtype=torch.float32).expand(k, j, i), ras_from_ijk.detach().to(torch.float64).float(), "mu")


def cylinder_grid(
    cameras: Cameras,
    *,
    region: str = DEFAULT_REGION,
    grid: Optional[int] = None,
    spacing_mm: Optional[float] = None,
    orbit: Optional[Orbit] = None,
) -> Volume:
    """Grid descriptor of the ``region`` cylinder ("every" is :func:`fov.default_grid`'s), ``grid`` voxels
    across (default 128) or ``spacing_mm``."""
    if region not in REGIONS:
        raise ValueError(f"unknown field-of-view region {region!r}; use one of {', '.join(REGIONS)}")
    cams = cameras_float64(cameras)
    orbit = orbit if orbit is not None else analyse_orbit(cams)
    if region == "any":
        f = field_of_view(cams, orbit)
        orbit = dataclasses.replace(orbit, radius_mm=f.any_radius_mm, half_height_mm=f.any_half_height_mm)
    shape, a = default_grid_layout(cams, grid=grid, spacing_mm=spacing_mm, orbit=orbit)
    return grid_descriptor(shape, a)


def grid_like(path: str) -> Volume:
    """Grid descriptor with the size, spacing, origin and direction of the image file ``path`` (read from
    its header only, as RTK's ``--like``). Raises ValueError for a missing, unreadable or 2-D image."""
    import numpy as np
    import SimpleITK as sitk

    path = str(path)
    if not os.path.exists(path):
        raise ValueError(f"--like image {path!r} does not exist")
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise ValueError(f"cannot read --like image {path!r}: {str(exc).strip().splitlines()[-1]}") from None
    dim = reader.GetDimension()
    size = list(reader.GetSize())
    if dim != 3 or min(size) < 2:
        what = f"{dim}-D" if dim != 3 else f"a single slice ({' x '.join(map(str, size))})"
        raise ValueError(f"--like image {path!r} is {what}; a 3-D volume is needed")
    spacing = np.array(reader.GetSpacing(), dtype=np.float64)
    if (spacing <= 0).any():
        raise ValueError(f"--like image {path!r} has non-positive spacing {spacing.tolist()}")
    direction = np.array(reader.GetDirection(), dtype=np.float64).reshape(3, 3)
    lps = np.eye(4)
    lps[:3, :3] = direction @ np.diag(spacing)
    lps[:3, 3] = np.array(reader.GetOrigin(), dtype=np.float64)
    ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps  # LPS -> RAS, as volume.load_volume
    return grid_descriptor((size[2], size[1], size[0]), torch.from_numpy(ras))


def explicit_grid(
    size_ijk: Sequence[int],
    spacing_mm,
    *,
    origin_ras: Optional[Sequence[float]] = None,
    cameras: Optional[Cameras] = None,
) -> Volume:
    """Grid descriptor of ``size_ijk`` = (NX, NY, NZ) voxels along RAS +x, +y, +z (identity direction)
    with ``spacing_mm`` (one value or three). ``origin_ras``: the centre of voxel (0, 0, 0), RAS mm; default
    the grid centred on the orbit's isocentre (``cameras`` needed then)."""
    size = [int(n) for n in size_ijk]
    if len(size) != 3 or min(size) < 1:
        raise ValueError(f"--size needs three positive voxel counts NX NY NZ, got {list(size_ijk)}")
    sp = torch.as_tensor(spacing_mm, dtype=torch.float64).reshape(-1)
    if sp.numel() == 1:
        sp = sp.repeat(3)
    if sp.numel() != 3 or not bool(torch.isfinite(sp).all()) or bool((sp <= 0).any()):
        raise ValueError(f"the grid spacing must be one or three values > 0 mm, got {sp.tolist()}")
    a = torch.eye(4, dtype=torch.float64)
    a[:3, :3] = torch.diag(sp)
    if origin_ras is None:
        if cameras is None:
            raise ValueError("give origin_ras, or the cameras to centre the grid on their isocentre")
        centre = analyse_orbit(cameras).isocenter
        a[:3, 3] = centre - torch.diag(sp) @ torch.tensor([(n - 1) / 2.0 for n in size], dtype=torch.float64)
    else:
        o = torch.as_tensor(origin_ras, dtype=torch.float64).reshape(-1)
        if o.numel() != 3 or not bool(torch.isfinite(o).all()):
            raise ValueError(f"--origin-ras needs three finite numbers X Y Z (mm), got {list(origin_ras)}")
        a[:3, 3] = o
    return grid_descriptor((size[2], size[1], size[0]), a)


def view_counts(cameras: Cameras, volume: Volume, *, chunk_voxels: int = 1 << 20) -> Tensor:
    """How many views see each voxel centre: (K, J, I) int16. A view sees a point that lies in front of its
    source and projects inside its detector (pixel-centre coordinates in [-0.5, W - 0.5] x [-0.5, H - 0.5])."""
    cams = cameras_float64(cameras)
    p = (cams.projection_matrices() @ volume.ras_from_ijk.detach().double().cpu()).float()  # (V, 3, 4) pixels <- ijk
    k, j, i = volume.data.shape
    n = k * j * i
    out = torch.zeros(n, dtype=torch.int16)
    w, h = cams.width, cams.height
    for s in range(0, n, chunk_voxels):
        idx = torch.arange(s, min(n, s + chunk_voxels))
        ijk = torch.stack([idx % i, (idx // i) % j, idx // (i * j), torch.ones_like(idx)], 0).float()  # (4, N)
        for v in range(p.shape[0]):
            q = p[v] @ ijk  # (3, N)
            d = q[2]
            ok = d > 0
            c = q[0] / d.clamp_min(1e-12)
            r = q[1] / d.clamp_min(1e-12)
            ok &= (c >= -0.5) & (c <= w - 0.5) & (r >= -0.5) & (r <= h - 0.5)
            out[s : s + idx.numel()] += ok.to(torch.int16)
    return out.reshape(k, j, i)


# -- memory ------------------------------------------------------------------------------------------
# Working bytes per output voxel of each method (float32 volumes: the method's copies of the grid, its
# gradients / optimiser state / TV duals, the output and the unit conversion), a rough upper estimate
# from the peak memory of runs at 128^3 and 256^3 (docs/reconstruction.md, "Memory").
_BYTES_PER_VOXEL = {"fdk": 24, "voxel": 56, "voxel-adam": 64, "nerf": 280}
_BYTES_PER_PIXEL = 40  # float64 copies of the projections (weighting, filtering, padded FFT)
_BASE_BYTES = 400 * 2**20  # the interpreter, torch and the loaded inputs


def estimate_memory_bytes(
    method: str,
    shape_kji: Sequence[int],
    n_views: int,
    size_px: Sequence[int],
    *,
    options: Optional[dict] = None,
    uncertainty: bool = False,
) -> int:
    """A rough upper estimate of the peak memory (bytes) of a reconstruction on a grid of ``shape_kji``."""
    options = options or {}
    key = method
    if method == "voxel" and options.get("solver", "os-tv") == "adam":
        key = "voxel-adam"
    if key not in _BYTES_PER_VOXEL:
        raise ValueError(f"unknown reconstruction method {method!r}")
    n_vox = int(shape_kji[0]) * int(shape_kji[1]) * int(shape_kji[2])
    total = _BASE_BYTES + _BYTES_PER_VOXEL[key] * n_vox + _BYTES_PER_PIXEL * int(n_views) * int(size_px[0]) * int(size_px[1])
    if key == "voxel":  # the projectors' cached sampling geometry (ostv.OSTVSettings.bp_cache_mb): 12 bytes per
        # voxel and view (back), 8 per plane and ray (forward), capped; the subsets' rays and data slices: 40 per ray
        n_rays = int(n_views) * int(size_px[0]) * int(size_px[1])
        cache = 12 * n_vox * int(n_views) + 8 * max(int(n) for n in shape_kji) * n_rays
        total += min(cache, int(float(options.get("bp_cache_mb", 1024)) * 2**20)) + 40 * n_rays
    if uncertainty:
        total += 8 * n_vox  # the ensemble's running mean and spread
    return int(total)


def available_memory_bytes() -> Optional[int]:
    """Memory the system can give this process now (Linux MemAvailable), else the physical memory, else None."""
    try:
        with open("/proc/meminfo", "r", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(
    method: str,
    shape_kji: Sequence[int],
    n_views: int,
    size_px: Sequence[int],
    *,
    options: Optional[dict] = None,
    uncertainty: bool = False,
    available_bytes: Optional[int] = None,
) -> int:
    """Raise :class:`GridMemoryError` (one line, with both numbers) when the estimated peak memory exceeds
    what is available; returns the estimate (bytes)."""
    need = estimate_memory_bytes(method, shape_kji, n_views, size_px, options=options, uncertainty=uncertainty)
    have = available_memory_bytes() if available_bytes is None else int(available_bytes)
    if have is not None and need > have:
        k, j, i = (int(x) for x in shape_kji)
        raise GridMemoryError(
            f"a {i} x {j} x {k} grid needs about {need / 2**30:.1f} GiB for {method} ({n_views} views) but "
            f"{have / 2**30:.1f} GiB are available: choose a coarser spacing or a smaller grid",
            needed_bytes=need,
            available_bytes=have,
        )
    return need
