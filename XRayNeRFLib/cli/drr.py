"""``xraynerf drr``: digitally reconstructed radiographs of a volume for every view of a geometry file,
written as one projection stack (engine: :func:`XRayNeRFLib.render.render`)."""

from __future__ import annotations

import argparse
import math
import os
import time

import torch

from ..geometry import views_missing_volume
from ..geometry_io import load_geometry, rtk_default_origin_mm, rtk_layout_from_ours
from ..projections_io import save_projection_stack, stack_extension
from ..render import DEFAULT_RENDERER, RENDERERS, beer_lambert, render
from ..volume import DEFAULT_EFFECTIVE_ENERGY_KEV, Volume, as_mu, load_volume
from .common import EXIT_OK, check_output_file, note, progress_bar, select_device

CONVENTIONS = """\
conventions:
  world frame    patient RAS (x right, y anterior, z superior), millimetres, as in 3D Slicer.
                 Volumes are read with their geometry (ITK's LPS header converted to RAS).
  camera         one pinhole camera per view; origin at the X-ray source, +z from the source
                 towards the detector (principal ray), +x along increasing image column, +y along
                 increasing image row: images are seen from the source ("beam's eye view").
  pixels         images are (rows H, columns W) arrays, image[row, col]; pixel coordinates are
                 0-based pixel-centre coordinates [column, row]; spacing [column, row] in mm.
  volume values  --input-units hu: Hounsfield units, turned into mu = mu_water(E) (1 + HU/1000)
                 (clamped at 0) with mu_water from NIST XCOM at --energy-kev (60 keV: 0.02059/mm);
                 --input-units mu: linear attenuation in 1/mm, used as is.
  output         a 3D image (columns, rows, views) = a (V, H, W) float32 array: by default line
                 integrals of mu (dimensionless, mu [1/mm] x path length [mm]); with --intensity
                 I = I0 exp(-line integral) (and Poisson counts with --poisson). Header spacing =
                 detector pixel spacing (mm, third spacing 1). With JSON geometry the rows are ours
                 and the header origin (centred detector) is informational; with RTK .xml geometry
                 the rows and origin are RTK's, so RTK tools (rtkfdk ...) read the stack with the
                 same XML.
  geometry       .json (XRayNeRF, docs/geometry_io.md) or .xml (RTK ThreeDCircularProjectionGeometry,
                 which stores no detector size or spacing: give --detector-size and
                 --detector-spacing, and --detector-origin if the RTK detector is not centred).
  errors         exit status 2 with a one-line message; Ctrl-C: 130, no output file.
"""


