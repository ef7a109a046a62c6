"""The shared MRML layer (XRayNeRF/XRayNeRFMRML) on its own, without the module files: what a second front
end (a web app on the same scene) relies on. Real MRML (slicer-core) through the harness."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "Testing" / "Python"))
sys.path.insert(0, str(REPO / "XRayNeRF"))  # XRayNeRFMRML, as the module files put it on the path

slicer = pytest.importorskip("slicer", reason="pip install slicer-core (the Qt-free core of 3D Slicer)")
import slicer_harness  # noqa: E402

slicer_harness.install()


def _ct(scene, hu, ras_from_ijk, name="CT"):
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(hu, dtype=np.float32))
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(ras_from_ijk))
    return node


def _phantom_ct(scene):
    """20^3 voxels of 3 mm centred at the origin: two blobs and a bar (asymmetric), HU."""
    k = np.arange(20) - 9.5
    zz, yy, xx = np.meshgrid(k, k, k, indexing="ij")
    hu = -1000.0 + 1800.0 * np.exp(-((xx - 3) ** 2 + (yy + 2) ** 2 + zz**2) / 18.0)
    hu += 1200.0 * np.exp(-((xx + 4) ** 2 + (yy - 3) ** 2 + (zz - 4) ** 2) / 8.0)
    hu += 900.0 * (np.abs(xx) < 6) * (np.abs(zz + 5) < 2)
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    affine[:3, 3] = -28.5
    return _ct(scene, hu, affine), hu, affine


# -- choice lists ----------------------------------------------------------------------------------------
def test_choice_lists_are_the_engines():
    """Each list read from the engine's source equals the imported engine's value (same order)."""
    import importlib

    from XRayNeRFLib import render
    from XRayNeRFLib.geometry import PATIENT_FROM_CARM
    from XRayNeRFLib.recon import api, voxel
    from XRayNeRFLib.registration.losses import LOSS_NAMES
    from XRayNeRFMRML import choices

    assert choices.RENDERERS == tuple(render.RENDERERS)
    assert choices.PATIENT_POSITIONS == tuple(PATIENT_FROM_CARM)
    assert choices.SIMILARITIES == tuple(LOSS_NAMES)
    assert choices.RECONSTRUCTION_METHODS == tuple(api.METHODS)
    assert choices.VOXEL_SOLVERS == tuple(voxel.VOXEL_SOLVERS) == tuple(api.VOXEL_SOLVERS)
    assert choices.FDK_WINDOWS == tuple(importlib.import_module("XRayNeRFLib.recon.fdk").WINDOWS)
    grid = importlib.import_module("XRayNeRFLib.recon.grid")
    assert choices.FOV_REGIONS == tuple(grid.REGIONS) and choices.DEFAULT_FOV_REGION == grid.DEFAULT_REGION in grid.REGIONS
    assert choices.DEFAULT_RENDERER == render.DEFAULT_RENDERER and choices.DEFAULT_RENDERER in choices.RENDERERS
    with pytest.raises(RuntimeError, match="defines no literal NO_SUCH_NAME or OTHER"):
        choices.engine_choices("render/__init__.py", "NO_SUCH_NAME", "OTHER")
    assert choices.engine_choices("recon/fdk.py", "NO_SUCH_NAME", "WINDOWS") == choices.FDK_WINDOWS


def test_module_files_load_without_torch():
    """Slicer imports the module files at startup, before torch may be installed: with torch unimportable
    every module file (and its parameter node with the engine's choice lists) still loads."""
    script = (
        "import sys; sys.modules['torch'] = None\n"
        f"sys.path.insert(0, {str(REPO / 'Testing' / 'Python')!r})\n"
        "import slicer_harness\n"
        "slicer_harness.new_scene()\n"
        "for name in ('XRayNeRFDRR', 'XRayNeRFRegistration', 'XRayNeRFReconstruction'):\n"
        "    m = slicer_harness.load_module(name)\n"
        "    m.__dict__[name + 'Logic']().getParameterNode()\n"
        "assert 'XRayNeRFLib' not in sys.modules, sorted(k for k in sys.modules if k.startswith('XRayNeRFLib'))\n"
        "print('ok')\n"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=str(REPO), timeout=300)
    assert run.returncode == 0 and run.stdout.strip().endswith("ok"), run.stdout + run.stderr


# -- DRR -------------------------------------------------------------------------------------------------
def test_render_drr_goes_into_the_ct_scene(core):
    """A front end with its own scene: the DRR and C-arm nodes are created in the CT's scene (not in
    slicer.mrmlScene), hold the engine's DRR, and a DRROutput names them."""
    from XRayNeRFLib.render import render
    from XRayNeRFLib.volume import Volume, hu_to_mu
    from XRayNeRFMRML.drr import DRROutput, carm_cameras, render_drr

    other = slicer.vtkMRMLScene()
    ct, hu, affine = _phantom_ct(other)
    before = slicer.mrmlScene.GetNumberOfNodes()
    cams = carm_cameras(ct, primary_deg=20.0, secondary_deg=-10.0, sid_mm=400.0, sdd_mm=600.0, size_px=(12, 10), pixel_spacing_mm=5.0)
    np.testing.assert_allclose(cams.source_positions()[0].norm().item(), 400.0, atol=1e-6)  # CT centre = origin
    out = render_drr(ct, cams, renderer="trilinear")
    assert isinstance(out, DRROutput) and out.seconds >= 0.0 and out.cameras is cams
    assert out.volume_node.GetScene() is other and out.camera_model_node.GetScene() is other
    assert slicer.mrmlScene.GetNumberOfNodes() == before
    assert out.volume_node.GetName() == "CT DRR" and out.camera_model_node.GetName() == "CT C-arm"
    expected = render(Volume(hu_to_mu(torch.tensor(hu)), torch.tensor(affine), "mu"), cams, renderer="trilinear")[0].numpy()
    assert expected.max() > 0.5
    np.testing.assert_allclose(slicer.util.arrayFromVolume(out.volume_node)[0], expected, rtol=1e-4, atol=1e-4)


def test_carm_cameras_needs_an_isocentre(core):
    from XRayNeRFMRML.drr import carm_cameras

    with pytest.raises(ValueError, match="select a CT"):
        carm_cameras(None)
    cams = carm_cameras(None, isocenter_ras=(1.0, 2.0, 3.0), size_px=(4, 6), pixel_spacing_mm=(1.0, 2.0))
    assert cams.size_px == (4, 6)
    np.testing.assert_allclose(cams.pixel_spacing_mm[0].numpy(), [1.0, 2.0])


# -- Registration ----------------------------------------------------------------------------------------
def test_ct_to_parent_moves_the_ct_as_the_camera_moved():
    """Seen from the initial camera, the CT under the new transform sits where the unmoved CT sits seen
    from the registered camera: camera-frame coordinates agree for any point."""
    from XRayNeRFMRML.registration import ct_to_parent

    rng = np.random.default_rng(1)

    def rigid():
        q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
        m = np.eye(4)
        m[:3, :3] = q * np.sign(np.linalg.det(q))
        m[:3, 3] = rng.normal(scale=20.0, size=3)
        return m

    w0, w, parent_to_world, before = rigid(), rigid(), rigid(), rigid()
    to_parent = ct_to_parent(w, w0, parent_to_world, before)
    point_ct = np.r_[rng.normal(size=3) * 30.0, 1.0]
    moved_world = parent_to_world @ to_parent @ point_ct
    unmoved_world = parent_to_world @ before @ point_ct
    np.testing.assert_allclose(np.linalg.inv(w0) @ moved_world, np.linalg.inv(w) @ unmoved_world, atol=1e-9)


def _xray_scene(scene, shift_mm):
    from XRayNeRFLib.geometry import Cameras
    from XRayNeRFLib.render import render
    from XRayNeRFLib.volume import Volume, hu_to_mu
    from XRayNeRFMRML.nodes import write_image_node

    ct, hu, affine = _phantom_ct(scene)
    cams = Cameras.carm(
        30.0, 0.0, sid_mm=500.0, sdd_mm=800.0, size_px=(32, 32), pixel_spacing_mm=3.0, isocenter_ras=(0.0, 0.0, 0.0), dtype=torch.float64
    )
    xray = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "xray")
    write_image_node(xray, render(Volume(hu_to_mu(torch.tensor(hu)), torch.tensor(affine), "mu"), cams, renderer="siddon")[0].numpy(), cams)
    parent = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "table")
    tilt = np.eye(4)
    tilt[:3, 3] = (5.0, -3.0, 2.0)
    parent.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(tilt))
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "CT pose")
    transform.SetAndObserveTransformNodeID(parent.GetID())
    start = np.linalg.inv(tilt)
    start[:3, 3] += shift_mm
    transform.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(start))
    return ct, xray, transform, start


