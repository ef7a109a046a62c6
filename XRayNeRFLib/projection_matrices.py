"""Per-view projection-matrix files: one calibrated 3x4 matrix per view (C-arms, robotic CBCT).

A flexing C-arm is calibrated view by view: each view comes with its own projection matrix instead of a
few orbit parameters. This module reads and writes such a file and turns it into :class:`~XRayNeRFLib.geometry.Cameras`
(RQ decomposition, :meth:`Cameras.from_projection_matrices`); docs/geometry_io.md has the format. Two
spellings of one content: JSON (``*.matrices.json``) and text (``*.matrices.txt``, :func:`matrices_to_text`:
``key value`` header lines, then three lines of four numbers per view, ``#`` comments); both are read into
the same dict and checked by the same code (:func:`cameras_from_matrices_json`).

Convention of a matrix ``P`` (3x4, row-major), the one of docs/geometry.md section 5::

    [c, r, w]^T = P [x, y, z, 1]^T      (x, y, z): a point in patient RAS, mm
    column c = c / w, row r = r / w     0-based pixel-centre coordinates, (column, row) = image[row, col]
    w > 0 in front of the source        (w is the depth along the principal ray up to P's scale)

The scale of ``P`` is free but its sign is not: a matrix with ``det(P[:, :3]) < 0`` describes a mirrored
detector (left-handed pixel axes, or a matrix of the opposite sign such as RTK's, whose w is negative in
front of the source) and is refused; flip the image columns or rows and the matrix rows with them, or
negate the matrix. ``P`` fixes the focal lengths only in pixels (sdd/su, sdd/sv); the file therefore also
states the detector pixel spacing (and size), from which the source-to-detector distance follows.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, Optional

import numpy as np
import torch

from .errors import GeometryError
from .geometry import Cameras

__all__ = [
    "MATRICES_FORMAT",
    "MATRICES_VERSION",
    "MATRICES_SUFFIX",
    "is_matrices_path",
    "matrices_to_json",
    "matrices_to_text",
    "matrices_json_from_text",
    "cameras_from_matrices_json",
    "check_projection_matrices",
    "load_projection_matrices",
    "save_projection_matrices",
]

MATRICES_FORMAT = "xraynerf-projection-matrices"
MATRICES_VERSION = 1
MATRICES_SUFFIX = ".matrices.json"  # a geometry output named so is written in this form (a .json is read by its "format")
MATRICES_TEXT_SUFFIX = ".matrices.txt"  # the text spelling (read and written by this suffix)
_KEYS = {"format", "version", "frame", "units", "size_px", "pixel_spacing_mm", "matrices", "description"}


def is_matrices_path(path: str) -> bool:
    """True for a path that asks for the projection-matrix form (``*.matrices.json`` or ``*.matrices.txt``)."""
    return str(path).lower().endswith((MATRICES_SUFFIX, MATRICES_TEXT_SUFFIX))


def _is_text_path(path: str) -> bool:
    return str(path).lower().endswith(MATRICES_TEXT_SUFFIX)


def check_projection_matrices(p: np.ndarray, *, n_views: Optional[int] = None, rtol: float = 1e-4) -> None:
    """Refuse matrices that are no usable cone-beam camera, one line naming the first bad view.

    p: (V, 3, 4) float64, pixels <- RAS mm (module docstring). n_views: the number of projections they
    must describe. Raises :class:`GeometryError` (``name`` = "view i matrix" or "matrices") for a count
    mismatch, NaN/inf, a singular left 3x3 block, a mirrored detector (det < 0), a skewed detector.
    """
    if p.ndim != 3 or p.shape[1:] != (3, 4):
        raise GeometryError(f"projection matrices must be 3x4 each, got an array of shape {list(p.shape)}", name="matrices")
    if n_views is not None and p.shape[0] != n_views:
        raise GeometryError(f"{p.shape[0]} projection matrices for {n_views} projections: give one matrix per view", name="matrices")
    for i, m in enumerate(p):
        if not np.isfinite(m).all():
            raise GeometryError(f"view {i} matrix contains NaN or infinite values", name=f"view {i} matrix")
        a = m[:, :3]
        det = float(np.linalg.det(a))
        if abs(det) <= 1e-12 * float(np.abs(a).max()) ** 3:
            raise GeometryError(
                f"view {i} matrix has a singular left 3x3 block: it is not a cone-beam (pinhole) camera", name=f"view {i} matrix"
            )
        if det < 0:
            raise GeometryError(
                f"view {i} matrix describes a mirrored detector (det of its left 3x3 block < 0; or w < 0 in front of the source, "
                "as in RTK's matrices): negate it, or flip the image and the matrix rows",
                name=f"view {i} matrix",
            )
        # skew: the angle between the pixel axes, from the RQ decomposition's K[0, 1] / K[0, 0]
        r3 = a[2] / np.linalg.norm(a[2])
        a1 = a[1] - (a[1] @ r3) * r3
        fy = np.linalg.norm(a1)
        r2 = a1 / fy
        a0 = a[0] - (a[0] @ r3) * r3
        skew = (a0 @ r2) / np.linalg.norm(a0 - (a0 @ r2) * r2)
        if abs(skew) > rtol:
            raise GeometryError(
                f"view {i} matrix has a skewed detector (pixel axes not perpendicular, skew {skew:.3g}); not supported",
                name=f"view {i} matrix",
            )


def matrices_to_json(cameras: Cameras, *, description: Optional[str] = None) -> Dict[str, Any]:
    """The projection-matrix form of ``cameras`` (a dict for ``json.dump``): each view's
    ``P = K [R | t]`` scaled so that its third row has unit norm (w = depth in mm), floats exact.
    Raises GeometryError when the views have different pixel spacings (the file holds one)."""
    spacing = cameras.pixel_spacing_mm.detach().cpu().double()
    if (spacing - spacing[0]).abs().max() > 1e-12 * float(spacing.abs().max()):
        raise GeometryError("the views have different pixel spacings; a projection-matrix file holds one", name="pixel_spacing_mm")
    p = cameras.to(dtype=torch.float64).projection_matrices().detach().cpu()
    out: Dict[str, Any] = {
        "format": MATRICES_FORMAT,
        "version": MATRICES_VERSION,
        "frame": "RAS",
        "units": "mm",
        "size_px": [int(cameras.size_px[0]), int(cameras.size_px[1])],
        "pixel_spacing_mm": spacing[0].tolist(),
        "matrices": p.tolist(),
    }
    if description:
        out["description"] = str(description)
    return out


def matrices_to_text(cameras: Cameras, *, description: Optional[str] = None) -> str:
    """The text spelling of :func:`matrices_to_json`: header lines ``key value...``, then per view a
    ``# view i`` comment and the matrix's three rows of four numbers (``repr``: exact round trip)."""
    data = matrices_to_json(cameras, description=description)
    lines = [
        "# XRayNeRF per-view projection matrices: [c, r, w] = P [x, y, z, 1] with (x, y, z) patient RAS mm and",
        "# (c / w, r / w) the 0-based (column, row) pixel centre; one 3x4 matrix (3 lines of 4 numbers) per view",
        f"format {MATRICES_FORMAT}",
        f"version {MATRICES_VERSION}",
        "frame RAS",
        "units mm",
        f"size_px {data['size_px'][0]} {data['size_px'][1]}",
        f"pixel_spacing_mm {data['pixel_spacing_mm'][0]!r} {data['pixel_spacing_mm'][1]!r}",
    ]
    if description:
        lines.append(f"description {' '.join(str(description).split())}")
    for i, m in enumerate(data["matrices"]):
        lines.append(f"# view {i}")
        lines += [" ".join(repr(float(x)) for x in row) for row in m]
    return "\n".join(lines) + "\n"


