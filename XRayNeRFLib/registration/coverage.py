"""Which X-ray pixels a CT can explain: the CT-coverage mask.

A real X-ray sees everything between the source and the detector; a CT holds only its box. A pixel
whose ray leaves the CT through one of its side faces (the end slices of an axial CT ending inside the
X-ray's field, or a truncated field of view) gets a line integral that lacks the anatomy outside the box
in the DRR but not in the X-ray. Comparing such pixels pulls the pose (a DRR that ends where the CT ends
is matched to anatomy that continues). :func:`ct_coverage_mask` keeps the pixels whose rays cross
the CT's whole extent along the beam, and, in oblique views, the pixels whose rays enter and leave the CT
only through faces where it holds air (:func:`open_faces`: no anatomy continues beyond them).

Frames: rays are traced in the CT's continuous voxel-index frame (voxel centres at integers, the box
between -0.5 and n - 0.5 along each axis: the voxel convention of docs/geometry.md).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..geometry import Cameras
from ..render.rays import rays_for_views
from ..volume import Volume, mu_water_per_mm

# A face of the CT's box is "open" (anatomy continues beyond it: an end slice of an axial CT, a field of
# view that cuts the body) when more than OPEN_FRACTION of its outermost slice of voxels holds tissue
# (above half of water's attenuation, -500 HU); a face in air (the space around the patient) is closed.
OPEN_FRACTION = 0.02


def beam_axes(volume: Volume, cameras: Cameras) -> Tensor:
    """(V,) long: for each view, the CT index axis (0 = i, 1 = j, 2 = k) most parallel (in mm) to the
    principal ray: the axis whose two faces a ray of that view enters and leaves through."""
    cols = volume.ras_from_ijk[:3, :3].to(torch.float64)
    cols = cols / cols.norm(dim=0, keepdim=True)  # unit RAS direction of each index axis
    z = cameras.world_from_camera[:, :3, 2].detach().to(torch.float64)  # (V, 3) principal ray, RAS
    return (z @ cols).abs().argmax(dim=-1)


def open_faces(volume: Volume) -> Tensor:
    """(3, 2) bool: for the CT's index axes i, j, k, whether its low (index 0) and high (index n - 1) face is
    open (module constant OPEN_FRACTION: tissue in its outermost slice of voxels). volume: mu (1/mm) or HU."""
    level = -500.0 if volume.units == "hu" else 0.5 * mu_water_per_mm()
    tissue = volume.data.detach() > level  # (K, J, I)
    out = torch.zeros(3, 2, dtype=torch.bool)
    for axis, dim in ((0, 2), (1, 1), (2, 0)):  # index axis i is the data's last dimension
        for side, index in ((0, 0), (1, -1)):
            out[axis, side] = float(tissue.select(dim, index).float().mean()) > OPEN_FRACTION
    return out


def _through_closed_faces(o: Tensor, d: Tensor, n: Tensor, opened: Tensor, margin: Tensor) -> Tensor:
    """(V, N) bool: the segments o + t d, t in [0, 1] (index frame, (V, N, 3)) start and end outside the box
    (faces at -0.5 and n - 0.5) and cross it, entering and leaving at least ``margin`` (3,) voxels inside the
    outermost voxel centres of every open face (``opened`` (3, 2)); closed faces may be crossed anywhere."""
    tiny = 1e-12
    d_safe = torch.where(d.abs() < tiny, torch.full_like(d, tiny), d)
    t0, t1 = (-0.5 - o) / d_safe, (n - 0.5 - o) / d_safe
    t_in = torch.minimum(t0, t1).amax(dim=-1)
    t_out = torch.maximum(t0, t1).amin(dim=-1)
    ok = (t_in < t_out) & (t_in > 0) & (t_out < 1)
    for t in (t_in, t_out):
        p = o + t[..., None] * d
        ok &= (~opened[:, 0] | (p >= margin)).all(dim=-1) & (~opened[:, 1] | (p <= n - 1 - margin)).all(dim=-1)
    return ok


def ct_coverage_mask(volume: Volume, cameras: Cameras, margin_mm: float = 0.0) -> Tensor:
    """(V, H, W) bool: True where the pixel's ray crosses the CT's whole extent along the beam, or enters and
    leaves it only through faces in air.

    volume: the CT (its grid, and its outermost slices for :func:`open_faces`). cameras: V views (any dtype;
    no gradient).
    For a view with beam axis ``a`` (:func:`beam_axes`), a pixel is covered when its source-to-pixel
    segment reaches both faces of the box perpendicular to ``a`` (index -0.5 and n_a - 0.5: the source
    and the pixel lie outside the CT along ``a``) and, between those faces, stays inside the hull of
    the voxel centres (index 0 .. n - 1) of the two other axes, and ``margin_mm`` further in. The outer
    half voxel is where voxel conventions differ (docs/geometry.md: we integrate to the voxel faces,
    RTK's Joseph to the outermost centres); ``margin_mm`` leaves room for the pose to move while the
    mask is held fixed. Also covered (oblique views, where few rays cross both beam-axis faces): a
    segment that enters and leaves the box through closed faces only (:func:`open_faces`), at least
    ``margin_mm`` inside the outermost voxel centres of every open face. Rays that miss the CT are not
    covered.
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
        ok |= _through_closed_faces(o, d, n, open_faces(volume), margin)
        return ok.reshape(v, cams.height, cams.width)
