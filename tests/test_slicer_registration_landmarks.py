"""Landmark start from markups (Registration module) on a real MRML scene (slicer-core): points on the CT and the
same points on the X-ray's detector -> the engine's PnP -> the CT's transform; exact pairs give the true motion
to 1e-6 with zero reprojection error; bad point sets raise the engine's LandmarkError (reason, pair) and leave the
scene, the transform and the CT's parent as they were; the Widget shows one message."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "Testing" / "Python"))
sys.path.insert(0, str(REPO / "XRayNeRF"))

slicer = pytest.importorskip("slicer", reason="pip install slicer-core (the Qt-free core of 3D Slicer)")
import slicer_harness  # noqa: E402

# CT landmarks (RAS mm, CT at the identity pose): spread in 3D, inside the 60 mm CT
CT_POINTS = np.array(
    [[-18.0, -12.0, 10.0], [15.0, -16.0, -8.0], [12.0, 17.0, 14.0], [-14.0, 15.0, -12.0], [3.0, -2.0, 19.0], [-6.0, 4.0, -17.0]]
)


@pytest.fixture(scope="module")
def module():
    return slicer_harness.load_module("XRayNeRFRegistration")


def _true_motion() -> np.ndarray:
    from XRayNeRFMRML.manual_pose import rotation_about

    m = np.eye(4)
    m[:3, :3] = rotation_about(np.array([0.3, -0.5, 0.8]), 7.0)
    m[:3, 3] = (6.0, -4.0, 5.0)
    return m


def _pixels(xray, points_world: np.ndarray) -> np.ndarray:
    """(N, 2) [column, row] of world points through the X-ray's camera (the engine's projection)."""
    import torch

    from XRayNeRFMRML.nodes import cameras_from_node

    uv, _depth = cameras_from_node(xray).project(torch.from_numpy(points_world)[None])
    return uv[0].numpy()


def _markups(name, points_world, labels=None):
    node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", name)
    for i, p in enumerate(points_world):
        node.AddControlPointWorld(*[float(v) for v in p], labels[i] if labels else f"L{i + 1}")
    return node


def _on_detector(xray, pixels: np.ndarray, k: float = 0.0) -> np.ndarray:
    """World RAS of [column, row] pixel positions on the X-ray node (slice k)."""
    from XRayNeRFMRML.nodes import ras_from_ijk_world

    ijk = np.c_[pixels, np.full(len(pixels), k), np.ones(len(pixels))]
    return (ras_from_ijk_world(xray) @ ijk.T).T[:, :3]


def _scene(module):
    T = module.XRayNeRFRegistrationTest
    ct, xray, transform = T._registrationScene(T, np.zeros(3))
    truth = _true_motion()
    moved = (truth @ np.c_[CT_POINTS, np.ones(len(CT_POINTS))].T).T[:, :3]
    pixels = _pixels(xray, moved)  # the X-ray was taken of the CT moved by the true motion
    names = ["carina", "T4", "left rib", "right rib", "sternum", "T8"]
    return ct, xray, transform, truth, _markups("CT points", CT_POINTS, names), pixels


def test_exact_pairs_give_the_true_motion(core, module):
    """Exact pairs: the CT's transform becomes the true motion (1e-6), every reprojection error is ~0, the CT is
    put under the transform, and the CT points projected through the moved CT land on their X-ray points."""
    ct, xray, transform, truth, ctPoints, pixels = _scene(module)
    assert ct.GetTransformNodeID() is None
    xrayPoints = _markups("X-ray points", _on_detector(xray, pixels))
    start = module.XRayNeRFRegistrationLogic.applyLandmarkStart(ct, xray, transform, ctPoints, xrayPoints)
    np.testing.assert_allclose(slicer.util.arrayFromTransformMatrix(transform), truth, atol=1e-6)
    np.testing.assert_allclose(start.transform_before, np.eye(4))
    assert ct.GetTransformNodeID() == transform.GetID()
    assert start.pose.rms_px < 1e-6 and start.pose.labels[0] == "carina"
    report = module.XRayNeRFRegistrationLogic.landmarkReport(start)
    assert "6 pairs" in report and "RMS 0.00 px" in report


def test_landmark_start_composes_with_a_parent_and_an_earlier_pose(core, module):
    """The transform under a parent and already moved, the CT under it: the solve still ends with the CT's world
    pose at the true motion (the correction is composed as inv(P) C W)."""
    ct, xray, transform, truth, ctPoints, pixels = _scene(module)
    parent = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "table")
    p = np.eye(4)
    p[:3, 3] = (0.0, 10.0, -20.0)
    parent.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(p))
    transform.SetAndObserveTransformNodeID(parent.GetID())
    earlier = np.eye(4)
    earlier[:3, 3] = (-3.0, 2.0, 1.0)
    transform.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(earlier))
    ct.SetAndObserveTransformNodeID(transform.GetID())
    world = p @ earlier  # the CT's pose now; the CT points are marked on the CT there
    ctPoints = _markups("CT points (moved CT)", (world @ np.c_[CT_POINTS, np.ones(6)].T).T[:, :3])
    xrayPoints = _markups("X-ray points", _on_detector(xray, pixels))
    module.XRayNeRFRegistrationLogic.applyLandmarkStart(ct, xray, transform, ctPoints, xrayPoints)
    from XRayNeRFMRML.nodes import world_from_node

    np.testing.assert_allclose(world_from_node(ct), truth, atol=1e-6)


def _bad_cases(xray, pixels):
    near = pixels.copy()
    outside = pixels.copy()
    outside[2] = (40.0, 5.0)  # column 40 of a 32-column X-ray
    line = np.array([[-20.0, -10.0, 0.0], [-10.0, -5.0, 0.0], [0.0, 0.0, 0.0], [10.0, 5.0, 0.0], [20.0, 10.0, 0.0]])
    return {
        "too-few": (CT_POINTS[:3], _on_detector(xray, near[:3]), None),
        "unequal": (CT_POINTS[:5], _on_detector(xray, near[:4]), None),
        "collinear": (line, _on_detector(xray, _pixels(xray, line)), None),
        "outside-image": (CT_POINTS, _on_detector(xray, outside), 2),
        "off-detector": (CT_POINTS, np.r_[_on_detector(xray, near[:4]), _on_detector(xray, near[4:], k=5.0)], 4),
    }


@pytest.mark.parametrize(
    "case, reason",
    [
        ("too-few", "too-few"),
        ("unequal", "shape"),
        ("collinear", "degenerate"),
        ("outside-image", "outside-image"),
        ("off-detector", "outside-image"),
    ],
)
def test_bad_points_raise_landmark_error_and_change_nothing(core, module, case, reason):
    from XRayNeRFLib.errors import LandmarkError

    ct, xray, transform, truth, _ctPoints, pixels = _scene(module)
    start = np.eye(4)
    start[:3, 3] = (1.0, 2.0, 3.0)
    transform.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(start))
    ctPts, xrayPts, index = _bad_cases(xray, pixels)[case]
    ctPoints, xrayPoints = _markups("CT", ctPts), _markups("X", xrayPts)
    n = slicer.mrmlScene.GetNumberOfNodes()
    with pytest.raises(LandmarkError) as error:
        module.XRayNeRFRegistrationLogic.applyLandmarkStart(ct, xray, transform, ctPoints, xrayPoints)
    assert error.value.reason == reason and error.value.index == index
    if index is not None:
        assert error.value.label == f"L{index + 1}"
    assert slicer.mrmlScene.GetNumberOfNodes() == n
    np.testing.assert_allclose(slicer.util.arrayFromTransformMatrix(transform), start)
    assert ct.GetTransformNodeID() is None


def test_widget_landmark_start_says_why_or_reports_the_error(core, module):
    """Through the Widget (parameter node): bad points give one status line naming the problem and change
    nothing; good points move the CT and show the reprojection error."""
    from test_slicer_registration import _widget

    from XRayNeRFLib.errors import LandmarkError

    ct, xray, transform, truth, ctPoints, pixels = _scene(module)
    widget = _widget(module)
    p = widget._parameterNode
    p.inputVolume, p.xrayVolume, p.transform = ct, xray, transform
    assert not widget.ui.landmarkStartButton.enabled
    p.ctLandmarks, p.xrayLandmarks = ctPoints, _markups("X-ray points", _on_detector(xray, pixels[:5]))
    assert widget.ui.landmarkStartButton.enabled
    with pytest.raises(LandmarkError):
        widget.onLandmarkStartButton()
    assert (
        widget.ui.statusLabel.text.startswith("Landmark start failed:") and "6 CT points but 5 X-ray points" in widget.ui.statusLabel.text
    )
    np.testing.assert_allclose(slicer.util.arrayFromTransformMatrix(transform), np.eye(4))
    p.xrayLandmarks = _markups("X-ray points (all)", _on_detector(xray, pixels))
    start = widget.onLandmarkStartButton()
    assert "reprojection error RMS 0.00 px" in widget.ui.statusLabel.text and start.pose.rms_px < 1e-6
    np.testing.assert_allclose(slicer.util.arrayFromTransformMatrix(transform), truth, atol=1e-6)
    assert widget.ui.revertButton.enabled and "Revert" in widget.ui.statusLabel.text  # the landmark start can be reverted
    widget.onRevertButton()
    np.testing.assert_allclose(slicer.util.arrayFromTransformMatrix(transform), np.eye(4))
    assert not widget.ui.revertButton.enabled


def _selected(node) -> list:
    return [bool(node.GetNthControlPointSelected(i)) for i in range(node.GetNumberOfControlPoints())]


@pytest.mark.parametrize("case, index", [("outside-image", 2), ("off-detector", 4), ("too-few", None)])
def test_the_bad_pair_is_highlighted_and_nothing_else_changes(core, module, case, index):
    """A landmark start that fails on one pair leaves that pair the only selected control point in both point
    lists (positions, labels, the transform and the CT's parent unchanged); a failure of the whole set marks
    nothing; the next start puts the selection states back."""
    from XRayNeRFLib.errors import LandmarkError

    ct, xray, transform, truth, _ctPoints, pixels = _scene(module)
    ctPts, xrayPts, _index = _bad_cases(xray, pixels)[case]
    ctPoints, xrayPoints = _markups("CT", ctPts), _markups("X", xrayPts)
    xrayPoints.SetNthControlPointSelected(0, False)  # a state of the user's, to be put back
    before = {n.GetName(): (_selected(n), slicer.util.arrayFromMarkupsControlPoints(n).copy()) for n in (ctPoints, xrayPoints)}
    logic = module.XRayNeRFRegistrationLogic()
    p = logic.getParameterNode()
    p.inputVolume, p.xrayVolume, p.transform, p.ctLandmarks, p.xrayLandmarks = ct, xray, transform, ctPoints, xrayPoints
    n_nodes = slicer.mrmlScene.GetNumberOfNodes()
    with pytest.raises(LandmarkError) as error:
        logic.landmarkStartUsingParameterNode(p)
    assert error.value.index == index
    for node in (ctPoints, xrayPoints):
        states, positions = before[node.GetName()]
        expected = states if index is None else [i == index for i in range(len(states))]
        assert _selected(node) == expected, node.GetName()
        np.testing.assert_array_equal(slicer.util.arrayFromMarkupsControlPoints(node), positions)
        assert [node.GetNthControlPointLabel(i) for i in range(len(states))] == [f"L{i + 1}" for i in range(len(states))]
    assert slicer.mrmlScene.GetNumberOfNodes() == n_nodes
    np.testing.assert_allclose(slicer.util.arrayFromTransformMatrix(transform), np.eye(4))
    assert ct.GetTransformNodeID() is None
    # the next start (here with good points in the same lists) puts the states back first
    with slicer.util.NodeModify(xrayPoints):
        xrayPoints.RemoveAllControlPoints()
        for i, q in enumerate(_on_detector(xray, pixels)):
            xrayPoints.AddControlPointWorld(*[float(v) for v in q], f"L{i + 1}")
    with slicer.util.NodeModify(ctPoints):
        ctPoints.RemoveAllControlPoints()
        for i, q in enumerate(CT_POINTS):
            ctPoints.AddControlPointWorld(*[float(v) for v in q], f"L{i + 1}")
    logic.landmarkStartUsingParameterNode(p)
    assert logic.landmarkHighlight is None
    np.testing.assert_allclose(slicer.util.arrayFromTransformMatrix(transform), truth, atol=1e-6)


def test_clearing_a_highlight_restores_the_selection_states(core, module):
    from XRayNeRFLib.errors import LandmarkError
    from XRayNeRFMRML.landmarks import highlight_bad_landmark

    node = _markups("pts", CT_POINTS)
    node.SetNthControlPointSelected(3, False)
    states = _selected(node)
    h = highlight_bad_landmark(LandmarkError("x", reason="outside-image", index=1), node, None)
    assert _selected(node) == [i == 1 for i in range(len(CT_POINTS))]
    h.clear()
    assert _selected(node) == states
    assert highlight_bad_landmark(LandmarkError("x", reason="too-few"), node) is None
    assert highlight_bad_landmark(LandmarkError("x", reason="outside-image", index=9), node) is None
    assert _selected(node) == states