_TEXT_KEYS = {"format": 1, "version": 1, "frame": 1, "units": 1, "size_px": 2, "pixel_spacing_mm": 2}


def matrices_json_from_text(text: str) -> Dict[str, Any]:
    """Parse the text spelling into the JSON form's dict (checked afterwards by :func:`cameras_from_matrices_json`).
    Raises GeometryError naming the line at fault."""
    data: Dict[str, Any] = {}
    rows = []
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        key, *rest = line.split()
        if key == "description":
            data["description"] = " ".join(rest)
            continue
        if key in _TEXT_KEYS:
            if len(rest) != _TEXT_KEYS[key]:
                raise GeometryError(f"line {n}: {key!r} takes {_TEXT_KEYS[key]} value(s), got {len(rest)}", name=key)
            if key in ("format", "frame", "units"):
                data[key] = rest[0]
                continue
            try:
                vals = [float(v) for v in rest]
            except ValueError:
                raise GeometryError(f"line {n}: {key!r} must be numbers, got {' '.join(rest)!r}", name=key) from None
            data[key] = int(vals[0]) if key == "version" and vals[0] == int(vals[0]) else (vals[0] if key == "version" else vals)
            continue
        try:
            row = [float(v) for v in line.split()]
        except ValueError:
            raise GeometryError(
                f"line {n}: unknown key {key!r} (allowed: {', '.join(sorted(_TEXT_KEYS))}, description)", name="file"
            ) from None
        if len(row) != 4:
            raise GeometryError(f"line {n}: a matrix row has 4 numbers, got {len(row)}", name="matrices")
        rows.append(row)
    if len(rows) % 3:
        raise GeometryError(f"{len(rows)} matrix rows is not a whole number of 3x4 matrices", name="matrices")
    if rows:
        data["matrices"] = np.asarray(rows, dtype=np.float64).reshape(-1, 3, 4).tolist()
    return data


