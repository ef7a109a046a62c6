"""Geometry files: RTK's ``ThreeDCircularProjectionGeometry`` XML and the XRayNeRF JSON form.

docs/geometry_io.md has the JSON schema with an example and the RTK mapping with its derivation.

RTK mapping (worked out numerically against itk-rtk 2.7, see tests/test_geometry_io.py)
------------------------------------------------------------------------------------
RTK's projection matrix ``P_rtk`` (3x4, the ``<Matrix>`` element) maps a point of ITK's physical
frame to physical detector coordinates (u, v) in mm:

    P_rtk = [[-sdd, 0, sx - px], [0, -sdd, sy - py], [0, 0, 1]] @ [R | -(sx, sy, sid)]
    R     = Rz(-in_plane) @ Rx(-out_of_plane) @ Ry(-gantry)        (right-handed rotations)

with sid/sdd the source-to-isocentre/-detector distances, (sx, sy) = SourceOffsetX/Y and
(px, py) = ProjectionOffsetX/Y. In RTK's rotated frame ``x_r = R X`` the source sits at
(sx, sy, sid), the detector plane is z_r = sid - sdd, u runs along +x_r and v along +y_r, and
the beam travels towards -z_r.

1. Frames. ITK's physical frame is LPS for images read by ITK (and SimpleITK); ours is RAS:
   ``X_lps = diag(-1, -1, 1) X_ras``. A volume written with :func:`XRayNeRFLib.volume.save_volume`
   and an XML read/written here therefore describe the same physical scene to RTK and to us.
   RTK's gantry rotates about the world y axis, which is the antero-posterior axis in LPS; a
   circular orbit about the patient's long axis (ours: RAS z) becomes RTK views with gantry and
   in-plane angles of 90 or 270 degrees and the orbit angle in the out-of-plane angle. Both are exact.
2. The flip. RTK's (u, v, towards-source) axes are (x_r, y_r, z_r): with u along columns and v
   along rows, the pixel axes are LEFT-handed relative to our camera (x columns, y rows, z from
   the source to the detector). We flip the ROW axis: our camera is
   ``x = +x_r, y = -y_r, z = -z_r`` and our image row r is RTK's projection row ``H - 1 - j``.
   Columns are unchanged. ``ours_from_rtk_layout`` / ``rtk_layout_from_ours`` do the flip on
   image stacks (V, H, W) = ``itk.GetArrayFromImage`` of an RTK projection stack (W, H, V).
3. Pixels. RTK projection stacks carry an origin (u0, v0) in mm (of RTK pixel index (0, 0)) and a
   spacing (su, sv); the XML holds neither, hence ``spacing_mm`` / ``origin_mm`` here. The default
   origin is RTK's centred detector ``-(size - 1) / 2 * spacing``. Then, for each view,

       principal point column  cu = (sx - px - u0) / su
       principal point row     cv = (H - 1) - (sy - py - v0) / sv
       sdd_mm                  = sdd

   and the source is at ``diag(-1, -1, 1) R^T (sx, sy, sid)`` RAS mm.

Writing cameras decomposes each view into the 9 RTK parameters (Euler angles ZXY from the
rotation, then the source and detector offsets). Non-square pixels are fine (the spacing lives in
the projection image). RTK cannot express views with different pixel spacings in one stack:
writing them raises ValueError. Cylindrical detectors and parallel beams are refused on reading.
"""

from __future__ import annotations

import json
import math
import os
import xml.etree.ElementTree as ET
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from .errors import GeometryError
from .geometry import Cameras, nearest_rigid
from .projection_matrices import (
    MATRICES_FORMAT,
    MATRICES_SUFFIX,
    MATRICES_TEXT_SUFFIX,
    cameras_from_matrices_json,
    is_matrices_path,
    load_projection_matrices,
    save_projection_matrices,
)

__all__ = [
    "read_rtk_xml",
    "read_rtk_parameters",
    "write_rtk_xml",
    "rtk_parameters_from_cameras",
    "cameras_from_rtk_parameters",
    "rtk_matrix",
    "rtk_default_origin_mm",
    "rtk_layout_from_ours",
    "ours_from_rtk_layout",
    "cameras_to_json",
    "cameras_from_json",
    "load_geometry",
    "save_geometry",
    "RTK_PARAMETERS",
    "JSON_FORMAT",
    "JSON_VERSION",
]

JSON_FORMAT = "xraynerf-geometry"
JSON_VERSION = 1

