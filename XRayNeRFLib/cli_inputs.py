"""``xraynerf convert`` and ``xraynerf info``: clinical X-ray inputs on the command line.

    xraynerf convert DICOM... --out proj.mha --geometry-out geom.xml|geom.json [geometry/intensity options]
    xraynerf info FILE... [--geometry geom.xml|.json] [options]

``convert`` reads one DICOM series (files and/or directories), turns the pixels into line integrals and
writes a projection stack plus its geometry (RTK XML: stack in RTK row order; JSON: XRayNeRF layout). Both
outputs appear together or not at all. ``info`` prints what was read: views, angles, distances, pixel
spacing, intensity relationship and every assumption made, without writing anything.

Registration: :func:`add_subcommands` adds both to an argparse ``subparsers``; each sets ``func`` (and
``run``, the convention of :mod:`XRayNeRFLib.cli`) to a function ``(args) -> exit status``: 0 on success,
2 with one line on stderr for an error the user can fix. :data:`COMMANDS` lists them as
``{name: (add, run)}`` pairs.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional

from .dicom_xray import GeometryOverrides
from .projection_set import ProjectionSet

__all__ = ["add_subcommands", "add_convert", "add_info", "run_convert", "run_info", "COMMANDS"]

EXIT_OK = 0
EXIT_ERROR = 2


def check_output_file(path: str, flag: str, example: str) -> None:
    """Refuse an output path that cannot be written: a file where a directory must be, no write permission,
    or a directory given as the file (``example``: a file name to suggest). Missing directories are fine:
    the commands create them once the result is ready."""
    out_dir = os.path.dirname(os.path.abspath(path))
    existing = out_dir
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ValueError(f"cannot create output directory {out_dir!r}: {existing!r} is a file")
    if not os.access(existing, os.W_OK):
        raise ValueError(f"cannot write to {existing!r} (permission denied); choose another {flag}")
    if os.path.isdir(path):
        raise ValueError(f"{flag} {path!r} is a directory; give a file name such as {os.path.join(path, example)}")


def _geometry_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("geometry (each value given here wins over the DICOM tag; see docs/dicom.md)")
    g.add_argument("--sdd-mm", type=float, help="source-to-detector distance, mm (Distance Source to Detector (0018,1110))")
    g.add_argument("--sid-mm", type=float, help="source-to-isocentre distance, mm ((0018,9402) / (0018,1111))")
    g.add_argument("--pixel-spacing-mm", type=float, nargs="+", metavar="MM",
                   help="detector pixel spacing: one value, or COLUMN ROW in mm (Imager Pixel Spacing (0018,1164))")
    g.add_argument("--primary-deg", type=float, nargs="+", metavar="DEG", help="C-arm primary angle(s), LAO positive (one, or one per frame)")
    g.add_argument("--secondary-deg", type=float, nargs="+", metavar="DEG", help="C-arm secondary angle(s), cranial positive")
    g.add_argument("--patient-position", help="DICOM patient position (HFS, FFS, HFP, ...) for equipment angles and table motion")
    g.add_argument("--isocenter-ras", type=float, nargs=3, metavar=("R", "A", "S"), help="isocentre in patient RAS mm (default the origin)")
    g.add_argument("--angle-increments", choices=("first", "previous", "absolute"),
                   help="how per-frame angle increments (0018,1520/1521) are read (default: relative to the first frame)")
    g.add_argument("--image-layout", choices=("radiological", "beams_eye"),
                   help="stored pixel layout: radiological (seen from the detector; default unless Patient Orientation says otherwise) or beams_eye")
    i = p.add_argument_group("intensities")
    i.add_argument("--intensity", choices=("LIN", "LOG"), help="override Pixel Intensity Relationship (0028,1040)")
    i.add_argument("--sign", type=int, choices=(1, -1), help="override Pixel Intensity Relationship Sign (0028,1041)")
    i.add_argument("--i0", type=float, help="unattenuated value: intensity I0 (LIN) or the stored air value (LOG); default estimated per view")
    i.add_argument("--log-scale", type=float, help="LOG images: stored units per natural-log unit (default 1)")
    p.add_argument("--sort", choices=("angle", "instance"), default="angle", help="view order (default: by primary, then secondary angle)")


def _overrides(args) -> GeometryOverrides:
    ps = args.pixel_spacing_mm
    if ps is not None and len(ps) not in (1, 2):
        raise ValueError(f"--pixel-spacing-mm takes one value or COLUMN ROW, got {len(ps)} values")
    return GeometryOverrides(
        sdd_mm=args.sdd_mm,
        sid_mm=args.sid_mm,
        pixel_spacing_mm=None if ps is None else (ps * 2 if len(ps) == 1 else ps),
        primary_deg=args.primary_deg,
        secondary_deg=args.secondary_deg,
        patient_position=args.patient_position,
        isocenter_ras=args.isocenter_ras,
        angle_increments=args.angle_increments,
        image_layout=args.image_layout,
    )


def _from_dicom(args, inputs) -> ProjectionSet:
    return ProjectionSet.from_dicom(
        inputs, _overrides(args), relationship=args.intensity, sign=args.sign, i0=args.i0, log_scale=args.log_scale, sort=args.sort
    )


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
    p.add_argument("--geometry-out", required=True, metavar="GEOM", help="geometry to write: .xml (RTK) or .json (XRayNeRF)")
    p.add_argument("--quiet", action="store_true", help="print nothing on success")
    _geometry_options(p)
    p.set_defaults(func=run_convert, run=run_convert)
    return p


def add_info(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "info",
        help="print what an X-ray input holds: views, angles, distances, spacing, intensities, assumptions",
        description=(
            "Describe DICOM X-ray files/directories, or a projection stack (.mha/.nrrd/.nii/.nii.gz or an image folder) "
            "with --geometry. Nothing is written."
        ),
    )
    p.add_argument("files", nargs="+", metavar="FILE", help="DICOM files/directories, or one projection stack")
    p.add_argument("--geometry", metavar="GEOM", help="geometry (.xml/.json) of a projection stack")
    p.add_argument("--detector-spacing", type=float, nargs=2, metavar=("COLUMN_MM", "ROW_MM"), help="pixel spacing of an image folder (RTK XML)")
    _geometry_options(p)
    p.set_defaults(func=run_info, run=run_info)
    return p


def add_subcommands(subparsers) -> None:
    """Register ``convert`` and ``info`` on an argparse sub-parser collection."""
    add_convert(subparsers)
    add_info(subparsers)


def _fail(command: str, exc: BaseException) -> int:
    message = " ".join(str(exc).split()) or type(exc).__name__
    sys.stderr.write(f"xraynerf {command}: error: {message}\n")
    return EXIT_ERROR


def run_convert(args) -> int:
    try:
        out, geom = str(args.out), str(args.geometry_out)
        for path in args.inputs:
            if os.path.abspath(str(path)) in (os.path.abspath(out), os.path.abspath(geom)):
                raise ValueError(f"{path} is both an input and an output")
        ps = _from_dicom(args, args.inputs)
        ps.save(out, geom)
    except (ValueError, RuntimeError, OSError) as exc:
        return _fail("convert", exc)
    if not args.quiet:
        sys.stdout.write(ps.summary() + f"\nwrote {out} and {geom}\n")
    return EXIT_OK


def _is_stack(path: str) -> bool:
    low = path.lower()
    return low.endswith((".mha", ".nrrd", ".nii", ".nii.gz")) or (
        os.path.isdir(path) and any(n.lower().endswith((".tif", ".tiff", ".png")) for n in os.listdir(path))
    )


def run_info(args) -> int:
    try:
        files = [str(f) for f in args.files]
        if len(files) == 1 and _is_stack(files[0]):
            if not args.geometry:
                raise ValueError(f"{files[0]} is a projection stack: pass its geometry with --geometry (.xml or .json)")
            ps = ProjectionSet.from_stack(files[0], args.geometry, i0=args.i0, spacing_mm=args.detector_spacing)
        else:
            if args.geometry:
                raise ValueError("--geometry applies to projection stacks; DICOM files carry their own geometry")
            ps = _from_dicom(args, files)
    except (ValueError, RuntimeError, OSError) as exc:
        return _fail("info", exc)
    sys.stdout.write(f"source: {ps.source}\n{ps.summary()}\n")
    return EXIT_OK


COMMANDS = {"convert": (add_convert, run_convert), "info": (add_info, run_info)}


def main(argv: Optional[list] = None) -> int:
    """Stand-alone entry point (until these are wired into ``xraynerf``)."""
    parser = argparse.ArgumentParser(prog="xraynerf")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    add_subcommands(sub)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
