"""DICOM X-ray images (XA, RF, DX, CR, Enhanced XA/XRF) -> images in our layout + cameras.

docs/dicom.md has the tag -> geometry table, the precedence rules and the assumptions. In short:

* Angles: Positioner Primary/Secondary Angle (0018,1510/1511) are anatomical (LAO+/RAO-, CRA+/CAU-,
  relative to the patient), i.e. ``Cameras.carm(..., patient_position="HFS")``. Multi-frame XA adds the
  per-frame increments (0018,1520/1521). Enhanced XA: per-frame Positioner Position Sequence (0018,9405),
  else the equipment-based Isocenter Reference System (0018,9462: angles 9463-9465, table 9466-9471),
  which goes through Patient Position (0018,5100). DX/CR without angles: View Position (AP/PA/LL/RL).
  Detector Rotation Angle (0018,9465), when present, turns the detector about the central ray
  (:func:`rotate_detector`: counter-clockwise seen from the source for positive angles).
* Distances: Distance Source to Detector (0018,1110); source-to-isocentre from Distance Source to
  Isocenter (0018,9402), else Distance Source to Patient (0018,1111), else SDD / Estimated Radiographic
  Magnification Factor (0018,1114).
* Pixel spacing on the detector: Imager Pixel Spacing (0018,1164); else Pixel Spacing (0028,0030)
  scaled by the magnification when its calibration type (0028,0A02) says it was calibrated in the
  patient; DICOM order is (row spacing, column spacing), ours (column, row).
* Image layout: stored X-ray pixels are displayed the radiological way (seen from the detector,
  looking towards the source: at LAO 0 / CRA 0 the patient's left on the right, head at the top). Our
  camera looks from the source (beam's eye view), so the reader mirrors the columns. Patient
  Orientation (0020,0020), when present, decides instead (it describes the stored pixels); otherwise
  Field of View Rotation/Horizontal Flip (0018,7032/7034) are undone first.
* Masks: shutters (0018,1600-1620) and collimators (0018,1700-1720), rectangular, circular or polygonal,
  top level or in the Enhanced functional groups, intersected.
* Compressed pixel data: whatever pydicom decodes; JPEG-LS / JPEG 2000 / JPEG lossless need the
  ``dicom-codecs`` extra, and the error says so.

Explicit overrides (:class:`GeometryOverrides`, the CLI flags) win over the tags; every fallback and
disagreement is written to ``assumptions``.
"""

from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from .errors import MissingTagError, NotAnXrayImageError, TagValueError
from .geometry import PATIENT_FROM_CARM, Cameras

__all__ = [
    "GeometryOverrides",
    "DicomXRay",
    "read_dicom_xray",
    "read_dicom_series",
    "list_dicom_files",
    "SUPPORTED_SOP_CLASSES",
    "Orientation",
    "rotate_detector",
]

SUPPORTED_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.12.1": "X-Ray Angiographic Image",
    "1.2.840.10008.5.1.4.1.1.12.1.1": "Enhanced XA Image",
    "1.2.840.10008.5.1.4.1.1.12.2": "X-Ray Radiofluoroscopic Image",
    "1.2.840.10008.5.1.4.1.1.12.2.1": "Enhanced XRF Image",
    "1.2.840.10008.5.1.4.1.1.1": "Computed Radiography Image",
    "1.2.840.10008.5.1.4.1.1.1.1": "Digital X-Ray Image (for presentation)",
    "1.2.840.10008.5.1.4.1.1.1.1.1": "Digital X-Ray Image (for processing)",
}
_SUPPORTED_MODALITIES = ("XA", "RF", "DX", "CR", "PX")
_ENHANCED = ("1.2.840.10008.5.1.4.1.1.12.1.1", "1.2.840.10008.5.1.4.1.1.12.2.1")

# CLI flags that supply a missing value (kept here so error messages and the CLI agree).
FLAG = {
    "sdd_mm": "--sdd-mm",
    "sid_mm": "--sid-mm",
    "pixel_spacing_mm": "--pixel-spacing-mm",
    "primary_deg": "--primary-deg",
    "secondary_deg": "--secondary-deg",
    "patient_position": "--patient-position",
    "angle_increments": "--angle-increments",
    "image_layout": "--image-layout",
}

_LETTERS = {
    "R": (1, 0, 0),
    "L": (-1, 0, 0),
    "A": (0, 1, 0),
    "P": (0, -1, 0),
    "H": (0, 0, 1),
    "F": (0, 0, -1),
    "S": (0, 0, 1),
    "I": (0, 0, -1),
}
_TABLE_TO_CARM = np.diag([-1.0, -1.0, 1.0])  # table axes (X_t left, Y_t down, Z_t head) -> C-arm (right, up, head)


@dataclass
class GeometryOverrides:
    """Values given by the user; each wins over the corresponding DICOM tag (the disagreement is noted).

    sdd_mm / sid_mm: source-to-detector / source-to-isocentre distance, mm.
    pixel_spacing_mm: detector pixel spacing [column, row] mm (one number for square pixels).
    primary_deg / secondary_deg: one value, or one per frame (V,), anatomical LAO+/CRA+ angles.
    patient_position: DICOM Patient Position (HFS, FFS, ...) used with equipment-based angles/table.
    isocenter_ras: (3,) RAS mm of the isocentre (default the origin: DICOM does not register the C-arm to
        any other image).
    angle_increments: how (0018,1520/1521) are read: "first" (relative to the first frame, the default),
        "previous" (relative to the previous frame) or "absolute" (the list holds the angles).
    image_layout: "radiological" (stored pixels seen from the detector: mirror them) or "beams_eye"
        (stored pixels already seen from the source); default decided by the tags.
    """

    sdd_mm: Optional[float] = None
    sid_mm: Optional[float] = None
    pixel_spacing_mm: Optional[Sequence[float]] = None
    primary_deg: Optional[Sequence[float]] = None
    secondary_deg: Optional[Sequence[float]] = None
    patient_position: Optional[str] = None
    isocenter_ras: Optional[Sequence[float]] = None
    angle_increments: Optional[str] = None
    image_layout: Optional[str] = None


@dataclass
class DicomXRay:
    """What :func:`read_dicom_xray` read.

    images: (V, H, W) float32 values after the Modality LUT, in our camera layout (beam's eye view).
    cameras: V views (float64).
    masks: (V, H, W) bool, True inside the shutter / collimator (pixels that saw the beam).
    views: one dict per view (file, frame, angles, distances, spacing, ...).
    intensity: {"relationship": "LIN"|"LOG"|"DISP", "sign": +1|-1, "max_value": float} for intensities.py.
    assumptions: sentences saying what was assumed or which tag lost.
    """

    images: Tensor
    cameras: Cameras
    masks: Tensor
    views: List[Dict[str, Any]]
    intensity: Dict[str, Any]
    assumptions: List[str] = field(default_factory=list)
    series_uid: str = ""
    modality: str = ""


# ---------------------------------------------------------------------------------------------
# Image layout: a sequence of flips/transposes taking stored pixels to our layout
# ---------------------------------------------------------------------------------------------
class Orientation:
    """A sequence of ``fliplr`` / ``flipud`` / ``transpose`` operations on (..., H, W) arrays (each its own
    inverse), applied to images, masks and pixel coordinates alike."""

    def __init__(self, ops: Sequence[str] = ()):
        for op in ops:
            if op not in ("fliplr", "flipud", "transpose"):
                raise ValueError(f"unknown image operation {op!r}")
        self.ops = list(ops)

    def __add__(self, other: "Orientation") -> "Orientation":
        return Orientation(self.ops + other.ops)

    def inverse(self) -> "Orientation":
        return Orientation(list(reversed(self.ops)))

    def array(self, a: np.ndarray) -> np.ndarray:
        for op in self.ops:
            if op == "fliplr":
                a = a[..., :, ::-1]
            elif op == "flipud":
                a = a[..., ::-1, :]
            else:
                a = np.swapaxes(a, -1, -2)
        return np.ascontiguousarray(a)

    def point(self, col: float, row: float, width: int, height: int) -> Tuple[float, float, int, int]:
        """(col, row) pixel-centre coordinates on a W x H image -> new (col, row, W, H)."""
        for op in self.ops:
            if op == "fliplr":
                col = width - 1 - col
            elif op == "flipud":
                row = height - 1 - row
            else:
                col, row, width, height = row, col, height, width
        return col, row, width, height

    def transposes(self) -> bool:
        return self.ops.count("transpose") % 2 == 1

    def same_as(self, other: "Orientation", height: int, width: int) -> bool:
        probe = np.arange(height * width).reshape(height, width)
        a, b = self.array(probe), other.array(probe)
        return a.shape == b.shape and bool((a == b).all())

    def __repr__(self) -> str:
        return f"Orientation({self.ops})"


