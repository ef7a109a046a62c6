"""The manual-alignment controls as a rigid transform (numpy only).

The six controls are a *nudge* applied on top of the CT's current pose ``base`` (its transform node's matrix to
parent, RAS mm): rotations ``rx, ry, rz`` in degrees about the patient's R, A and S axes through the CT's
centre (as posed by ``base``), applied in that order (R first), then a translation ``t = (tr, ta, ts)`` in mm
along R, A, S::

    to_parent = T(c + t) @ Rz(rz) @ Ry(ry) @ Rx(rx) @ T(-c) @ base,     c = base @ centre_of_the_CT_grid

All zeros give ``base`` back exactly. After a registration, an Accept or a Revert the app takes the transform as
the new ``base`` and sets the controls back to zero.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def rotation_deg(rx: float, ry: float, rz: float) -> np.ndarray:
    """(3, 3) float64: Rz(rz) @ Ry(ry) @ Rx(rx), angles in degrees about R, A, S."""
    a, b, c = (math.radians(float(v)) for v in (rx, ry, rz))
    rxm = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    rym = np.array([[math.cos(b), 0, math.sin(b)], [0, 1, 0], [-math.sin(b), 0, math.cos(b)]])
    rzm = np.array([[math.cos(c), -math.sin(c), 0], [math.sin(c), math.cos(c), 0], [0, 0, 1]])
    return rzm @ rym @ rxm


def nudged(
    base: np.ndarray, centre_ras: Sequence[float], rotation_deg_rxyz: Sequence[float], translation_mm: Sequence[float]
) -> np.ndarray:
    """(4, 4) float64 to-parent matrix: ``base`` moved by the controls (see the module docstring).
    centre_ras: (3,) the CT grid centre in the CT's own frame (before ``base``), RAS mm."""
    base = np.asarray(base, dtype=np.float64)
    c = (base @ np.r_[np.asarray(centre_ras, dtype=np.float64), 1.0])[:3]
    m = np.eye(4)
    m[:3, :3] = rotation_deg(*rotation_deg_rxyz)
    m[:3, 3] = c + np.asarray(translation_mm, dtype=np.float64) - m[:3, :3] @ c
    return m @ base


def mean_target_error_mm(a: np.ndarray, b: np.ndarray, points_ras: np.ndarray) -> float:
    """Mean distance (mm) between the points (N, 3) moved by the 4x4 transforms ``a`` and ``b``."""
    p = np.c_[np.asarray(points_ras, dtype=np.float64), np.ones(len(points_ras))]
    return float(np.linalg.norm((p @ np.asarray(a).T - p @ np.asarray(b).T)[:, :3], axis=1).mean())
