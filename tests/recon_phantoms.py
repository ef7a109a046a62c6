"""Shared phantoms and scores for the reconstruction tests (analytic ellipsoid projections, written
independently of the renderers: chord lengths from tests/conftest.py)."""

from __future__ import annotations

import math

import numpy as np
import torch
from conftest import segment_ellipsoid_length_mm

from XRayNeRFLib.geometry import Cameras, homogeneous, rotation_x
from XRayNeRFLib.volume import Volume

# (centre RAS mm, semi-axes mm, mu 1/mm): a body with a dense and a hollow inclusion
ELLIPSOIDS = [
    ((2.0, -1.0, 1.0), (20.0, 15.0, 12.0), 0.02),
    ((8.0, 3.0, 2.0), (5.0, 4.0, 5.0), 0.02),
    ((-7.0, -4.0, -2.0), (4.0, 5.0, 4.0), -0.015),
]


def orbit(n_views: int, *, arc_rad: float = 2 * math.pi, size_px=(48, 40), spacing=2.0, full=True, axis: str = "z") -> Cameras:
    """Circular orbit (SID 250, SDD 400 mm) about RAS z, or about RAS y (``axis="y"``: RTK's gantry
    axis, which RTK's FDK angular weighting needs)."""
    ang = (
        torch.linspace(0, arc_rad, n_views + 1, dtype=torch.float64)[:-1]
        if full
        else torch.linspace(0, arc_rad, n_views, dtype=torch.float64)
    )
    cams = Cameras.circular_orbit(ang, sid_mm=250.0, sdd_mm=400.0, size_px=size_px, pixel_spacing_mm=spacing, dtype=torch.float64)
    if axis == "y":
        w = homogeneous(rotation_x(torch.tensor(-math.pi / 2, dtype=torch.float64)), torch.zeros(3, dtype=torch.float64))
        cams = Cameras(w @ cams.world_from_camera, cams.sdd_mm, cams.pixel_spacing_mm, cams.principal_point_px, cams.size_px)
    return cams


def ellipsoids_about_y(ellipsoids=ELLIPSOIDS):
    """The phantom turned with ``orbit(axis="y")`` (Rx(-90 deg): (x, y, z) -> (x, z, -y))."""
    return [((c[0], c[2], -c[1]), (a[0], a[2], a[1]), mu) for c, a, mu in ellipsoids]


def analytic_projections(cams: Cameras, ellipsoids=ELLIPSOIDS) -> torch.Tensor:
    """Exact line integrals (V, H, W) float64 of the ellipsoid phantom."""
    pix = cams.pixel_grid().reshape(1, -1, 2).expand(len(cams), -1, -1)
    tgt = cams.pixel_to_world(pix).numpy()
    src = cams.source_positions().numpy()
    out = np.zeros(tgt.shape[:2])
    for v in range(len(cams)):
        s = np.repeat(src[v : v + 1], tgt.shape[1], 0)
        for c, a, mu in ellipsoids:
            out[v] += mu * segment_ellipsoid_length_mm(s, tgt[v], np.array(c), np.array(a))
    return torch.tensor(out).reshape(len(cams), cams.height, cams.width)


def ground_truth(like: Volume, ellipsoids=ELLIPSOIDS, supersample: int = 2) -> torch.Tensor:
    """Phantom mu averaged over each voxel of ``like``'s grid (supersample^3 points): (K, J, I) float32."""
    k, j, i = like.data.shape
    a = like.ras_from_ijk.double()
    offs = (torch.arange(supersample, dtype=torch.float64) + 0.5) / supersample - 0.5
    acc = torch.zeros(k, j, i, dtype=torch.float64)
    kk, jj, ii = torch.meshgrid(torch.arange(k), torch.arange(j), torch.arange(i), indexing="ij")
    for dz in offs:
        for dy in offs:
            for dx in offs:
                ijk = torch.stack([ii + dx, jj + dy, kk + dz], -1).double()
                ras = ijk @ a[:3, :3].T + a[:3, 3]
                for c, ax, mu in ellipsoids:
                    inside = (((ras - torch.tensor(c)) / torch.tensor(ax)) ** 2).sum(-1) <= 1
                    acc += mu * inside
    return (acc / supersample**3).float()


def psnr(x: torch.Tensor, ref: torch.Tensor, peak: float | None = None) -> float:
    peak = float(ref.max()) if peak is None else peak
    mse = float(((x - ref) ** 2).mean())
    return 10 * math.log10(peak**2 / mse)


def rel_error(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float((x - ref).norm() / ref.norm())