def rotate_detector(cameras: Cameras, rotation_deg) -> Cameras:
    """Turn each view's detector about its central ray (the principal ray, through the principal point).

    rotation_deg: (V,) or scalar, DICOM Positioner Isocenter Detector Rotation Angle (0018,9465), Ap3 of the
    positioner frame (PS3.3 C.8.19.6.13.1.2): positive turns the detector axes right-handed about Yp, the
    isocentre-to-source axis, i.e. counter-clockwise as seen from the source. Our camera z is -Yp, so the
    camera frame turns by ``-rotation`` about its own z: ``R' = R . Rz(-rotation)``; source, principal point
    and distances are unchanged.
    """
    from .geometry import rotation_z

    rot = torch.deg2rad(torch.as_tensor(np.asarray(rotation_deg, dtype=np.float64)).reshape(-1)).expand(len(cameras))
    m = cameras.world_from_camera.clone()
    m[:, :3, :3] = m[:, :3, :3] @ rotation_z(-rot).to(m.dtype)
    return Cameras(m, cameras.sdd_mm, cameras.pixel_spacing_mm, cameras.principal_point_px, cameras.size_px)


def _fov_orientation(rotation_deg: float, horizontal_flip: bool, where: str) -> Orientation:
    """Stored pixels -> the unrotated, unflipped field of view. The device rotated the field of view
    clockwise by ``rotation_deg`` and then flipped it horizontally: undo the flip, then rotate back
    (counter-clockwise; ``np.rot90`` = transpose then flipud)."""
    k = rotation_deg / 90.0
    if abs(k - round(k)) > 1e-6:
        raise ValueError(f"{where}: Field of View Rotation (0018,7032) is {rotation_deg:g} degrees; only multiples of 90 are supported")
    ops: List[str] = ["fliplr"] if horizontal_flip else []
    ops += ["transpose", "flipud"] * (int(round(k)) % 4)
    return Orientation(ops)


def _direction(letters: str) -> Optional[np.ndarray]:
    letters = letters.strip().upper()
    if not letters or any(c not in _LETTERS for c in letters):
        return None
    v = np.sum([_LETTERS[c] for c in letters], axis=0).astype(np.float64)
    n = np.linalg.norm(v)
    return v / n if n > 0 else None


def _orientation_from_patient_orientation(
    row_dir: np.ndarray, col_dir: np.ndarray, cam_x: np.ndarray, cam_y: np.ndarray
) -> Optional[Orientation]:
    """Stored pixels whose +column points along ``row_dir`` and +row along ``col_dir`` (RAS unit vectors,
    from Patient Orientation) -> our layout, whose +column is ``cam_x`` and +row ``cam_y``."""
    a = np.array([[row_dir @ cam_x, row_dir @ cam_y], [col_dir @ cam_x, col_dir @ cam_y]])
    straight = abs(a[0, 0]) + abs(a[1, 1])
    crossed = abs(a[0, 1]) + abs(a[1, 0])
    ops: List[str] = []
    if straight >= crossed:
        sx, sy = a[0, 0], a[1, 1]
    else:
        ops.append("transpose")
        sx, sy = a[1, 0], a[0, 1]
    if min(abs(sx), abs(sy)) < 0.5:
        return None  # oblique: Patient Orientation cannot decide
    if sx < 0:
        ops.append("fliplr")
    if sy < 0:
        ops.append("flipud")
    return Orientation(ops)


# ---------------------------------------------------------------------------------------------
# Tag access
# ---------------------------------------------------------------------------------------------
def _tag(keyword: str) -> str:
    from pydicom.datadict import tag_for_keyword

    t = tag_for_keyword(keyword)
    return f"({t >> 16:04X},{t & 0xFFFF:04X})" if t is not None else ""


def _name(keyword: str) -> str:
    return f"{keyword} {_tag(keyword)}"


def _search(item, keyword: str, depth: int = 2):
    """The value of ``keyword`` in ``item`` or in the first item of its sequences (functional group
    macros nest one or two levels)."""
    if keyword in item:
        value = item[keyword].value
        if value is not None and value != "":
            return value
    if depth == 0:
        return None
    for elem in item:
        if elem.VR == "SQ" and elem.value and elem.keyword not in ("PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence"):
            found = _search(elem.value[0], keyword, depth - 1)
            if found is not None:
                return found
    return None


class _Frames:
    """Frame-aware attribute lookup: per-frame functional group > shared functional group > top level."""

    def __init__(self, ds, path: str):
        self.ds = ds
        self.path = path
        self.per_frame = list(getattr(ds, "PerFrameFunctionalGroupsSequence", []) or [])
        shared = getattr(ds, "SharedFunctionalGroupsSequence", None)
        self.shared = shared[0] if shared else None

    def get(self, keyword: str, frame: int = 0):
        if self.per_frame and frame < len(self.per_frame):
            v = _search(self.per_frame[frame], keyword)
            if v is not None:
                return v
        if self.shared is not None:
            v = _search(self.shared, keyword)
            if v is not None:
                return v
        return _search(self.ds, keyword, depth=0)

    def number(self, keyword: str, frame: int = 0) -> Optional[float]:
        v = self.get(keyword, frame)
        if v is None:
            return None
        if isinstance(v, (list, tuple)) or hasattr(v, "__len__") and not isinstance(v, (str, bytes)):
            v = list(v)
            if len(v) != 1:
                raise ValueError(f"{self.path}: {_name(keyword)} has {len(v)} values, expected one")
            v = v[0]
        try:
            x = float(v)
        except (TypeError, ValueError):
            raise ValueError(f"{self.path}: {_name(keyword)} is {v!r}, not a number") from None
        if not math.isfinite(x):
            raise ValueError(f"{self.path}: {_name(keyword)} is not finite ({v!r})")
        return x

    def numbers(self, keyword: str, frame: int = 0) -> Optional[np.ndarray]:
        v = self.get(keyword, frame)
        if v is None:
            return None
        vals = [v] if isinstance(v, (str, bytes, int, float)) else list(v)
        try:
            a = np.array([float(x) for x in vals], dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"{self.path}: {_name(keyword)} is {v!r}, not numbers") from None
        if not np.isfinite(a).all():
            raise ValueError(f"{self.path}: {_name(keyword)} contains non-finite values")
        return a

    def text(self, keyword: str, frame: int = 0) -> Optional[str]:
        v = self.get(keyword, frame)
        if v is None:
            return None
        if not isinstance(v, str) and hasattr(v, "__len__"):
            v = "\\".join(str(x) for x in v)
        return str(v).strip().upper()


# ---------------------------------------------------------------------------------------------
# Reading one file
# ---------------------------------------------------------------------------------------------
def _open(path: str):
    import pydicom
    from pydicom.errors import InvalidDicomError

    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such file")
    try:
        return pydicom.dcmread(path)
    except InvalidDicomError:
        raise ValueError(f"{path}: not a DICOM file (no 'DICM' marker); give DICOM X-ray images") from None
    except (EOFError, OSError, struct.error, ValueError, KeyError, TypeError, IndexError, OverflowError) as exc:
        raise ValueError(f"{path}: corrupt or truncated DICOM file ({type(exc).__name__}: {exc})") from None


