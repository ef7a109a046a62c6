"""Laterally truncated projections: detection, FDK's row extrapolation, and the extended grid of the
iterative methods.

A C-arm's flat panel is often narrower than the patient: every view's rows are cut off at the detector's
lateral edges while the line integrals there are far from zero (truncation). Two consequences:

* FDK's ramp filter is non-local: the jump to zero at a truncated edge rings into the whole row and
  gives a bright rim and cupping. Remedy (before filtering): extrapolate each row smoothly beyond both
  edges, as RTK's ``FFTRampImageFilter`` with ``TruncationCorrection``, after Ohnesorge B., Flohr T.,
  Schwarz K., Heiken J.P., Bae K.T., "Efficient correction for CT image artifacts caused by objects
  extending outside the scan field of view", Med. Phys. 27(1):39-46, 2000 (eq. 3): point-symmetric
  mirroring about the edge pixel, faded out over ``n`` pixels::

      p(e + d) = w_d (2 p(e) - p(e - d)),   w_d = sin(pi/2 (n - d) / (n - 1))^0.75,   d = 1..n

  (e the edge pixel, d counted outwards). Unlike RTK the extension is clamped at 0 (line integrals are
  non-negative), so a row whose edge is air gets no extension, and the left side mirrors about its own
  edge pixel (RTK uses the second one). FDK option ``truncation_correction``: the extension on each side
  as a fraction of the detector width (RTK's ``--tc`` has the same meaning); None (default) applies
  DEFAULT_EXTENSION when :func:`detect_truncation` finds truncated views, 0 never.
* The iterative methods fit the measured line integrals with the volume on their grid: mass outside the
  grid that the rays crossed is pushed into the grid. They therefore reconstruct truncated data on the
  grid extended to the "any" region (:mod:`grid`) and crop the output grid out of it
  (:func:`extended_grid`, used by :func:`recon.api.reconstruct`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from ..geometry import Cameras
from ..volume import Volume
from .fov import Orbit, analyse_orbit, cameras_float64
from .grid import grid_descriptor, lateral_axis_is_columns

__all__ = ["DEFAULT_EXTENSION", "Truncation", "detect_truncation", "extrapolate_rows", "extension_pixels", "extended_grid", "crop_to"]

DEFAULT_EXTENSION = 0.25  # of the detector width, on each truncated side (FDK, truncation_correction=None)
EDGE_FRACTION = 0.05  # an edge is "not air" above this fraction of the stack's 99th percentile line integral
ROW_FRACTION = 0.05  # a view is truncated when at least this fraction of its rows has such an edge


@dataclass
class Truncation:
    """truncated: (V,) bool, the views with a lateral edge that is not air; sides: (V, 2) bool, which
    edge (low, high pixel index along the fan direction); along_columns: the fan direction is the columns."""

    truncated: Tensor
    sides: Tensor
    along_columns: bool

    @property
    def any(self) -> bool:
        return bool(self.truncated.any())

    @property
    def count(self) -> int:
        return int(self.truncated.sum())


def detect_truncation(
    projections: Tensor, cameras: Cameras, orbit: Optional[Orbit] = None, *, masks: Optional[Tensor] = None
) -> Truncation:
    """Which views are laterally truncated: projections (V, H, W) line integrals. An edge (the outermost two
    pixels of a row along the fan direction) is not air when its mean exceeds EDGE_FRACTION of the
    stack's 99th percentile; a side of a view is truncated when ROW_FRACTION of its rows are so."""
    cams = cameras_float64(cameras)
    orbit = orbit if orbit is not None else analyse_orbit(cams)
    along_columns = lateral_axis_is_columns(cams, orbit)
    p = projections.detach().float().cpu()
    if not along_columns:
        p = p.transpose(1, 2)
    flat = p.reshape(-1)
    sample = flat[:: max(1, flat.numel() // 1_000_000)]
    level = float(torch.quantile(sample, 0.99)) * EDGE_FRACTION
    level = max(level, 1e-3)
    low = p[:, :, :2].mean(-1) > level  # (V, T)
    high = p[:, :, -2:].mean(-1) > level
    sides = torch.stack([low.float().mean(-1) >= ROW_FRACTION, high.float().mean(-1) >= ROW_FRACTION], dim=1)
    return Truncation(sides.any(1), sides, along_columns)


def extension_pixels(n_u: int, fraction: float) -> int:
    """Pixels added on each side for an extension of ``fraction`` of the detector width (0 or >= 2)."""
    if not (isinstance(fraction, (int, float)) and 0.0 <= float(fraction) <= 1.0):
        raise ValueError(f"truncation_correction must be in [0, 1] (a fraction of the detector width), got {fraction!r}")
    n = int(math.floor(float(fraction) * n_u))
    return 0 if n < 2 else n


def extrapolate_rows(p: Tensor, n: int) -> Tensor:
    """Rows (..., U) extended by ``n`` pixels on each side (module docstring): (..., U + 2 n)."""
    if n <= 0:
        return p
    u = p.shape[-1]
    d = torch.arange(1, n + 1, dtype=p.dtype)
    w = torch.sin(math.pi / 2 * (n - d) / (n - 1)).clamp_min(0.0) ** 0.75  # (n,): w_1 = 1 ... w_n = 0
    k = torch.clamp(d.long(), max=u - 1)  # mirrored partners inside the row (a short row repeats its far end)
    left_edge, right_edge = p[..., :1], p[..., -1:]
    left = (w * (2 * left_edge - p[..., k])).clamp_min(0.0).flip(-1)  # pixels -n .. -1
    right = (w * (2 * right_edge - p[..., u - 1 - k])).clamp_min(0.0)  # pixels U .. U + n - 1
    return torch.cat([left, p, right], dim=-1)


def extended_grid(like: Volume, radius_mm: float, half_height_mm: float, orbit: Orbit) -> tuple:
    """``like`` grown (same spacing, direction and voxel lattice) to cover the cylinder of ``radius_mm`` and
    ``half_height_mm`` about the orbit axis through the isocentre: (grid descriptor, (k0, j0, i0) offset of
    ``like``'s voxel (0, 0, 0) in it). Never smaller than ``like``."""
    a = like.ras_from_ijk.detach().double()
    ijk_from_ras = torch.linalg.inv(a)
    k, j, i = like.data.shape
    # the cylinder's bounding points: a ring of points at both ends
    ang = torch.linspace(0, 2 * math.pi, 65, dtype=torch.float64)[:-1]
    axis = orbit.axis / orbit.axis.norm()
    helper = (
        torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
        if abs(float(axis[0])) < 0.9
        else torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)
    )
    e1 = torch.linalg.cross(axis, helper)
    e1 = e1 / e1.norm()
    e2 = torch.linalg.cross(axis, e1)
    ring = radius_mm * (torch.cos(ang)[:, None] * e1 + torch.sin(ang)[:, None] * e2)
    pts = torch.cat([orbit.isocenter + ring + s * half_height_mm * axis for s in (-1.0, 1.0)])  # (128, 3)
    idx = (ijk_from_ras[:3, :3] @ pts.T + ijk_from_ras[:3, 3:]).T  # (128, 3) continuous i, j, k
    lo = torch.minimum(torch.floor(idx.min(0).values + 0.5), torch.zeros(3, dtype=torch.float64)).long()
    hi = torch.maximum(torch.ceil(idx.max(0).values - 0.5), torch.tensor([i - 1, j - 1, k - 1], dtype=torch.float64)).long()
    size = (hi - lo + 1).tolist()  # (I, J, K)
    b = a.clone()
    b[:3, 3] = a[:3, 3] + a[:3, :3] @ lo.double()
    offset = (-int(lo[2]), -int(lo[1]), -int(lo[0]))
    return grid_descriptor((size[2], size[1], size[0]), b), offset


def crop_to(volume: Volume, like: Volume, offset: tuple) -> Volume:
    """The part of ``volume`` (an :func:`extended_grid`) that is ``like``'s grid."""
    k0, j0, i0 = offset
    k, j, i = like.data.shape
    data = volume.data[k0 : k0 + k, j0 : j0 + j, i0 : i0 + i].contiguous()
    return Volume(data, like.ras_from_ijk.to(volume.ras_from_ijk.dtype), volume.units)
