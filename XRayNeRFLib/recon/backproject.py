"""Voxel-driven back projection: a fast approximation of the transpose of the line-integral projector.

For view v with projection matrix P_v (geometry.py: ``[c, r, 1]^T ~ P [X, 1]^T``, third row = depth in
mm along the principal ray), every voxel centre X is projected onto the detector and the image is read
there by bilinear interpolation (zero outside the detector), as in FDK's back projection::

    (B y)(X) = sum_v  y_v(P_v X) * dV * fx_v * fy_v / depth_v(X)^2 * sqrt(1 + xn^2 + yn^2)

dV: the voxel volume (mm^3); fx, fy: focal lengths in pixels (sdd / pixel spacing); (xn, yn) = ((c - cu)
/ fx, (r - cv) / fy) the pixel's normalised camera coordinates. The factor is the density of rays at
the voxel (rays per mm^2 perpendicular to the rays: a pixel's footprint at depth d is
spacing_u * spacing_v * (d / sdd)^2 * cos(gamma) there, cos(gamma) = 1 / sqrt(1 + xn^2 + yn^2)) times
the voxel volume, so that B approximates A^T of a projector whose rays sample mu per unit length
(render's "siddon" and "trilinear"): <A x, y> ~ <x, B y> for smooth x and y. B is *not* the exact
adjoint (unmatched pair); it is the back projector of RTK's SART ("voxel based") and of FDK. It is much
cheaper than autograd's exact adjoint of the trilinear renderer (a gather instead of a scatter-add).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..geometry import Cameras
from ..volume import Volume

__all__ = ["voxel_backproject", "VoxelBackprojector"]


def voxel_backproject(images: Tensor, cameras: Cameras, like: Volume, max_memory_mb: float = 64.0) -> Tensor:
    """Voxel-driven back projection (see the module docstring).

    images: (V, H, W) values per pixel (e.g. weighted residuals of line integrals), any float dtype.
    cameras: the V views (H, W as the images). like: the output grid (its ``ras_from_ijk``; data ignored).
    max_memory_mb: bound on the working memory of one chunk of voxel slices.
    returns: (K, J, I) float32 on the images' device (units of images x mm).
    """
    return VoxelBackprojector(cameras, like, max_memory_mb=max_memory_mb)(images)


class VoxelBackprojector:
    """:func:`voxel_backproject` for a fixed set of views and grid, called many times (iterative solvers):
    ``bp(images, views)`` back projects images (len(views), H, W) of the given views (indices into
    ``cameras``; default all). With ``cache_mb`` > 0 the per-view sampling grids and depth weights
    (12 bytes per voxel and view) are kept after their first use while they fit in cache_mb: later calls
    for a cached view are a bilinear gather and a multiply-add (docs/reconstruction.md: the cost)."""

    def __init__(self, cameras: Cameras, like: Volume, *, max_memory_mb: float = 64.0, cache_mb: float = 0.0) -> None:
        self.cams = cameras
        self.shape = tuple(like.data.shape)
        self.dev = like.data.device
        nk, nj, ni = self.shape
        cams = cameras.to(device=self.dev, dtype=torch.float64)
        self.width, self.height = cameras.width, cameras.height
        a = like.ras_from_ijk.to(device=self.dev, dtype=torch.float64)
        dv = float(torch.linalg.det(a[:3, :3]).abs())
        kmat = cams.intrinsic_matrices()  # (V, 3, 3)
        fx, fy, cu, cv = kmat[:, 0, 0], kmat[:, 1, 1], kmat[:, 0, 2], kmat[:, 1, 2]
        # the pixel-only part of the weight, applied to the images: sqrt(1 + xn^2 + yn^2) * fx * fy * dV
        cols = torch.arange(self.width, dtype=torch.float64, device=self.dev)
        rows = torch.arange(self.height, dtype=torch.float64, device=self.dev)
        xn = (cols[None, None, :] - cu[:, None, None]) / fx[:, None, None]  # (V, 1, W)
        yn = (rows[None, :, None] - cv[:, None, None]) / fy[:, None, None]  # (V, H, 1)
        self.pix_w = (torch.sqrt(1.0 + xn**2 + yn**2) * (fx * fy * dv)[:, None, None]).to(torch.float32)  # (V, H, W)
        # P (A [i, j, k, 1]) is affine in i, j, k: M = P A, evaluated by broadcasting. Rows 0 and 1 are
        # turned into grid_sample's normalised coordinates (align_corners=False: g = (2 c + 1) / W - 1)
        # before the division by depth (row 2), so one division gives the sampling grid.
        w, h = self.width, self.height
        m = cams.projection_matrices() @ a  # (V, 3, 4)
        m = torch.stack([m[:, 0] * (2.0 / w) + m[:, 2] * (1.0 / w - 1.0), m[:, 1] * (2.0 / h) + m[:, 2] * (1.0 / h - 1.0), m[:, 2]], 1)
        self.mt = m.transpose(1, 2).to(torch.float32).contiguous()  # (V, 4, 3): columns i, j, k, 1
        self.ii = torch.arange(ni, dtype=torch.float32, device=self.dev)
        self.jj = torch.arange(nj, dtype=torch.float32, device=self.dev)
        per_slice = nj * ni * 4 * 12  # bytes of the temporaries for one slice and view
        self.k_chunk = max(1, min(nk, int(max_memory_mb * 2**20 // per_slice)))
        self.cache_left = float(cache_mb) * 2**20
        self.cache = {}

    def _geometry(self, v: int, k0: int, k1: int) -> tuple:
        """(grid (1, k, J*I, 2), 1 / depth^2 (k, J, I)) of view v for slices k0..k1."""
        key = (v, k0)
        if key in self.cache:
            return self.cache[key]
        nj, ni = self.shape[1], self.shape[2]
        kk = torch.arange(k0, k1, dtype=torch.float32, device=self.dev)
        col = self.mt[v]  # (4, 3)
        plane = self.jj[:, None, None] * col[1] + self.ii[:, None] * col[0]  # (J, I, 3)
        h_ = plane + (kk[:, None] * col[2] + col[3])[:, None, None, :]  # (k, J, I, 3) homogeneous
        depth = h_[..., 2].clamp_min(1e-6)  # voxels behind the source (depth <= 0) land off the detector
        grid = (h_[..., :2] / depth[..., None]).reshape(1, k1 - k0, nj * ni, 2)
        inv_d2 = depth.mul_(depth).reciprocal_()
        nbytes = 12 * (k1 - k0) * nj * ni
        if nbytes <= self.cache_left:
            self.cache[key] = (grid, inv_d2)
            self.cache_left -= nbytes
        return grid, inv_d2

    def __call__(self, images: Tensor, views: Optional[Sequence[int]] = None) -> Tensor:
        views = list(range(len(self.cams))) if views is None else [int(v) for v in views]
        if images.ndim != 3 or images.shape[0] != len(views) or (images.shape[2], images.shape[1]) != (self.width, self.height):
            raise ValueError(f"images {tuple(images.shape)} do not match the cameras ({len(views)} views of {self.height} x {self.width})")
        nk, nj, ni = self.shape
        imgs = (images.to(device=self.dev, dtype=torch.float32) * self.pix_w[views])[:, None]  # (V, 1, H, W)
        out = torch.empty(nk, nj, ni, dtype=torch.float32, device=self.dev) if views else torch.zeros(nk, nj, ni, device=self.dev)
        for k0 in range(0, nk, self.k_chunk):
            k1 = min(nk, k0 + self.k_chunk)
            acc = out[k0:k1]  # (k, J, I) view
            for n, v in enumerate(views):
                grid, inv_d2 = self._geometry(v, k0, k1)
                val = F.grid_sample(imgs[n : n + 1], grid, mode="bilinear", padding_mode="zeros", align_corners=False)
                if n == 0:
                    torch.mul(val.reshape(k1 - k0, nj, ni), inv_d2, out=acc)
                else:
                    acc.addcmul_(val.reshape(k1 - k0, nj, ni), inv_d2)
        return out