def _check_image(ds, path: str) -> str:
    sop = str(getattr(ds, "SOPClassUID", "") or "")
    modality = str(getattr(ds, "Modality", "") or "").upper()
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        from pydicom.uid import UID

        what = UID(sop).name if sop else "an object"
        raise NotAnXrayImageError(
            f"{path}: {what} (Modality {modality or '?'}) holds no image (no Pixel Data (7FE0,0010)); give X-ray images (XA, RF, DX, CR)",
            path=path,
            reason="no-pixel-data",
        )
    if sop not in SUPPORTED_SOP_CLASSES and modality not in _SUPPORTED_MODALITIES:
        from pydicom.uid import UID

        raise NotAnXrayImageError(
            f"{path}: {UID(sop).name if sop else 'unknown SOP class'} (Modality {modality or '?'}) is not a projection X-ray image; "
            "supported: XA, RF, DX, CR and Enhanced XA/XRF",
            path=path,
            reason="not-projection-xray",
        )
    return modality


# Transfer syntaxes that pydicom decodes with the `dicom-codecs` extra (pylibjpeg + its libjpeg and openjpeg
# plugins); the others need a converter (e.g. dcmdjpeg / gdcmconv --raw) or another pydicom plugin (GDCM).
_CODEC_SYNTAXES = {
    "1.2.840.10008.1.2.4.50": "JPEG Baseline",
    "1.2.840.10008.1.2.4.51": "JPEG Extended",
    "1.2.840.10008.1.2.4.57": "JPEG Lossless (process 14)",
    "1.2.840.10008.1.2.4.70": "JPEG Lossless (process 14, SV1)",
    "1.2.840.10008.1.2.4.80": "JPEG-LS Lossless",
    "1.2.840.10008.1.2.4.81": "JPEG-LS Near-Lossless",
    "1.2.840.10008.1.2.4.90": "JPEG 2000 Lossless",
    "1.2.840.10008.1.2.4.91": "JPEG 2000",
    "1.2.840.10008.1.2.4.201": "HTJ2K Lossless",
    "1.2.840.10008.1.2.4.202": "HTJ2K Lossless RPCL",
    "1.2.840.10008.1.2.4.203": "HTJ2K",
}
CODECS_HINT = 'pip install "xraynerf[dicom-codecs]" (pylibjpeg, pylibjpeg-libjpeg, pylibjpeg-openjpeg)'


def _decoder_available(ts) -> bool:
    """Whether pydicom has a working decoder plugin for transfer syntax ``ts``."""
    try:
        from pydicom.pixels import get_decoder

        return bool(get_decoder(ts).is_available)
    except (ImportError, NotImplementedError, ValueError):
        return False


def _pixels(ds, path: str, n_frames: int) -> np.ndarray:
    if int(getattr(ds, "SamplesPerPixel", 1) or 1) != 1:
        raise ValueError(f"{path}: {ds.SamplesPerPixel} samples per pixel (colour); X-ray images must be greyscale")
    try:
        arr = ds.pixel_array
    except (ValueError, RuntimeError, NotImplementedError, AttributeError, KeyError, TypeError, EOFError, struct.error) as exc:
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        tsname = f"{getattr(ts, 'name', str(ts))} {ts}" if ts is not None else "no Transfer Syntax UID (0002,0010)"
        if ts is not None and str(ts) in _CODEC_SYNTAXES:
            hint = (
                f"; no decoder for this transfer syntax is installed: {CODECS_HINT}"
                if not _decoder_available(ts)
                else " (the compressed data may be corrupt)"
            )
        elif ts is not None and getattr(ts, "is_compressed", False):
            hint = (
                "; pydicom has no decoder for this transfer syntax here: convert the file to an uncompressed one (e.g. "
                "gdcmconv --raw, dcmdjpeg)"
            )
        else:
            hint = ""
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"{path}: cannot decode Pixel Data (7FE0,0010) (transfer syntax {tsname}): {first}{hint}") from None
    arr = np.asarray(arr)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[0] != n_frames:
        raise ValueError(f"{path}: Pixel Data has shape {arr.shape}, but Number of Frames (0028,0008) says {n_frames}")
    return arr.astype(np.float64)


def _positive(value: float, keyword: str, path: str, key: Optional[str]) -> float:
    """``value`` when > 0; else an error (a TagValueError naming the override ``key`` when the value came from a tag)."""
    if not value > 0:
        problem = f"{_name(keyword)} is {value:g}; distances must be > 0 mm"
        if key is None:
            raise ValueError(f"{path}: {problem}")
        raise _bad_value(path, problem, f"fix the file or pass the value with {FLAG[key]}", key)
    return value


def _bad_value(path: str, problem: str, remedy: str, *keys: str) -> TagValueError:
    """A tag value the user can supply instead (GeometryOverrides ``keys``): "<path>: <problem>; <remedy>"."""
    return TagValueError(
        f"{path}: {problem}; {remedy}", path=path, problem=f"{path}: {problem}", overrides=keys, flags=[FLAG[k] for k in keys]
    )


def _missing(path: str, what: str, tags: str, key: str) -> MissingTagError:
    return MissingTagError(
        f"{path}: no {what} ({tags}); pass it with {FLAG[key]} (or {key}= in GeometryOverrides)",
        path=path,
        what=what,
        tags=tags,
        flag=FLAG[key],
        override=key,
    )


