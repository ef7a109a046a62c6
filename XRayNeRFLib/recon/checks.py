"""Input checks of the reconstruction methods, in one place, run once per request.

:func:`check_projections` validates line integrals against their cameras (shape, finite values, sign) and warns
when they are (nearly) empty; :func:`check_masks` validates collimator masks. The entry points
(:func:`~XRayNeRFLib.recon.api.reconstruct`, :func:`~XRayNeRFLib.recon.fdk.fdk`,
:func:`~XRayNeRFLib.recon.voxel.reconstruct_voxel`, :func:`~XRayNeRFLib.recon.nerf.reconstruct_nerf`) call them
unless their caller already did (``checked=True``: ``reconstruct`` passing its validated inputs on to a method,
a method starting from FDK).
"""

from __future__ import annotations

import warnings
from typing import Optional

import torch
from torch import Tensor

from ..geometry import Cameras

__all__ = ["check_projections", "check_masks", "check_fov_hits_object"]


def check_projections(projections: Tensor, cameras: Cameras, name: str = "projections") -> Tensor:
    """Validate line integrals against the cameras: (V, H, W) finite. Negative values (noise on empty
    detector regions) are allowed but a stack mostly negative is refused (intensities passed instead of
    line integrals, or a flipped sign). Warns (RuntimeWarning) when they are nearly all zero
    (:func:`check_fov_hits_object`). returns: the projections as a tensor."""
    if not isinstance(projections, Tensor):
        projections = torch.as_tensor(projections)
    if projections.ndim != 3:
        raise ValueError(f"{name} must be (views, rows, columns), got shape {tuple(projections.shape)}")
    v, h, w = projections.shape
    if v != len(cameras) or (w, h) != tuple(cameras.size_px):
        raise ValueError(
            f"{name} ({v} views of {h} rows x {w} columns) and geometry ({len(cameras)} views of "
            f"{cameras.height} rows x {cameras.width} columns) disagree: load the geometry that belongs to these projections"
        )
    if not torch.isfinite(projections).all():
        n = int((~torch.isfinite(projections)).sum())
        raise ValueError(f"{name} contain {n} NaN or infinite pixels; fix or drop those views before reconstructing")
    if float((projections < 0).float().mean()) > 0.5:
        raise ValueError(
            f"more than half of the {name} are negative: these are not line integrals (-log(I/I0)); convert "
            "intensities with line_integrals_from_intensities"
        )
    check_fov_hits_object(projections)
    return projections


def check_masks(masks: Optional[Tensor], projections: Tensor) -> Optional[Tensor]:
    """Validate per-view pixel masks (True: the pixel saw the beam). None or all True -> None."""
    if masks is None:
        return None
    masks = torch.as_tensor(masks).to(torch.bool)
    if masks.ndim == 2:
        masks = masks.expand(projections.shape)
    if tuple(masks.shape) != tuple(projections.shape):
        raise ValueError(f"masks must have the projections' shape {tuple(projections.shape)}, got {tuple(masks.shape)}")
    if bool(masks.all()):
        return None
    empty = [v for v in range(masks.shape[0]) if not bool(masks[v].any())]
    if empty:
        raise ValueError(f"the masks of views {empty[:10]} exclude every pixel; drop those views or fix the collimator masks")
    return masks


def check_fov_hits_object(projections: Tensor, threshold: float = 1e-3) -> None:
    """Warn when the line integrals are (nearly) all zero: the views probably miss the object."""
    if float(projections.abs().max()) < threshold:
        warnings.warn(
            "the projections are (nearly) empty (max line integral below 1e-3): the object is outside the "
            "field of view, or intensities were passed as line integrals",
            RuntimeWarning,
            stacklevel=3,
        )
