"""Rays from cameras, expressed in the volume's continuous voxel-index frame.

Renderers work in index space (voxel (i, j, k) centred at integer coordinates, its faces at +-0.5),
so oblique and anisotropic grids need no special case: an affine map keeps the ray parameter, and a
segment's length in mm is its parameter length times the ray's length in mm.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..geometry import Cameras
from ..volume import Volume


@dataclass
class IndexRays:
    """R rays p(a) = origin + a * direction, a in [0, 1] from the source (a=0) to the pixel (a=1).

    origin, direction: (R, 3) in continuous voxel index (i, j, k) units.
    length_mm: (R,) source-to-pixel distance in mm (world length of the direction vector).
    """

    origin: Tensor
    direction: Tensor
    length_mm: Tensor


def pixel_camera_coordinates(cameras: Cameras, pixels: Tensor) -> Tensor:
    """pixels: (V, N, 2) [column, row] -> camera-frame mm of the pixel centres (V, N, 3)."""
    xy = (pixels - cameras.principal_point_px[:, None, :]) * cameras.pixel_spacing_mm[:, None, :]
    z = cameras.sdd_mm[:, None, None].expand(-1, xy.shape[1], 1)
    return torch.cat([xy, z], dim=-1)


def rays_for_chunk(volume: Volume, cameras: Cameras, pixels: Tensor, start: int, stop: int) -> IndexRays:
    """Rays number start..stop-1 of the flattened (view, pixel) list.

    pixels: (V, N, 2) or (1, N, 2) (shared by all views). Differentiable w.r.t. camera parameters.
    """
    n = pixels.shape[1]
    flat = torch.arange(start, stop, device=pixels.device)
    view = flat // n
    pix = flat % n
    pixel_xy = pixels[view if pixels.shape[0] > 1 else torch.zeros_like(view), pix]  # (R, 2)
    pp = cameras.principal_point_px[view]
    sp = cameras.pixel_spacing_mm[view]
    cam_xy = (pixel_xy - pp) * sp
    cam = torch.cat([cam_xy, cameras.sdd_mm[view, None]], dim=-1)  # (R, 3) camera mm
    rot = cameras.world_from_camera[view, :3, :3]  # (R, 3, 3)
    src = cameras.world_from_camera[view, :3, 3]  # (R, 3)
    dir_world = (rot @ cam.unsqueeze(-1)).squeeze(-1)  # (R, 3) RAS mm, source -> pixel
    ijk_from_ras = volume.ijk_from_ras().to(dir_world.dtype)
    lin, off = ijk_from_ras[:3, :3], ijk_from_ras[:3, 3]
    origin = src @ lin.T + off
    direction = dir_world @ lin.T
    return IndexRays(origin, direction, dir_world.norm(dim=-1))


def box_intersection(rays: IndexRays, shape_ijk: Tensor) -> tuple:
    """Entry and exit ray parameters of the voxel box [-0.5, n-0.5]^3, clipped to [0, 1].

    shape_ijk: (3,) (I, J, K). Returns amin, amax: (R,) with amax == amin for rays that miss.
    """
    d = rays.direction
    tiny = torch.finfo(d.dtype).tiny ** 0.5
    d_safe = torch.where(d.abs() < tiny, torch.full_like(d, tiny), d)
    lo = (-0.5 - rays.origin) / d_safe
    hi = (shape_ijk - 0.5 - rays.origin) / d_safe
    amin = torch.minimum(lo, hi).amax(dim=-1).clamp_min(0.0)
    amax = torch.maximum(lo, hi).amin(dim=-1).clamp_max(1.0)
    amax = torch.maximum(amax, amin)
    return amin, amax
