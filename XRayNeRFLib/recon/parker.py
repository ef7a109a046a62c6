"""Parker's short-scan weights, and their combination with an offset (displaced) detector's weights.

Fan-beam picture in the orbit plane: a view at gantry angle beta (rad, 0 at the scan's first view, increasing
with the rotation) measures the ray at fan angle gamma (rad, from the principal ray, positive towards the side
the source moves away from). The same line is measured again from the other side at the conjugate
``(beta + pi + 2 gamma, -gamma)`` (modulo 2 pi). A short scan covers [0, pi + 2 delta]; FDK is exact (in the
orbit plane) when the weights of the measurements of each line add up to one.

- :func:`parker_weights`: Parker D. L., "Optimal short scan convolution reconstruction for fan beam CT",
  Med. Phys. 9(2):254-257, 1982: smooth weights in [0, 1] that add up to one over each pair of conjugate rays
  when delta >= the half fan angle.
- :func:`short_scan_displaced_weights`: a short scan with an offset detector. Each measurement gets the
  product c = w_d * p of the displaced-detector weight w_d (:mod:`displaced`, a function of gamma) and Parker's
  p, divided by the sum of c over the line's measurements (this one and its conjugate, when that lies in the
  scan): W = c / (c + c_conj), so that every line that is measured at all counts exactly once (the general
  normalisation of redundant data, Silver M. D., "A method for including redundant data in computed
  tomography", Med. Phys. 27(4):773-774, 2000). RTK chains its ``DisplacedDetectorImageFilter``
  and ``ParkerShortScanImageFilter`` and so applies the plain product 2 w_d p, whose two measurements of a line
  do not add up to one unless w_d = 1/2 (``tests/test_recon_truncation.py`` measures the difference).
  Lines measured by neither (beyond the narrow side, their conjugate outside the scan) are missing: FDK pads the
  narrow side with an extrapolation that stands in for them (``MISSING_LINE_FLOOR``); it is exact only where no
  missing line crosses the object, e.g. an object inside the region every view sees.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .displaced import displaced_detector_weights

__all__ = ["MISSING_LINE_FLOOR", "parker_weights", "parker_weight_at", "short_scan_displaced_weights"]

# Wang's weight is raised to this floor in :func:`short_scan_displaced_weights`: FDK pads the narrow side with the
# narrow edge's extrapolation (recon/truncation.py), and a padded pixel then stands in for a line that no view
# measured (weight ~1 after the normalisation) while a line measured from the wide side keeps its measurement
# (the padded pixel's share ~ the floor times Parker's ratio, ~0 away from the scan's ends). Without it the
# padded side is zero, the rows end abruptly at the narrow edge and the ramp filter rings through an object wider
# than the region every view sees (tests/test_recon_truncation.py, docs/reconstruction.md for the measurements).
MISSING_LINE_FLOOR = 0.05


def parker_weight_at(beta_rad: Tensor, gamma_rad: Tensor, delta_rad: float) -> Tensor:
    """Parker's weight of the ray (beta, gamma), elementwise over broadcast tensors (rad); 0 outside the scan
    [0, pi + 2 delta]. Same dtype as the inputs, values in [0, 1]."""
    b, g, d = beta_rad, gamma_rad, delta_rad
    eps = 1e-12
    w1 = torch.sin(math.pi / 4 * b / (d - g).clamp_min(eps)) ** 2
    w3 = torch.sin(math.pi / 4 * (math.pi + 2 * d - b) / (d + g).clamp_min(eps)) ** 2
    w = torch.ones(torch.broadcast_shapes(b.shape, g.shape), dtype=b.dtype)
    w = torch.where(b < 2 * d - 2 * g, w1, w)
    w = torch.where(b > math.pi - 2 * g, w3, w)
    outside = (b < 0) | (b > math.pi + 2 * d)
    return torch.where(outside, torch.zeros_like(w), w).clamp(0.0, 1.0)


def parker_weights(angles_rad: Tensor, gamma_rad: Tensor, half_fan_rad: float) -> Tensor:
    """Parker (1982) short-scan weights: (V, U) for gantry angles beta (V,) in [0, pi + 2 delta] and fan
    angles gamma (U,) of the filtered detector columns. delta = half_fan_rad is the half over-scan."""
    return parker_weight_at(angles_rad[:, None], gamma_rad[None, :], half_fan_rad)


def short_scan_displaced_weights(
    beta_rad: Tensor, gamma_rad: Tensor, x_mm: Tensor, near_mm: Tensor, far_mm: Tensor, delta_rad: float
) -> Tensor:
    """Redundancy-normalised weights of a short scan with an offset detector (module docstring).

    beta_rad: (V,) gantry angle of each view from the scan's start, in [0, pi + 2 delta].
    gamma_rad: (V, U) fan angle of each filtered detector column (sign as in the module docstring).
    x_mm: (V, U) the same columns in mm from the principal point along the filtered axis (increasing with the
        pixel index), on the detector padded to symmetric; near_mm, far_mm: (V,) distances from the principal
        point to the real detector's outermost pixel centres before and after it
        (:func:`displaced.displaced_detector_weights`; Wang's weight is raised to ``MISSING_LINE_FLOOR``).
        gamma and x must be odd functions of each other (the mirrored column -x has fan angle -gamma).
    delta_rad: half the over-scan, (scan range - pi) / 2.
    Returns (V, U) weights in [0, 1], the same dtype as gamma; 0 where neither measurement has weight.
    """
    b = beta_rad[:, None]
    own = displaced_detector_weights(x_mm, near_mm, far_mm).clamp_min(MISSING_LINE_FLOOR) * parker_weight_at(b, gamma_rad, delta_rad)
    mirrored = displaced_detector_weights(-x_mm, near_mm, far_mm).clamp_min(MISSING_LINE_FLOOR)
    conj = parker_weight_at(b + math.pi + 2 * gamma_rad, -gamma_rad, delta_rad)
    conj = conj + parker_weight_at(b - math.pi + 2 * gamma_rad, -gamma_rad, delta_rad)  # at most one is in the scan
    total = own + mirrored * conj
    return torch.where(total > 1e-12, own / total.clamp_min(1e-12), torch.zeros_like(own))
