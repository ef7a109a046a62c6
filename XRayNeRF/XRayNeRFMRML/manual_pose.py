"""Manual alignment: the module's nudge buttons move the CT's transform node along / about the detector axes.

The axes are the X-ray camera's (docs/geometry.md): x along increasing columns (screen right in the overlay
view), y along increasing rows (screen down), z along the beam from the source to the detector. A nudge is a
world (RAS mm) motion ``C`` of the CT: a rotation by ``rotation_deg`` (right-handed) about the axis through
``center_ras`` (default the CT's centre), then a translation by ``translation_mm`` along it. The transform
node's matrix to parent ``B`` becomes ``inv(P) @ C @ P @ B`` with ``P`` the node's own parent-to-world (as
``registration.ct_to_parent``), so that the CT's world pose becomes ``C @ P @ B``.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import slicer

from .nodes import world_from_node

AXES = ("x", "y", "z")  # camera axes: columns, rows, beam


def detector_axes_ras(cameras, view: int = 0) -> np.ndarray:
    """(3, 3) float64: rows are the camera's x (increasing columns), y (increasing rows) and z (along the
    beam, source to detector) axes as unit vectors in world RAS."""
    w = cameras.world_from_camera[view].detach().double().cpu().numpy()
    return w[:3, :3].T.copy()


def rotation_about(axis: np.ndarray, angle_deg: float) -> np.ndarray:
    """(3, 3) float64: the right-handed rotation by ``angle_deg`` about the unit vector ``axis`` (Rodrigues)."""
    a = np.asarray(axis, dtype=np.float64)
    a = a / np.linalg.norm(a)
    k = np.array([[0.0, -a[2], a[1]], [a[2], 0.0, -a[0]], [-a[1], a[0], 0.0]])
    t = np.deg2rad(float(angle_deg))
    return np.eye(3) + np.sin(t) * k + (1.0 - np.cos(t)) * (k @ k)


def nudge_motion(cameras, axis: str, *, rotation_deg: float = 0.0, translation_mm: float = 0.0, center_ras: Sequence[float]) -> np.ndarray:
    """(4, 4) float64 world motion C of the module docstring for camera axis ``axis`` ("x", "y" or "z")."""
    if axis not in AXES:
        raise ValueError(f"unknown detector axis {axis!r}; use one of {AXES}")
    a = detector_axes_ras(cameras)[AXES.index(axis)]
    c = np.asarray(center_ras, dtype=np.float64).reshape(3)
    m = np.eye(4)
    m[:3, :3] = rotation_about(a, rotation_deg)
    m[:3, 3] = c - m[:3, :3] @ c + float(translation_mm) * a
    return m


def nudge_transform(
    transform_node,
    cameras,
    axis: str,
    *,
    rotation_deg: float = 0.0,
    translation_mm: float = 0.0,
    center_ras: Optional[Sequence[float]] = None,
) -> np.ndarray:
    """Apply :func:`nudge_motion` to the CT's linear transform node; returns its new matrix to parent (4, 4).
    center_ras: (3,) RAS mm, world (required: the Logic passes the CT's centre)."""
    if transform_node is None:
        raise ValueError("select the CT's transform to move it")
    if center_ras is None:
        raise ValueError("nudge_transform needs the rotation centre (the CT's centre, RAS mm)")
    motion = nudge_motion(cameras, axis, rotation_deg=rotation_deg, translation_mm=translation_mm, center_ras=center_ras)
    parent = world_from_node(transform_node)
    before = slicer.util.arrayFromTransformMatrix(transform_node)
    after = np.linalg.inv(parent) @ motion @ parent @ before
    transform_node.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(after))
    return after