def test_registration_reads_the_ct_once_and_ends_on_the_moved_ct(core, monkeypatch):
    """One read of the CT per run, however many previews; the final DRR (rendered from the registered
    camera) equals the DRR of the CT read again under its new transform; previews update the DRR node;
    the nodes go into the CT's scene; restore_transform puts the start back."""
    from XRayNeRFMRML import registration

    scene = slicer.mrmlScene
    ct, xray, transform, start = _xray_scene(scene, np.array([3.0, 0.0, -2.0]))
    reads = []
    real = registration.volume_from_node
    monkeypatch.setattr(registration, "volume_from_node", lambda node, *a, **k: reads.append(node.GetName()) or real(node, *a, **k))
    previews = []
    out = registration.register_ct_to_xray(
        ct,
        xray,
        transform,
        preview_every=2,
        on_preview=lambda: previews.append(1),
        loss="ncc",
        levels=(2, 1),
        max_iterations=(6, 4),
        renderer="trilinear",
    )
    assert reads == ["CT"] and len(previews) == out.overlay_updates >= 2
    assert out.drr_node.GetScene() is scene and ct.GetTransformNodeID() == transform.GetID()
    assert out.loss <= out.initial_loss and not out.cancelled
    moved = slicer.util.arrayFromTransformMatrix(transform)
    assert np.abs(moved - start).max() > 0.1
    final = slicer.util.arrayFromVolume(out.drr_node)[0].copy()
    monkeypatch.setattr(registration, "volume_from_node", real)
    again = registration.update_drr(ct, xray)  # the CT read again, under the registered transform
    np.testing.assert_allclose(final, slicer.util.arrayFromVolume(again)[0], rtol=1e-4, atol=2e-4)
    registration.restore_transform(out)
    np.testing.assert_allclose(slicer.util.arrayFromTransformMatrix(transform), start, atol=1e-12)