# The 9 per-projection parameters of RTK, in the order of ThreeDCircularProjectionGeometry::AddProjection.
# Angles in degrees, distances and offsets in mm.
RTK_PARAMETERS = (
    "SourceToIsocenterDistance",
    "SourceToDetectorDistance",
    "GantryAngle",
    "ProjectionOffsetX",
    "ProjectionOffsetY",
    "OutOfPlaneAngle",
    "InPlaneAngle",
    "SourceOffsetX",
    "SourceOffsetY",
)
_RTK_ANGLES = ("GantryAngle", "OutOfPlaneAngle", "InPlaneAngle")
_RTK_COLLIMATION = ("CollimationUInf", "CollimationUSup", "CollimationVInf", "CollimationVSup")
_RTK_ROOT = "RTKThreeDCircularGeometry"
_RTK_VERSION = 3
_MATRIX_TOLERANCE = 1e-3  # RTK's own reader refuses a <Matrix> that differs by more than this from its parameters
_CLI_HINT = "pass the detector size and pixel spacing (command line: --detector-size COLUMNS ROWS --detector-spacing COLUMN_MM ROW_MM)"

_LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0])
_OURS_FROM_RTK_AXES = np.diag([1.0, -1.0, -1.0])  # camera axes (x, y, z) in RTK's rotated frame


