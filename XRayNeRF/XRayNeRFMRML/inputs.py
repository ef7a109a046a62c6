"""DICOM X-rays for the modules: the one route from a DICOM file or series to a ``ProjectionSet`` and to
X-ray nodes.

Every module (and the Sample Data loader) reads DICOM X-rays through :func:`projection_set_from_dicom`,
which calls ``XRayNeRFLib.projection_set.ProjectionSet.from_dicom`` (geometry, intensities and masks from
the tags) with the panel's tag overrides, and words the engine's errors for the panel: a missing tag
(``XRayNeRFLib.errors.MissingTagError``) names the field to fill (:data:`DICOM_OVERRIDE_FIELDS`) instead of
the command-line flag. :func:`xray_node_from_dicom` writes one frame into a 1-slice X-ray node lying on its
detector with its camera (``XRayNeRFMRML.nodes.write_image_node``), holding line integrals -ln(I/I0).

Never imports qt or ctk; torch and XRayNeRFLib are imported when called.
"""

from __future__ import annotations

import logging
import math
import os
import re
from pathlib import Path
from typing import Optional, Sequence

import slicer

from .nodes import new_node, remove_node, write_image_node

QUANTITY_ATTRIBUTE = "XRayNeRF.Quantity"

# DICOM tag overrides the modules offer: GeometryOverrides field -> the field's label in the module panel
DICOM_OVERRIDE_FIELDS = {
    "sdd_mm": "DICOM overrides > Source-detector distance",
    "sid_mm": "DICOM overrides > Source-isocentre distance",
    "pixel_spacing_mm": "DICOM overrides > Detector pixel spacing",
}


def _fill_hint(override: Optional[str], flag: Optional[str]) -> str:
    """What the user does in the panel to supply the value of GeometryOverrides field ``override``."""
    label = DICOM_OVERRIDE_FIELDS.get(override or "")
    if label is not None:
        return f"enter it in the field '{label}'"
    return f"this module has no field for it: convert the series with `xraynerf convert ... {flag}` and load the result as a stack"


def dicom_error_for_the_panel(error: ValueError) -> str:
    """The engine's DICOM error as the module panel words it: the panel's field instead of the CLI's flag.

    Typed errors are rebuilt from their fields: a ``MissingTagError`` (file, quantity, tags, override) and a
    ``TagValueError`` (problem, overrides). Other errors keep their text, with
    the command-line flags they name turned into the panel's fields ("pass --flag" into what to do in the
    panel; other mentions into the field's label)."""
    from XRayNeRFLib import errors
    from XRayNeRFLib.dicom_xray import FLAG

    if isinstance(error, errors.MissingTagError):
        return f"{error.path}: no {error.what} ({error.tags}); {_fill_hint(error.override, error.flag)}"
    if isinstance(error, errors.TagValueError):  # an unusable tag value
        labels = [DICOM_OVERRIDE_FIELDS[k] for k in error.overrides if k in DICOM_OVERRIDE_FIELDS]
        if labels:
            return f"{error.problem}; fix the file or enter the value in the field " + " or ".join(f"'{x}'" for x in labels)
        return f"{error.problem}; " + _fill_hint(None, " ".join(error.flags))
    message = str(error)
    for key, flag in FLAG.items():
        message = re.sub(rf"pass {re.escape(flag)}(?![\w-])", _fill_hint(key, flag), message)
        label = DICOM_OVERRIDE_FIELDS.get(key)
        if label is not None:  # other wordings ("pass the spacing with --flag", "or pass --flag")
            message = re.sub(rf"{re.escape(flag)}(?![\w-])", f"the field '{label}'", message)
    return message


