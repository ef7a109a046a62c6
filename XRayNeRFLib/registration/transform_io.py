"""The CT's rigid correction as an ITK transform file that 3D Slicer loads (.h5, .tfm, .txt).

Conventions (Slicer's, docs: developer_guide/modules/transforms): ITK files hold LPS coordinates and the
*resampling* ("from parent") direction, i.e. they map a point of the parent (world) frame to the
child's frame. Slicer loads such a file as a transform node whose *to-parent* matrix is the inverse,
converted to RAS. So for a correction ``ct_moved_from_ct`` (RAS, to parent: the matrix that moves the CT
into place) the file holds ``F @ inverse(ct_moved_from_ct) @ F`` with ``F = diag(-1, -1, 1)``
(LPS <-> RAS). Dragging the CT under the loaded transform in Slicer puts it where the registration
found it, as seen from the X-ray's (initial) camera.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch import Tensor

_LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_EXTENSIONS = (".h5", ".hdf5", ".tfm", ".txt", ".mat")


def _check_path(path: str) -> None:
    if not str(path).lower().endswith(_EXTENSIONS):
        raise ValueError(
            f"transform file {path!r}: use one of the ITK transform extensions {', '.join(_EXTENSIONS)} (.h5 or .tfm load in Slicer)"
        )


def itk_matrix_from_correction(ct_moved_from_ct_ras) -> np.ndarray:
    """(4, 4) RAS to-parent correction -> (4, 4) LPS resampling matrix as stored in the ITK file."""
    m = np.asarray(torch.as_tensor(ct_moved_from_ct_ras, dtype=torch.float64), dtype=np.float64)
    if m.shape != (4, 4) or not np.isfinite(m).all():
        raise ValueError(f"the correction must be a finite 4x4 matrix, got shape {m.shape}")
    return _LPS_FROM_RAS @ np.linalg.inv(m) @ _LPS_FROM_RAS


def write_ct_correction(path: str, ct_moved_from_ct_ras) -> None:
    """Write the correction (4, 4, RAS, to parent) as an ITK AffineTransform (double, centre 0)."""
    import SimpleITK as sitk

    _check_path(path)
    a = itk_matrix_from_correction(ct_moved_from_ct_ras)
    t = sitk.AffineTransform(3)
    t.SetMatrix(a[:3, :3].flatten().tolist())
    t.SetTranslation(a[:3, 3].tolist())
    t.SetCenter((0.0, 0.0, 0.0))
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    sitk.WriteTransform(t, str(path))


def read_ct_correction(path: str) -> Tensor:
    """Read an ITK transform file (any linear transform ITK can read) back as the (4, 4) float64 RAS
    to-parent matrix that Slicer would show for it."""
    import SimpleITK as sitk

    if not os.path.exists(path):
        raise ValueError(f"transform file {path!r} does not exist")
    t = sitk.ReadTransform(str(path))
    # Sample the transform at the origin and the unit axes: works for every linear ITK transform type.
    origin = np.array(t.TransformPoint((0.0, 0.0, 0.0)))
    cols = [np.array(t.TransformPoint(tuple(e))) - origin for e in np.eye(3)]
    a = np.eye(4)
    a[:3, :3] = np.stack(cols, axis=1)
    a[:3, 3] = origin
    probe = np.array([13.0, -7.0, 29.0])
    if np.abs(np.array(t.TransformPoint(tuple(probe))) - (a[:3, :3] @ probe + a[:3, 3])).max() > 1e-6 * (1 + np.abs(a).max()):
        raise ValueError(f"transform file {path!r} holds a non-linear transform; expected a rigid/affine one")
    return torch.from_numpy(np.linalg.inv(_LPS_FROM_RAS @ a @ _LPS_FROM_RAS))
