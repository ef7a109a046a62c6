"""Pose parametrization for 2D/3D registration.

The optimiser moves the X-ray camera, not the CT. Six parameters ``x = (rx, ry, rz, tx, ty, tz)``
(dimensionless) describe a rigid correction ``M`` applied on the world side of the initial pose::

    world_from_camera(x) = M(x) @ world_from_camera_init
    M(x) = T(c + t) @ R(omega) @ T(-c),   omega = rotation_scale_rad * x[:3],  t = translation_scale_mm * x[3:]

* ``c`` is the centre of rotation (RAS mm): the CT centre by default, or a user point (the anatomy of
  interest). Rotating about a point inside the anatomy, instead of about the source, decouples rotation
  from translation: a small rotation barely moves the anatomy's projection centre.
* ``omega`` and ``t`` are expressed in the axes of the *initial camera* (x along columns, y along rows,
  z along the principal ray) and rotated into RAS: ``omega_ras = A omega``, ``t_ras = A t`` with ``A`` the
  initial camera's rotation. In-plane (x, y) and depth (z) components then mean the same thing for every
  view direction, and the depth translation, which changes the image only through magnification, can be
  given its own scale.
* The rotation is the SO(3) exponential (Rodrigues) of ``omega``; it is smooth at 0.
* ``rotation_scale_rad`` and ``translation_scale_mm`` make one unit of every parameter a comparable image
  change (defaults: 1 unit = 1 degree and 1 mm), which is what gradient steps need.

The CT's correction (what to apply to the CT in the scene so that, seen from the *initial* camera, it
looks as it does from the registered camera) is ``ct_moved_from_ct = M^-1`` (RAS, "to parent"):
:func:`ct_correction_from_poses`, the one place of that formula for every front end.

A DICOM X-ray does not register the C-arm to the CT; read for a registration, its isocentre is put at the
CT's grid centre (:func:`ct_isocenter_ras`), by the command line and the Slicer module alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from ..geometry import RIGID_TOL, homogeneous, nearest_rigid, rigid_inverse


def skew(v: Tensor) -> Tensor:
    """(..., 3) -> (..., 3, 3) cross-product matrices."""
    z = torch.zeros_like(v[..., 0])
    x, y, w = v[..., 0], v[..., 1], v[..., 2]
    return torch.stack([z, -w, y, w, z, -x, -y, x, z], dim=-1).reshape(*v.shape[:-1], 3, 3)


def so3_exp(omega: Tensor) -> Tensor:
    """Rotation vectors (..., 3) (axis * angle, rad) -> rotations (..., 3, 3); differentiable at 0."""
    theta2 = (omega * omega).sum(-1, keepdim=True)[..., None]  # (..., 1, 1)
    small = theta2 < 1e-8
    theta2_safe = torch.where(small, torch.ones_like(theta2), theta2)
    theta = theta2_safe.sqrt()
    a = torch.where(small, 1 - theta2 / 6, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24, (1 - torch.cos(theta)) / theta2_safe)
    k = skew(omega)
    eye = torch.eye(3, dtype=omega.dtype, device=omega.device).expand_as(k)
    return eye + a * k + b * (k @ k)


def so3_log(rotation: Tensor) -> Tensor:
    """Rotations (..., 3, 3) -> rotation vectors (..., 3), angle in [0, pi]."""
    r = rotation.double()
    cos = ((r.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2).clamp(-1, 1)
    theta = torch.acos(cos)
    vee = torch.stack([r[..., 2, 1] - r[..., 1, 2], r[..., 0, 2] - r[..., 2, 0], r[..., 1, 0] - r[..., 0, 1]], dim=-1)
    sin = torch.sin(theta)
    out = torch.where((sin.abs() > 1e-6)[..., None], vee * (theta / (2 * sin))[..., None], vee / 2)
    # Near pi: axis from the symmetric part.
    near_pi = theta > math.pi - 1e-3
    if near_pi.any():
        sym = (r + r.transpose(-1, -2)) / 2 - torch.eye(3, dtype=r.dtype, device=r.device) * cos[..., None, None]
        idx = sym.diagonal(dim1=-2, dim2=-1).argmax(-1)
        col = torch.gather(sym, -1, idx[..., None, None].expand(*sym.shape[:-1], 1))[..., 0]
        axis = col / col.norm(dim=-1, keepdim=True).clamp(min=1e-12)
        axis = torch.where((axis * vee).sum(-1, keepdim=True) < 0, -axis, axis)
        out = torch.where(near_pi[..., None], axis * theta[..., None], out)
    return out.to(rotation.dtype)


def rotation_angle_deg(rotation: Tensor) -> Tensor:
    """Angle of rotations (..., 3, 3) in degrees."""
    return torch.rad2deg(so3_log(rotation).norm(dim=-1))


def check_rigid(matrix: Tensor, name: str = "pose", tol: float = RIGID_TOL) -> Tensor:
    """A rigid 4x4 transform (float64) from a near-rigid one: :func:`XRayNeRFLib.geometry.nearest_rigid`
    (rounded matrices snapped; scale, shear or mirroring raise ``GeometryError``, a ValueError)."""
    return nearest_rigid(matrix, name, tol)


@dataclass
class PoseParametrization:
    """Maps 6 (or 6 + intrinsics) dimensionless parameters to camera poses; see the module docstring.

    world_from_camera_init: (4, 4) rigid, RAS mm.
    center_ras: (3,) rotation centre, RAS mm.
    rotation_scale_rad: radians per unit of the rotation parameters (default 1 degree).
    translation_scale_mm: (3,) or scalar, mm per unit of the translation parameters, in camera axes.
    """

    world_from_camera_init: Tensor
    center_ras: Tensor
    rotation_scale_rad: float = math.radians(1.0)
    translation_scale_mm: object = 1.0

    def __post_init__(self) -> None:
        self.world_from_camera_init = check_rigid(self.world_from_camera_init, "initial world_from_camera")
        c = torch.as_tensor(self.center_ras, dtype=torch.float64).reshape(-1)
        if c.numel() != 3 or not torch.isfinite(c).all():
            raise ValueError(f"rotation centre must be 3 finite RAS mm coordinates, got {c.tolist()}")
        self.center_ras = c
        if not self.rotation_scale_rad > 0:
            raise ValueError(f"rotation scale must be > 0 rad, got {self.rotation_scale_rad}")
        ts = torch.as_tensor(self.translation_scale_mm, dtype=torch.float64).reshape(-1).expand(3).clone()
        if not (ts > 0).all():
            raise ValueError(f"translation scale must be > 0 mm, got {ts.tolist()}")
        self.translation_scale_mm = ts

    def correction(self, x: Tensor) -> Tensor:
        """World-side correction M(x): (..., 6) -> (..., 4, 4), RAS mm; dtype of x."""
        dt, dev = x.dtype, x.device
        a = self.world_from_camera_init[:3, :3].to(dt).to(dev)
        c = self.center_ras.to(dt).to(dev)
        omega = (x[..., :3] * self.rotation_scale_rad) @ a.T  # (..., 3) RAS
        t = (x[..., 3:6] * self.translation_scale_mm.to(dt).to(dev)) @ a.T
        r = so3_exp(omega)
        trans = c + t - r @ c
        return homogeneous(r, trans)

    def world_from_camera(self, x: Tensor) -> Tensor:
        """(..., 6) -> (..., 4, 4) poses, differentiable in x."""
        return self.correction(x) @ self.world_from_camera_init.to(x.dtype).to(x.device)

    def parameters_of(self, world_from_camera: Tensor) -> Tensor:
        """Inverse map: a pose (4, 4) -> its parameters (6,) float64 (round trip of world_from_camera)."""
        w = check_rigid(world_from_camera, "world_from_camera")
        m = w @ rigid_inverse(self.world_from_camera_init)
        r, tr = m[:3, :3], m[:3, 3]
        a = self.world_from_camera_init[:3, :3]
        omega_ras = so3_log(r)
        t_ras = tr - self.center_ras + r @ self.center_ras
        return torch.cat([(a.T @ omega_ras) / self.rotation_scale_rad, (a.T @ t_ras) / self.translation_scale_mm])

    def ct_correction_ras(self, x: Tensor) -> Tensor:
        """The CT's rigid correction (4, 4) RAS, 'to parent' (moves the CT; the camera stays at its
        initial pose): M(x)^-1. float64."""
        return rigid_inverse(self.correction(x.detach().double()))


def ct_correction_from_poses(world_from_camera: Tensor, world_from_camera_init: Tensor) -> Tensor:
    """The CT's rigid correction (4, 4) float64, RAS mm, 'to parent': moving the CT by it, the *initial*
    camera sees what the registered camera sees. The camera moved by M = w @ w0^-1, so the CT moves by
    M^-1 = w0 @ w^-1 (equal to :meth:`PoseParametrization.ct_correction_ras` of the pose's parameters).

    world_from_camera: (4, 4) the registered pose; world_from_camera_init: (4, 4) the initial pose."""
    w = torch.as_tensor(world_from_camera, dtype=torch.float64)
    w0 = torch.as_tensor(world_from_camera_init, dtype=torch.float64)
    return w0 @ rigid_inverse(w)


def ct_isocenter_ras(volume) -> Tensor:
    """(3,) float64 RAS mm: the C-arm isocentre given to a DICOM X-ray read for registration to this CT (the
    centre of the CT's voxel grid; DICOM does not register the C-arm to the CT). ``volume``: a
    :class:`~XRayNeRFLib.volume.Volume` (its ``ras_from_ijk`` includes any transform already applied)."""
    return volume.center_ras().detach().to("cpu", torch.float64)


def pose_errors(world_from_camera: Tensor, world_from_camera_true: Tensor, center_ras: Optional[Tensor] = None) -> dict:
    """Rotation error (deg) and translation error (mm) of a camera pose, measured as the rigid motion
    taking the true pose to the estimate, with translation taken at ``center_ras`` (the displacement of
    that point; default the world origin) so that it is independent of the source distance."""
    a = torch.as_tensor(world_from_camera, dtype=torch.float64)
    b = torch.as_tensor(world_from_camera_true, dtype=torch.float64)
    m = a @ rigid_inverse(b)  # estimate_from_true in world
    c = torch.zeros(3, dtype=torch.float64) if center_ras is None else torch.as_tensor(center_ras, dtype=torch.float64)
    moved = m[:3, :3] @ c + m[:3, 3]
    return {"rotation_deg": float(rotation_angle_deg(m[:3, :3])), "translation_mm": float((moved - c).norm())}


def target_registration_error(world_from_camera: Tensor, world_from_camera_true: Tensor, points_ras: Tensor) -> Tensor:
    """3D target registration error (N,) mm of landmarks ``points_ras`` (N, 3) inside the CT: the
    distance between each landmark's position in the estimated camera frame and in the true camera
    frame (equivalently, |M_est^-1 p - M_true^-1 p| for the CT corrections of a shared initial pose)."""
    a = torch.as_tensor(world_from_camera, dtype=torch.float64)
    b = torch.as_tensor(world_from_camera_true, dtype=torch.float64)
    p = torch.as_tensor(points_ras, dtype=torch.float64)
    # Camera coordinates of each landmark under both poses; the difference is the 3D misplacement.
    pa = (rigid_inverse(a) @ torch.cat([p, torch.ones_like(p[:, :1])], -1).T).T[:, :3]
    pb = (rigid_inverse(b) @ torch.cat([p, torch.ones_like(p[:, :1])], -1).T).T[:, :3]
    return (pa - pb).norm(dim=-1)