def projection_set_from_dicom(
    path: str,
    *,
    i0: Optional[float] = None,
    sdd_mm: Optional[float] = None,
    sid_mm: Optional[float] = None,
    pixel_spacing_mm: Optional[float] = None,
    isocenter_ras: Optional[Sequence[float]] = None,
):
    """A DICOM X-ray series (a file or a directory) -> ``ProjectionSet``, geometry and intensities from the tags.

    sdd_mm / sid_mm / pixel_spacing_mm (square pixels): values that win over the tags (None or 0: the tags),
    for files that lack Distance Source to Detector (0018,1110), Distance Source to Isocenter (0018,9402) or
    Imager Pixel Spacing (0018,1164). A missing tag raises ValueError naming the field to fill
    (:data:`DICOM_OVERRIDE_FIELDS`). isocenter_ras: (3,) RAS mm of the C-arm's isocentre (None: the origin).
    i0: unattenuated intensity (None or 0: from the Pixel Intensity Relationship, or estimated)."""
    from XRayNeRFLib.dicom_xray import GeometryOverrides
    from XRayNeRFLib.projection_set import ProjectionSet

    if not path or not os.path.exists(str(path)):
        raise ValueError(f"the DICOM path {str(path)!r} does not exist: choose a DICOM file or the directory of the series")
    for label, value in (("source-detector distance", sdd_mm), ("source-isocentre distance", sid_mm), ("pixel spacing", pixel_spacing_mm)):
        if value is not None and not (math.isfinite(float(value)) and float(value) >= 0.0):
            raise ValueError(f"the DICOM override {label} must be > 0 mm (or 0 to use the tag), got {value}")
    overrides = GeometryOverrides(
        sdd_mm=float(sdd_mm) if sdd_mm else None,
        sid_mm=float(sid_mm) if sid_mm else None,
        pixel_spacing_mm=[float(pixel_spacing_mm)] * 2 if pixel_spacing_mm else None,
        isocenter_ras=None if isocenter_ras is None else [float(x) for x in isocenter_ras],
    )
    try:
        return ProjectionSet.from_dicom([str(path)], overrides, i0=i0 if i0 else None)
    except ValueError as error:
        raise ValueError(dicom_error_for_the_panel(error)) from None


def xray_node_from_projections(projections, frame: int = 0, *, name: str, scene=None, source: Optional[str] = None):
    """Frame ``frame`` of a ``ProjectionSet`` -> a new 1-slice X-ray node (line integrals) on that view's
    detector with its camera (attribute ``XRayNeRF.Cameras``) and ``XRayNeRF.Quantity`` = line_integral.

    scene: where the node goes (default ``slicer.mrmlScene``); source: what the error names (default ``name``).
    Nothing is added on error."""
    frame = int(frame)
    if not 0 <= frame < len(projections):
        raise ValueError(f"'{source or name}' holds {len(projections)} frame(s); choose a frame from 0 to {len(projections) - 1}")
    node = new_node(scene if scene is not None else slicer.mrmlScene, "vtkMRMLScalarVolumeNode", name)
    try:
        write_image_node(node, projections.images[frame].double().numpy(), projections.cameras, view=frame)
        node.SetAttribute(QUANTITY_ATTRIBUTE, "line_integral")
    except Exception:
        remove_node(node)
        raise
    return node


def xray_node_from_dicom(
    path: str,
    frame: int = 0,
    *,
    sdd_mm: Optional[float] = None,
    sid_mm: Optional[float] = None,
    pixel_spacing_mm: Optional[float] = None,
    isocenter_ras: Optional[Sequence[float]] = None,
    i0: Optional[float] = None,
    name: Optional[str] = None,
    scene=None,
):
    """A DICOM X-ray file -> a new 1-slice X-ray node of frame ``frame`` (see
    :func:`xray_node_from_projections`), read by :func:`projection_set_from_dicom` (same overrides, i0 and
    isocentre; the isocentre defaults to the origin: DICOM does not register the C-arm to the CT).
    name: the node's name (default the file's stem). Nothing is added to the scene on error."""
    xray = projection_set_from_dicom(
        path,
        i0=i0,
        sdd_mm=sdd_mm,
        sid_mm=sid_mm,
        pixel_spacing_mm=pixel_spacing_mm,
        isocenter_ras=isocenter_ras,
    )
    node = xray_node_from_projections(xray, frame, name=name or Path(str(path)).stem, scene=scene, source=str(path))
    for note in xray.assumptions:
        logging.info(f"XRayNeRF X-ray: {note}")
    return node
