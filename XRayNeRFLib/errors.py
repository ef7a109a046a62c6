"""Typed errors of the engine: callers branch on the class and its fields, never on the message text.

Every class derives from ``ValueError`` (bad input a user can fix), so code that catches ``ValueError``
keeps working; the message stays the one line a user reads (file, tag, flag).

- :class:`NotAnXrayImageError` — a DICOM object that is no projection X-ray image (no pixel data, or
  another SOP class / modality). Directory readers skip these; an explicitly named file is an error.
- :class:`TagValueError` — a DICOM geometry value is missing or unusable and the user can supply it instead:
  ``problem`` is the message without the remedy, ``overrides`` the ``GeometryOverrides`` fields and ``flags``
  the command-line options that supply it (a front end words its own remedy from these: the Slicer module
  names its panel fields).
- :class:`MissingTagError` (a :class:`TagValueError`) — a DICOM file lacks a value the geometry needs; ``flag``
  is the command-line option (and ``override`` the ``GeometryOverrides`` field) that supplies it.
- :class:`NoOverlapError` — the CT does not project onto the X-ray at the given pose.
- :class:`GeometryError` — cameras, poses or matrices that are not usable (non-rigid, mirrored, skewed,
  inconsistent with the images).
- :class:`LandmarkError` — landmark pairs that cannot give a pose (which check, which pair).
- :class:`NeTTWeightsError` — a NeTT weights file that cannot be used (missing, foreign, another shape).
- :class:`MNeRFError` — an mNeRF that cannot be fitted or used (no views, a mask of another shape, another CT).
- :class:`XRayViewError` — one X-ray of a set registered together (or the only one) that cannot be used, by name.
"""

from __future__ import annotations

from typing import Optional, Sequence


class XRayNeRFError(ValueError):
    """Base class of the engine's typed input errors."""


class NotAnXrayImageError(XRayNeRFError):
    """path: the DICOM file; reason: "no-pixel-data" or "not-projection-xray"."""

    def __init__(self, message: str, *, path: str, reason: str):
        super().__init__(message)
        self.path = path
        self.reason = reason


class TagValueError(XRayNeRFError):
    """path: the file; problem: the message without its remedy (``str(error)`` is the whole line, remedy
    included, for the command line); overrides: the GeometryOverrides fields that supply the value instead;
    flags: the matching command-line options (same order)."""

    def __init__(self, message: str, *, path: str, problem: str, overrides: Sequence[str] = (), flags: Sequence[str] = ()):
        super().__init__(message)
        self.path = path
        self.problem = problem
        self.overrides = tuple(overrides)
        self.flags = tuple(flags)


class MissingTagError(TagValueError):
    """path: the file; what: the quantity (e.g. "source-to-detector distance"); tags: the DICOM tags looked
    for; flag: the CLI option that supplies it; override: the GeometryOverrides field."""

    def __init__(self, message: str, *, path: str, what: str, tags: str, flag: Optional[str] = None, override: Optional[str] = None):
        super().__init__(
            message,
            path=path,
            problem=f"{path}: no {what} ({tags})",
            overrides=[override] if override else [],
            flags=[flag] if flag else [],
        )
        self.what = what
        self.tags = tags
        self.flag = flag
        self.override = override


class NoOverlapError(XRayNeRFError):
    """The CT's projection misses the (masked) X-ray at the given pose; ``behind_source`` is True when the CT
    lies behind the X-ray source."""

    def __init__(self, message: str, *, behind_source: bool = False):
        super().__init__(message)
        self.behind_source = behind_source


class GeometryError(XRayNeRFError):
    """Unusable geometry; ``name`` names the offending input (e.g. "init pose", "view 3 matrix")."""

    def __init__(self, message: str, *, name: str = ""):
        super().__init__(message)
        self.name = name


class LandmarkError(XRayNeRFError):
    """Landmark pairs that cannot give a pose (``registration/landmarks.py``).

    reason: "too-few" (fewer than 4 distinct pairs), "not-finite" (NaN/inf coordinate), "outside-image"
    (a pixel off the detector), "degenerate" (collinear CT points or collinear pixels), "shape" (arrays
    of the wrong shape or length), "no-solution" (no pose puts every point in front of the source).
    index: the 0-based pair at fault, or None when the set as a whole is at fault; label: its label.
    A GUI highlights that pair (markup) instead of parsing the text."""

    def __init__(self, message: str, *, reason: str, index: Optional[int] = None, label: Optional[str] = None):
        super().__init__(message)
        self.reason = reason
        self.index = index
        self.label = label


class NeTTWeightsError(XRayNeRFError):
    """A NeTT weights file that cannot be used (``registration/nett.py:load_nett``).

    path: the file; reason: "missing" (no such file), "format" (not written by ``save_nett``, or an unsupported
    first-version model), "shape" (weights of another model shape than the file's configuration),
    "not-finite" (NaN or infinite weights)."""

    def __init__(self, message: str, *, path: str, reason: str):
        super().__init__(message)
        self.path = path
        self.reason = reason


class MNeRFError(XRayNeRFError):
    """An mNeRF (``registration/mnerf.py``) that cannot be fitted or used.

    reason: "no-views" (no X-ray with a known camera), "views" (X-rays and cameras of different counts or
    sizes, non-finite X-rays), "mask-shape" (a body mask not on the CT's grid), "intensity" (X-rays that do not
    rise with attenuation, or flat), "other-ct" (used with a CT other than the one it was fitted for)."""

    def __init__(self, message: str, *, reason: str):
        super().__init__(message)
        self.reason = reason


class XRayViewError(XRayNeRFError):
    """One X-ray of the set being registered (a biplane pair, frames of a run, or the only X-ray) that cannot be
    used; a front end names it (a scene node, a file) instead of "X-ray 2 of 2".

    name: the X-ray's name as the user knows it; view: its 0-based position in the set; reason: "no-camera" (no
    usable camera geometry), "duplicate" (the same X-ray twice in the set), "no-overlap" (the CT does not project
    onto it at the initial pose), "behind-source" (the CT lies behind its source at the initial pose)."""

    def __init__(self, message: str, *, name: str, view: int, reason: str):
        super().__init__(message)
        self.name = name
        self.view = view
        self.reason = reason
