"""Cone-beam / C-arm camera model: one pinhole camera per X-ray view.

Frames and units (docs/geometry.md has the pictures and a worked example)
------------------------------------------------------------------------
World frame: patient RAS in millimetres, as in 3D Slicer (+x towards the patient's right,
+y anterior, +z superior).

Camera frame (one per view), right-handed, millimetres::

                      source (origin)
                         *
                        /|\\          +z: from the source towards the detector, along the principal
                       / | \\             ray (perpendicular to the detector plane)
                      /  |  \\
                     /   |z  \\       detector plane z = sdd_mm
        col 0 ->  +--------------+    +x: along increasing image column (u)
                  |   .  |  .    |    +y: along increasing image row (v)
          row 0   |      o-------|--> x          o = principal point (cu, cv) in pixels
            |     |      |       |
            v     +------|-------+
                         v y

The image is therefore seen from the source ("beam's eye view"). A radiograph displayed the
radiological way (looking at the patient from the detector side) is the left-right mirror of it;
readers of such images flip them on input, never the camera.

Pixels: image arrays are (rows, columns) = (H, W), indexed ``image[row, col]``; pixel coordinates
are 0-based pixel-centre coordinates: pixel (col c, row r) has its centre at camera coordinates
``x = (c - cu) * su``, ``y = (r - cv) * sv``, ``z = sdd`` with pixel spacing (su, sv) in mm.

Projection matrix: a world point X (RAS mm) lands on pixel (c, r) with
``[c, r, 1]^T ~ P [X, 1]^T``, ``P = K [R | t]`` where ``[R | t]`` are the first three rows of
``camera_from_world = inverse(world_from_camera)`` and
``K = [[sdd/su, 0, cu], [0, sdd/sv, cv], [0, 0, 1]]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from .errors import GeometryError

TensorLike = Union[Tensor, float, Sequence[float]]

# DICOM Patient Position (0018,5100) -> rotation taking directions in the C-arm/table frame to patient
# RAS directions. The C-arm frame coincides with the patient frame for a head-first supine (HFS)
# patient: +x towards the table side that is the patient's right, +y up (anterior), +z towards the
# gantry/head end. Columns of each matrix: images of the C-arm +x, +y, +z axes in patient RAS.
PATIENT_FROM_CARM = {
    "HFS": ((1, 0, 0), (0, 1, 0), (0, 0, 1)),
    "HFP": ((-1, 0, 0), (0, -1, 0), (0, 0, 1)),
    "FFS": ((-1, 0, 0), (0, 1, 0), (0, 0, -1)),
    "FFP": ((1, 0, 0), (0, -1, 0), (0, 0, -1)),
    "HFDR": ((0, 1, 0), (-1, 0, 0), (0, 0, 1)),
    "HFDL": ((0, -1, 0), (1, 0, 0), (0, 0, 1)),
    "FFDR": ((0, -1, 0), (-1, 0, 0), (0, 0, -1)),
    "FFDL": ((0, 1, 0), (1, 0, 0), (0, 0, -1)),
}


def _as_tensor(x: TensorLike, dtype: torch.dtype, device: Optional[torch.device] = None) -> Tensor:
    if isinstance(x, Tensor):
        return x.to(dtype=dtype, device=device if device is not None else x.device)
    return torch.as_tensor(x, dtype=dtype, device=device)


def rotation_x(angle_rad: Tensor) -> Tensor:
    """Right-handed rotation about +x. angle_rad: (...,) -> (..., 3, 3)."""
    c, s = torch.cos(angle_rad), torch.sin(angle_rad)
    o, z = torch.ones_like(c), torch.zeros_like(c)
    return torch.stack([o, z, z, z, c, -s, z, s, c], dim=-1).reshape(*angle_rad.shape, 3, 3)


def rotation_y(angle_rad: Tensor) -> Tensor:
    """Right-handed rotation about +y. angle_rad: (...,) -> (..., 3, 3)."""
    c, s = torch.cos(angle_rad), torch.sin(angle_rad)
    o, z = torch.ones_like(c), torch.zeros_like(c)
    return torch.stack([c, z, s, z, o, z, -s, z, c], dim=-1).reshape(*angle_rad.shape, 3, 3)


def rotation_z(angle_rad: Tensor) -> Tensor:
    """Right-handed rotation about +z. angle_rad: (...,) -> (..., 3, 3)."""
    c, s = torch.cos(angle_rad), torch.sin(angle_rad)
    o, z = torch.ones_like(c), torch.zeros_like(c)
    return torch.stack([c, -s, z, s, c, z, z, z, o], dim=-1).reshape(*angle_rad.shape, 3, 3)


def rigid_inverse(a_from_b: Tensor) -> Tensor:
    """Inverse of rigid 4x4 transforms. (..., 4, 4) -> (..., 4, 4), differentiable."""
    r = a_from_b[..., :3, :3]
    t = a_from_b[..., :3, 3:]
    rt = r.transpose(-1, -2)
    top = torch.cat([rt, -rt @ t], dim=-1)
    bottom = torch.zeros_like(a_from_b[..., 3:, :])
    bottom[..., 3] = 1
    return torch.cat([top, bottom], dim=-2)


def homogeneous(rotation: Tensor, translation: Tensor) -> Tensor:
    """(..., 3, 3) and (..., 3) -> (..., 4, 4) rigid transforms."""
    top = torch.cat([rotation, translation.unsqueeze(-1)], dim=-1)
    bottom = torch.zeros(*rotation.shape[:-2], 1, 4, dtype=rotation.dtype, device=rotation.device)
    bottom[..., 0, 3] = 1
    return torch.cat([top, bottom], dim=-2)


# Largest |R^T R - I| (and |det R - 1|, |last row - [0, 0, 0, 1]|) accepted as "rigid, rounded": a
# matrix printed with 7 significant digits or born in float32 deviates by ~1e-7; a real scale, shear
# or skew by far more. The one rule for every pose a user gives (geometry JSON, --init, register()).
RIGID_TOL = 1e-5


def nearest_rotation(rotation, name: str = "rotation", tol: float = RIGID_TOL) -> Tensor:
    """The rotation nearest (Frobenius) to a near-orthonormal 3x3 matrix: (3, 3) float64.

    rotation: (3, 3) array-like. Accepted when |R^T R - I| <= ``tol`` and det R > 0; snapped by SVD
    (R = U S V^T -> U V^T). Raises :class:`~XRayNeRFLib.errors.GeometryError` (``name`` in the
    message and in ``.name``) for non-finite values, a reflection (det < 0) or a real non-rotation
    (scale, shear).
    """
    from .errors import GeometryError

    r = torch.as_tensor(rotation, dtype=torch.float64).detach()
    if tuple(r.shape) != (3, 3):
        raise GeometryError(f"{name} must be a 3x3 matrix, got shape {tuple(r.shape)}", name=name)
    if not torch.isfinite(r).all():
        raise GeometryError(f"{name} contains NaN or infinite values", name=name)
    det = float(torch.linalg.det(r))
    dev = float((r.T @ r - torch.eye(3, dtype=r.dtype)).abs().max())
    if det < 0:
        raise GeometryError(
            f"{name} is not rigid: its 3x3 block is a reflection (determinant {det:.4g} < 0). Give a rotation "
            "plus translation in mm (no mirroring); mirror the image instead of the pose",
            name=name,
        )
    if dev > tol or abs(det - 1) > tol:
        raise GeometryError(
            f"{name} is not rigid: its 3x3 block is not a rotation (|R^T R - I| = {dev:.3g}, det = {det:.6g}; "
            f"rounding is accepted up to {tol:g}). Give a rotation plus translation in mm, without scaling or shear",
            name=name,
        )
    u, _, vt = torch.linalg.svd(r)
    return u @ vt


def nearest_rigid(matrix, name: str = "pose", tol: float = RIGID_TOL) -> Tensor:
    """A near-rigid 4x4 transform snapped to the nearest rigid one: (4, 4) float64, same units.

    matrix: (4, 4) array-like (row-major, [R | t; 0 0 0 1]). The rotation block goes through
    :func:`nearest_rotation` (same ``tol``), the last row must be [0, 0, 0, 1] within ``tol`` and is
    set exactly; the translation is kept. Raises :class:`~XRayNeRFLib.errors.GeometryError`.
    """
    from .errors import GeometryError

    m = torch.as_tensor(matrix, dtype=torch.float64).detach()
    if tuple(m.shape) != (4, 4):
        raise GeometryError(f"{name} must be a 4x4 matrix (row-major list of 4 rows), got shape {tuple(m.shape)}", name=name)
    if not torch.isfinite(m).all():
        raise GeometryError(f"{name} contains NaN or infinite values", name=name)
    if float((m[3] - torch.tensor([0, 0, 0, 1.0], dtype=m.dtype)).abs().max()) > tol:
        raise GeometryError(f"{name}: the last row must be [0, 0, 0, 1], got {m[3].tolist()}", name=name)
    out = torch.eye(4, dtype=torch.float64)
    out[:3, :3] = nearest_rotation(m[:3, :3], name, tol)
    out[:3, 3] = m[:3, 3]
    return out


@dataclass
class Cameras:
    """A batch of V cone-beam views sharing one detector size.

    world_from_camera:   (V, 4, 4) rigid transforms, patient RAS mm <- camera mm (source at origin).
    sdd_mm:              (V,) source-to-detector distance, mm, > 0.
    pixel_spacing_mm:    (V, 2) [column (u), row (v)] pixel spacing on the detector, mm, > 0.
    principal_point_px:  (V, 2) [column, row] foot of the perpendicular from the source on the
                         detector, 0-based pixel-centre coordinates.
    size_px:             (columns W, rows H) of every image.

    All tensors share dtype and device (float32 by default, float64 for tests) and may require
    gradients: every derived quantity (projection matrices, ray directions) is differentiable with
    respect to pose and intrinsics.
    """

    world_from_camera: Tensor
    sdd_mm: Tensor
    pixel_spacing_mm: Tensor
    principal_point_px: Tensor
    size_px: Tuple[int, int]

    def __post_init__(self) -> None:
        w = self.world_from_camera
        if w.ndim == 2:
            w = w.unsqueeze(0)
        if w.ndim != 3 or w.shape[-2:] != (4, 4):
            raise ValueError(f"world_from_camera must be (V, 4, 4), got {tuple(self.world_from_camera.shape)}")
        if not torch.is_floating_point(w):
            w = w.to(torch.get_default_dtype())
        v = w.shape[0]
        dtype, device = w.dtype, w.device
        self.world_from_camera = w

        def per_view(x: TensorLike, name: str, width: int) -> Tensor:
            t = _as_tensor(x, dtype, device)
            target = (v,) if width == 1 else (v, width)
            if t.ndim == 0 or (width > 1 and t.ndim == 1):
                t = t.expand(target)
            if tuple(t.shape) != target:
                raise ValueError(f"{name} must have shape {target} (one value per view), got {tuple(t.shape)}")
            return t

        self.sdd_mm = per_view(self.sdd_mm, "sdd_mm", 1)
        self.pixel_spacing_mm = per_view(self.pixel_spacing_mm, "pixel_spacing_mm", 2)
        self.principal_point_px = per_view(self.principal_point_px, "principal_point_px", 2)
        try:
            cols, rows = (int(s) for s in self.size_px)
        except (TypeError, ValueError):
            raise ValueError(f"size_px must be (columns, rows), got {self.size_px!r}") from None
        if cols < 1 or rows < 1:
            raise ValueError(f"size_px must be positive (columns, rows), got {self.size_px!r}")
        self.size_px = (cols, rows)
        self.validate()

    # -- checks --------------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise :class:`~XRayNeRFLib.errors.GeometryError` (a ValueError) on non-finite values, non-positive
        distances, or non-rigid poses; ``name`` is the offending field, "view i" prefixed where one view is at fault.

        The rigidity check is the container's invariant (float64 poses to 1e-8): a person's near-rigid matrix goes
        through :func:`nearest_rigid` first."""
        from .errors import GeometryError

        for f in ("world_from_camera", "sdd_mm", "pixel_spacing_mm", "principal_point_px"):
            t = getattr(self, f).detach()
            if not torch.isfinite(t).all():
                raise GeometryError(f"camera {f} contains NaN or infinite values", name=f)
        if (self.sdd_mm.detach() <= 0).any():
            bad = int(torch.nonzero(self.sdd_mm.detach() <= 0)[0, 0])
            raise GeometryError(
                f"view {bad}: source-to-detector distance must be > 0 mm, got {float(self.sdd_mm[bad]):g}", name=f"view {bad} sdd_mm"
            )
        if (self.pixel_spacing_mm.detach() <= 0).any():
            bad = int(torch.nonzero((self.pixel_spacing_mm.detach() <= 0).any(-1))[0, 0])
            raise GeometryError(
                f"view {bad}: pixel spacing must be > 0 mm, got {self.pixel_spacing_mm[bad].tolist()}",
                name=f"view {bad} pixel_spacing_mm",
            )
        w = self.world_from_camera.detach().double()
        r = w[:, :3, :3]
        eye = torch.eye(3, dtype=r.dtype, device=r.device)
        ortho = (r.transpose(-1, -2) @ r - eye).abs().amax(dim=(-1, -2))
        det = torch.linalg.det(r)
        tol = 1e-4 if self.world_from_camera.dtype in (torch.float32, torch.float16, torch.bfloat16) else 1e-8
        bad = (
            (ortho > tol)
            | ((det - 1).abs() > tol)
            | ((w[:, 3] - torch.tensor([0, 0, 0, 1.0], dtype=w.dtype, device=w.device)).abs().amax(-1) > tol)
        )
        if bad.any():
            i = int(torch.nonzero(bad)[0, 0])
            why = "is a reflection (det -1): the image is mirrored; flip the image instead" if det[i] < 0 else "is not a rigid transform"
            raise GeometryError(f"view {i}: world_from_camera {why}", name=f"view {i} world_from_camera")

    # -- basic container behaviour --------------------------------------------------------------
    def __len__(self) -> int:
        return self.world_from_camera.shape[0]

    def __getitem__(self, index) -> "Cameras":
        if isinstance(index, int):
            index = slice(index, index + 1) if index != -1 else slice(-1, None)
        return Cameras(
            self.world_from_camera[index],
            self.sdd_mm[index],
            self.pixel_spacing_mm[index],
            self.principal_point_px[index],
            self.size_px,
        )

    @property
    def dtype(self) -> torch.dtype:
        return self.world_from_camera.dtype

    @property
    def device(self) -> torch.device:
        return self.world_from_camera.device

    @property
    def width(self) -> int:
        return self.size_px[0]

    @property
    def height(self) -> int:
        return self.size_px[1]

    def to(self, device=None, dtype=None) -> "Cameras":
        """Move/cast all tensors. Casting to a higher precision snaps each rotation to the nearest
        exact one (the rounding of a float32 rotation is far above float64's rigidity tolerance); the
        correction is a constant, so gradients pass through unchanged."""
        kw = {}
        for f in fields(self):
            val = getattr(self, f.name)
            kw[f.name] = val.to(device=device, dtype=dtype) if isinstance(val, Tensor) else val
        w = kw["world_from_camera"]
        if torch.finfo(w.dtype).eps < torch.finfo(self.dtype).eps:
            with torch.no_grad():
                u, _, vh = torch.linalg.svd(w[:, :3, :3])
                snapped = u @ vh
            correction = torch.zeros_like(w)
            correction[:, :3, :3] = snapped - w[:, :3, :3].detach()
            correction[:, 3, :] = torch.tensor([0, 0, 0, 1.0], dtype=w.dtype, device=w.device) - w[:, 3, :].detach()
            kw["world_from_camera"] = w + correction
        return Cameras(**kw)

    @staticmethod
    def concatenate(cameras: Sequence["Cameras"]) -> "Cameras":
        sizes = {c.size_px for c in cameras}
        if len(sizes) != 1:
            raise ValueError(f"cannot stack views with different detector sizes {sorted(sizes)}")
        return Cameras(
            torch.cat([c.world_from_camera for c in cameras]),
            torch.cat([c.sdd_mm for c in cameras]),
            torch.cat([c.pixel_spacing_mm for c in cameras]),
            torch.cat([c.principal_point_px for c in cameras]),
            cameras[0].size_px,
        )

    def downsampled(self, factor: int) -> "Cameras":
        """The same views on a coarser detector: factor x factor pixels binned into one.

        size_px becomes floor(size / factor) (trailing pixels dropped), pixel spacing grows by
        ``factor``, and the principal point moves so that new pixel c covers old pixels
        c*factor .. c*factor + factor - 1 (centre at old coordinate c*factor + (factor-1)/2). Used for
        coarse-to-fine registration and fast previews; bin images with the same rule
        (``images[..., :H*f, :W*f].reshape(..., H, f, W, f).mean((-3, -1))``).
        """
        f = int(factor)
        if f < 1:
            raise ValueError(f"downsampling factor must be a positive integer, got {factor!r}")
        cols, rows = self.width // f, self.height // f
        if cols < 1 or rows < 1:
            raise ValueError(f"a factor of {f} leaves no pixels of a {self.width}x{self.height} detector")
        return Cameras(
            self.world_from_camera,
            self.sdd_mm,
            self.pixel_spacing_mm * f,
            (self.principal_point_px - (f - 1) / 2.0) / f,
            (cols, rows),
        )

    # -- derived quantities (all differentiable) ------------------------------------------------
    def intrinsic_matrices(self) -> Tensor:
        """K: (V, 3, 3) mapping camera mm to homogeneous pixel coordinates."""
        fx = self.sdd_mm / self.pixel_spacing_mm[:, 0]
        fy = self.sdd_mm / self.pixel_spacing_mm[:, 1]
        zeros = torch.zeros_like(fx)
        ones = torch.ones_like(fx)
        return torch.stack(
            [fx, zeros, self.principal_point_px[:, 0], zeros, fy, self.principal_point_px[:, 1], zeros, zeros, ones],
            dim=-1,
        ).reshape(-1, 3, 3)

    def camera_from_world(self) -> Tensor:
        """(V, 4, 4) rigid transforms, camera mm <- patient RAS mm."""
        return rigid_inverse(self.world_from_camera)

    def projection_matrices(self) -> Tensor:
        """P = K [R | t]: (V, 3, 4) mapping homogeneous RAS mm to homogeneous pixel coordinates."""
        return self.intrinsic_matrices() @ self.camera_from_world()[:, :3, :]

    def source_positions(self) -> Tensor:
        """X-ray source positions: (V, 3) RAS mm."""
        return self.world_from_camera[:, :3, 3]

    def principal_directions(self) -> Tensor:
        """Unit camera +z axes (source towards detector): (V, 3) RAS."""
        return self.world_from_camera[:, :3, 2]

    def detector_centers(self) -> Tensor:
        """RAS mm of the centre of the pixel grid ((W-1)/2, (H-1)/2): (V, 3)."""
        centre = torch.tensor([(self.width - 1) / 2.0, (self.height - 1) / 2.0], dtype=self.dtype, device=self.device)
        return self.pixel_to_world(centre.expand(len(self), 1, 2))[:, 0]

    def pixel_to_world(self, pixels: Tensor) -> Tensor:
        """World positions of detector points.

        pixels: (V, N, 2) [column, row] 0-based pixel-centre coordinates (fractional allowed).
        returns: (V, N, 3) RAS mm, on the detector plane.
        """
        xy = (pixels - self.principal_point_px[:, None, :]) * self.pixel_spacing_mm[:, None, :]  # (V, N, 2)
        z = self.sdd_mm[:, None, None].expand(-1, xy.shape[1], 1)
        cam = torch.cat([xy, z], dim=-1)  # (V, N, 3) camera mm
        r = self.world_from_camera[:, :3, :3]
        t = self.world_from_camera[:, :3, 3]
        return cam @ r.transpose(-1, -2) + t[:, None, :]

    def pixel_grid(self, stride: int = 1) -> Tensor:
        """All pixel-centre coordinates, row-major: (H', W', 2) [column, row]. stride subsamples."""
        rows = torch.arange(0, self.height, stride, dtype=self.dtype, device=self.device)
        cols = torch.arange(0, self.width, stride, dtype=self.dtype, device=self.device)
        rr, cc = torch.meshgrid(rows, cols, indexing="ij")
        return torch.stack([cc, rr], dim=-1)

    def project(self, points: Tensor) -> Tuple[Tensor, Tensor]:
        """Project world points into every view.

        points: (N, 3) or (V, N, 3) RAS mm.
        returns: pixels (V, N, 2) [column, row], and depth (V, N) in mm along the camera +z axis
        (positive in front of the source).
        """
        if points.ndim == 2:
            points = points.unsqueeze(0).expand(len(self), -1, -1)
        cam = points @ self.camera_from_world()[:, :3, :3].transpose(-1, -2) + self.camera_from_world()[:, None, :3, 3]
        depth = cam[..., 2]
        k = self.intrinsic_matrices()
        uvw = cam @ k.transpose(-1, -2)
        return uvw[..., :2] / uvw[..., 2:3], depth

    # -- constructors ---------------------------------------------------------------------------
    @staticmethod
    def from_projection_matrices(
        projection_matrices: Tensor,
        size_px: Tuple[int, int],
        pixel_spacing_mm: TensorLike,
        *,
        scene_point_ras: Optional[TensorLike] = None,
        rtol: float = 1e-4,
    ) -> "Cameras":
        """Decompose 3x4 projection matrices (pixels <- RAS mm) into cameras.

        A projection matrix fixes the focal lengths in pixels (sdd/su, sdd/sv) but not sdd and the
        pixel spacing separately, so the detector pixel spacing (from the image header) is required;
        sdd_mm follows. The overall scale and sign of each matrix are free. Raises GeometryError (a ValueError) for
        skewed or mirrored detectors and for matrices whose two focal lengths disagree with the
        given spacing by more than ``rtol``. ``scene_point_ras`` (3,), e.g. the volume centre, must lie in
        front of every source; a matrix of a mirrored detector decomposes into a camera looking away
        from the scene and is refused.

        projection_matrices: (V, 3, 4) or (3, 4). pixel_spacing_mm: (2,) or (V, 2) [column, row].
        """
        p = projection_matrices
        if p.ndim == 2:
            p = p.unsqueeze(0)
        if p.ndim != 3 or p.shape[-2:] != (3, 4):
            raise GeometryError(f"projection matrices must be (V, 3, 4), got {tuple(projection_matrices.shape)}")
        if not torch.isfinite(p).all():
            raise GeometryError("projection matrices contain NaN or infinite values")
        dtype = p.dtype if torch.is_floating_point(p) else torch.get_default_dtype()
        pd = p.detach().to(torch.float64)
        m = pd[:, :, :3]
        if (torch.linalg.det(m).abs() < 1e-12 * m.abs().amax(dim=(-1, -2)) ** 3).any():
            raise GeometryError("a projection matrix has a singular left 3x3 block: it is not a pinhole (cone-beam) camera")
        # RQ decomposition of M = K R through QR of the reversed, transposed matrix.
        flip = torch.flip(torch.eye(3, dtype=torch.float64), dims=[0])
        q, r = torch.linalg.qr((flip @ m).transpose(-1, -2))
        k = flip @ r.transpose(-1, -2) @ flip
        rot = flip @ q.transpose(-1, -2)
        # Make the diagonal of K positive.
        s = torch.diag_embed(torch.sign(torch.diagonal(k, dim1=-2, dim2=-1)))
        k = k @ s
        rot = s @ rot
        scale = k[:, 2:3, 2:3]
        k = k / scale
        # t from the last column: p4 = (K t) * scale
        t = torch.linalg.solve(k, pd[:, :, 3:] / scale)[..., 0]
        # The overall sign of P is free: choose it so that R is a proper rotation (det +1).
        neg = torch.linalg.det(rot) < 0
        rot = torch.where(neg[:, None, None], -rot, rot)
        t = torch.where(neg[:, None], -t, t)
        skew = k[:, 0, 1].abs() / k[:, 0, 0]
        if (skew > rtol).any():
            raise GeometryError(f"projection matrix of view {int(torch.nonzero(skew > rtol)[0, 0])} has a skewed detector; not supported")
        spacing = _as_tensor(pixel_spacing_mm, torch.float64).expand(p.shape[0], 2)
        sdd_u = k[:, 0, 0] * spacing[:, 0]
        sdd_v = k[:, 1, 1] * spacing[:, 1]
        mismatch = (sdd_u - sdd_v).abs() / sdd_u
        if (mismatch > rtol).any():
            i = int(torch.nonzero(mismatch > rtol)[0, 0])
            raise GeometryError(
                f"view {i}: the projection matrix's focal lengths ({k[i, 0, 0]:.6g}, {k[i, 1, 1]:.6g} px) "
                f"imply different source-detector distances for pixel spacing {spacing[i].tolist()} mm; "
                "check the pixel spacing (column, row order)"
            )
        camera_from_world = homogeneous(rot, t)
        world_from_camera = rigid_inverse(camera_from_world)
        cams = Cameras(world_from_camera.to(dtype), sdd_u.to(dtype), spacing.to(dtype), k[:, :2, 2].to(dtype), size_px)
        if scene_point_ras is not None:
            _, depth = cams.project(_as_tensor(scene_point_ras, dtype).reshape(1, 3))
            if (depth <= 0).any():
                i = int(torch.nonzero(depth[:, 0] <= 0)[0, 0])
                raise GeometryError(
                    f"view {i}: the scene lies behind the source for this projection matrix; the matrix "
                    "describes a mirrored detector (left-handed pixel axes): flip the image columns or rows "
                    "and the matrix rows accordingly"
                )
        return cams

    @staticmethod
    def carm(
        primary_deg: TensorLike,
        secondary_deg: TensorLike,
        *,
        sid_mm: TensorLike,
        sdd_mm: TensorLike,
        size_px: Tuple[int, int],
        pixel_spacing_mm: TensorLike,
        isocenter_ras: TensorLike = (0.0, 0.0, 0.0),
        patient_position: str = "HFS",
        detector_offset_mm: TensorLike = (0.0, 0.0),
        dtype: torch.dtype = torch.float32,
        device=None,
    ) -> "Cameras":
        """Isocentric C-arm views from positioner angles (DICOM PS3.3 C.8.7.5 sign conventions).

        primary_deg: (V,) LAO positive / RAO negative: rotation in the patient's transverse plane;
            +90 puts the detector at the patient's left.
        secondary_deg: (V,) CRA positive / CAU negative: tilt in the sagittal plane; +90 puts the
            detector at the head.
        At (0, 0) the detector is anterior, the source posterior (a PA beam), image rows run from
        head to feet and columns towards the patient's right (beam's eye view).
        The angles are given in the C-arm/table frame, which equals the patient frame for a head-first
        supine (HFS) patient; ``patient_position`` (DICOM (0018,5100): HFS, HFP, FFS, FFP, HFDR, HFDL,
        FFDR, FFDL) turns it into patient RAS.
        sid_mm: source-to-isocentre distance; sdd_mm: source-to-detector distance.
        detector_offset_mm: (2,) or (V, 2) shift of the detector in its plane along +column, +row.
        isocenter_ras: (3,) RAS mm.
        """
        primary = torch.deg2rad(_as_tensor(primary_deg, torch.float64).reshape(-1))
        secondary = torch.deg2rad(_as_tensor(secondary_deg, torch.float64).reshape(-1))
        v = max(primary.numel(), secondary.numel())
        primary = primary.expand(v)
        secondary = secondary.expand(v)
        key = patient_position.strip().upper()
        if key not in PATIENT_FROM_CARM:
            raise ValueError(f"unknown patient position {patient_position!r}; use one of {sorted(PATIENT_FROM_CARM)}")
        patient_from_carm = torch.tensor(PATIENT_FROM_CARM[key], dtype=torch.float64).T
        # Camera axes at (0, 0) in the C-arm frame: x = patient right, y = feet, z = anterior.
        base = torch.tensor([[1.0, 0, 0], [0, 0, -1], [0, 1, 0]], dtype=torch.float64).T
        rot = patient_from_carm @ rotation_z(primary) @ rotation_x(secondary) @ base  # (V, 3, 3)
        return Cameras._isocentric(rot, sid_mm, sdd_mm, size_px, pixel_spacing_mm, isocenter_ras, detector_offset_mm, dtype, device)

    @staticmethod
    def circular_orbit(
        angles_rad: TensorLike,
        *,
        sid_mm: float,
        sdd_mm: float,
        size_px: Tuple[int, int],
        pixel_spacing_mm: TensorLike,
        isocenter_ras: TensorLike = (0.0, 0.0, 0.0),
        detector_offset_mm: TensorLike = (0.0, 0.0),
        dtype: torch.dtype = torch.float32,
        device=None,
    ) -> "Cameras":
        """Circular cone-beam orbit about the patient's superior (+z RAS) axis through the isocentre.

        angles_rad: (V,) gantry angles. Angle 0 is the C-arm's (0, 0) view (source posterior, detector
        anterior); positive angles move the detector towards the patient's left, i.e. the orbit is the
        C-arm primary angle with secondary 0 (:meth:`carm`). Use :func:`short_scan_angles` for a
        short scan (180 degrees plus the fan angle).
        detector_offset_mm: (2,) or (V, 2) in-plane detector shift [column, row] in mm (offset
        detectors for a wider field of view).
        """
        angles = _as_tensor(angles_rad, torch.float64).reshape(-1)
        base = torch.tensor([[1.0, 0, 0], [0, 0, -1], [0, 1, 0]], dtype=torch.float64).T
        rot = rotation_z(angles) @ base
        return Cameras._isocentric(rot, sid_mm, sdd_mm, size_px, pixel_spacing_mm, isocenter_ras, detector_offset_mm, dtype, device)

    @staticmethod
    def _isocentric(rot, sid_mm, sdd_mm, size_px, pixel_spacing_mm, isocenter_ras, detector_offset_mm, dtype, device) -> "Cameras":
        v = rot.shape[0]
        sid = _as_tensor(sid_mm, torch.float64).reshape(-1).expand(v)
        sdd = _as_tensor(sdd_mm, torch.float64).reshape(-1).expand(v)
        if (sid <= 0).any() or (sdd <= 0).any():
            raise ValueError(f"distances must be > 0 mm (source-isocentre {sid.tolist()[:3]}, source-detector {sdd.tolist()[:3]})")
        if (sid >= sdd).any():
            raise ValueError("the source-to-isocentre distance must be smaller than the source-to-detector distance")
        iso = _as_tensor(isocenter_ras, torch.float64).reshape(3)
        z_axis = rot[:, :, 2]
        source = iso[None, :] - sid[:, None] * z_axis
        spacing = _as_tensor(pixel_spacing_mm, torch.float64).expand(v, 2)
        offset = _as_tensor(detector_offset_mm, torch.float64).expand(v, 2)
        cols, rows = size_px
        centre = torch.tensor([(cols - 1) / 2.0, (rows - 1) / 2.0], dtype=torch.float64)
        principal = centre[None, :] - offset / spacing
        w = homogeneous(rot, source)
        return Cameras(w, sdd, spacing, principal, (cols, rows)).to(device=device, dtype=dtype)