# ---------------------------------------------------------------------------------------------
# Small numeric helpers (numpy float64; file I/O is not differentiable)
# ---------------------------------------------------------------------------------------------
def _rx(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def _ry(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def _rz(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _rtk_rotation(params: Dict[str, float]) -> np.ndarray:
    """R (3, 3): RTK's rotated frame <- ITK physical (LPS) directions."""
    d = math.pi / 180.0
    return _rz(-params["InPlaneAngle"] * d) @ _rx(-params["OutOfPlaneAngle"] * d) @ _ry(-params["GantryAngle"] * d)


def _wrap_degrees(a: float) -> float:
    a = a % 360.0
    return 0.0 if a >= 360.0 or abs(a) < 1e-13 or abs(a - 360.0) < 1e-13 else a


def _pair(x, name: str) -> np.ndarray:
    a = np.asarray(x.detach().cpu().numpy() if isinstance(x, Tensor) else x, dtype=np.float64).reshape(-1)
    if a.size == 1:
        a = np.repeat(a, 2)
    if a.size != 2:
        raise ValueError(f"{name} must be one value or two [column, row] values, got {a.tolist()}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} must be finite, got {a.tolist()}")
    return a


def _size(size_px, name: str = "size_px") -> Tuple[int, int]:
    try:
        vals = [float(s) for s in size_px]
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be [columns, rows], got {size_px!r}") from None
    if len(vals) != 2 or any(v != int(v) or v < 1 for v in vals):
        raise ValueError(f"{name} must be two positive integers [columns, rows], got {size_px!r}")
    return int(vals[0]), int(vals[1])


def rtk_default_origin_mm(size_px: Sequence[int], spacing_mm) -> np.ndarray:
    """RTK's centred detector origin: (2,) [u, v] mm = -(size - 1) / 2 * spacing."""
    cols, rows = _size(size_px)
    return -(np.array([cols, rows], dtype=np.float64) - 1.0) / 2.0 * _pair(spacing_mm, "spacing_mm")


def rtk_matrix(params: Dict[str, float]) -> np.ndarray:
    """RTK's projection matrix (3, 4) float64 for one projection's 9 parameters (degrees, mm):
    ITK physical (LPS) mm -> homogeneous detector (u, v) mm, with RTK's scale and sign."""
    r = _rtk_rotation(params)
    sid, sdd = params["SourceToIsocenterDistance"], params["SourceToDetectorDistance"]
    sx, sy = params["SourceOffsetX"], params["SourceOffsetY"]
    px, py = params["ProjectionOffsetX"], params["ProjectionOffsetY"]
    k = np.array([[-sdd, 0.0, sx - px], [0.0, -sdd, sy - py], [0.0, 0.0, 1.0]])
    return k @ np.concatenate([r, -np.array([[sx], [sy], [sid]])], axis=1)


# ---------------------------------------------------------------------------------------------
# Parameters <-> cameras
# ---------------------------------------------------------------------------------------------
def cameras_from_rtk_parameters(
    params: Sequence[Dict[str, float]],
    *,
    size_px: Sequence[int],
    spacing_mm,
    origin_mm=None,
    dtype: torch.dtype = torch.float64,
) -> Cameras:
    """Cameras from RTK's per-projection parameters.

    params: V dicts with the keys of :data:`RTK_PARAMETERS` (angles in degrees, mm).
    size_px: (columns W, rows H) of the projections. spacing_mm: (2,) [u (column), v (row)] mm, or
    one value. origin_mm: (2,) [u, v] mm of the RTK projection image's origin (pixel index (0, 0)),
    default centred. Returns float64 cameras unless ``dtype`` says otherwise.
    """
    cols, rows = _size(size_px)
    spacing = _pair(spacing_mm, "spacing_mm")
    if (spacing <= 0).any():
        raise ValueError(f"detector pixel spacing must be > 0 mm, got {spacing.tolist()}")
    origin = rtk_default_origin_mm((cols, rows), spacing) if origin_mm is None else _pair(origin_mm, "origin_mm")
    if len(params) == 0:
        raise ValueError("the geometry has no projections")
    w = np.zeros((len(params), 4, 4))
    sdd = np.zeros(len(params))
    principal = np.zeros((len(params), 2))
    for i, p in enumerate(params):
        if p["SourceToDetectorDistance"] <= 0:
            raise ValueError(
                f"projection {i}: SourceToDetectorDistance is {p['SourceToDetectorDistance']:g}; parallel-beam "
                "(0) and negative distances are not supported, only cone beams"
            )
        r = _rtk_rotation(p)
        src_rot = np.array([p["SourceOffsetX"], p["SourceOffsetY"], p["SourceToIsocenterDistance"]])
        camera_from_world = _OURS_FROM_RTK_AXES @ r @ _LPS_FROM_RAS
        w[i, :3, :3] = camera_from_world.T
        w[i, :3, 3] = _LPS_FROM_RAS @ r.T @ src_rot
        w[i, 3, 3] = 1.0
        sdd[i] = p["SourceToDetectorDistance"]
        principal[i, 0] = (p["SourceOffsetX"] - p["ProjectionOffsetX"] - origin[0]) / spacing[0]
        principal[i, 1] = (rows - 1) - (p["SourceOffsetY"] - p["ProjectionOffsetY"] - origin[1]) / spacing[1]
    t = lambda a: torch.from_numpy(a).to(dtype)  # noqa: E731
    return Cameras(t(w), t(sdd), t(np.tile(spacing, (len(params), 1))), t(principal), (cols, rows))


def _zxy_angles(r: np.ndarray) -> Tuple[float, float, float]:
    """(a, b, c) radians with r = Rz(a) Rx(b) Ry(c); b in [-pi/2, pi/2]. Stable at gimbal lock."""
    horizontal = math.hypot(r[2, 0], r[2, 2])
    b = math.atan2(r[2, 1], horizontal)
    c = math.atan2(-r[2, 0], r[2, 2]) if horizontal > 1e-12 else 0.0
    rest = r @ _ry(c).T @ _rx(b).T  # = Rz(a), whatever small error c carries near gimbal lock
    a = math.atan2(rest[1, 0], rest[0, 0])
    return a, b, c


def rtk_parameters_from_cameras(cameras: Cameras, *, origin_mm=None) -> List[Dict[str, float]]:
    """The 9 RTK parameters of every view (degrees in [0, 360), mm), for an RTK projection stack
    with the cameras' size and pixel spacing and origin ``origin_mm`` (default centred).

    Raises ValueError if the views have different pixel spacings (one RTK stack has one spacing).
    """
    w = cameras.world_from_camera.detach().cpu().double().numpy()
    sdd = cameras.sdd_mm.detach().cpu().double().numpy()
    spacing_all = cameras.pixel_spacing_mm.detach().cpu().double().numpy()
    principal = cameras.principal_point_px.detach().cpu().double().numpy()
    spacing = spacing_all[0]
    if np.abs(spacing_all - spacing).max() > 1e-9 * spacing.max():
        raise ValueError(
            "the views have different detector pixel spacings; an RTK projection stack has one spacing for "
            f"all views (got {np.unique(spacing_all, axis=0).tolist()} mm): write the views in separate files "
            "or resample the images to one spacing"
        )
    cols, rows = cameras.size_px
    origin = rtk_default_origin_mm((cols, rows), spacing) if origin_mm is None else _pair(origin_mm, "origin_mm")
    out = []
    for i in range(len(w)):
        camera_from_world = w[i, :3, :3].T
        r = _OURS_FROM_RTK_AXES @ camera_from_world @ _LPS_FROM_RAS  # RTK rotated <- LPS
        a, b, c = _zxy_angles(r)
        check = _rz(a) @ _rx(b) @ _ry(c)
        if np.abs(check - r).max() > 1e-9:
            raise ValueError(f"view {i}: the camera rotation could not be expressed as RTK angles (error {np.abs(check - r).max():.2e})")
        src = r @ _LPS_FROM_RAS @ w[i, :3, 3]  # (sx, sy, sid) in RTK's rotated frame
        sx, sy, sid = (float(v) for v in src)
        px = sx - origin[0] - principal[i, 0] * spacing[0]
        py = sy - origin[1] - ((rows - 1) - principal[i, 1]) * spacing[1]
        out.append(
            {
                "SourceToIsocenterDistance": sid,
                "SourceToDetectorDistance": float(sdd[i]),
                "GantryAngle": _wrap_degrees(-math.degrees(c)),
                "ProjectionOffsetX": float(px),
                "ProjectionOffsetY": float(py),
                "OutOfPlaneAngle": _wrap_degrees(-math.degrees(b)),
                "InPlaneAngle": _wrap_degrees(-math.degrees(a)),
                "SourceOffsetX": sx,
                "SourceOffsetY": sy,
            }
        )
    return out


# ---------------------------------------------------------------------------------------------
# RTK XML
# ---------------------------------------------------------------------------------------------
def _parse_number(text: Optional[str], what: str, path: str) -> float:
    try:
        value = float((text or "").strip())
    except ValueError:
        raise ValueError(f"RTK geometry {path!r}: {what} is not a number: {text!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"RTK geometry {path!r}: {what} is {value}; it must be finite")
    return value


def read_rtk_parameters(path: str) -> List[Dict[str, float]]:
    """The 9 RTK parameters of every projection (dicts keyed by :data:`RTK_PARAMETERS`; degrees
    as written, mm), parsed the way RTK's reader does: element names are case-insensitive
    (``Angle`` is an old name of ``GantryAngle``), a value applies to the projection it closes in
    and stays in force for later projections (the global form stores a value common to all
    projections once, before the first projection), unset values are 0. A ``<Matrix>`` is checked
    against the parameters with RTK's tolerance (0.001); unlike RTK, a projection without a matrix
    is accepted. Raises ValueError naming the file and the problem."""
    if not os.path.isfile(path):
        raise ValueError(f"RTK geometry file {path!r} does not exist")
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise ValueError(f"RTK geometry {path!r} is not valid XML: {exc}") from None
    if root.tag.lower() != _RTK_ROOT.lower():
        raise ValueError(f"{path!r} is not an RTK geometry: its root element is <{root.tag}>, expected <{_RTK_ROOT}>")
    version = root.get("version")
    if version is not None and version.strip() not in ("2", "3"):
        raise ValueError(f"RTK geometry {path!r} has version {version}; versions 2 and 3 are supported (regenerate it with RTK)")
    state: Dict[str, float] = {name: 0.0 for name in RTK_PARAMETERS}
    seen = set()
    params: List[Dict[str, float]] = []
    names = {n.lower(): n for n in RTK_PARAMETERS}
    names["angle"] = "GantryAngle"  # RTK's backward-compatible spelling

    def visit(elem: ET.Element) -> None:
        for child in elem:  # children close before their parent: RTK acts on end-of-element
            visit(child)
        tag = elem.tag.lower()
        where = f"<{elem.tag}> of projection {len(params)}" if elem is not root else f"<{elem.tag}>"
        if tag in names:
            state[names[tag]] = _parse_number(elem.text, where, path)
            seen.add(names[tag])
        elif tag == "radiuscylindricaldetector":
            if _parse_number(elem.text, where, path) != 0.0:
                raise ValueError(f"RTK geometry {path!r} describes a cylindrical detector; only flat panels are supported")
        elif tag in (c.lower() for c in _RTK_COLLIMATION):
            _parse_number(elem.text, where, path)  # collimation (shutters) is not part of the camera model
        elif tag == "matrix":
            vals = (elem.text or "").split()
            if len(vals) != 12:
                raise ValueError(f"RTK geometry {path!r}: {where} has {len(vals)} numbers, expected 12 (3 rows of 4)")
            state["__matrix__"] = np.array([_parse_number(v, where, path) for v in vals]).reshape(3, 4)  # type: ignore[assignment]
        elif tag == "projection":
            p = {n: float(state[n]) for n in RTK_PARAMETERS}
            m = state.pop("__matrix__", None)
            if m is not None:
                err = np.abs(np.asarray(m) - rtk_matrix(p)).max()
                if err > _MATRIX_TOLERANCE:
                    raise ValueError(
                        f"RTK geometry {path!r}: the <Matrix> of projection {len(params)} disagrees with its parameters "
                        f"by {err:.3g} (RTK refuses more than {_MATRIX_TOLERANCE}); fix or delete the matrix"
                    )
            params.append(p)

    visit(root)
    if not params:
        raise ValueError(f"RTK geometry {path!r} has no <Projection> elements")
    if "SourceToDetectorDistance" not in seen:
        raise ValueError(f"RTK geometry {path!r} has no SourceToDetectorDistance; parallel-beam geometries are not supported")
    return params


def read_rtk_xml(
    path: str,
    *,
    size_px: Sequence[int],
    spacing_mm,
    origin_mm=None,
    dtype: torch.dtype = torch.float64,
) -> Cameras:
    """Read RTK's ThreeDCircularProjectionGeometry XML (the per-projection and the global form).

    size_px: (columns W, rows H) of the projection images; spacing_mm: (2,) [u, v] mm or one value;
    origin_mm: (2,) [u, v] mm, the projection image origin (RTK pixel index (0, 0)); default RTK's
    centred -(size - 1) / 2 * spacing. The XML stores none of these.
    Images of these cameras are ours: flip RTK projections with :func:`ours_from_rtk_layout`.
    Returns float64 cameras (``dtype``). Raises ValueError naming the file and the problem.
    """
    params = read_rtk_parameters(path)
    try:
        return cameras_from_rtk_parameters(params, size_px=size_px, spacing_mm=spacing_mm, origin_mm=origin_mm, dtype=dtype)
    except ValueError as exc:
        raise ValueError(f"RTK geometry {path!r}: {exc}") from None


def _fmt(v: float) -> str:
    s = repr(float(v))
    return s[:-2] if s.endswith(".0") else s


def write_rtk_xml(cameras: Cameras, path: str, *, origin_mm=None) -> None:
    """Write cameras as RTK's ThreeDCircularProjectionGeometry XML (version 3), in the layout RTK's
    own writer uses: a parameter equal for all views is written once (and omitted when it is 0,
    except the distances), the gantry angle and the matrix per projection.

    The projections that go with the file are RTK-layout images: ``rtk_layout_from_ours(images)``
    with spacing ``cameras.pixel_spacing_mm[0]`` and origin ``origin_mm`` (default centred,
    -(size - 1) / 2 * spacing); the file records these in a comment. Raises ValueError when the
    views have different pixel spacings.
    """
    params = rtk_parameters_from_cameras(cameras, origin_mm=origin_mm)
    spacing = cameras.pixel_spacing_mm[0].detach().cpu().double().numpy()
    origin = rtk_default_origin_mm(cameras.size_px, spacing) if origin_mm is None else _pair(origin_mm, "origin_mm")
    ind = "  "
    lines = [
        '<?xml version="1.0"?>',
        "<!DOCTYPE RTKGEOMETRY>",
        f"<!-- Written by XRayNeRF. Projection images: {cameras.size_px[0]} x {cameras.size_px[1]} pixels (u x v), "
        f"spacing {_fmt(spacing[0])} {_fmt(spacing[1])} mm, origin {_fmt(origin[0])} {_fmt(origin[1])} mm; "
        "world frame: ITK physical (LPS) mm. -->",
        f'<{_RTK_ROOT} version="{_RTK_VERSION}">',
    ]
    for p in params:  # rounding noise of the decomposition (1e-14 mm offsets) would clutter the file
        for name in ("ProjectionOffsetX", "ProjectionOffsetY", "SourceOffsetX", "SourceOffsetY"):
            if abs(p[name]) < 1e-9:
                p[name] = 0.0
    global_names = []
    for name in RTK_PARAMETERS:
        if name == "GantryAngle":
            continue
        values = [p[name] for p in params]
        if all(abs(v - values[0]) <= 1e-12 * max(1.0, abs(values[0])) for v in values):
            for p in params:
                p[name] = values[0]
            global_names.append(name)
            if values[0] != 0.0 or name in ("SourceToIsocenterDistance", "SourceToDetectorDistance"):
                lines.append(f"{ind}{ind}<{name}>{_fmt(values[0])}</{name}>")
    for p in params:
        lines.append(f"{ind}<Projection>")
        lines.append(f"{ind}{ind}<GantryAngle>{_fmt(p['GantryAngle'])}</GantryAngle>")
        for name in RTK_PARAMETERS:
            if name != "GantryAngle" and name not in global_names:
                lines.append(f"{ind}{ind}<{name}>{_fmt(p[name])}</{name}>")
        lines.append(f"{ind}{ind}<Matrix>")
        m = rtk_matrix(p)
        m[np.abs(m) < 1e-12 * np.abs(m).max(axis=1, keepdims=True)] = 0.0
        for row in m:
            lines.append(ind * 3 + " ".join(f"{_fmt(v):>24}" for v in row))
        lines.append(f"{ind}{ind}</Matrix>")
        lines.append(f"{ind}</Projection>")
    lines.append(f"</{_RTK_ROOT}>")
    try:
        with open(path, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
    except OSError as exc:
        raise ValueError(f"cannot write RTK geometry {path!r}: {exc.strerror}") from None


def ours_from_rtk_layout(images: Union[Tensor, np.ndarray]) -> Union[Tensor, np.ndarray]:
    """RTK projection stack -> our image layout: flips the row axis. images: (..., H, W), e.g.
    (V, H, W) from ``itk.GetArrayFromImage``; row r of ours is RTK row H - 1 - r. Same type out."""
    if isinstance(images, Tensor):
        return images.flip(-2)
    return np.ascontiguousarray(np.flip(np.asarray(images), axis=-2))


def rtk_layout_from_ours(images: Union[Tensor, np.ndarray]) -> Union[Tensor, np.ndarray]:
    """Our images (..., H, W) -> RTK's projection layout (the same row flip; it is its own inverse)."""
    return ours_from_rtk_layout(images)


# ---------------------------------------------------------------------------------------------
# JSON
# ---------------------------------------------------------------------------------------------
_VIEW_KEYS = ("world_from_camera", "sdd_mm", "pixel_spacing_mm", "principal_point_px")
_ORBIT_KEYS = {"angles_deg", "angles_rad", "sid_mm", "sdd_mm", "size_px", "pixel_spacing_mm", "isocenter_ras", "detector_offset_mm"}
_CARM_KEYS = {
    "primary_deg",
    "secondary_deg",
    "sid_mm",
    "sdd_mm",
    "size_px",
    "pixel_spacing_mm",
    "isocenter_ras",
    "patient_position",
    "detector_offset_mm",
}
_TOP_KEYS = {"format", "version", "frame", "units", "size_px", "views", "circular_orbit", "carm", "description"}


def cameras_to_json(cameras: Cameras) -> Dict[str, Any]:
    """The explicit JSON form (a dict for ``json.dump``); floats are written exactly (float64)."""
    w = cameras.world_from_camera.detach().cpu().double().tolist()
    sdd = cameras.sdd_mm.detach().cpu().double().tolist()
    spacing = cameras.pixel_spacing_mm.detach().cpu().double().tolist()
    principal = cameras.principal_point_px.detach().cpu().double().tolist()
    return {
        "format": JSON_FORMAT,
        "version": JSON_VERSION,
        "frame": "RAS",
        "units": "mm",
        "size_px": [int(cameras.size_px[0]), int(cameras.size_px[1])],
        "views": [
            {"world_from_camera": w[i], "sdd_mm": sdd[i], "pixel_spacing_mm": spacing[i], "principal_point_px": principal[i]}
            for i in range(len(cameras))
        ],
    }


def _numbers(value, field: str, shape: Optional[Tuple[int, ...]] = None, allow_scalar: bool = False) -> np.ndarray:
    try:
        a = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"geometry field {field!r} must be numbers, got {value!r}") from None
    if allow_scalar and a.ndim == 0 and shape is not None:
        a = np.full(shape, float(a))
    if shape is not None and a.shape != shape:
        if a.size == int(np.prod(shape)) and a.ndim == 1:
            a = a.reshape(shape)
        else:
            raise ValueError(f"geometry field {field!r} must have shape {list(shape)}, got {list(a.shape)}")
    if not np.isfinite(a).all():
        raise ValueError(f"geometry field {field!r} contains NaN or infinite values: {a.tolist()}")
    return a


def _require(d: Dict[str, Any], key: str, where: str):
    if key not in d:
        raise ValueError(f"geometry is missing the field '{key if where == 'file' else where + '.' + key}'")
    return d[key]


def _check_keys(d: Any, allowed, where: str) -> None:
    if not isinstance(d, dict):
        raise ValueError(f"geometry {where} must be a JSON object, got {type(d).__name__}")
    unknown = sorted(set(d) - set(allowed))
    if unknown:
        raise ValueError(f"geometry {where} has unknown field(s) {unknown}; allowed: {sorted(allowed)}")


def cameras_from_json(data: Dict[str, Any], *, dtype: torch.dtype = torch.float64) -> Cameras:
    """Cameras from the JSON form (explicit ``views``, or compact ``circular_orbit`` / ``carm``).
    Raises ValueError naming the offending field. Returns float64 cameras unless ``dtype`` says otherwise."""
    _check_keys(data, _TOP_KEYS, "file")
    if data.get("format") != JSON_FORMAT:
        raise ValueError(f"geometry field 'format' must be {JSON_FORMAT!r}, got {data.get('format')!r}")
    if data.get("version") != JSON_VERSION:
        raise ValueError(f"geometry field 'version' must be {JSON_VERSION}, got {data.get('version')!r}")
    if data.get("frame", "RAS") != "RAS":
        raise ValueError(f"geometry field 'frame' must be 'RAS' (patient RAS), got {data.get('frame')!r}; convert LPS with diag(-1, -1, 1)")
    if data.get("units", "mm") != "mm":
        raise ValueError(f"geometry field 'units' must be 'mm', got {data.get('units')!r}")
    forms = [k for k in ("views", "circular_orbit", "carm") if k in data]
    if len(forms) != 1:
        raise ValueError(f"geometry must have exactly one of 'views', 'circular_orbit', 'carm'; found {forms or 'none'}")
    form = forms[0]
    if form == "views":
        size = _size(_require(data, "size_px", "file"), "size_px")
        views = data["views"]
        if not isinstance(views, list) or not views:
            raise ValueError("geometry field 'views' must be a non-empty list")
        w, sdd, spacing, principal = [], [], [], []
        for i, view in enumerate(views):
            where = f"views[{i}]"
            _check_keys(view, _VIEW_KEYS, where)
            m = _numbers(_require(view, "world_from_camera", where), f"{where}.world_from_camera", (4, 4))
            m = nearest_rigid(m, f"geometry field '{where}.world_from_camera'").numpy()  # rounded values snapped
            w.append(m)
            sdd.append(float(_numbers(_require(view, "sdd_mm", where), f"{where}.sdd_mm", ())))
            spacing.append(_numbers(_require(view, "pixel_spacing_mm", where), f"{where}.pixel_spacing_mm", (2,), allow_scalar=True))
            principal.append(_numbers(_require(view, "principal_point_px", where), f"{where}.principal_point_px", (2,)))
        t = lambda a: torch.from_numpy(np.asarray(a, dtype=np.float64)).to(dtype)  # noqa: E731
        return Cameras(t(np.stack(w)), t(sdd), t(np.stack(spacing)), t(np.stack(principal)), size)
    block = data[form]
    allowed = _ORBIT_KEYS if form == "circular_orbit" else _CARM_KEYS
    _check_keys(block, allowed, form)
    if "size_px" in block and "size_px" in data and _size(block["size_px"]) != _size(data["size_px"]):
        raise ValueError(f"geometry has two different size_px ({data['size_px']} and {form}.size_px {block['size_px']})")
    size_src = block.get("size_px", data.get("size_px"))
    if size_src is None:
        raise ValueError(f"geometry is missing the field 'size_px' (top level or in {form!r})")
    kw: Dict[str, Any] = {
        "size_px": _size(size_src, "size_px"),
        "sid_mm": _numbers(_require(block, "sid_mm", form), f"{form}.sid_mm").reshape(-1),
        "sdd_mm": _numbers(_require(block, "sdd_mm", form), f"{form}.sdd_mm").reshape(-1),
        "pixel_spacing_mm": _numbers(_require(block, "pixel_spacing_mm", form), f"{form}.pixel_spacing_mm", (2,), allow_scalar=True),
        "dtype": dtype,
    }
    if "isocenter_ras" in block:
        kw["isocenter_ras"] = _numbers(block["isocenter_ras"], f"{form}.isocenter_ras", (3,))
    if "detector_offset_mm" in block:
        off = _numbers(block["detector_offset_mm"], f"{form}.detector_offset_mm")
        if off.shape != (2,) and (off.ndim != 2 or off.shape[1] != 2):
            raise ValueError(
                f"geometry field '{form}.detector_offset_mm' must be [column, row] or a list of them, got shape {list(off.shape)}"
            )
        kw["detector_offset_mm"] = off
    if form == "circular_orbit":
        which = [k for k in ("angles_deg", "angles_rad") if k in block]
        if len(which) != 1:
            raise ValueError("geometry 'circular_orbit' needs exactly one of 'angles_deg', 'angles_rad'")
        angles = _numbers(block[which[0]], f"circular_orbit.{which[0]}").reshape(-1)
        if angles.size == 0:
            raise ValueError(f"geometry field 'circular_orbit.{which[0]}' is empty")
        angles_rad = np.deg2rad(angles) if which[0] == "angles_deg" else angles
        if kw["sid_mm"].size != 1 or kw["sdd_mm"].size != 1:
            raise ValueError("geometry fields 'circular_orbit.sid_mm' and 'sdd_mm' must be single numbers")
        kw["sid_mm"], kw["sdd_mm"] = float(kw["sid_mm"][0]), float(kw["sdd_mm"][0])
        return Cameras.circular_orbit(
            torch.from_numpy(angles_rad), **{k: (torch.from_numpy(v) if isinstance(v, np.ndarray) else v) for k, v in kw.items()}
        )
    primary = _numbers(_require(block, "primary_deg", form), "carm.primary_deg").reshape(-1)
    secondary = _numbers(_require(block, "secondary_deg", form), "carm.secondary_deg").reshape(-1)
    n = max(primary.size, secondary.size)
    for name, arr in (("primary_deg", primary), ("secondary_deg", secondary), ("sid_mm", kw["sid_mm"]), ("sdd_mm", kw["sdd_mm"])):
        if arr.size not in (1, n):
            raise ValueError(f"geometry field 'carm.{name}' has {arr.size} values; expected 1 or {n} (one per view)")
    if "patient_position" in block:
        if not isinstance(block["patient_position"], str):
            raise ValueError(f"geometry field 'carm.patient_position' must be a string such as 'HFS', got {block['patient_position']!r}")
        kw["patient_position"] = block["patient_position"]
    tens = {k: (torch.from_numpy(v) if isinstance(v, np.ndarray) else v) for k, v in kw.items()}
    return Cameras.carm(torch.from_numpy(primary), torch.from_numpy(secondary), **tens)


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------
GEOMETRY_FORMATS = f".json (XRayNeRF cameras or {MATRICES_SUFFIX}), {MATRICES_TEXT_SUFFIX} or .xml (RTK)"


def is_geometry_path(path: str) -> bool:
    """True for a name :func:`load_geometry` and :func:`save_geometry` accept (the one extension rule)."""
    low = str(path).lower()
    return low.endswith((".json", ".xml")) or is_matrices_path(low)


def load_geometry(path: str, *, size_px=None, spacing_mm=None, origin_mm=None, dtype: torch.dtype = torch.float64) -> Cameras:
    """Read cameras from ``.json`` (XRayNeRF geometry, or a per-view projection-matrix file, told apart by
    its ``format`` field) or ``.xml`` (RTK). The RTK XML stores no detector size
    or spacing: ``size_px`` (columns, rows) and ``spacing_mm`` ([u, v] or one value) are required
    for it, ``origin_mm`` is optional. For JSON they are optional checks against the file."""
    ext = os.path.splitext(str(path))[1].lower()
    if ext == ".xml":
        missing = [n for n, v in (("size_px", size_px), ("spacing_mm", spacing_mm)) if v is None]
        if missing:
            raise ValueError(
                f"RTK geometry {str(path)!r} stores no detector size or pixel spacing (missing: {', '.join(missing)}): {_CLI_HINT}"
            )
        return read_rtk_xml(str(path), size_px=size_px, spacing_mm=spacing_mm, origin_mm=origin_mm, dtype=dtype)
    if ext == ".txt" and is_matrices_path(path):  # the text spelling of the projection-matrix file
        cams = load_projection_matrices(str(path), dtype=dtype)
        return _check_against(cams, path, size_px, spacing_mm)
    if ext != ".json":
        raise ValueError(
            f"geometry file {str(path)!r}: unknown extension {ext!r}; use .json (XRayNeRF), {MATRICES_TEXT_SUFFIX} (projection matrices) "
            "or .xml (RTK)"
        )
    if not os.path.isfile(path):
        raise ValueError(f"geometry file {str(path)!r} does not exist")
    try:
        with open(path, "r", encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"geometry file {str(path)!r} is not valid JSON: {exc}") from None
    if isinstance(data, dict) and data.get("format") == MATRICES_FORMAT:
        try:
            cams = cameras_from_matrices_json(data, dtype=dtype)
        except GeometryError as exc:
            raise GeometryError(f"projection-matrix file {str(path)!r}: {exc}", name=exc.name) from None
    else:
        try:
            cams = cameras_from_json(data, dtype=dtype)
        except ValueError as exc:
            raise ValueError(f"geometry file {str(path)!r}: {exc}") from None
    return _check_against(cams, path, size_px, spacing_mm)


def _check_against(cams: Cameras, path: str, size_px, spacing_mm) -> Cameras:
    """``cams`` read from ``path``, after checking it against the detector size and spacing given besides."""
    if size_px is not None and _size(size_px) != cams.size_px:
        raise ValueError(f"geometry file {str(path)!r} has detector size {list(cams.size_px)}, but {list(_size(size_px))} was given")
    if spacing_mm is not None:
        want = _pair(spacing_mm, "spacing_mm")
        have = cams.pixel_spacing_mm.detach().cpu().double().numpy()
        if np.abs(have - want).max() > 1e-9 * want.max():
            raise ValueError(
                f"geometry file {str(path)!r} has pixel spacing {np.unique(have, axis=0).tolist()} mm, but {want.tolist()} was given"
            )
    return cams


def save_geometry(cameras: Cameras, path: str, *, origin_mm=None, form: Optional[str] = None) -> None:
    """Write cameras to ``.json`` (explicit XRayNeRF form) or ``.xml`` (RTK; ``origin_mm`` as in
    :func:`write_rtk_xml`). ``form="matrices"``, or a name ending in ``.matrices.json`` (or ``.matrices.txt``,
    its text spelling), writes the per-view projection-matrix form instead (:mod:`XRayNeRFLib.projection_matrices`)."""
    if form not in (None, "matrices"):
        raise ValueError(f"unknown geometry form {form!r}; use None (by extension) or 'matrices'")
    if form == "matrices" or is_matrices_path(path):
        if not str(path).lower().endswith((".json", MATRICES_TEXT_SUFFIX)):
            raise ValueError(f"projection-matrix file {str(path)!r}: use the extension {MATRICES_SUFFIX} or {MATRICES_TEXT_SUFFIX}")
        if origin_mm is not None:
            raise ValueError("origin_mm applies to RTK XML only; projection matrices map to pixels")
        save_projection_matrices(cameras, str(path))
        return
    ext = os.path.splitext(str(path))[1].lower()
    if ext == ".xml":
        write_rtk_xml(cameras, str(path), origin_mm=origin_mm)
        return
    if ext != ".json":
        raise ValueError(f"geometry file {str(path)!r}: unknown extension {ext!r}; use .json (XRayNeRF) or .xml (RTK)")
    if origin_mm is not None:
        raise ValueError("origin_mm applies to RTK XML only; the JSON form stores principal points in pixels")
    try:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(cameras_to_json(cameras), f, indent=1)
            f.write("\n")
    except OSError as exc:
        raise ValueError(f"cannot write geometry file {str(path)!r}: {exc.strerror}") from None