def test_overlay_view_restores_and_forgets(core):
    from XRayNeRFLib.geometry import Cameras
    from XRayNeRFMRML.nodes import write_image_node
    from XRayNeRFMRML.registration import OverlayView

    cams = Cameras.carm(10.0, 5.0, sid_mm=500.0, sdd_mm=800.0, size_px=(8, 6), pixel_spacing_mm=2.0, dtype=torch.float64)
    a = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "a")
    write_image_node(a, np.ones((6, 8)), cams)
    view = slicer_harness.add_slice_view(core, "Red")
    composite = view.GetSliceCompositeNode()
    overlay = OverlayView()
    assert not overlay.restore()
    overlay.show(view, a, a, 0.3)
    assert overlay.slice_logic is view and composite.GetBackgroundVolumeID() == a.GetID()
    assert overlay.restore() and composite.GetBackgroundVolumeID() is None and overlay.slice_logic is None
    overlay.show(view, a, a, 0.3)
    overlay.forget()
    assert not overlay.restore() and composite.GetBackgroundVolumeID() == a.GetID()


# -- DICOM input -----------------------------------------------------------------------------------------
def test_missing_tag_error_is_worded_from_its_fields():
    """The panel's wording comes from MissingTagError's fields, whatever the engine's message says."""
    from XRayNeRFLib.errors import MissingTagError
    from XRayNeRFMRML.inputs import dicom_error_for_the_panel

    error = MissingTagError(
        "any text",
        path="a.dcm",
        what="source-to-detector distance",
        tags="Distance Source to Detector (0018,1110)",
        flag="--sdd-mm",
        override="sdd_mm",
    )
    assert dicom_error_for_the_panel(error) == (
        "a.dcm: no source-to-detector distance (Distance Source to Detector (0018,1110)); enter it in the field "
        "'DICOM overrides > Source-detector distance'"
    )
    angles = MissingTagError(
        "any text", path="b.dcm", what="C-arm angles", tags="(0018,1510/1511)", flag="--primary-deg", override="primary_deg"
    )
    assert "no field for it" in dicom_error_for_the_panel(angles) and "--primary-deg" in dicom_error_for_the_panel(angles)
    plain = ValueError("c.dcm: Pixel Spacing is calibrated in the patient; pass the detector pixel spacing with --pixel-spacing-mm")
    assert dicom_error_for_the_panel(plain).endswith("the field 'DICOM overrides > Detector pixel spacing'")