def fan_angle_rad(cameras: Cameras) -> Tensor:
    """Full fan angle of each view in the column direction: (V,) radians."""
    cols = torch.tensor([-0.5, cameras.width - 0.5], dtype=cameras.dtype, device=cameras.device)
    x = (cols[None, :] - cameras.principal_point_px[:, :1]) * cameras.pixel_spacing_mm[:, :1]
    ang = torch.atan2(x, cameras.sdd_mm[:, None])
    return ang[:, 1] - ang[:, 0]


def short_scan_angles(n_views: int, *, sdd_mm: float, detector_width_mm: float, start_rad: float = 0.0) -> Tensor:
    """Evenly spaced gantry angles covering a short scan (pi plus the full fan angle): (n_views,) float64."""
    fan = 2.0 * math.atan(detector_width_mm / 2.0 / sdd_mm)
    return start_rad + torch.linspace(0.0, math.pi + fan, n_views, dtype=torch.float64)


def views_missing_volume(volume, cameras: Cameras) -> List[bool]:
    """For each view, True when no pixel ray (a segment from the source to the detector) can meet the
    volume's grid box: the box lies wholly behind the source, wholly beyond the detector plane, or in
    front of the source with the bounding box of its projected corners off the detector. Conservative:
    False means "may see it".

    volume: anything with ``corners_ras() -> (8, 3)`` RAS mm (a :class:`~XRayNeRFLib.volume.Volume`).
    returns: V booleans, in view order."""
    # In the cameras' own dtype: Cameras.to(float64) of float32 cameras fails validation.
    corners = volume.corners_ras().to(device=cameras.device, dtype=cameras.dtype)
    pix, depth = cameras.project(corners)  # (V, 8, 2), (V, 8) depth in mm along the camera z axis
    w, h = cameras.size_px
    missing = []
    for v in range(len(cameras)):
        d = depth[v]
        if bool((d <= 0).all()) or bool((d >= cameras.sdd_mm[v]).all()):
            missing.append(True)
            continue
        if bool((d <= 0).any()):
            missing.append(False)  # the box surrounds the source plane: projections are not bounded
            continue
        lo, hi = pix[v].amin(0), pix[v].amax(0)
        overlap = bool(hi[0] >= -0.5 and lo[0] <= w - 0.5 and hi[1] >= -0.5 and lo[1] <= h - 0.5)
        missing.append(not overlap)
    return missing