def _pair(value, field: str) -> np.ndarray:
    try:
        a = np.asarray(value, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise GeometryError(f"field {field!r} must be numbers, got {value!r}", name=field) from None
    if a.size == 1:
        a = np.repeat(a, 2)
    if a.size != 2 or not np.isfinite(a).all():
        raise GeometryError(f"field {field!r} must be [column, row] (two finite numbers), got {value!r}", name=field)
    return a


def cameras_from_matrices_json(data: Dict[str, Any], *, n_views: Optional[int] = None, dtype: torch.dtype = torch.float64) -> Cameras:
    """Cameras from the projection-matrix form (see :func:`matrices_to_json`); ``n_views`` checks the count.
    Raises GeometryError naming the field or view at fault."""
    if not isinstance(data, dict):
        raise GeometryError(f"a projection-matrix file is a JSON object, got {type(data).__name__}", name="file")
    unknown = sorted(set(data) - _KEYS)
    if unknown:
        raise GeometryError(f"unknown field(s) {unknown}; allowed: {sorted(_KEYS)}", name="file")
    if data.get("format") != MATRICES_FORMAT:
        raise GeometryError(f"field 'format' must be {MATRICES_FORMAT!r}, got {data.get('format')!r}", name="format")
    if data.get("version") != MATRICES_VERSION:
        raise GeometryError(f"field 'version' must be {MATRICES_VERSION}, got {data.get('version')!r}", name="version")
    if data.get("frame", "RAS") != "RAS" or data.get("units", "mm") != "mm":
        raise GeometryError(
            "projection matrices must map patient RAS millimetres (frame 'RAS', units 'mm'); convert LPS with diag(-1, -1, 1)", name="frame"
        )
    for key in ("size_px", "pixel_spacing_mm", "matrices"):
        if key not in data:
            raise GeometryError(f"missing field {key!r}", name=key)
    size = _pair(data["size_px"], "size_px")
    if (size < 1).any() or (size != np.round(size)).any():
        raise GeometryError(f"field 'size_px' must be two positive integers [columns, rows], got {data['size_px']!r}", name="size_px")
    spacing = _pair(data["pixel_spacing_mm"], "pixel_spacing_mm")
    if (spacing <= 0).any():
        raise GeometryError(f"field 'pixel_spacing_mm' must be > 0, got {spacing.tolist()}", name="pixel_spacing_mm")
    try:
        p = np.asarray(data["matrices"], dtype=np.float64)
    except (TypeError, ValueError):
        raise GeometryError("field 'matrices' must be a list of 3x4 matrices (lists of 3 rows of 4 numbers)", name="matrices") from None
    if p.ndim == 2 and p.shape[1] == 12:
        p = p.reshape(-1, 3, 4)  # one row of 12 numbers (row-major) per view
    check_projection_matrices(p, n_views=n_views)
    cams = Cameras.from_projection_matrices(torch.from_numpy(p), (int(size[0]), int(size[1])), torch.from_numpy(spacing))
    return cams.to(dtype=dtype) if dtype != torch.float64 else cams


def load_projection_matrices(path: str, *, n_views: Optional[int] = None, dtype: torch.dtype = torch.float64) -> Cameras:
    """Read a projection-matrix file (JSON, ``"format": "xraynerf-projection-matrices"``, or its text spelling
    ``*.matrices.txt``). Errors name the file."""
    path = str(path)
    if not os.path.isfile(path):
        raise GeometryError(f"projection-matrix file {path!r} does not exist", name="file")
    try:
        with open(path, "r", encoding="utf-8") as f:
            data = matrices_json_from_text(f.read()) if _is_text_path(path) else json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise GeometryError(
            f"projection-matrix file {path!r} is not valid {'text' if _is_text_path(path) else 'JSON'}: {exc}", name="file"
        ) from None
    except GeometryError as exc:
        raise GeometryError(f"projection-matrix file {path!r}: {exc}", name=exc.name) from None
    try:
        return cameras_from_matrices_json(data, n_views=n_views, dtype=dtype)
    except GeometryError as exc:
        raise GeometryError(f"projection-matrix file {path!r}: {exc}", name=exc.name) from None


def save_projection_matrices(cameras: Cameras, path: str, *, description: Optional[str] = None) -> None:
    """Write ``cameras`` as a projection-matrix file (JSON, or text for ``*.matrices.txt``; floats exact, so a
    round trip reproduces the cameras to rounding of the RQ decomposition)."""
    text = matrices_to_text(cameras, description=description) if _is_text_path(path) else None
    data = None if text is not None else matrices_to_json(cameras, description=description)
    try:
        with open(str(path), "w", encoding="utf-8") as f:
            if text is not None:
                f.write(text)
            else:
                json.dump(data, f, indent=1)
                f.write("\n")
    except OSError as exc:
        raise GeometryError(f"cannot write projection-matrix file {str(path)!r}: {exc.strerror}", name="file") from None
