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
    "test_FailureLeavesScene",
    "test_ViewRestoredAfterFailureAndRevert",
]


@pytest.fixture
def core():
    return slicer_harness.new_scene()


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
