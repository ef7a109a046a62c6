"""Displaced (offset) detector weighting for FDK: a detector shifted sideways sees one side of a full
orbit's field of view twice and the other side once; Wang's weights make each line count once.

Wang G., "X-ray micro-CT with a displaced detector array", Med. Phys. 29(7):1634-1636, 2002, as RTK's
``DisplacedDetectorImageFilter`` implements it (and tested against it). Along the filtered detector axis, with
x the distance (mm) from the principal point towards the wider side and Delta the distance to the
outermost pixel centre on the narrower side::

    w(x) = 0                           x <= -Delta
    w(x) = sin^2(pi/4 (1 + x / Delta))  |x| < Delta     (RTK: 1 + sin(pi/2 x / Delta) = 2 w(x))
    w(x) = 1                           x >= Delta

so that w(x) + w(-x) = 1: the two measurements of a line (the ray at x in one view, at -x in the
opposite view) add up to one. These weights replace FDK's factor 1/2 of a full scan; on a short scan they
are combined with Parker's (:mod:`parker`; the half-fan field of view is then incomplete). The iterative methods need no
weighting: they fit each measured ray once, whatever the detector's position.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["displaced_detector_weights"]


def displaced_detector_weights(x_mm: Tensor, near_mm: Tensor, far_mm: Tensor) -> Tensor:
    """Wang's weights (module docstring) for detector positions ``x_mm`` (V, U) (mm from the principal point,
    along the filtered axis, increasing with the pixel index) of views whose outermost pixel centres lie
    ``near_mm`` (V,) before and ``far_mm`` (V,) after the principal point. Returns (V, U) in [0, 1]."""
    wide_up = far_mm >= near_mm  # the wider side is towards increasing x
    delta = torch.minimum(near_mm, far_mm).clamp_min(1e-9)[:, None]
    s = torch.where(wide_up, 1.0, -1.0).to(x_mm.dtype)[:, None]
    t = (s * x_mm / delta).clamp(-1.0, 1.0)
    return torch.sin(math.pi / 4 * (1.0 + t)) ** 2
