"""Which X-ray pixels a CT can explain: the CT-coverage mask.

A real X-ray sees everything between the source and the detector; a CT holds only its box. A pixel
whose ray leaves the CT through one of its side faces (the end slices of an axial CT ending inside the
X-ray's field, or a truncated field of view) gets a line integral that lacks the anatomy outside the box
in the DRR but not in the X-ray. Comparing such pixels pulls the pose (a DRR that ends where the CT ends
is matched to anatomy that continues). :func:`ct_coverage_mask` keeps only the pixels whose rays cross
the CT's whole extent along the beam.

Frames: rays are traced in the CT's continuous voxel-index frame (voxel centres at integers, the box
between -0.5 and n - 0.5 along each axis: the voxel convention of docs/geometry.md).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..geometry import Cameras
from ..render.rays import rays_for_views
from ..volume import Volume


def beam_axes(volume: Volume, cameras: Cameras) -> Tensor:
    """(V,) long: for each view, the CT index axis (0 = i, 1 = j, 2 = k) most parallel (in mm) to the
    principal ray: the axis whose two faces a ray of that view enters and leaves through."""
    cols = volume.ras_from_ijk[:3, :3].to(torch.float64)
    cols = cols / cols.norm(dim=0, keepdim=True)  # unit RAS direction of each index axis
    z = cameras.world_from_camera[:, :3, 2].detach().to(torch.float64)  # (V, 3) principal ray, RAS
    return (z @ cols).abs().argmax(dim=-1)


def ct_coverage_mask(volume: Volume, cameras: Cameras, margin_mm: float = 0.0) -> Tensor:
    """(V, H, W) bool: True where the pixel's ray crosses the CT's whole extent along the beam.

    volume: the CT (its grid only is used). cameras: V views (any dtype; no gradient).
    For a view with beam axis ``a`` (:func:`beam_axes`), a pixel is covered when its source-to-pixel
    segment reaches both faces of the box perpendicular to ``a`` (index -0.5 and n_a - 0.5: the source
    and the pixel lie outside the CT along ``a``) and, between those faces, stays inside the hull of
    the voxel centres (index 0 .. n - 1) of the two other axes, and ``margin_mm`` further in. The outer
    half voxel is where voxel conventions differ (docs/geometry.md: we integrate to the voxel faces,
    RTK's Joseph to the outermost centres); ``margin_mm`` leaves room for the pose to move while the
    mask is held fixed. Rays that miss the CT are not covered.
    """
    with torch.no_grad():
        cams = cameras.to(dtype=torch.float64)
        vol = Volume(volume.data, volume.ras_from_ijk.to(torch.float64), volume.units)
        grid = cams.pixel_grid().reshape(1, -1, 2)
        rays = rays_for_views(vol, cams, grid, slice(None), slice(None))
        v, n_pix = len(cams), grid.shape[1]
        o = rays.origin.reshape(v, n_pix, 3)
        d = rays.direction.reshape(v, n_pix, 3)
        k, j, i = volume.data.shape
        n = torch.tensor([i, j, k], dtype=torch.float64)
        axis = beam_axes(vol, cams)  # (V,)
        onehot = torch.nn.functional.one_hot(axis, 3).to(torch.bool)[:, None, :].expand(v, n_pix, 3)
        o_a = o[onehot].reshape(v, n_pix)
        d_a = d[onehot].reshape(v, n_pix)
        n_a = n[axis][:, None]
        tiny = 1e-12
        d_safe = torch.where(d_a.abs() < tiny, torch.full_like(d_a, tiny), d_a)
        t0 = (-0.5 - o_a) / d_safe
        t1 = (n_a - 0.5 - o_a) / d_safe
        t_lo, t_hi = torch.minimum(t0, t1), torch.maximum(t0, t1)
        ok = (d_a.abs() >= tiny) & (t_lo > 0) & (t_hi < 1)
        margin = float(margin_mm) / vol.spacing_mm.to(torch.float64)  # (3,) voxels along i, j, k
        for t in (t_lo, t_hi):
            p = o + t[..., None] * d  # (V, N, 3) where the ray meets the beam-axis faces
            inside = (p >= margin) & (p <= n - 1 - margin)
            ok &= (inside | onehot).all(dim=-1)
        return ok.reshape(v, cams.height, cams.width)