DRR_DESCRIPTION = """\
Render digitally reconstructed radiographs (DRRs) of a CT or attenuation volume for every view of a
cone-beam geometry and write them as one projection stack (.mha, .nrrd, .nii, .nii.gz).

example:
  xraynerf drr --volume Resources/SampleData/chest_ct_128.nii.gz \\
               --geometry Resources/SampleData/orbit_geometry.json --out out/projections.mha
  (missing directories of --out are created once the result is ready)
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "drr",
        help="render DRRs (line integrals or intensities) of a volume for a geometry file",
        description=DRR_DESCRIPTION,
        epilog=CONVENTIONS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    io = p.add_argument_group("input and output")
    io.add_argument("--volume", required=True, metavar="CT", help="volume file (NIfTI, NRRD, MHA, ...) or a DICOM series directory")
    io.add_argument("--geometry", required=True, metavar="G", help="geometry: XRayNeRF .json or RTK .xml")
    io.add_argument("--out", required=True, metavar="STACK", help="output projection stack: .mha, .nrrd, .nii or .nii.gz (overwritten)")
    io.add_argument(
        "--input-units",
        choices=("auto", "hu", "mu"),
        default="auto",
        help="volume values: Hounsfield units or mu in 1/mm (default auto: HU if the minimum is below -100)",
    )
    io.add_argument("--energy-kev", type=float, default=None, metavar="E", help="effective energy for HU -> mu, 30-150 keV (default 60)")
    det = p.add_argument_group("detector (required for RTK .xml geometry; checked against .json)")
    det.add_argument("--detector-size", type=int, nargs=2, metavar=("COLUMNS", "ROWS"), help="detector size in pixels")
    det.add_argument("--detector-spacing", type=float, nargs=2, metavar=("SU", "SV"), help="pixel spacing [column, row] in mm")
    det.add_argument(
        "--detector-origin",
        type=float,
        nargs=2,
        metavar=("U0", "V0"),
        help="RTK only: position (mm) of pixel (0, 0) in RTK's detector frame (default: centred, -(size-1)/2*spacing)",
    )
    ren = p.add_argument_group("rendering")
    ren.add_argument(
        "--renderer",
        choices=RENDERERS,
        default=DEFAULT_RENDERER,
        help="trilinear: ray marching with trilinear interpolation (default, fast); siddon: exact radiological path through the voxels",
    )
    ren.add_argument(
        "--samples-per-voxel", type=int, default=None, metavar="N", help="trilinear samples per voxel along each ray (default 1)"
    )
    ren.add_argument("--max-memory-mb", type=float, default=1024.0, metavar="MB", help="working memory of one chunk of rays (default 1024)")
    ren.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    out = p.add_argument_group("intensities (default output: line integrals)")
    out.add_argument("--intensity", action="store_true", help="write I = I0 exp(-line integral) instead of line integrals")
    out.add_argument(
        "--i0",
        type=float,
        default=None,
        metavar="N",
        help="unattenuated intensity (default 1: transmission); with --poisson the expected photon count",
    )
    out.add_argument("--poisson", action="store_true", help="draw Poisson counts with mean I0 exp(-line integral) (needs --i0)")
    out.add_argument("--seed", type=int, default=None, metavar="S", help="random seed for --poisson (default: random)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar or summary")
    return p


def check_options(args) -> None:
    if args.i0 is not None and not args.intensity:
        raise ValueError("--i0 applies to --intensity output only; add --intensity")
    if args.poisson and not args.intensity:
        raise ValueError("--poisson applies to --intensity output only; add --intensity")
    if args.poisson and args.i0 is None:
        raise ValueError("--poisson needs --i0, the expected photon count of an unattenuated pixel (e.g. --i0 10000)")
    if args.i0 is not None and not (args.i0 > 0 and math.isfinite(args.i0)):
        raise ValueError(f"--i0 must be a positive number, got {args.i0}")
    if args.seed is not None and not args.poisson:
        raise ValueError("--seed applies to --poisson only")
    if args.input_units == "mu" and args.energy_kev is not None:
        raise ValueError("--energy-kev applies to HU input only (mu in 1/mm is used as is)")
    if args.samples_per_voxel is not None and args.renderer != "trilinear":
        raise ValueError("--samples-per-voxel applies to --renderer trilinear only")
    if args.samples_per_voxel is not None and args.samples_per_voxel < 1:
        raise ValueError(f"--samples-per-voxel must be >= 1, got {args.samples_per_voxel}")
    if not args.max_memory_mb > 0:
        raise ValueError(f"--max-memory-mb must be > 0, got {args.max_memory_mb}")
    if args.detector_size is not None and min(args.detector_size) < 1:
        raise ValueError(f"--detector-size must be two positive integers (columns rows), got {args.detector_size}")
    if args.detector_spacing is not None and not min(args.detector_spacing) > 0:
        raise ValueError(f"--detector-spacing must be two positive numbers in mm, got {args.detector_spacing}")
    if args.detector_origin is not None and not args.geometry.lower().endswith(".xml"):
        raise ValueError("--detector-origin applies to RTK .xml geometry only (JSON geometry places pixels with its principal points)")


def _load_mu_volume(args, quiet: bool):
    """The volume in mu (1/mm), float32, with the units decision explained on stderr."""
    units = None if args.input_units == "auto" else args.input_units
    vol = load_volume(args.volume, units=units)
    lo, hi = float(vol.data.min()), float(vol.data.max())
    if units is None and not quiet:
        why = "minimum below -100" if vol.units == "hu" else "minimum not below -100"
        note(f"volume values {lo:g}..{hi:g} read as {'HU' if vol.units == 'hu' else 'mu (1/mm)'} ({why}; --input-units overrides)")
    if vol.units == "mu" and lo < -0.5:
        raise ValueError(
            f"volume {args.volume!r} read as mu (1/mm) has values down to {lo:g}, impossible for attenuation; "
            "if it holds Hounsfield units pass --input-units hu"
        )
    if vol.units == "mu" and args.energy_kev is not None:
        raise ValueError(f"volume {args.volume!r} was read as mu (1/mm); --energy-kev applies to HU input only")
    energy = DEFAULT_EFFECTIVE_ENERGY_KEV if args.energy_kev is None else args.energy_kev
    return as_mu(Volume(vol.data, vol.ras_from_ijk, vol.units), energy)


def _vec(t) -> str:
    return "(" + ", ".join(f"{float(x):.1f}" for x in t) + ")"


def run(args) -> int:
    t0 = time.monotonic()
    check_options(args)
    stack_extension(args.out)
    check_output_file(args.out, "--out", "projections.mha")
    out_dir = os.path.dirname(os.path.abspath(args.out))
    device = select_device(args.device)
    is_rtk = args.geometry.lower().endswith(".xml")

    cams = load_geometry(args.geometry, size_px=args.detector_size, spacing_mm=args.detector_spacing, origin_mm=args.detector_origin)
    spacing = torch.unique(cams.pixel_spacing_mm.detach().cpu().double(), dim=0)
    if spacing.shape[0] != 1:
        raise ValueError(
            f"geometry {args.geometry!r} has views with different pixel spacings {spacing.tolist()}; one projection stack holds one spacing"
        )
    spacing_mm = spacing[0].tolist()
    volume = _load_mu_volume(args, args.quiet).to(device=device)
    missing = views_missing_volume(volume, cams)  # float64 cameras as read
    cams = cams.to(device=device, dtype=volume.data.dtype)
    if all(missing):
        raise ValueError(
            f"the detector sees nothing of the volume in any of the {len(cams)} views: volume centre RAS {_vec(volume.center_ras())} mm, "
            f"first source RAS {_vec(cams.source_positions()[0])} mm, first detector centre RAS {_vec(cams.detector_centers()[0])} mm; "
            "check that the geometry and the volume are in the same frame (RAS mm) and that the isocentre is inside the volume"
        )
    if any(missing) and not args.quiet:
        idx = [i for i, m in enumerate(missing) if m]
        note(
            f"warning: {len(idx)} of {len(cams)} views see nothing of the volume (views "
            f"{idx[:10]}{' ...' if len(idx) > 10 else ''}); they will be zero"
        )

    bar = progress_bar(f"drr {args.renderer}", args.quiet)
    try:
        with torch.no_grad():
            line = render(
                volume,
                cams,
                renderer=args.renderer,
                samples_per_voxel=float(args.samples_per_voxel or 1),
                max_memory_mb=args.max_memory_mb,
                progress=bar,
            )
    finally:
        if bar is not None:
            bar.close()
    if not bool((line != 0).any()):
        raise ValueError(
            f"all {line.numel()} line integrals are zero: no ray meets a voxel with attenuation above 0 "
            f"(volume values after conversion {float(volume.data.min()):g}..{float(volume.data.max()):g} /mm; an all-air volume, "
            "or a detector that sees only empty parts of the volume); check the volume and the geometry"
        )
    if not bool(torch.isfinite(line).all()):
        raise RuntimeError("the renderer produced NaN or infinite line integrals; please report this with the input files")

    if args.intensity:
        generator = None
        if args.poisson:
            generator = torch.Generator(device=device)
            generator.manual_seed(args.seed if args.seed is not None else int.from_bytes(os.urandom(6), "little"))
        result = beer_lambert(line, 1.0 if args.i0 is None else args.i0, poisson=args.poisson, generator=generator)
        quantity = "intensity"
    else:
        result = line
        quantity = "line_integral"

    if is_rtk:
        result = rtk_layout_from_ours(result)
        origin = args.detector_origin if args.detector_origin is not None else rtk_default_origin_mm(cams.size_px, spacing_mm).tolist()
        row_order = "rtk"
    else:
        origin = None
        row_order = "xraynerf"
    os.makedirs(out_dir, exist_ok=True)  # only now: a failed run creates nothing
    save_projection_stack(
        result,
        args.out,
        spacing_mm=spacing_mm,
        origin_mm=origin,
        metadata={"quantity": quantity, "row_order": row_order, "geometry": os.path.basename(args.geometry)},
    )
    if not args.quiet:
        w, h = cams.size_px
        note(
            f"wrote {args.out}: {len(cams)} views of {w} x {h} px ({quantity.replace('_', ' ')}s "
            f"{float(result.min()):.4g}..{float(result.max()):.4g}, {row_order} row order) in {time.monotonic() - t0:.1f} s"
        )
    return EXIT_OK