def test_tag_value_error_is_worded_from_its_fields():
    """An unusable tag value (TagValueError: problem, overrides) names the panel's fields, whatever the
    message says; overrides without a panel field name the command line's flags."""
    from XRayNeRFLib import errors
    from XRayNeRFMRML.inputs import dicom_error_for_the_panel

    error = errors.TagValueError(
        "any text",
        path="a.dcm",
        problem="a.dcm: Distance Source to Patient is 0",
        overrides=("sid_mm", "sdd_mm"),
        flags=("--sid-mm", "--sdd-mm"),
    )
    assert dicom_error_for_the_panel(error) == (
        "a.dcm: Distance Source to Patient is 0; fix the file or enter the value in the field "
        "'DICOM overrides > Source-isocentre distance' or 'DICOM overrides > Source-detector distance'"
    )
    angles = errors.TagValueError("any text", path="b.dcm", problem="b.dcm: angles", overrides=("primary_deg",), flags=("--primary-deg",))
    assert dicom_error_for_the_panel(angles).startswith("b.dcm: angles; this module has no field for it")


def test_xray_node_from_dicom_frame_and_scene(core, tmp_path):
    """A 2-frame file: frame 1 becomes a node in the given scene with that frame's camera and image;
    a frame out of range or a missing file adds nothing."""
    sys.path.insert(0, str(REPO / "tests"))
    import dicom_factory as fac

    from XRayNeRFLib.intensities import intensities_from_line_integrals
    from XRayNeRFMRML.inputs import projection_set_from_dicom, xray_node_from_dicom
    from XRayNeRFMRML.nodes import cameras_from_node

    lines = np.stack([np.full((10, 12), 0.5 + v) for v in range(2)]) + np.linspace(0.0, 1.0, 12)[None, None, :]
    stored = fac.stored_from_bev(intensities_from_line_integrals(lines, relationship="LIN", i0=1000.0))
    path = fac.write_xray(
        str(tmp_path / "two.dcm"),
        stored,
        primary_deg=0.0,
        secondary_deg=0.0,
        primary_increments=np.array([0.0, 30.0]),
        sdd_mm=900.0,
        sid_mm=600.0,
        imager_spacing_rc=(1.0, 1.0),
        relationship="LIN",
        sign=1,
    )
    other = slicer.vtkMRMLScene()
    node = xray_node_from_dicom(path, 1, isocenter_ras=(1.0, 2.0, 3.0), scene=other)
    assert node.GetScene() is other and node.GetName() == "two"
    reference = projection_set_from_dicom(path, isocenter_ras=(1.0, 2.0, 3.0))
    np.testing.assert_allclose(slicer.util.arrayFromVolume(node)[0], reference.images[1].numpy(), atol=1e-6)
    np.testing.assert_allclose(
        cameras_from_node(node).world_from_camera[0].numpy(), reference.cameras.world_from_camera[1].numpy(), atol=1e-9
    )
    n = other.GetNumberOfNodes()
    with pytest.raises(ValueError, match="2 frame"):
        xray_node_from_dicom(path, 2, scene=other)
    with pytest.raises(ValueError, match="does not exist"):
        xray_node_from_dicom(str(tmp_path / "none.dcm"), scene=other)
    assert other.GetNumberOfNodes() == n


# -- Reconstruction --------------------------------------------------------------------------------------
def test_run_reconstruction_into_another_scene_with_the_engines_default_renderer(core):
    """run_reconstruction creates its output node in the given scene (not slicer.mrmlScene), records the
    engine's default renderer when none is named, and a failure removes what it created there."""
    import json

    from XRayNeRFLib.geometry import Cameras
    from XRayNeRFLib.projection_set import ProjectionSet
    from XRayNeRFLib.recon.api import DEFAULT_RENDERER
    from XRayNeRFMRML.reconstruction import RECONSTRUCTION_ATTRIBUTE, run_reconstruction

    cams = Cameras.circular_orbit(
        torch.arange(8, dtype=torch.float64) * (np.pi / 4),
        sid_mm=250.0,
        sdd_mm=400.0,
        size_px=(16, 12),
        pixel_spacing_mm=3.0,
        dtype=torch.float64,
    )
    projections = ProjectionSet(torch.full((8, 12, 16), 0.1), cams)
    other = slicer.vtkMRMLScene()
    before = slicer.mrmlScene.GetNumberOfNodes()
    out = run_reconstruction(projections, method="fdk", grid=8, name="recon", scene=other)
    assert out.volume_node.GetScene() is other and slicer.mrmlScene.GetNumberOfNodes() == before
    assert json.loads(out.volume_node.GetAttribute(RECONSTRUCTION_ATTRIBUTE))["renderer"] == DEFAULT_RENDERER
    n = other.GetNumberOfNodes()
    with pytest.raises(ValueError, match="unknown method"):
        run_reconstruction(projections, method="art", scene=other)
    with pytest.raises(ValueError):
        run_reconstruction(projections, method="voxel", renderer="cone", grid=8, scene=other)
    assert other.GetNumberOfNodes() == n
