"""Render the README's screenshots from real MRML scenes, without OpenGL: each picture is a slice view's
blended image (``vtkMRMLSliceLogic``'s blend output: background, foreground and opacity composited as
Slicer draws them), on Slicer's Qt-free core (pip package ``slicer-core``) with the test harness.

usage (from the repository root)::

    .venv/bin/python scripts/make_screenshots.py [--out docs/images]

Writes (PNG, 8-bit RGB), and the Sample Data thumbnails ``Resources/SampleData/*.png`` (128 x 128 grey):

- ``drr_node.png``: the DRR module's output, a DRR of the sample chest CT (LAO 30, 256 x 256 px of 1.5 mm)
  shown as a volume node in a slice view turned to its detector plane;
- ``registration_before.png`` / ``registration_after.png``: the Registration module's live overlay, the
  DRR (green, opacity 0.5; for the picture only its densest third is drawn) over the sample fluoroscopy (grey), at the initial pose and
  after registration (the sample CT starts 3 degrees and 7 mm away from the pose the fluoroscopy was
  simulated at; the script prints the remaining error);
- ``reconstruction_fdk.png``: the Reconstruction module's output from the sample projections (30 views,
  geometry from the cameras on the stack, FDK, 128 voxels across), coronal slice through the grid centre
  in the Red view, beside the same slice of the sample CT (both -1000..400 HU).

Deterministic up to floating-point noise of the optimiser.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
VIEW_PX = 400


def _setup():
    sys.path.insert(0, str(REPO))
    sys.path.insert(0, str(REPO / "XRayNeRF"))
    sys.path.insert(0, str(REPO / "Testing" / "Python"))
    import slicer_harness

    core = slicer_harness.new_scene()
    return core, slicer_harness


def _save(rgba: np.ndarray, path: Path) -> None:
    from PIL import Image

    Image.fromarray(np.ascontiguousarray(rgba[::-1, :, :3])).save(path)  # VTK rows bottom-up -> top-down
    print(f"{path}: {rgba.shape[1]} x {rgba.shape[0]}")


def _view(core, harness, name: str):
    logic = harness.add_slice_view(core, name)
    logic.GetSliceNode().SetDimensions(VIEW_PX, VIEW_PX, 1)
    return logic


def _load_ct(slicer, name="chest CT"):
    """The sample CT as a scalar volume node (HU), placed as Slicer places it (engine reader, LPS -> RAS)."""
    from XRayNeRFLib.volume import load_volume

    volume = load_volume(str(REPO / "Resources" / "SampleData" / "chest_ct_128.nii.gz"))
    node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    slicer.util.updateVolumeFromArray(node, volume.data.numpy().astype(np.float32))
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(volume.ras_from_ijk.double().numpy()))
    node.CreateDefaultDisplayNodes()
    return node


def drr_node(core, harness, out: Path) -> None:
    import slicer

    from XRayNeRFMRML.nodes import cameras_from_node
    from XRayNeRFMRML.overlay import align_slice_to_detector

    module = harness.load_module("XRayNeRFDRR")
    ct = _load_ct(slicer)
    drr = (
        module.XRayNeRFDRRLogic()
        .renderDRR(
            ct,
            primaryAngleDeg=30.0,
            secondaryAngleDeg=0.0,
            detectorColumns=256,
            detectorRows=256,
            pixelSpacingMm=1.5,
        )
        .volume_node
    )
    view = _view(core, harness, "Red")
    view.GetSliceCompositeNode().SetBackgroundVolumeID(drr.GetID())
    display = drr.GetDisplayNode()
    values = slicer.util.arrayFromVolume(drr)
    display.SetAutoWindowLevel(0)
    lo, hi = np.percentile(values, [1, 99.5])
    display.SetWindowLevel(float(hi - lo), float((hi + lo) / 2))
    align_slice_to_detector(view.GetSliceNode(), cameras_from_node(drr))
    _save(harness.blended_slice_rgba(view), out / "drr_node.png")


def registration(core, harness, out: Path) -> None:
    import slicer

    from XRayNeRFMRML import sampledata

    module = harness.load_module("XRayNeRFRegistration")
    ct = _load_ct(slicer)
    source = sampledata.sources()[2]
    (xray,) = sampledata.load_fluoroscopy(type("Source", (), {k: source[k] for k in ("uris", "fileNames", "nodeNames")}))
    display = xray.GetDisplayNode()
    values = slicer.util.arrayFromVolume(xray)
    display.SetAutoWindowLevel(0)
    lo, hi = np.percentile(values, [1, 99])
    display.SetWindowLevel(float(hi - lo), float((hi + lo) / 2))
    transform = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "CT pose")
    view = _view(core, harness, "Red")
    logic = module.XRayNeRFRegistrationLogic()
    drr = logic.updateDRR(ct, xray)
    ct.SetAndObserveTransformNodeID(transform.GetID())
    logic.showOverlay(xray, drr, view, opacity=0.5)
    lo, hi = np.percentile(slicer.util.arrayFromVolume(drr), [67, 99.5])

    def style():  # for the picture, the DRR shows only its densest third (spine, heart): the X-ray stays visible
        d = drr.GetDisplayNode()
        d.SetThreshold(float(lo), 1e30)
        d.SetAutoWindowLevel(0)
        d.SetWindowLevel(float(hi - lo), float((hi + lo) / 2))

    style()
    _save(harness.blended_slice_rgba(view), out / "registration_before.png")
    logic.register(ct, xray, transform, drr, sliceLogic=view, loss="mi")
    style()
    _save(harness.blended_slice_rgba(view), out / "registration_after.png")
    m = slicer.util.arrayFromTransformMatrix(transform)
    truth = sampledata.fluoroscopy_setup()["ct_to_parent_ras"]
    centre = np.asarray(sampledata.fluoroscopy_setup()["isocenter_ras"] + [1.0])
    print(
        f"registration: isocentre error {np.linalg.norm((m - truth) @ centre):.2f} mm (start "
        f"{np.linalg.norm((np.eye(4) - truth) @ centre):.2f} mm)"
    )


def reconstruction(core, harness, out: Path) -> None:
    import slicer

    from XRayNeRFMRML import sampledata

    module = harness.load_module("XRayNeRFReconstruction")
    source = sampledata.sources()[1]
    (stack,) = sampledata.load_projections(type("Source", (), {k: source[k] for k in ("uris", "fileNames", "nodeNames")}))
    result = module.XRayNeRFReconstructionLogic().reconstruct(stack, method="fdk", gridSize=128, geometrySource="images")
    ct = _load_ct(slicer)
    bounds = [0.0] * 6
    result.volume_node.GetRASBounds(bounds)
    centre = [(bounds[2 * i] + bounds[2 * i + 1]) / 2.0 for i in range(3)]
    fov = max(bounds[1] - bounds[0], bounds[5] - bounds[4])
    pictures = []
    for index, node in enumerate((result.volume_node, ct)):
        view = _view(core, harness, f"View{index}")
        slice_node = view.GetSliceNode()
        slice_node.SetOrientation("Coronal")
        slice_node.SetFieldOfView(fov, fov, 1.0)
        slice_node.JumpSliceByCentering(*centre)
        slice_node.UpdateMatrices()
        view.GetSliceCompositeNode().SetBackgroundVolumeID(node.GetID())
        display = node.GetDisplayNode()
        display.SetAutoWindowLevel(0)
        display.SetWindowLevel(1400.0, -300.0)  # -1000 .. 400 HU
        pictures.append(harness.blended_slice_rgba(view))
    _save(np.concatenate(pictures, axis=1), out / "reconstruction_fdk.png")
    print(f"reconstruction: FDK of {len(result.projections)} views in {result.result.seconds:.1f} s")


def _grey_thumbnail(image: np.ndarray, path: Path, size: int = 128) -> None:
    """(H, W) values -> a size x size grey PNG (1st..99.5th percentile stretched, aspect kept, centred)."""
    from PIL import Image

    lo, hi = np.percentile(image, [1, 99.5])
    grey = (255 * np.clip((image - lo) / max(hi - lo, 1e-12), 0, 1)).astype(np.uint8)
    picture = Image.fromarray(grey)
    picture.thumbnail((size, size), Image.LANCZOS)
    canvas = Image.new("L", (size, size), 0)
    canvas.paste(picture, ((size - picture.width) // 2, (size - picture.height) // 2))
    canvas.save(path)
    print(f"{path}: {size} x {size}")


def thumbnails(sample_dir: Path) -> None:
    """Sample Data thumbnails in Resources/SampleData: a coronal slab of the CT, view 0 of the projection
    set, the fluoroscopy (line integrals, as the DICOM reader gives them)."""
    from XRayNeRFLib.dicom_xray import GeometryOverrides
    from XRayNeRFLib.projection_set import ProjectionSet
    from XRayNeRFLib.projections_io import load_projection_stack
    from XRayNeRFLib.volume import load_volume
    from XRayNeRFMRML import sampledata

    ct = load_volume(str(sample_dir / "chest_ct_128.nii.gz")).data.numpy()  # (K, J, I) HU
    coronal = ct[:, ct.shape[1] // 2 - 4 : ct.shape[1] // 2 + 4, :].mean(axis=1)  # (K, I)
    # rows from superior to inferior, patient right on screen left (radiological): k and i of this file
    # run towards superior and towards the left, so flip rows
    _grey_thumbnail(np.repeat(coronal[::-1], 2, axis=0), sample_dir / "chest_ct_128.png")  # 5 mm slices: x2
    stack, _, _ = load_projection_stack(str(sample_dir / "chest_projections_30.mha"))
    _grey_thumbnail(stack[0].numpy(), sample_dir / "chest_projections_30.png")
    setup = sampledata.fluoroscopy_setup(sample_dir / "chest_fluoroscopy_setup.json")
    xray = ProjectionSet.from_dicom(
        [str(sample_dir / "chest_fluoroscopy_lao20_cra10.dcm")], GeometryOverrides(isocenter_ras=setup["isocenter_ras"]), i0=setup["i0"]
    )
    _grey_thumbnail(xray.images[0].numpy(), sample_dir / "chest_fluoroscopy.png")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(REPO / "docs" / "images"))
    parser.add_argument("--thumbnails-only", action="store_true", help="only the Sample Data thumbnails (Resources/SampleData/*.png)")
    parser.add_argument("--only", choices=("drr", "registration", "reconstruction"), help="only this module's picture(s)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    core, harness = _setup()
    if args.only is None:
        thumbnails(REPO / "Resources" / "SampleData")
        if args.thumbnails_only:
            return 0
    for name, make in (("drr", drr_node), ("registration", registration), ("reconstruction", reconstruction)):
        if args.only in (None, name):
            core, _ = _setup()
            make(core, harness, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
