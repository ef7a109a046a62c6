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


def rays_for_views(volume: Volume, cameras: Cameras, pixels: Tensor, views: slice, pix: slice) -> IndexRays:
    """Rays of views ``views`` through pixels ``pixels[:, pix]``, flattened view-major: R = V' * N'.

    pixels: (V, N, 2) or (1, N, 2) (shared by all views) [column, row]. Differentiable w.r.t. the
    camera parameters.
    """
    w = cameras.world_from_camera[views]  # (V', 4, 4)
    px = pixels[views if pixels.shape[0] > 1 else slice(None), pix]  # (V' or 1, N', 2)
    cam_xy = (px - cameras.principal_point_px[views, None, :]) * cameras.pixel_spacing_mm[views, None, :]
    z = cameras.sdd_mm[views, None, None].expand(-1, cam_xy.shape[1], 1)
    cam = torch.cat([cam_xy, z], dim=-1)  # (V', N', 3) camera mm, source -> pixel
    ijk_from_ras = volume.ijk_from_ras().to(dtype=cam.dtype, device=cam.device)
    lin, off = ijk_from_ras[:3, :3], ijk_from_ras[:3, 3]
    dir_world = cam @ w[:, :3, :3].transpose(-1, -2)  # (V', N', 3) RAS mm
    direction = dir_world @ lin.T  # index units
    origin = (w[:, :3, 3] @ lin.T + off)[:, None, :].expand_as(direction)
    return IndexRays(origin.reshape(-1, 3), direction.reshape(-1, 3), dir_world.norm(dim=-1).reshape(-1))


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
