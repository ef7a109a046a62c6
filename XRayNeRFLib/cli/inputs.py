"""``xraynerf convert`` and ``xraynerf info``: clinical X-ray inputs on the command line, and the input options
that ``reconstruct`` shares with them.

    xraynerf convert DICOM... --out proj.mha --geometry-out geom.xml|geom.json [geometry/intensity options]
    xraynerf info FILE... [--geometry geom.xml|.json] [options]

``convert`` reads one DICOM series (files and/or directories), turns the pixels into line integrals and
writes a projection stack plus its geometry (RTK XML: stack in RTK row order; JSON: XRayNeRF layout). Both
outputs appear together or not at all. ``info`` prints what was read: views, angles, distances, pixel
spacing, intensity relationship and every assumption made, without writing anything.

Every input goes through :class:`~XRayNeRFLib.projection_set.ProjectionSet`: :func:`projections_from_args`
is the one place that tells a projection stack from DICOM (:func:`~XRayNeRFLib.projection_set.is_stack_input`).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

from ..dicom_xray import GeometryOverrides
from ..projection_set import ProjectionSet, is_stack_input
from .common import EXIT_OK, refuse_overwriting_inputs


def add_geometry_options(p: argparse.ArgumentParser) -> None:
    """The DICOM geometry and intensity overrides (and --sort) of convert, info and reconstruct."""
    g = p.add_argument_group("geometry (each value given here wins over the DICOM tag; see docs/dicom.md)")
    g.add_argument("--sdd-mm", type=float, help="source-to-detector distance, mm (Distance Source to Detector (0018,1110))")
    g.add_argument("--sid-mm", type=float, help="source-to-isocentre distance, mm ((0018,9402) / (0018,1111))")
    g.add_argument(
        "--pixel-spacing-mm",
        type=float,
        nargs="+",
        metavar="MM",
        help="detector pixel spacing: one value, or COLUMN ROW in mm (Imager Pixel Spacing (0018,1164))",
    )
    g.add_argument(
        "--primary-deg", type=float, nargs="+", metavar="DEG", help="C-arm primary angle(s), LAO positive (one, or one per frame)"
    )
    g.add_argument("--secondary-deg", type=float, nargs="+", metavar="DEG", help="C-arm secondary angle(s), cranial positive")
    g.add_argument("--patient-position", help="DICOM patient position (HFS, FFS, HFP, ...) for equipment angles and table motion")
    g.add_argument("--isocenter-ras", type=float, nargs=3, metavar=("R", "A", "S"), help="isocentre in patient RAS mm (default the origin)")
    g.add_argument(
        "--angle-increments",
        choices=("first", "previous", "absolute"),
        help="how per-frame angle increments (0018,1520/1521) are read (default: relative to the first frame)",
    )
    g.add_argument(
        "--image-layout",
        choices=("radiological", "beams_eye"),
        help="stored pixel layout: radiological (seen from the detector; default unless Patient Orientation says otherwise) or beams_eye",
    )
    i = p.add_argument_group("intensities")
    i.add_argument("--intensity", choices=("LIN", "LOG"), help="override Pixel Intensity Relationship (0028,1040)")
    i.add_argument("--sign", type=int, choices=(1, -1), help="override Pixel Intensity Relationship Sign (0028,1041)")
    i.add_argument(
        "--i0", type=float, help="unattenuated value: intensity I0 (LIN) or the stored air value (LOG); default estimated per view"
    )
    i.add_argument("--log-scale", type=float, help="LOG images: stored units per natural-log unit (default 1)")
    p.add_argument("--sort", choices=("angle", "instance"), default="angle", help="view order (default: by primary, then secondary angle)")


def geometry_overrides(args, isocenter_ras: Optional[Sequence[float]] = None) -> GeometryOverrides:
    """The :class:`GeometryOverrides` of the flags of :func:`add_geometry_options`; ``isocenter_ras`` is the
    default isocentre when --isocenter-ras is not given (None: the origin)."""
    ps = args.pixel_spacing_mm
    if ps is not None and len(ps) not in (1, 2):
        raise ValueError(f"--pixel-spacing-mm takes one value or COLUMN ROW, got {len(ps)} values")
    iso = args.isocenter_ras if args.isocenter_ras is not None else isocenter_ras
    return GeometryOverrides(
        sdd_mm=args.sdd_mm,
        sid_mm=args.sid_mm,
        pixel_spacing_mm=None if ps is None else (ps * 2 if len(ps) == 1 else ps),
        primary_deg=args.primary_deg,
        secondary_deg=args.secondary_deg,
        patient_position=args.patient_position,
        isocenter_ras=None if iso is None else [float(x) for x in iso],
        angle_increments=args.angle_increments,
        image_layout=args.image_layout,
    )


def projections_from_dicom(args, inputs: Sequence[str], isocenter_ras: Optional[Sequence[float]] = None) -> ProjectionSet:
    """A DICOM series (files/directories) with the override flags: the one DICOM route of the command line."""
    return ProjectionSet.from_dicom(
        list(inputs),
        geometry_overrides(args, isocenter_ras),
        relationship=args.intensity,
        sign=args.sign,
        i0=args.i0,
        log_scale=args.log_scale,
        sort=args.sort,
    )


def projections_from_args(
    args, inputs: Sequence[str], geometry: Optional[str], *, flag: str, quantity: Optional[str] = None
) -> ProjectionSet:
    """The ProjectionSet named on the command line: one projection stack (or image folder) with ``geometry``,
    else a DICOM series. ``flag`` names the input option in messages (``--projections``, ``FILE``)."""
    inputs = [str(p) for p in inputs]
    for path in inputs:
        if not os.path.exists(path):
            raise ValueError(f"{flag} {path!r} does not exist")
    if geometry and not os.path.isfile(geometry):
        raise ValueError(f"--geometry {geometry!r} does not exist")
    if geometry:
        if len(inputs) != 1:
            raise ValueError(f"--geometry goes with one projection stack or image folder, got {len(inputs)} inputs")
        return ProjectionSet.from_stack(inputs[0], geometry, quantity=quantity, i0=args.i0, spacing_mm=args.detector_spacing)
    if len(inputs) == 1 and is_stack_input(inputs[0]):
        raise ValueError(f"{inputs[0]} is a projection stack: give its geometry with --geometry (.xml or .json)")
    if quantity or args.detector_spacing:
        raise ValueError("--quantity and --detector-spacing apply to projection stacks with --geometry; DICOM files carry their own")
    return projections_from_dicom(args, inputs)


def add_convert(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "convert",
        help="DICOM X-ray series -> projection stack (line integrals) + geometry",
        description=(
            "Read one DICOM X-ray series (XA, RF, DX, CR, Enhanced XA; files and/or directories), convert the pixels to "
            "line integrals -ln(I/I0) and write a projection stack with its geometry. Missing geometry tags are "
            "reported with the option that supplies them."
        ),
    )
    p.add_argument("inputs", nargs="+", metavar="DICOM", help="DICOM files or directories of one series")
    p.add_argument("--out", required=True, metavar="PROJ", help="projection stack to write (.mha, .nrrd, .nii, .nii.gz)")
    p.add_argument(
        "--geometry-out",
        required=True,
        metavar="GEOM",
        help="geometry to write: .xml (RTK), .json (XRayNeRF), .matrices.json or .matrices.txt (one projection matrix per view)",
    )
    p.add_argument("--quiet", action="store_true", help="print nothing on success")
    add_geometry_options(p)
    return p


def add_info(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "info",
        help="print what an X-ray input holds: views, angles, distances, spacing, intensities, assumptions",
        description=(
            "Describe DICOM X-ray files/directories, or a projection stack (.mha/.mhd/.nrrd/.nii/.nii.gz or an image folder) "
            "with --geometry. Nothing is written."
        ),
    )
    p.add_argument("files", nargs="+", metavar="FILE", help="DICOM files/directories, or one projection stack")
    p.add_argument("--geometry", metavar="GEOM", help="geometry (.xml/.json) of a projection stack")
    p.add_argument(
        "--detector-spacing", type=float, nargs=2, metavar=("COLUMN_MM", "ROW_MM"), help="pixel spacing of an image folder (RTK XML)"
    )
    add_geometry_options(p)
    return p


def run_convert(args) -> int:
    out, geom = str(args.out), str(args.geometry_out)
    refuse_overwriting_inputs(args.inputs, (out, geom))
    ps = projections_from_dicom(args, args.inputs)
    ps.save(out, geom)
    if not args.quiet:
        sys.stdout.write(ps.summary() + f"\nwrote {out} and {geom}\n")
    return EXIT_OK


def run_info(args) -> int:
    files = [str(f) for f in args.files]
    if args.geometry and not (len(files) == 1 and is_stack_input(files[0])):
        raise ValueError("--geometry applies to projection stacks; DICOM files carry their own geometry")
    ps = projections_from_args(args, files, args.geometry, flag="FILE")
    sys.stdout.write(f"source: {ps.source}\n{ps.summary()}\n")
    return EXIT_OK