def _angles(fr: _Frames, n: int, path: str, ov: GeometryOverrides, notes: List[str], enhanced: bool):
    """Anatomical (primary, secondary) per frame, or equipment-based angles; returns
    (primary (n,), secondary (n,), frame_of_reference: "patient"|"equipment", source description)."""
    if ov.primary_deg is not None or ov.secondary_deg is not None:
        given = []
        for name, value in (("primary_deg", ov.primary_deg), ("secondary_deg", ov.secondary_deg)):
            a = np.asarray(0.0 if value is None else value, dtype=np.float64).reshape(-1)
            if a.size not in (1, n) or not np.isfinite(a).all():
                raise ValueError(f"{path}: the given {name} must be one finite value or one per frame ({n}), got {a.size} values")
            given.append(np.broadcast_to(a, (n,)).copy())
        notes.append(
            f"{path}: C-arm angles given on the command line ({FLAG['primary_deg']}/{FLAG['secondary_deg']}) used instead of the tags"
        )
        return given[0], given[1], "patient", "given"
    p0 = fr.number("PositionerPrimaryAngle", 0)
    s0 = fr.number("PositionerSecondaryAngle", 0)
    if enhanced and fr.per_frame:
        if len(fr.per_frame) != n:
            raise ValueError(f"{path}: Per-Frame Functional Groups Sequence (5200,9230) has {len(fr.per_frame)} items for {n} frames")
        prim, sec = [fr.number("PositionerPrimaryAngle", f) for f in range(n)], [fr.number("PositionerSecondaryAngle", f) for f in range(n)]
        if all(x is not None for x in prim + sec):
            if fr.number("PositionerIsocenterPrimaryAngle", 0) is not None:
                notes.append(
                    f"{path}: patient-based angles (0018,9405) used; the equipment-based Isocenter Reference System angles "
                    "(0018,9463/9464) are not"
                )
            return np.array(prim), np.array(sec), "patient", "Positioner Position Sequence (0018,9405) per frame"
        iso = (
            [fr.number("PositionerIsocenterPrimaryAngle", f) for f in range(n)],
            [fr.number("PositionerIsocenterSecondaryAngle", f) for f in range(n)],
        )
        if all(x is not None for x in iso[0] + iso[1]):
            return np.array(iso[0]), np.array(iso[1]), "equipment", "Isocenter Reference System (0018,9462) per frame"
    if p0 is not None or s0 is not None:
        if p0 is None or s0 is None:
            missing = "PositionerPrimaryAngle" if p0 is None else "PositionerSecondaryAngle"
            raise _missing(path, "C-arm angle", _name(missing), "primary_deg" if p0 is None else "secondary_deg")
        prim = np.full(n, p0)
        sec = np.full(n, s0)
        src = "Positioner Primary/Secondary Angle (0018,1510/1511)"
        inc_p, inc_s = fr.numbers("PositionerPrimaryAngleIncrement"), fr.numbers("PositionerSecondaryAngleIncrement")
        motion = fr.text("PositionerMotion") or ""
        if n > 1 and (inc_p is not None or inc_s is not None):
            for kw, inc in (("PositionerPrimaryAngleIncrement", inc_p), ("PositionerSecondaryAngleIncrement", inc_s)):
                if inc is not None and inc.size != n:
                    raise ValueError(
                        f"{path}: {_name(kw)} has {inc.size} values but the image has {n} frames (Number of Frames (0028,0008)); "
                        "the file is inconsistent"
                    )
            inc_p = np.zeros(n) if inc_p is None else inc_p
            inc_s = np.zeros(n) if inc_s is None else inc_s
            mode = ov.angle_increments
            if mode is None:
                if (abs(inc_p[0] - p0) < 1e-6 and abs(p0) > 1e-6) or (abs(inc_s[0] - s0) < 1e-6 and abs(s0) > 1e-6):
                    mode = "absolute"
                    notes.append(
                        f"{path}: the first angle increments equal the first-frame angles: the increments were read as absolute "
                        f"angles ({FLAG['angle_increments']} to change)"
                    )
                else:
                    mode = "first"
                    notes.append(
                        f"{path}: angle increments (0018,1520/1521) read as relative to the first frame "
                        f"({FLAG['angle_increments']} previous|absolute to change)"
                    )
            if mode == "first":
                prim, sec = p0 + inc_p - inc_p[0], s0 + inc_s - inc_s[0]
            elif mode == "previous":
                prim, sec = p0 + np.cumsum(inc_p) - inc_p[0], s0 + np.cumsum(inc_s) - inc_s[0]
            elif mode == "absolute":
                prim, sec = inc_p.copy(), inc_s.copy()
            else:
                raise ValueError(f"angle_increments must be 'first', 'previous' or 'absolute', got {mode!r}")
            src += f" + increments ({mode})"
        elif n > 1:
            if motion == "DYNAMIC":
                raise _bad_value(
                    path,
                    "Positioner Motion (0018,1500) is DYNAMIC but Positioner Primary/Secondary Angle Increment (0018,1520/1521) "
                    "are missing",
                    f"pass one angle per frame with {FLAG['primary_deg']}/{FLAG['secondary_deg']}",
                    "primary_deg",
                    "secondary_deg",
                )
            notes.append(f"{path}: {n} frames without angle increments: all frames share the first frame's angles (static positioner)")
        return prim, sec, "patient", src
    iso_p, iso_s = fr.number("PositionerIsocenterPrimaryAngle", 0), fr.number("PositionerIsocenterSecondaryAngle", 0)
    if iso_p is not None and iso_s is not None:
        return np.full(n, iso_p), np.full(n, iso_s), "equipment", "Isocenter Reference System (0018,9462)"
    view = fr.text("ViewPosition")
    views = {"PA": (0.0, 0.0), "AP": (180.0, 0.0), "LL": (90.0, 0.0), "LAT": (90.0, 0.0), "RL": (-90.0, 0.0)}
    if view in views:
        notes.append(
            f"{path}: no positioner angles; View Position (0018,5101) {view} taken as primary {views[view][0]:g}, secondary 0 degrees"
        )
        return np.full(n, views[view][0]), np.full(n, views[view][1]), "patient", f"View Position {view}"
    raise _missing(path, "C-arm angles", "Positioner Primary/Secondary Angle (0018,1510/1511)", "primary_deg")


def _detector_spacing(
    fr: _Frames, path: str, ov: GeometryOverrides, magnification: Optional[float], notes: List[str]
) -> Tuple[np.ndarray, str]:
    """Detector-plane pixel spacing [column, row] mm of the stored image (before any transpose)."""
    ips = fr.numbers("ImagerPixelSpacing")
    ps = fr.numbers("PixelSpacing")
    for kw, a in (("ImagerPixelSpacing", ips), ("PixelSpacing", ps)):
        if a is not None and (a.size != 2 or (a <= 0).any()):
            raise _bad_value(
                path,
                f"{_name(kw)} is {a.tolist()}; expected two values > 0 (row spacing, column spacing) mm",
                f"pass {FLAG['pixel_spacing_mm']}",
                "pixel_spacing_mm",
            )
    if ov.pixel_spacing_mm is not None:
        given = np.broadcast_to(np.asarray(ov.pixel_spacing_mm, dtype=np.float64).reshape(-1), (2,)).copy()
        if (given <= 0).any():
            raise ValueError(f"the given pixel spacing must be > 0 mm, got {given.tolist()}")
        if ips is not None and np.abs(ips[::-1] - given).max() > 1e-6 * given.max():
            notes.append(
                f"{path}: given pixel spacing {given.tolist()} mm used instead of Imager Pixel Spacing (0018,1164) "
                f"{ips[::-1].tolist()} [column, row]"
            )
        return given, "given"
    if ips is not None:
        if (
            ps is not None
            and magnification is not None
            and np.abs(ps * magnification - ips).max() > 0.01 * ips.max()
            and np.abs(ps - ips).max() > 1e-6 * ips.max()
        ):
            notes.append(
                f"{path}: Pixel Spacing (0028,0030) {ps.tolist()} disagrees with Imager Pixel Spacing (0018,1164) {ips.tolist()} "
                "/ magnification; Imager Pixel Spacing (detector plane) used"
            )
        return ips[::-1].copy(), "Imager Pixel Spacing (0018,1164)"
    if ps is not None:
        cal = fr.text("PixelSpacingCalibrationType")
        if cal in ("GEOMETRY", "FIDUCIAL"):
            if magnification is None:
                raise _bad_value(
                    path,
                    f"Pixel Spacing (0028,0030) is calibrated in the patient ({cal}) and no magnification is known (no SID/SDD)",
                    f"pass the detector pixel spacing with {FLAG['pixel_spacing_mm']}",
                    "pixel_spacing_mm",
                )
            notes.append(
                f"{path}: detector pixel spacing = Pixel Spacing (0028,0030) x magnification {magnification:.6g} (calibration {cal})"
            )
            return ps[::-1] * magnification, f"Pixel Spacing x magnification ({cal})"
        notes.append(
            f"{path}: no Imager Pixel Spacing (0018,1164); Pixel Spacing (0028,0030) {ps.tolist()} taken as the detector-plane spacing"
        )
        return ps[::-1].copy(), "Pixel Spacing (0028,0030), assumed at the detector"
    raise _missing(path, "pixel spacing", "Imager Pixel Spacing (0018,1164) / Pixel Spacing (0028,0030)", "pixel_spacing_mm")


