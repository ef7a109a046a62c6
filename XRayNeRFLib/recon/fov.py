"""Orbit analysis and the default reconstruction grid (the scanned cylinder).

Works for any set of cone-beam views whose sources lie roughly on a circle (circular CBCT, C-arm
spins, RTK geometries): the orbit axis is the normal of the plane fitted to the source positions, the
isocentre is the point nearest (least squares) to all principal rays.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from ..geometry import Cameras
from ..volume import Volume


@dataclass
class Orbit:
    """Circular-orbit description derived from the cameras (all float64, RAS mm).

    axis: (3,) unit rotation axis (sign chosen so that gantry angles increase with the view order).
    isocenter: (3,) point nearest to all principal rays.
    sid_mm: (V,) source to isocentre distance along each principal ray.
    angles_rad: (V,) gantry angle of each view about ``axis``, unwrapped, first view at 0.
    radius_mm: radius of the cylinder seen by every view (fully inside every fan).
    half_height_mm: half axial height of that cylinder.
    """

    axis: Tensor
    isocenter: Tensor
    sid_mm: Tensor
    angles_rad: Tensor
    radius_mm: float
    half_height_mm: float

    @property
    def angular_range_rad(self) -> float:
        return float(self.angles_rad.max() - self.angles_rad.min())


def cameras_float64(cameras: Cameras) -> Cameras:
    """The cameras in float64 on the CPU, detached (``Cameras.to`` snaps float32 rotations to exact ones)."""
    if cameras.dtype == torch.float64 and cameras.device.type == "cpu":
        return cameras
    return Cameras(
        cameras.world_from_camera.detach(),
        cameras.sdd_mm.detach(),
        cameras.pixel_spacing_mm.detach(),
        cameras.principal_point_px.detach(),
        cameras.size_px,
    ).to(device="cpu", dtype=torch.float64)


def analyse_orbit(cameras: Cameras) -> Orbit:
    """Fit a circular orbit to the cameras. Raises ValueError for geometries that cannot be
    reconstructed (fewer than 2 views, all views from one direction)."""
    cams = cameras_float64(cameras)
    n = len(cams)
    if n < 2:
        raise ValueError(f"reconstruction needs views from several directions; got {n} view")
    src = cams.source_positions()  # (V, 3)
    d = cams.principal_directions()  # (V, 3)
    # isocentre: argmin_x sum ||(I - d d^T)(x - s)||^2
    proj = torch.eye(3, dtype=torch.float64) - d[:, :, None] * d[:, None, :]  # (V, 3, 3)
    a = proj.sum(0)
    b = (proj @ src[:, :, None]).sum(0)[:, 0]
    if torch.linalg.matrix_rank(a, rtol=1e-6) < 3:
        raise ValueError(
            "all views look along the same direction (their principal rays are parallel); a volume cannot "
            "be reconstructed from them: acquire views over an arc of at least 180 degrees plus the fan angle"
        )
    iso = torch.linalg.solve(a, b)
    spread = float(torch.linalg.matrix_norm(d - d.mean(0), ord=2)) / math.sqrt(n)
    if spread < math.radians(2.0):
        raise ValueError(
            f"the {n} views span less than 2 degrees of viewing directions; a volume cannot be reconstructed "
            "from them: acquire views over an arc of at least 180 degrees plus the fan angle"
        )
    sid = ((iso[None, :] - src) * d).sum(-1)
    if (sid <= 0).any():
        raise ValueError("the isocentre of the views lies behind some sources: check the geometry file")
    # orbit axis: normal of the plane through the sources (smallest singular vector); for 2 views use
    # the cross product of the principal directions.
    if n >= 3:
        centred = src - src.mean(0)
        _, s, vh = torch.linalg.svd(centred, full_matrices=False)
        axis = vh[-1]
    else:
        axis = torch.linalg.cross(d[0], d[1])
    axis = axis / axis.norm()
    # gantry angles: of the source direction about the axis
    e1 = -d[0] - (-d[0] @ axis) * axis
    e1 = e1 / e1.norm()
    e2 = torch.linalg.cross(axis, e1)
    rel = src - iso
    ang = torch.atan2(rel @ e2, rel @ e1)
    ang = torch.tensor(_unwrap(ang.tolist()), dtype=torch.float64)
    if ang[-1] < ang[0]:
        axis, ang = -axis, -ang
    ang = ang - ang[0]
    # cylinder seen by every view: radius from the narrower side of each fan, height from the cone
    x_mm = cams.pixel_spacing_mm[:, 0]
    y_mm = cams.pixel_spacing_mm[:, 1]
    left = cams.principal_point_px[:, 0] + 0.5
    right = cams.width - 0.5 - cams.principal_point_px[:, 0]
    half_u = torch.minimum(left, right) * x_mm
    radius = float((sid * torch.sin(torch.atan2(half_u, cams.sdd_mm))).min())
    top = cams.principal_point_px[:, 1] + 0.5
    bottom = cams.height - 0.5 - cams.principal_point_px[:, 1]
    half_v = torch.minimum(top, bottom) * y_mm
    height = float((half_v * (sid - radius) / cams.sdd_mm).min())
    if radius <= 0 or height <= 0:
        raise ValueError(
            "the detector does not cover the isocentre in every view (principal point outside the image?); "
            "check the detector offsets in the geometry"
        )
    return Orbit(axis, iso, sid, ang, radius, height)


def _unwrap(a):
    out = [a[0]]
    for x in a[1:]:
        prev = out[-1]
        x = x + 2 * math.pi * round((prev - x) / (2 * math.pi))
        out.append(x)
    return out


def grid_frame(axis: Tensor) -> Tensor:
    """(3, 3) orthonormal frame whose third column is the orbit axis; when the axis is within 1 degree
    of a RAS axis the frame is that axis-aligned permutation (so grids stay axis aligned)."""
    axis = axis / axis.norm()
    k = int(axis.abs().argmax())
    if float(axis.abs()[k]) > math.cos(math.radians(1.0)):
        e3 = torch.zeros(3, dtype=torch.float64)
        e3[k] = 1.0
        others = [i for i in range(3) if i != k]
        e1 = torch.zeros(3, dtype=torch.float64)
        e1[others[0]] = 1.0
        e2 = torch.linalg.cross(e3, e1)
        return torch.stack([e1, e2, e3], dim=1)
    helper = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    if abs(float(helper @ axis)) > 0.9:
        helper = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)
    e1 = helper - (helper @ axis) * axis
    e1 = e1 / e1.norm()
    e2 = torch.linalg.cross(axis, e1)
    return torch.stack([e1, e2, axis.double()], dim=1)


def default_grid(
    cameras: Cameras,
    *,
    grid: Optional[int] = None,
    spacing_mm: Optional[float] = None,
    orbit: Optional[Orbit] = None,
    dtype: torch.dtype = torch.float32,
) -> Volume:
    """An empty (zero) mu volume covering the scanned cylinder.

    grid: voxels along the cylinder diameter (default 128 when neither is given); spacing_mm: isotropic
    voxel size instead. The axial size follows from the cylinder height with the same spacing.
    returns: Volume with data (K, J, I) zeros, ``ras_from_ijk`` placing voxel centres symmetrically about
    the isocentre, k along the orbit axis.
    """
    orbit = orbit if orbit is not None else analyse_orbit(cameras)
    diameter = 2.0 * orbit.radius_mm
    if grid is not None and spacing_mm is not None:
        raise ValueError("give either grid (voxels across) or spacing_mm, not both")
    if spacing_mm is None:
        n = int(grid) if grid is not None else 128
        if n < 2:
            raise ValueError(f"grid must be at least 2 voxels across, got {grid}")
        spacing = diameter / n
    else:
        spacing = float(spacing_mm)
        if not spacing > 0:
            raise ValueError(f"spacing_mm must be > 0, got {spacing_mm}")
        n = max(2, int(math.ceil(diameter / spacing)))
    nk = max(1, int(math.floor(2.0 * orbit.half_height_mm / spacing)))
    if n * n * nk > 1024**3:
        raise ValueError(f"a {n}x{n}x{nk} grid is too large; choose a coarser spacing")
    frame = grid_frame(orbit.axis) * spacing
    centre_ijk = torch.tensor([(n - 1) / 2.0, (n - 1) / 2.0, (nk - 1) / 2.0], dtype=torch.float64)
    a = torch.eye(4, dtype=torch.float64)
    a[:3, :3] = frame
    a[:3, 3] = orbit.isocenter - frame @ centre_ijk
    return Volume(torch.zeros(nk, n, n, dtype=dtype), a.to(dtype))