def _polygon_mask(vertices: np.ndarray, h: int, w: int) -> np.ndarray:
    """(h, w) bool: pixel centres inside the closed polygon or on its edges. vertices: (N, 2) 1-based
    (row, column) pixel coordinates, as in DICOM. Even-odd rule (DICOM polygons do not self-intersect)."""
    rr, cc = np.mgrid[1 : h + 1, 1 : w + 1].astype(np.float64)
    inside = np.zeros((h, w), dtype=bool)
    on_edge = np.zeros((h, w), dtype=bool)
    n = len(vertices)
    for k in range(n):
        (r1, c1), (r2, c2) = vertices[k], vertices[(k + 1) % n]
        crosses = (r1 > rr) != (r2 > rr)
        with np.errstate(divide="ignore", invalid="ignore"):
            c_at = c1 + (rr - r1) * (c2 - c1) / (r2 - r1)
        inside ^= crosses & (cc < c_at)
        # on the segment: collinear and within its bounding box
        cross = (r2 - r1) * (cc - c1) - (c2 - c1) * (rr - r1)
        length = math.hypot(r2 - r1, c2 - c1)
        within = (
            (np.minimum(r1, r2) - 1e-9 <= rr)
            & (rr <= np.maximum(r1, r2) + 1e-9)
            & (np.minimum(c1, c2) - 1e-9 <= cc)
            & (cc <= np.maximum(c1, c2) + 1e-9)
        )
        on_edge |= within & (np.abs(cross) <= 1e-9 * max(length, 1.0))
    return inside | on_edge


# Shutters (display, C.7.6.11 / Frame Display Shutter (0018,9472)) and collimators (X-Ray Collimator,
# Collimator Shape Sequence (0018,9407)) share one structure: 1-based stored-pixel coordinates.
_APERTURES = {
    "shutter": dict(
        shape="ShutterShape",
        left="ShutterLeftVerticalEdge",
        right="ShutterRightVerticalEdge",
        upper="ShutterUpperHorizontalEdge",
        lower="ShutterLowerHorizontalEdge",
        centre="CenterOfCircularShutter",
        radius="RadiusOfCircularShutter",
        vertices="VerticesOfThePolygonalShutter",
        tags="(0018,1600-1620)",
    ),
    "collimator": dict(
        shape="CollimatorShape",
        left="CollimatorLeftVerticalEdge",
        right="CollimatorRightVerticalEdge",
        upper="CollimatorUpperHorizontalEdge",
        lower="CollimatorLowerHorizontalEdge",
        centre="CenterOfCircularCollimator",
        radius="RadiusOfCircularCollimator",
        vertices="VerticesOfThePolygonalCollimator",
        tags="(0018,1700-1720)",
    ),
}


def _aperture_mask(fr: _Frames, h: int, w: int, frame: int, path: str, notes: List[str], which: str) -> Optional[np.ndarray]:
    """True inside the shutter or collimator (stored layout), None when the file has none. RECTANGULAR edges
    are 1-based row/column numbers, inclusive; CIRCULAR centre (row, column) and radius in pixels;
    POLYGONAL vertices (row, column) pairs, closed from the last vertex to the first."""
    t = _APERTURES[which]
    shape = fr.text(t["shape"], frame)
    if not shape:
        return None
    mask = np.ones((h, w), dtype=bool)
    rr, cc = np.mgrid[1 : h + 1, 1 : w + 1]
    for kind in shape.split("\\"):
        kind = kind.strip()
        if kind == "RECTANGULAR":
            left, right = fr.number(t["left"], frame), fr.number(t["right"], frame)
            top, bottom = fr.number(t["upper"], frame), fr.number(t["lower"], frame)
            if None in (left, right, top, bottom):
                raise ValueError(f"{path}: {_name(t['shape'])} RECTANGULAR without its four edges {_tag(t['left'])}-{_tag(t['lower'])}")
            mask &= (cc >= left) & (cc <= right) & (rr >= top) & (rr <= bottom)
        elif kind == "CIRCULAR":
            centre = fr.numbers(t["centre"], frame)
            radius = fr.number(t["radius"], frame)
            if centre is None or radius is None or centre.size != 2:
                raise ValueError(
                    f"{path}: {_name(t['shape'])} CIRCULAR without {_name(t['centre'])} (row, column) and {_name(t['radius'])}"
                )
            mask &= (rr - centre[0]) ** 2 + (cc - centre[1]) ** 2 <= radius**2
        elif kind == "POLYGONAL":
            v = fr.numbers(t["vertices"], frame)
            if v is None or v.size % 2 or v.size < 6:
                got = "none" if v is None else f"{v.size} values"
                raise ValueError(
                    f"{path}: {_name(t['shape'])} POLYGONAL needs {_name(t['vertices'])} as three or more (row, column) pairs; got {got}"
                )
            mask &= _polygon_mask(v.reshape(-1, 2), h, w)
        elif kind:
            notes.append(f"{path}: {which} shape {kind} ignored (RECTANGULAR, CIRCULAR and POLYGONAL are read)")
    return mask


def _shutter_mask(fr: _Frames, h: int, w: int, frame: int, path: str, notes: List[str]) -> np.ndarray:
    """True where the beam reached the detector (stored layout): inside every shutter and collimator shape."""
    mask = np.ones((h, w), dtype=bool)
    for which in ("shutter", "collimator"):
        m = _aperture_mask(fr, h, w, frame, path, notes, which)
        if m is not None:
            mask &= m
            if not m.any():
                raise ValueError(f"{path}: frame {frame}: the {which} {_APERTURES[which]['tags']} leaves no pixel exposed")
    if not mask.any():
        raise ValueError(f"{path}: frame {frame}: shutter and collimator together leave no pixel exposed")
    return mask


@dataclass
class _Dataset:
    """Step 1 of :func:`read_dicom_xray`: the opened file with its frames (``values`` (n, H, W) float64: stored
    pixels through the Modality LUT, still in the stored layout)."""

    ds: Any
    fr: _Frames
    path: str
    modality: str
    sop: str
    enhanced: bool
    n: int
    values: np.ndarray
    slope: np.ndarray
    intercept: np.ndarray

    @property
    def height(self) -> int:
        return self.values.shape[1]

    @property
    def width(self) -> int:
        return self.values.shape[2]


@dataclass
class _Distances:
    """Source-detector and source-isocentre distances (mm), where they came from, the stored pixel spacing."""

    sdd: float
    sid: float
    sid_src: str
    spacing_stored: np.ndarray
    spacing_src: str


@dataclass
class _Pose:
    """Per-frame C-arm angles (deg), how they were read, the patient position, detector rotations (deg) and
    isocentres (n, 3) RAS mm."""

    primary: np.ndarray
    secondary: np.ndarray
    angle_frame: str
    angle_src: str
    position: str
    camera_position: str
    det_rot: np.ndarray
    iso: np.ndarray


@dataclass
class _Layout:
    """Stored pixels -> our layout (``orient``), the field-of-view part of it (``to_ref``) and the output size."""

    orient: Orientation
    to_ref: Orientation
    source: str
    width: int
    height: int


def _read_dataset(path: str) -> _Dataset:
    """Open the file, check it is a projection X-ray, decode its frames and apply the Modality LUT."""
    ds = _open(path)
    modality = _check_image(ds, path)
    sop = str(getattr(ds, "SOPClassUID", "") or "")
    enhanced = sop in _ENHANCED or "PerFrameFunctionalGroupsSequence" in ds
    try:
        n = int(getattr(ds, "NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        raise ValueError(f"{path}: Number of Frames (0028,0008) is {ds.NumberOfFrames!r}, not an integer") from None
    if n < 1:
        raise ValueError(f"{path}: Number of Frames (0028,0008) is {n}")
    fr = _Frames(ds, path)
    stored = _pixels(ds, path, n)
    slope = np.array([fr.number("RescaleSlope", f) or 1.0 for f in range(n)])
    intercept = np.array([fr.number("RescaleIntercept", f) or 0.0 for f in range(n)])
    values = stored * slope[:, None, None] + intercept[:, None, None]
    for kw in ("DetectorPrimaryAngle", "DetectorSecondaryAngle"):
        tilt = fr.number(kw)
        if tilt is not None and abs(tilt) > 1e-3:
            raise ValueError(
                f"{path}: {_name(kw)} is {tilt:g} degrees: the beam is not perpendicular to the detector, which is not supported "
                "(only perpendicular detectors, possibly off-centre)"
            )
    return _Dataset(ds, fr, path, modality, sop, enhanced, n, values, slope, intercept)


def _distances(d: _Dataset, ov: GeometryOverrides, notes: List[str]) -> _Distances:
    """SDD and SID from the overrides or the tags (missing ones raise MissingTagError), and the pixel spacing."""
    fr, path = d.fr, d.path
    sdd_tag = fr.number("DistanceSourceToDetector")
    if ov.sdd_mm is not None:
        sdd = _positive(float(ov.sdd_mm), "DistanceSourceToDetector", "given value", None)
        if sdd_tag is not None and abs(sdd_tag - sdd) > 1e-6 * sdd:
            notes.append(f"{path}: given SDD {sdd:g} mm used instead of Distance Source to Detector (0018,1110) {sdd_tag:g} mm")
    elif sdd_tag is not None:
        sdd = _positive(sdd_tag, "DistanceSourceToDetector", path, "sdd_mm")
    else:
        raise _missing(path, "source-to-detector distance", "Distance Source to Detector (0018,1110)", "sdd_mm")
    sid_iso, sid_pat = fr.number("DistanceSourceToIsocenter"), fr.number("DistanceSourceToPatient")
    mag_tag = fr.number("EstimatedRadiographicMagnificationFactor")
    if ov.sid_mm is not None:
        sid = _positive(float(ov.sid_mm), "DistanceSourceToIsocenter", "given value", None)
        sid_src = "given"
    elif sid_iso is not None:
        sid = _positive(sid_iso, "DistanceSourceToIsocenter", path, "sid_mm")
        sid_src = "Distance Source to Isocenter (0018,9402)"
        if sid_pat is not None and abs(sid_pat - sid_iso) > 1e-3 * sid_iso:
            notes.append(
                f"{path}: Distance Source to Patient (0018,1111) {sid_pat:g} mm differs from Distance Source to Isocenter "
                f"(0018,9402) {sid_iso:g} mm; the isocentre distance is used"
            )
    elif sid_pat is not None:
        sid = _positive(sid_pat, "DistanceSourceToPatient", path, "sid_mm")
        sid_src = "Distance Source to Patient (0018,1111)"
        notes.append(
            f"{path}: source-to-isocentre distance taken from Distance Source to Patient (0018,1111) = {sid:g} mm (isocentric "
            "C-arm assumed)"
        )
    elif mag_tag is not None and mag_tag > 1:
        sid = sdd / mag_tag
        sid_src = "SDD / Estimated Radiographic Magnification Factor (0018,1114)"
        notes.append(f"{path}: source-to-isocentre distance = SDD / magnification (0018,1114) = {sid:.6g} mm")
    else:
        raise _missing(
            path,
            "source-to-isocentre distance",
            "Distance Source to Isocenter (0018,9402) / Distance Source to Patient (0018,1111)",
            "sid_mm",
        )
    if sid >= sdd:
        raise _bad_value(
            path,
            f"source-to-isocentre distance {sid:g} mm ({sid_src}) is not smaller than Distance Source to Detector (0018,1110) {sdd:g} mm",
            f"fix the file or pass {FLAG['sid_mm']} / {FLAG['sdd_mm']}",
            "sid_mm",
            "sdd_mm",
        )
    magnification = sdd / sid
    if mag_tag is not None and abs(mag_tag - magnification) > 0.01 * magnification:
        notes.append(
            f"{path}: Estimated Radiographic Magnification Factor (0018,1114) {mag_tag:g} differs from SDD/SID "
            f"{magnification:.6g}; SDD/SID used"
        )
    spacing_stored, spacing_src = _detector_spacing(fr, path, ov, magnification, notes)
    return _Distances(sdd, sid, sid_src, spacing_stored, spacing_src)


def _pose(d: _Dataset, ov: GeometryOverrides, notes: List[str]) -> _Pose:
    """C-arm angles, patient position, detector rotation about the central ray and isocentres, per frame."""
    fr, path, n = d.fr, d.path, d.n
    primary, secondary, angle_frame, angle_src = _angles(fr, n, path, ov, notes, d.enhanced)
    positioner = fr.text("PositionerType")
    if positioner and positioner != "CARM":
        notes.append(
            f"{path}: Positioner Type (0018,1508) is {positioner}: the angles and distances are read as those of an isocentric C-arm"
        )
    pp_tag = fr.text("PatientPosition")
    position = (ov.patient_position or pp_tag or "").strip().upper()
    if position and position not in PATIENT_FROM_CARM:
        raise _bad_value(
            path,
            f"Patient Position (0018,5100) {position!r} is not one of {sorted(PATIENT_FROM_CARM)}",
            f"pass {FLAG['patient_position']}",
            "patient_position",
        )
    if angle_frame == "equipment":
        if not position:
            position = "HFS"
            notes.append(
                f"{path}: equipment-based isocentre angles with no Patient Position (0018,5100): head-first supine (HFS) assumed "
                f"({FLAG['patient_position']} to change)"
            )
        for kw in ("TableHorizontalRotationAngle", "TableHeadTiltAngle", "TableCradleTiltAngle"):
            for f in range(n):
                a = fr.number(kw, f)
                if a is not None and abs(a) > 1e-3:
                    raise ValueError(f"{path}: frame {f}: {_name(kw)} is {a:g} degrees; rotated or tilted tables are not supported")
        camera_position = position
    else:
        camera_position = "HFS"  # anatomical angles: already in the patient frame

    # Detector rotation about the central ray (Enhanced XA Isocenter Reference System, Ap3). It turns the
    # detector whatever frame the beam direction was given in, so it applies to every angle source.
    det_rot = np.array([fr.number("PositionerIsocenterDetectorRotationAngle", f) or 0.0 for f in range(n)])
    if np.abs(det_rot).max() > 1e-9:
        notes.append(
            f"{path}: detector rotated about the central ray by Positioner Isocenter Detector Rotation Angle (0018,9465) "
            f"{', '.join(f'{a:g}' for a in det_rot[:4])}{'...' if n > 4 else ''} degrees (positive: counter-clockwise seen from "
            "the source, "
            "i.e. right-handed about the isocentre-to-source axis Yp; see docs/dicom.md)"
        )

    # Isocentre: given, or table motion relative to the first frame, or the RAS origin.
    iso = np.zeros((n, 3))
    if ov.isocenter_ras is not None:
        iso[:] = np.asarray(ov.isocenter_ras, dtype=np.float64).reshape(3)
    else:
        table = [
            [fr.number(k, f) for k in ("TableXPositionToIsocenter", "TableYPositionToIsocenter", "TableZPositionToIsocenter")]
            for f in range(n)
        ]
        if all(None not in t for t in table):
            t = np.array(table)
            pos = position or "HFS"
            ras_from_table = np.array(PATIENT_FROM_CARM[pos], dtype=np.float64).T @ _TABLE_TO_CARM
            iso = -(t - t[0]) @ ras_from_table.T
            notes.append(
                f"{path}: isocentre of frame 0 placed at the RAS origin; later frames follow the table positions (0018,9466-9468) ({pos})"
            )
        else:
            notes.append(f"{path}: the isocentre is placed at the RAS origin (DICOM X-ray images carry no registration to a CT)")
    return _Pose(primary, secondary, angle_frame, angle_src, position, camera_position, det_rot, iso)


def _layout(d: _Dataset, ov: GeometryOverrides, dist: _Distances, pose: _Pose, notes: List[str]) -> _Layout:
    """Image layout: Patient Orientation > Field of View rotation/flip > radiological default."""
    fr, path, h, w = d.fr, d.path, d.height, d.width
    cam0 = Cameras.carm(
        pose.primary[:1],
        pose.secondary[:1],
        sid_mm=dist.sid,
        sdd_mm=dist.sdd,
        size_px=(w, h),
        pixel_spacing_mm=1.0,
        patient_position=pose.camera_position,
        dtype=torch.float64,
    )
    cam0 = rotate_detector(cam0, pose.det_rot[:1])
    r0 = cam0.world_from_camera[0, :3, :3].numpy()
    fov_rot = fr.number("FieldOfViewRotation") or 0.0
    fov_flip = (fr.text("FieldOfViewHorizontalFlip") or "NO") == "YES"
    to_ref = _fov_orientation(fov_rot, fov_flip, path)
    mirror = Orientation(["fliplr"])
    layout_src = "radiological layout (seen from the detector) mirrored to the beam's eye view"
    if fov_rot or fov_flip:
        layout_src += f" after undoing Field of View Rotation {fov_rot:g} / Horizontal Flip {'YES' if fov_flip else 'NO'} (0018,7032/7034)"
    orient = to_ref + mirror
    po = fr.get("PatientOrientation")
    if ov.image_layout is not None:
        if ov.image_layout not in ("radiological", "beams_eye"):
            raise ValueError(f"image_layout must be 'radiological' or 'beams_eye', got {ov.image_layout!r}")
        orient = to_ref + (mirror if ov.image_layout == "radiological" else Orientation())
        layout_src = f"given layout {ov.image_layout}"
    elif po is not None and len(list(po)) == 2:
        dirs = [_direction(str(x)) for x in po]
        from_po = None if any(d is None for d in dirs) else _orientation_from_patient_orientation(dirs[0], dirs[1], r0[:, 0], r0[:, 1])
        if from_po is None:
            notes.append(f"{path}: Patient Orientation (0020,0020) {list(po)} is oblique or unreadable for this view; ignored")
        else:
            if not from_po.same_as(orient, h, w):
                notes.append(
                    f"{path}: Patient Orientation (0020,0020) {list(po)} disagrees with the default radiological layout"
                    f"{' and the field-of-view tags' if (fov_rot or fov_flip) else ''}; Patient Orientation followed"
                )
            orient = from_po
            layout_src = f"Patient Orientation (0020,0020) {'/'.join(str(x) for x in po)}"
    else:
        notes.append(
            f"{path}: no Patient Orientation (0020,0020): stored pixels assumed in the radiological layout "
            f"({FLAG['image_layout']} beams_eye to change)"
        )
    _, _, w_out, h_out = orient.point(0.0, 0.0, w, h)
    return _Layout(orient, to_ref, layout_src, w_out, h_out)


def _principal_point(d: _Dataset, layout: _Layout, spacing_stored: np.ndarray, notes: List[str]) -> Tuple[np.ndarray, str]:
    """[column, row] pixel-centre coordinates in our layout: the centre of the detector's active area when the
    detector tags say where the field of view lies, else the image centre."""
    fr, path = d.fr, d.path
    principal = np.array([(layout.width - 1) / 2.0, (layout.height - 1) / 2.0])
    pp_src = "image centre (beam axis through the centre of the field of view assumed)"
    origin_px = fr.numbers("FieldOfViewOrigin")
    active_origin = fr.numbers("DetectorActiveOrigin")
    active_dims = fr.numbers("DetectorActiveDimensions")
    element = fr.numbers("DetectorElementSpacing")
    if all(x is not None and x.size == 2 for x in (origin_px, active_origin, active_dims, element)):
        centre_mm = active_origin + active_dims / 2.0  # (row, column) mm from the physical detector's corner
        rc = (centre_mm - origin_px * element) / spacing_stored[::-1] - 0.5  # (row, column) pixel-centre coords, unrotated FOV
        # the unrotated field of view -> stored pixels -> our layout
        _, _, w_ref, h_ref = layout.to_ref.point(0.0, 0.0, d.width, d.height)
        c, r, ws, hs = layout.to_ref.inverse().point(rc[1], rc[0], w_ref, h_ref)
        c, r, _, _ = layout.orient.point(c, r, ws, hs)
        principal = np.array([c, r])
        pp_src = "centre of the detector's active area (0018,7026/7028) within the field of view (0018,7030)"
    elif origin_px is not None:
        notes.append(
            f"{path}: Field of View Origin (0018,7030) without Detector Active Origin/Dimensions or Element Spacing; principal "
            "point at the image centre"
        )
    else:
        notes.append(f"{path}: principal point at the image centre (beam axis through the centre of the image assumed)")
    return principal, pp_src


def _cameras(dist: _Distances, pose: _Pose, layout: _Layout, spacing: np.ndarray, principal: np.ndarray, n: int) -> Cameras:
    """One camera per frame (float64)."""
    size = (layout.width, layout.height)
    cams = []
    for f in range(n):
        c = Cameras.carm(
            pose.primary[f : f + 1],
            pose.secondary[f : f + 1],
            sid_mm=dist.sid,
            sdd_mm=dist.sdd,
            size_px=size,
            pixel_spacing_mm=torch.from_numpy(spacing),
            isocenter_ras=torch.from_numpy(pose.iso[f]),
            patient_position=pose.camera_position,
            dtype=torch.float64,
        )
        c = rotate_detector(c, pose.det_rot[f : f + 1])
        cams.append(Cameras(c.world_from_camera, c.sdd_mm, c.pixel_spacing_mm, torch.from_numpy(principal)[None], size))
    return Cameras.concatenate(cams)


def _masks(d: _Dataset, layout: _Layout, notes: List[str]) -> np.ndarray:
    """(n, H, W) bool in our layout: True inside the shutters / collimator."""
    masks = np.stack([_shutter_mask(d.fr, d.height, d.width, f, d.path, notes) for f in range(d.n)])
    return layout.orient.array(masks)


def _intensity(d: _Dataset, notes: List[str]) -> Dict[str, Any]:
    """Pixel Intensity Relationship and Sign (assumed LIN, +1 when absent) and the largest storable value."""
    fr, path = d.fr, d.path
    rel = fr.text("PixelIntensityRelationship")
    sign_v = fr.number("PixelIntensityRelationshipSign")
    if rel is None:
        rel = "LIN"
        notes.append(f"{path}: no Pixel Intensity Relationship (0028,1040): linear (LIN) assumed (--intensity to change)")
    if sign_v is None:
        sign_v = 1.0
        if fr.get("PixelIntensityRelationship") is not None:
            notes.append(f"{path}: no Pixel Intensity Relationship Sign (0028,1041): +1 assumed")
    bits = int(getattr(d.ds, "BitsStored", 16) or 16)
    max_value = float((2**bits - 1) * d.slope[0] + d.intercept[0])
    return {"relationship": rel, "sign": int(sign_v), "max_value": max_value}


def _view_metadata(
    d: _Dataset,
    dist: _Distances,
    pose: _Pose,
    layout: _Layout,
    spacing: np.ndarray,
    principal: np.ndarray,
    pp_src: str,
    intensity: Dict[str, Any],
) -> List[Dict[str, Any]]:
    """One dict per frame: file, frame, UIDs, angles, distances, spacing, principal point, layout, intensities."""
    ds = d.ds
    series = str(getattr(ds, "SeriesInstanceUID", "") or "")
    views = []
    for f in range(d.n):
        views.append(
            {
                "file": d.path,
                "frame": f,
                "sop_instance_uid": str(getattr(ds, "SOPInstanceUID", "") or ""),
                "series_uid": series,
                "modality": d.modality,
                "sop_class": SUPPORTED_SOP_CLASSES.get(d.sop, d.sop),
                "instance_number": int(getattr(ds, "InstanceNumber", 0) or 0),
                "primary_deg": float(pose.primary[f]),
                "secondary_deg": float(pose.secondary[f]),
                "angles_from": pose.angle_src
                + (f" (equipment frame, patient position {pose.position})" if pose.angle_frame == "equipment" else ""),
                "sdd_mm": dist.sdd,
                "sid_mm": dist.sid,
                "sid_from": dist.sid_src,
                "pixel_spacing_mm": [float(spacing[0]), float(spacing[1])],
                "pixel_spacing_from": dist.spacing_src,
                "principal_point_px": [float(principal[0]), float(principal[1])],
                "principal_point_from": pp_src,
                "isocenter_ras": pose.iso[f].tolist(),
                "detector_rotation_deg": float(pose.det_rot[f]),
                "patient_position": pose.position or None,
                "layout": layout.source,
                "layout_ops": list(layout.orient.ops),
                "size_px": [layout.width, layout.height],
                "pixel_intensity_relationship": intensity["relationship"],
                "pixel_intensity_sign": intensity["sign"],
            }
        )
    return views


def read_dicom_xray(path: str, overrides: Optional[GeometryOverrides] = None) -> DicomXRay:
    """Read one DICOM X-ray file (single- or multi-frame): images in our layout, cameras, masks, metadata.

    Steps: the dataset and its frames (:func:`_read_dataset`), the geometry (:func:`_distances`,
    :func:`_pose`, :func:`_layout`, :func:`_principal_point`, :func:`_cameras`), the shutter masks
    (:func:`_masks`) and the intensity relationship (:func:`_intensity`); ``assumptions`` lists their notes
    in that order.

    Raises ValueError naming the file, the tag and, for missing geometry, the CLI flag that supplies it
    (:class:`~XRayNeRFLib.errors.MissingTagError`, :class:`~XRayNeRFLib.errors.NotAnXrayImageError`).
    """
    ov = overrides or GeometryOverrides()
    path = str(path)
    notes: List[str] = []
    d = _read_dataset(path)
    dist = _distances(d, ov, notes)
    pose = _pose(d, ov, notes)
    layout = _layout(d, ov, dist, pose, notes)
    images = layout.orient.array(d.values)
    spacing = dist.spacing_stored[::-1].copy() if layout.orient.transposes() else dist.spacing_stored
    principal, pp_src = _principal_point(d, layout, dist.spacing_stored, notes)
    cameras = _cameras(dist, pose, layout, spacing, principal, d.n)
    masks = _masks(d, layout, notes)
    intensity = _intensity(d, notes)
    views = _view_metadata(d, dist, pose, layout, spacing, principal, pp_src, intensity)
    return DicomXRay(
        images=torch.from_numpy(images.astype(np.float32)),
        cameras=cameras,
        masks=torch.from_numpy(masks),
        views=views,
        intensity=intensity,
        assumptions=notes,
        series_uid=str(getattr(d.ds, "SeriesInstanceUID", "") or ""),
        modality=d.modality,
    )


# ---------------------------------------------------------------------------------------------
# Series and directories
# ---------------------------------------------------------------------------------------------
def list_dicom_files(inputs: Sequence[str]) -> Tuple[List[str], List[str]]:
    """Expand files and directories (recursively) into files. Returns (files, skipped notes): in
    directories, DICOMDIR, hidden files and files without the DICOM 'DICM' marker are skipped (noted);
    files named explicitly are always kept (and fail loudly later if unreadable)."""
    files: List[str] = []
    skipped: List[str] = []
    for item in inputs:
        item = str(item)
        if os.path.isdir(item):
            found = []
            for root, dirs, names in os.walk(item):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for name in sorted(names):
                    full = os.path.join(root, name)
                    if name.startswith(".") or name.upper() == "DICOMDIR":
                        continue
                    with open(full, "rb") as fh:
                        head = fh.read(132)
                    if len(head) == 132 and head[128:] == b"DICM":
                        found.append(full)
                    else:
                        skipped.append(f"{full}: skipped (not a DICOM Part-10 file)")
            if not found:
                raise ValueError(f"{item}: the directory holds no DICOM files")
            files.extend(found)
        elif os.path.isfile(item):
            files.append(item)
        else:
            raise ValueError(f"{item}: no such file or directory")
    if not files:
        raise ValueError("no DICOM files given")
    return files, skipped


def _merge_notes(notes: Sequence[str], files: Sequence[str]) -> List[str]:
    """Notes that repeat for every file (the same text after the file name) are written once, with a count."""
    counts: Dict[str, int] = {}
    first: Dict[str, str] = {}
    for note in notes:
        body = note
        for f in files:
            if note.startswith(f + ": "):
                body = note[len(f) + 2 :]
                break
        counts[body] = counts.get(body, 0) + 1
        first.setdefault(body, note)
    return [first[b] + (f" (and {counts[b] - 1} more files)" if counts[b] > 1 else "") for b in first]


def read_dicom_series(inputs: Sequence[str], overrides: Optional[GeometryOverrides] = None, *, sort: str = "angle") -> DicomXRay:
    """Read DICOM X-ray files and/or directories that form ONE series into one :class:`DicomXRay`.

    Views are sorted by ``sort``: "angle" (primary, then secondary angle, then instance number and
    frame) or "instance" (instance number, frame). Files of different series (Series Instance UID
    (0020,000E)), modalities or detector sizes are refused. In directories, non-image DICOM objects
    (SR, presentation states, ...) are skipped and noted.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [str(inputs)]
    files, notes = list_dicom_files(inputs)
    explicit = {os.path.abspath(str(p)) for p in inputs if os.path.isfile(str(p))}
    parts: List[DicomXRay] = []
    for f in files:
        try:
            parts.append(read_dicom_xray(f, overrides))
        except NotAnXrayImageError as exc:
            if os.path.abspath(f) not in explicit:
                notes.append(f"skipped {exc}")
                continue
            raise
    if not parts:
        raise ValueError(f"no X-ray images among {len(files)} DICOM files ({'; '.join(notes[:3])})")
    first = parts[0]
    for p in parts[1:]:
        if p.series_uid != first.series_uid:
            raise ValueError(
                f"mixed series: {first.views[0]['file']} is in series {first.series_uid or '?'} but {p.views[0]['file']} in "
                f"{p.series_uid or '?'} (Series Instance UID (0020,000E)); convert one series at a time"
            )
        if p.modality != first.modality:
            raise ValueError(
                f"mixed modalities: {first.views[0]['file']} is {first.modality}, {p.views[0]['file']} is {p.modality}; convert "
                "one series at a time"
            )
        if p.cameras.size_px != first.cameras.size_px:
            raise ValueError(
                f"{p.views[0]['file']}: {p.cameras.size_px} pixels, but {first.views[0]['file']} has {first.cameras.size_px}; "
                "one detector size per series"
            )
        if p.intensity["relationship"] != first.intensity["relationship"] or p.intensity["sign"] != first.intensity["sign"]:
            raise ValueError(f"{p.views[0]['file']}: pixel intensity relationship differs from {first.views[0]['file']} (0028,1040/1041)")
    views = [v for p in parts for v in p.views]
    if sort == "angle":
        key = lambda i: (
            round(views[i]["primary_deg"], 6),
            round(views[i]["secondary_deg"], 6),
            views[i]["instance_number"],
            views[i]["frame"],
        )  # noqa: E731
    elif sort == "instance":
        key = lambda i: (views[i]["instance_number"], views[i]["file"], views[i]["frame"])  # noqa: E731
    else:
        raise ValueError(f"sort must be 'angle' or 'instance', got {sort!r}")
    order = sorted(range(len(views)), key=key)
    images = torch.cat([p.images for p in parts])[order]
    masks = torch.cat([p.masks for p in parts])[order]
    cams = Cameras.concatenate([p.cameras for p in parts])
    idx = torch.tensor(order)
    cams = Cameras(cams.world_from_camera[idx], cams.sdd_mm[idx], cams.pixel_spacing_mm[idx], cams.principal_point_px[idx], cams.size_px)
    assumptions = _merge_notes(notes + [a for p in parts for a in p.assumptions], [p.views[0]["file"] for p in parts])
    return DicomXRay(
        images=images,
        cameras=cams,
        masks=masks,
        views=[views[i] for i in order],
        intensity=dict(first.intensity, max_value=max(p.intensity["max_value"] for p in parts)),
        assumptions=assumptions,
        series_uid=first.series_uid,
        modality=first.modality,
    )
