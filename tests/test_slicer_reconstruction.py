"""The Reconstruction module's Logic, Widget behaviour and self-test on a real MRML scene (slicer-core).

Projections are exact line integrals of the ellipsoid phantom (tests/recon_phantoms.py: chord lengths,
no renderer), fed in as a projection sequence, a volume stack, an RTK stack read by Slicer's own reader, a
DICOM rotational run (tests/dicom_factory.py) or intensities. Each output node is checked against the
engine run directly on the same inputs (XRayNeRFLib.recon.api.reconstruct: same grid, same values) and
against the phantom (PSNR on the output grid)."""

from __future__ import annotations

import json
import re
import sys
import unittest
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "Testing" / "Python"))

slicer = pytest.importorskip("slicer", reason="pip install slicer-core (the Qt-free core of 3D Slicer)")
import slicer_harness  # noqa: E402
from recon_phantoms import analytic_projections, ground_truth, orbit, psnr  # noqa: E402

NAME = "XRayNeRFReconstruction"
SELF_TESTS = [
    "test_SequenceFDKMatchesEngine",
    "test_CancelKeepsBestSoFar",
    "test_FailureLeavesScene",
    "test_ParameterNode",
    "test_OrbitAboutRightAxisThroughPoint",
]
ORBIT = dict(sourceIsocenterDistanceMm=250.0, sourceDetectorDistanceMm=400.0, pixelSpacingMm=2.0)  # recon_phantoms.orbit
MU_WATER = 0.02059  # 1/mm at 60 keV (XRayNeRFLib.volume)


@pytest.fixture(scope="module")
def module():
    return slicer_harness.load_module(NAME)


@pytest.fixture(scope="module")
def full():
    """60 views over 360 degrees, 48 x 40 pixels of 2 mm: (cameras, (V, H, W) float64 line integrals)."""
    cams = orbit(60)
    return cams, analytic_projections(cams).numpy()


@pytest.fixture(scope="module")
def sparse():
    cams = orbit(10, size_px=(32, 28), spacing=3.0)
    return cams, analytic_projections(cams).numpy()


def _engine(images, cams, method="fdk", **kw):
    from XRayNeRFLib.recon.api import reconstruct

    return reconstruct(torch.as_tensor(images, dtype=torch.float32), cams, method, **kw)


def _sequence(images, name="projections", cameras=None):
    """A sequence node of 1-slice volumes; with ``cameras`` each item lies on its detector and carries its camera."""
    from XRayNeRFMRML.nodes import write_image_node

    seq = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSequenceNode", name)
    item = slicer.vtkMRMLScalarVolumeNode()
    for v, image in enumerate(images):
        if cameras is None:
            slicer.util.updateVolumeFromArray(item, np.ascontiguousarray(image[None], dtype=np.float32))
        else:
            slicer.util.updateVolumeFromArray(item, np.zeros((1, 1, 1), np.float32))
            write_image_node(item, image, cameras, view=v)
        seq.SetDataNodeAtValue(item, str(v))
    return seq


def _stack(images, name="stack"):
    node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(images, dtype=np.float32))
    return node


def _ijk_to_ras(node):
    from XRayNeRFMRML.nodes import ijk_to_ras

    return ijk_to_ras(node)


def _mu(node):
    """Node voxels (HU) -> mu (1/mm), linear (no clamping): (K, J, I) float64."""
    return MU_WATER * (1.0 + slicer.util.arrayFromVolume(node).astype(np.float64) / 1000.0)


def _hu(volume):
    data = volume.data.double()
    return (1000.0 * (data / MU_WATER - 1.0)).numpy() if volume.units == "mu" else data.numpy()


# -- the module's own Test class ------------------------------------------------------------------------
@pytest.mark.parametrize("name", SELF_TESTS)
def test_module_self_test(core, module, name):
    """The module's ScriptedLoadableModuleTest methods, unchanged, on the real scene."""
    result = unittest.TestResult()
    case = module.XRayNeRFReconstructionTest(name)
    case.setUp()
    case.run(result)
    problems = [text for _, text in result.errors + result.failures]
    assert result.testsRun == 1 and not problems, "\n".join(problems)


def test_self_test_runs_all_methods(module):
    names = {n for n in dir(module.XRayNeRFReconstructionTest) if n.startswith("test_")}
    assert names == set(SELF_TESTS)
    src = Path(module.__file__).read_text()
    body = src[src.index("def runTest(self):") : src.index("# -- helpers")]
    for n in names:
        assert f"self.{n}()" in body


def test_module_metadata_and_registration(module):
    p = module.XRayNeRFReconstruction(None).parent
    assert p.title == "XRayNeRF Reconstruction" and p.categories == ["XRayNeRF"]
    for phrase in ("docs/geometry.md", "RAS", "beam's eye view", "1/mm", "LAO", "RTK", "Hounsfield", "Cancel"):
        assert phrase in p.helpText
    assert f"add_subdirectory({NAME})" in (REPO / "XRayNeRF" / "CMakeLists.txt").read_text()
    assert f'"{NAME}"' in (REPO / "Testing" / "Python" / "run_self_tests.py").read_text()
    cmake = (REPO / "XRayNeRF" / NAME / "CMakeLists.txt").read_text()
    assert f"set(MODULE_NAME {NAME})" in cmake and "slicer_add_python_unittest" in cmake
    from PIL import Image

    assert Image.open(REPO / "Resources" / "Icons" / f"{NAME}.png").size == (128, 128)


# -- inputs -> the engine's result, in HU, on the engine's grid --------------------------------------------
def test_stack_and_sequence_fdk_match_engine_and_phantom(core, module, full):
    """A stack and a sequence of the same projections with the circular-orbit form: both nodes have the
    engine's IJK-to-RAS and voxels (HU of the engine's mu), and the phantom is recovered (PSNR > 31 dB)."""
    cams, images = full
    logic = module.XRayNeRFReconstructionLogic()
    stack = logic.reconstruct(_stack(images), gridSize=40, geometrySource="circular", **ORBIT)
    seq = logic.reconstruct(_sequence(images), gridSize=40, geometrySource="circular", **ORBIT)
    from XRayNeRFLib.recon.fov import default_grid

    like = default_grid(cams, grid=40)
    engine = _engine(images, cams, volume=like, units="mu")
    for out in (stack, seq):
        node = out.volume_node
        np.testing.assert_allclose(_ijk_to_ras(node), like.ras_from_ijk.double().numpy(), atol=1e-5)
        np.testing.assert_allclose(slicer.util.arrayFromVolume(node), _hu(engine.volume), atol=0.05)
        assert node.GetDisplayNode() is not None
        assert json.loads(node.GetAttribute("XRayNeRF.Reconstruction"))["views"] == 60
    gt = ground_truth(like)
    score = psnr(torch.from_numpy(_mu(stack.volume_node)).float(), gt)
    assert score > 31.0, f"PSNR {score:.1f} dB"  # measured 34.3 dB
    assert stack.volume_node.GetName() == "stack FDK" and seq.volume_node.GetName() == "projections FDK"


def test_output_under_parent_transform_lands_on_engine_grid(core, module, sparse):
    """A given output node under a transform: its world IJK-to-RAS is still the engine's grid."""
    from XRayNeRFLib.recon.fov import default_grid
    from XRayNeRFMRML.nodes import ras_from_ijk_world

    cams, images = sparse
    out = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "mine")
    t = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    m = np.eye(4)
    m[:3, :3] = [[0, -1, 0], [1, 0, 0], [0, 0, 1]]
    m[:3, 3] = (10.0, -5.0, 3.0)
    t.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(m))
    out.SetAndObserveTransformNodeID(t.GetID())
    res = module.XRayNeRFReconstructionLogic().reconstruct(
        _stack(images),
        out,
        gridSize=16,
        geometrySource="circular",
        sourceIsocenterDistanceMm=250.0,
        sourceDetectorDistanceMm=400.0,
        pixelSpacingMm=3.0,
    )
    assert res.volume_node is out
    like = default_grid(cams, grid=16)
    np.testing.assert_allclose(ras_from_ijk_world(out), like.ras_from_ijk.double().numpy(), atol=1e-5)


def test_images_geometry_from_camera_attributes(core, module, sparse):
    """DRR-like items (each on its detector with its camera attribute): the cameras are read back and the
    result equals the circular-orbit form's."""
    from XRayNeRFMRML.reconstruction import projection_set_from_nodes

    cams, images = sparse
    seq = _sequence(images, cameras=cams)
    ps = projection_set_from_nodes(seq, "images")
    np.testing.assert_allclose(ps.cameras.world_from_camera.numpy(), cams.world_from_camera.numpy(), atol=1e-9)
    np.testing.assert_array_equal(ps.images.numpy(), images.astype(np.float32))
    logic = module.XRayNeRFReconstructionLogic()
    a = logic.reconstruct(seq, gridSize=16, geometrySource="images")
    b = logic.reconstruct(
        seq, gridSize=16, geometrySource="circular", sourceIsocenterDistanceMm=250.0, sourceDetectorDistanceMm=400.0, pixelSpacingMm=3.0
    )
    np.testing.assert_allclose(_ijk_to_ras(a.volume_node), _ijk_to_ras(b.volume_node), atol=1e-6)
    np.testing.assert_allclose(slicer.util.arrayFromVolume(a.volume_node), slicer.util.arrayFromVolume(b.volume_node), atol=0.05)


def test_circular_orbit_form_angles(core, sparse):
    """360 degrees: V evenly spread views without repeating the first; another arc includes both ends;
    the cameras are Cameras.circular_orbit's at those angles."""
    from XRayNeRFLib.geometry import Cameras
    from XRayNeRFMRML.reconstruction import CircularOrbit

    full = CircularOrbit(sid_mm=250.0, sdd_mm=400.0, pixel_spacing_mm=3.0, start_deg=-30.0, arc_deg=360.0)
    np.testing.assert_allclose(full.angles_deg(4), [-30.0, 60.0, 150.0, 240.0])
    short = CircularOrbit(sid_mm=250.0, sdd_mm=400.0, pixel_spacing_mm=(3.0, 2.5), start_deg=10.0, arc_deg=200.0)
    np.testing.assert_allclose(short.angles_deg(5), [10.0, 60.0, 110.0, 160.0, 210.0])
    cams = short.cameras(5, (32, 28))
    ref = Cameras.circular_orbit(
        torch.tensor(np.radians([10.0, 60.0, 110.0, 160.0, 210.0])),
        sid_mm=250.0,
        sdd_mm=400.0,
        size_px=(32, 28),
        pixel_spacing_mm=(3.0, 2.5),
        dtype=torch.float64,
    )
    np.testing.assert_allclose(cams.projection_matrices().numpy(), ref.projection_matrices().numpy(), atol=1e-9)
    # the sparse fixture is recon_phantoms.orbit(10): 360 degrees from 0
    np.testing.assert_allclose(
        CircularOrbit(sid_mm=250.0, sdd_mm=400.0, pixel_spacing_mm=3.0).cameras(10, (32, 28)).projection_matrices().numpy(),
        sparse[0].projection_matrices().numpy(),
        atol=1e-9,
    )
    for bad in (dict(arc_deg=0.0), dict(sid_mm=500.0), dict(pixel_spacing_mm=0.0)):
        with pytest.raises(ValueError):
            CircularOrbit(**dict(dict(sid_mm=250.0, sdd_mm=400.0, pixel_spacing_mm=3.0), **bad)).cameras(4, (8, 8))


AXES = {"S": (0.0, 0.0, 1.0), "R": (1.0, 0.0, 0.0), "A": (0.0, 1.0, 0.0)}
SOURCE_AT_ZERO = {"S": (0.0, -1.0, 0.0), "R": (0.0, -1.0, 0.0), "A": (0.0, 0.0, 1.0)}  # posterior, posterior, superior


def _isocentre_point(world_ras, parent_shift=(2.0, -5.0, 5.0)):
    """A markups point list under a translation whose single point lies at ``world_ras`` in world RAS."""
    transform = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "table")
    m = np.eye(4)
    m[:3, 3] = parent_shift
    transform.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(m))
    markups = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "isocentre")
    markups.AddControlPoint(*(np.asarray(world_ras) - np.asarray(parent_shift)))
    markups.SetAndObserveTransformNodeID(transform.GetID())
    return markups


@pytest.mark.parametrize("axis", ["S", "R", "A"])
def test_orbit_axis_isocentre_point_and_detector_offset(core, module, axis):
    """The orbit form's cameras through the Logic on real MRML: sources on a circle of radius SID about the
    chosen axis through the markups point (world position, parent transform applied), angle 0 posterior
    (S, R) or superior (A), turning right-handed, rows along -axis, principal rays through the isocentre,
    the principal point moved by -offset/spacing; about S they are Cameras.circular_orbit's."""
    from XRayNeRFLib.geometry import Cameras

    iso = np.array([12.0, -30.0, 45.0])
    markups = _isocentre_point(iso)
    views, size = 8, (48, 40)
    seq = _sequence(np.zeros((views, size[1], size[0])))
    logic = module.XRayNeRFReconstructionLogic()
    ps = logic.projections(
        seq,
        geometrySource="circular",
        orbitAxis=axis,
        isocenterNode=markups,
        detectorOffsetMm=(10.0, -6.0),
        orbitStartDeg=0.0,
        orbitArcDeg=360.0,
        **ORBIT,
    )
    cams = ps.cameras.to(dtype=torch.float64)
    a = np.array(AXES[axis])
    src = cams.source_positions().numpy() - iso  # (V, 3)
    np.testing.assert_allclose(np.linalg.norm(src, axis=1), 250.0, atol=1e-9)
    np.testing.assert_allclose(src @ a, 0.0, atol=1e-9)  # the orbit's plane holds the isocentre
    np.testing.assert_allclose(src[0] / 250.0, SOURCE_AT_ZERO[axis], atol=1e-12)
    turn = np.cross(src[0], src[1]) / 250.0**2
    np.testing.assert_allclose(turn, np.sin(np.radians(45.0)) * a, atol=1e-9)  # +45 degrees right-handed
    rows = cams.world_from_camera[:, :3, 1].numpy()
    np.testing.assert_allclose(rows, np.broadcast_to(-a, rows.shape), atol=1e-12)
    beam = cams.principal_directions().numpy()
    along = np.einsum("vi,vi->v", -src, beam)
    np.testing.assert_allclose(along, 250.0, atol=1e-9)  # the principal ray from the source passes the isocentre
    np.testing.assert_allclose(np.linalg.norm(-src - along[:, None] * beam, axis=1), 0.0, atol=1e-9)
    np.testing.assert_allclose(cams.principal_point_px.numpy(), np.broadcast_to([23.5 - 5.0, 19.5 + 3.0], (views, 2)), atol=1e-12)
    if axis == "S":
        ref = Cameras.circular_orbit(
            torch.arange(views, dtype=torch.float64) * (2 * np.pi / views),
            sid_mm=250.0,
            sdd_mm=400.0,
            size_px=size,
            pixel_spacing_mm=2.0,
            isocenter_ras=iso.tolist(),
            detector_offset_mm=(10.0, -6.0),
            dtype=torch.float64,
        )
        np.testing.assert_allclose(cams.projection_matrices().numpy(), ref.projection_matrices().numpy(), atol=1e-9)
    # the same orbit from coordinates instead of the point
    by_coordinates = logic.projections(
        seq, geometrySource="circular", orbitAxis=axis, isocenterRas=iso, detectorOffsetMm=(10.0, -6.0), **ORBIT
    )
    np.testing.assert_allclose(by_coordinates.cameras.world_from_camera.numpy(), cams.world_from_camera.numpy(), atol=1e-9)
    markups.RemoveAllControlPoints()
    with pytest.raises(ValueError, match="has no point"):
        logic.projections(seq, geometrySource="circular", orbitAxis=axis, isocenterNode=markups, **ORBIT)


def test_orbit_about_r_through_a_point_reconstructs_the_shifted_phantom(core, module):
    """The parameter-node path: a phantom moved to (12, -30, 45) mm scanned on an orbit about the patient's
    right axis through that point (a markups point) reconstructs on a grid centred there (PSNR > 30 dB);
    the same images read as an orbit about S do not (PSNR < 22 dB)."""
    from recon_phantoms import ELLIPSOIDS

    from XRayNeRFLib.recon.fov import default_grid
    from XRayNeRFMRML.reconstruction import CircularOrbit

    iso = np.array([12.0, -30.0, 45.0])
    moved = [(tuple(np.add(c, iso)), ax, mu) for c, ax, mu in ELLIPSOIDS]
    cams = CircularOrbit(sid_mm=250.0, sdd_mm=400.0, pixel_spacing_mm=2.0, axis="R", isocenter_ras=iso).cameras(60, (48, 40))
    images = analytic_projections(cams, moved).numpy()
    logic = module.XRayNeRFReconstructionLogic()
    p = logic.getParameterNode()
    p.inputSequence = _sequence(images)
    p.geometrySource, p.orbitAxis, p.isocenterPoint = "circular", "R", _isocentre_point(iso)
    p.sourceIsocenterDistanceMm, p.sourceDetectorDistanceMm, p.pixelSpacingMm, p.gridSize = 250.0, 400.0, 2.0, 32
    assert logic.whyCannotReconstruct(p) is None
    out = logic.reconstructUsingParameterNode(p)
    like = default_grid(cams, grid=32)
    np.testing.assert_allclose(_ijk_to_ras(out.volume_node), like.ras_from_ijk.double().numpy(), atol=1e-4)
    centre = _ijk_to_ras(out.volume_node) @ np.r_[(np.array(like.data.shape[::-1]) - 1) / 2.0, 1.0]
    np.testing.assert_allclose(centre[:3], iso, atol=1e-3)
    score = psnr(torch.from_numpy(_mu(out.volume_node)).float(), ground_truth(like, moved))
    assert score > 30.0, f"PSNR {score:.1f} dB"  # measured 34.8 dB
    p.orbitAxis = "S"
    wrong = logic.reconstructUsingParameterNode(p)
    like_s = default_grid(CircularOrbit(sid_mm=250.0, sdd_mm=400.0, pixel_spacing_mm=2.0, isocenter_ras=iso).cameras(60, (48, 40)), grid=32)
    bad = psnr(torch.from_numpy(_mu(wrong.volume_node)).float(), ground_truth(like_s, moved))
    assert bad < 22.0, f"wrong axis still gives {bad:.1f} dB"  # measured 18.3 dB
    p.isocenterPoint.RemoveAllControlPoints()
    assert "isocentre point list is empty" in logic.whyCannotReconstruct(p)


def test_dicom_overrides_fill_missing_tags(core, module, tmp_path):
    """A rotational run without Distance Source to Detector or without any pixel spacing: the error names
    the module field to fill (not a command-line flag) and changes nothing; with the field filled the
    cameras equal those of the complete file and the volume is the same."""
    import dicom_factory as fac

    from XRayNeRFLib.intensities import intensities_from_line_integrals
    from XRayNeRFLib.projection_set import ProjectionSet

    angles = np.arange(12) * 30.0
    cams = fac.truth_cameras(angles, np.zeros(12), sid_mm=250.0, sdd_mm=400.0, size_px=(32, 24), pixel_spacing_mm=(2.0, 2.0))
    stored = fac.stored_from_bev(intensities_from_line_integrals(analytic_projections(cams).numpy(), relationship="LIN", i0=50000.0))
    common = dict(primary_deg=0.0, secondary_deg=0.0, primary_increments=angles, sid_mm=250.0, relationship="LIN", sign=1)
    (tmp_path / "full").mkdir()
    (tmp_path / "nosdd").mkdir()
    (tmp_path / "nospacing").mkdir()
    complete = fac.write_xray(str(tmp_path / "full" / "run.dcm"), stored, sdd_mm=400.0, imager_spacing_rc=(2.0, 2.0), **common)
    fac.write_xray(str(tmp_path / "nosdd" / "run.dcm"), stored, sdd_mm=None, imager_spacing_rc=(2.0, 2.0), **common)
    fac.write_xray(str(tmp_path / "nospacing" / "run.dcm"), stored, sdd_mm=400.0, imager_spacing_rc=None, **common)
    logic = module.XRayNeRFReconstructionLogic()
    n = slicer.mrmlScene.GetNumberOfNodes()
    with pytest.raises(ValueError, match="DICOM overrides > Source-detector distance") as error:
        logic.reconstruct(dicomPath=str(tmp_path / "nosdd"), geometrySource="dicom", gridSize=12)
    assert "--sdd-mm" not in str(error.value) and "(0018,1110)" in str(error.value)
    with pytest.raises(ValueError, match="DICOM overrides > Detector pixel spacing") as error:
        logic.reconstruct(dicomPath=str(tmp_path / "nospacing"), geometrySource="dicom", gridSize=12)
    assert "--pixel-spacing-mm" not in str(error.value)
    assert slicer.mrmlScene.GetNumberOfNodes() == n
    reference = ProjectionSet.from_dicom([complete])
    p = logic.getParameterNode()
    p.inputKind, p.geometrySource, p.gridSize = "dicom", "dicom", 12
    p.dicomPath = str(tmp_path / "nosdd")
    p.dicomSddMm, p.dicomSidMm = 200.0, 250.0
    assert "DICOM overrides" in logic.whyCannotReconstruct(p)
    p.dicomSddMm, p.dicomSidMm = 400.0, 0.0
    assert logic.whyCannotReconstruct(p) is None
    out = logic.reconstructUsingParameterNode(p)
    np.testing.assert_allclose(
        out.projections.cameras.projection_matrices().numpy(), reference.cameras.projection_matrices().numpy(), atol=1e-6
    )
    full = logic.reconstruct(dicomPath=str(tmp_path / "full"), geometrySource="dicom", gridSize=12)
    np.testing.assert_allclose(slicer.util.arrayFromVolume(out.volume_node), slicer.util.arrayFromVolume(full.volume_node), atol=1e-3)
    p.dicomPath, p.dicomSddMm, p.dicomPixelSpacingMm = str(tmp_path / "nospacing"), 0.0, 2.0
    spaced = logic.reconstructUsingParameterNode(p)
    np.testing.assert_allclose(spaced.projections.cameras.pixel_spacing_mm.numpy(), 2.0)
    np.testing.assert_allclose(slicer.util.arrayFromVolume(spaced.volume_node), slicer.util.arrayFromVolume(full.volume_node), atol=1e-3)


def test_voxel_solver_option_reaches_the_engine(core, module, sparse, monkeypatch):
    """The parameter node's voxel solver: 'default' passes no option; a named solver reaches the engine's
    options['solver']; a solver the engine does not name is refused by the parameter node; FDK ignores it."""
    from XRayNeRFLib.recon import api

    cams, images = sparse
    seen = []
    real = api.reconstruct

    def spy(*args, **kwargs):
        seen.append(dict(kwargs.get("options") or {}))
        return real(*args, **kwargs)

    monkeypatch.setattr(api, "reconstruct", spy)
    logic = module.XRayNeRFReconstructionLogic()
    p = logic.getParameterNode()
    p.inputStack, p.inputKind, p.geometrySource = _stack(images), "stack", "circular"
    p.sourceIsocenterDistanceMm, p.sourceDetectorDistanceMm, p.pixelSpacingMm = 250.0, 400.0, 3.0
    p.method, p.renderer, p.gridSize, p.iterations = "voxel", "trilinear", 10, 4
    logic.reconstructUsingParameterNode(p)
    assert "solver" not in seen[-1]
    with pytest.raises(ValueError):
        p.voxelSolver = "cg"
    for solver in api.VOXEL_SOLVERS:
        p.voxelSolver = solver
        logic.reconstructUsingParameterNode(p)
        assert seen[-1]["solver"] == solver
    p.method = "fdk"
    logic.reconstructUsingParameterNode(p)
    assert "solver" not in seen[-1]


def test_intensities_with_given_and_estimated_i0(core, module, sparse):
    """Raw intensities I0 exp(-p): converted with the given I0 they reconstruct as the line integrals do;
    with I0 estimated from the air (the phantom leaves air in every view) too, within noise."""
    cams, images = sparse
    logic = module.XRayNeRFReconstructionLogic()
    kw = dict(gridSize=16, geometrySource="circular", sourceIsocenterDistanceMm=250.0, sourceDetectorDistanceMm=400.0, pixelSpacingMm=3.0)
    ref = logic.reconstruct(_stack(images), **kw)
    counts = _stack(40000.0 * np.exp(-images), "counts")
    given = logic.reconstruct(counts, quantity="intensity", i0=40000.0, **kw)
    estimated = logic.reconstruct(counts, quantity="intensity", **kw)
    a = slicer.util.arrayFromVolume(ref.volume_node)
    np.testing.assert_allclose(slicer.util.arrayFromVolume(given.volume_node), a, atol=1.0)
    np.testing.assert_allclose(slicer.util.arrayFromVolume(estimated.volume_node), a, atol=5.0)
    assert any("estimated" in n for n in estimated.projections.assumptions)


def _read_with_slicer(path):
    """Load a file the way Slicer does (archetype storage node: LPS file -> RAS node)."""
    storage = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(path))
    node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", Path(path).stem)
    assert storage.ReadData(node), f"Slicer could not read {path}"
    node.SetAndObserveStorageNodeID(storage.GetID())
    return node


@pytest.mark.parametrize("geometry", ["geom.xml", "geom.json"])
def test_stack_file_with_rtk_or_json_geometry(core, module, sparse, tmp_path, geometry):
    """ProjectionSet.save writes an RTK (row-flipped) or XRayNeRF stack with its geometry; Slicer reads the
    .mha; with the geometry file the module gets back the original line integrals and cameras (spacing and
    origin recovered from the node for RTK) and the engine's result."""
    from XRayNeRFLib.projection_set import ProjectionSet
    from XRayNeRFLib.recon.fov import default_grid
    from XRayNeRFMRML.reconstruction import projection_set_from_nodes

    cams, images = sparse
    ProjectionSet(torch.from_numpy(images).float(), cams).save(str(tmp_path / "proj.mha"), str(tmp_path / geometry))
    node = _read_with_slicer(tmp_path / "proj.mha")
    if geometry.endswith(".xml"):
        assert not np.array_equal(slicer.util.arrayFromVolume(node), images.astype(np.float32))  # RTK row order
    ps = projection_set_from_nodes(node, "file", geometry_file=str(tmp_path / geometry))
    np.testing.assert_array_equal(ps.images.numpy(), images.astype(np.float32))
    np.testing.assert_allclose(ps.cameras.projection_matrices().numpy(), cams.projection_matrices().numpy(), rtol=1e-6, atol=1e-6)
    out = module.XRayNeRFReconstructionLogic().reconstruct(node, gridSize=16, geometrySource="file", geometryFile=str(tmp_path / geometry))
    engine = _engine(images, cams, volume=default_grid(cams, grid=16), units="mu")
    np.testing.assert_allclose(slicer.util.arrayFromVolume(out.volume_node), _hu(engine.volume), atol=0.05)
    np.testing.assert_allclose(_ijk_to_ras(out.volume_node), engine.volume.ras_from_ijk.double().numpy(), atol=1e-5)


def test_dicom_rotational_run(core, module, tmp_path):
    """A 36-frame XA rotational run (LIN counts, angle increments, no patient position): geometry and line
    integrals from the tags; the node equals the engine's result on ProjectionSet.from_dicom and recovers
    the phantom."""
    import dicom_factory as fac

    from XRayNeRFLib.intensities import intensities_from_line_integrals
    from XRayNeRFLib.projection_set import ProjectionSet
    from XRayNeRFLib.recon.fov import default_grid

    angles = np.arange(36) * 10.0
    cams = fac.truth_cameras(angles, np.zeros(36), sid_mm=250.0, sdd_mm=400.0, size_px=(48, 40), pixel_spacing_mm=(2.0, 2.0))
    p = analytic_projections(cams).numpy()
    stored = fac.stored_from_bev(intensities_from_line_integrals(p, relationship="LIN", i0=50000.0))
    path = fac.write_xray(
        str(tmp_path / "run.dcm"),
        stored,
        primary_deg=0.0,
        secondary_deg=0.0,
        primary_increments=angles,
        sdd_mm=400.0,
        sid_mm=250.0,
        imager_spacing_rc=(2.0, 2.0),
        relationship="LIN",
        sign=1,
    )
    logic = module.XRayNeRFReconstructionLogic()
    n = slicer.mrmlScene.GetNumberOfNodes()
    out = logic.reconstruct(dicomPath=str(tmp_path), geometrySource="dicom", gridSize=32)
    assert slicer.mrmlScene.GetNumberOfNodes() == n + 2  # the volume and its display node
    ps = ProjectionSet.from_dicom([path])
    like = default_grid(ps.cameras, grid=32)
    np.testing.assert_allclose(_ijk_to_ras(out.volume_node), like.ras_from_ijk.double().numpy(), atol=1e-4)
    engine = _engine(ps.images, ps.cameras, volume=like, units="mu")
    np.testing.assert_allclose(slicer.util.arrayFromVolume(out.volume_node), _hu(engine.volume), atol=0.05)
    score = psnr(torch.from_numpy(_mu(out.volume_node)).float(), ground_truth(like))
    assert score > 31.0, f"PSNR {score:.1f} dB"  # measured 34.6 dB
    assert out.volume_node.GetName() == f"{tmp_path.name} FDK"
    with pytest.raises(ValueError, match="own geometry"):
        logic.reconstruct(dicomPath=str(tmp_path), geometrySource="circular", **ORBIT)


# -- uncertainty, preview, cancel, failure ------------------------------------------------------------------
def test_uncertainty_node(core, module, sparse):
    """Voxel method with an ensemble of 2: an uncertainty node on the same grid holding the engine's
    per-voxel standard deviation in HU (1000 std_mu / mu_water), non-negative and not all zero."""
    cams, images = sparse
    logic = module.XRayNeRFReconstructionLogic()
    out = logic.reconstruct(
        _stack(images),
        method="voxel",
        renderer="trilinear",
        gridSize=12,
        iterations=20,
        uncertainty=True,
        ensembleSize=2,
        geometrySource="circular",
        sourceIsocenterDistanceMm=250.0,
        sourceDetectorDistanceMm=400.0,
        pixelSpacingMm=3.0,
    )
    u = out.uncertainty_node
    assert u is not None and u.GetName() == "stack VOXEL uncertainty"
    np.testing.assert_allclose(_ijk_to_ras(u), _ijk_to_ras(out.volume_node), atol=1e-9)
    std = slicer.util.arrayFromVolume(u)
    np.testing.assert_allclose(std, _hu_spread(out.result.uncertainty), rtol=1e-5, atol=1e-3)
    assert std.min() >= 0.0 and std.max() > 1.0
    assert std.mean() < 300.0  # the members agree to a fraction of water's attenuation on average


def _hu_spread(volume):
    data = volume.data.double().numpy()
    return 1000.0 * data / MU_WATER if volume.units == "mu" else data


def test_preview_updates_the_middle_slice(core, module, sparse):
    """While the voxel method runs, the output node is the Red slice view's background and its middle
    slice is the engine's current mu in HU."""
    cams, images = sparse
    red = slicer_harness.add_slice_view(core, "Red")
    logic = module.XRayNeRFReconstructionLogic()
    seen = []

    def check(p):
        node = slicer.util.getNode("stack VOXEL")
        assert red.GetSliceCompositeNode().GetBackgroundVolumeID() == node.GetID()
        if p.preview is not None:
            arr = slicer.util.arrayFromVolume(node)
            expect = 1000.0 * (p.preview.double().numpy() / MU_WATER - 1.0)
            seen.append(float(np.abs(arr[arr.shape[0] // 2] - expect).max()))
        return True

    out = logic.reconstruct(
        _stack(images),
        method="voxel",
        renderer="trilinear",
        gridSize=12,
        iterations=30,
        progress=check,
        previewIntervalS=0.0,
        geometrySource="circular",
        sourceIsocenterDistanceMm=250.0,
        sourceDetectorDistanceMm=400.0,
        pixelSpacingMm=3.0,
    )
    assert len(seen) >= 3 and max(seen) < 0.05
    assert out.preview_updates == len(seen)
    # The grey scale shows the preview: not fitted to the node's first content (the constant -1000 HU grid), which
    # puts every later value above the window (all white); air black, water grey, bone white.
    display = slicer.util.getNode("stack VOXEL").GetDisplayNode()
    low, high = display.GetLevel() - display.GetWindow() / 2.0, display.GetLevel() + display.GetWindow() / 2.0
    assert not display.GetAutoWindowLevel() and low <= -1000.0 and 0.0 < high <= 3000.0, (low, high)


def test_nerf_runs_with_coarse_previews(core, module, sparse):
    """method "nerf" through the module (a small random-start field: options mci=None, 4 levels; 4 steps, the first two on the
    coarse grid): previews of both phases land in the node, and the result is the engine's on our grid."""
    cams, images = sparse
    shapes = []
    out = module.XRayNeRFReconstructionLogic().reconstruct(
        _stack(images),
        method="nerf",
        renderer="trilinear",
        gridSize=16,
        iterations=4,
        previewIntervalS=0.0,
        options={"mci": None, "report_every": 1, "levels": 4, "finest_resolution": 16},
        progress=lambda p: p.preview is None or shapes.append(tuple(p.preview.shape)) is None,
        geometrySource="circular",
        sourceIsocenterDistanceMm=250.0,
        sourceDetectorDistanceMm=400.0,
        pixelSpacingMm=3.0,
    )
    assert (8, 8) in shapes and (16, 16) in shapes and out.preview_updates == len(shapes)
    np.testing.assert_allclose(slicer.util.arrayFromVolume(out.volume_node), _hu(out.result.volume), atol=0.05)
    assert out.volume_node.GetName() == "stack NERF" and out.result.history is not None


def test_live_preview_is_throttled(core):
    from XRayNeRFMRML.reconstruction import LivePreview, write_volume_node

    node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
    write_volume_node(node, np.zeros((3, 4, 5), np.float32), np.eye(4))
    now = [0.0]
    preview = LivePreview(node, (3, 4, 5), interval_s=0.1, clock=lambda: now[0])
    slice_mu = torch.full((4, 5), MU_WATER)
    assert preview(slice_mu)  # first one goes through: water = 0 HU in slice 1
    np.testing.assert_allclose(slicer.util.arrayFromVolume(node)[1], 0.0, atol=1e-3)
    now[0] = 0.05
    assert not preview(torch.zeros(4, 5))  # too soon
    now[0] = 0.2
    assert preview(torch.zeros(3, 4, 5))  # a whole volume: air everywhere
    np.testing.assert_allclose(slicer.util.arrayFromVolume(node), -1000.0, atol=1e-3)
    now[0] = 0.4
    coarse = torch.tensor([[0.0, 0.0], [MU_WATER, MU_WATER]])  # a coarse-to-fine fit's half-size slice
    assert preview(coarse)
    np.testing.assert_allclose(slicer.util.arrayFromVolume(node)[1, :, 0], [-1000.0, -2000.0 / 3, -1000.0 / 3, 0.0], atol=1e-3)
    now[0] = 1.0
    assert not preview(torch.zeros(2, 2, 2)) and not preview({"drr": 1}) and not preview(torch.zeros(5)) and preview.updates == 3


def test_cancel_voxel_keeps_best_so_far_and_fdk_keeps_nothing(core, module, sparse):
    from XRayNeRFLib.progress import Cancelled

    cams, images = sparse
    stack = _stack(images)
    logic = module.XRayNeRFReconstructionLogic()
    kw = dict(geometrySource="circular", sourceIsocenterDistanceMm=250.0, sourceDetectorDistanceMm=400.0, pixelSpacingMm=3.0)
    n = slicer.mrmlScene.GetNumberOfNodes()
    calls = []

    def cancel_on_third(p):
        calls.append(p.done)
        if len(calls) == 2:
            logic.cancelRequested = True  # what the Cancel button does
        return True

    out = logic.reconstruct(stack, method="voxel", renderer="trilinear", gridSize=12, iterations=300, progress=cancel_on_third, **kw)
    assert out.cancelled and len(calls) == 2 and out.result.history.cancelled
    assert slicer.mrmlScene.GetNumberOfNodes() == n + 2  # the volume and its display node, nothing else
    np.testing.assert_allclose(slicer.util.arrayFromVolume(out.volume_node), _hu(out.result.volume), atol=0.05)
    assert json.loads(out.volume_node.GetAttribute("XRayNeRF.Reconstruction"))["cancelled"] is True
    # FDK: a partial backprojection is meaningless; Cancelled, and the scene is as it was
    n = slicer.mrmlScene.GetNumberOfNodes()
    with pytest.raises(Cancelled):
        logic.reconstruct(stack, method="fdk", gridSize=12, progress=lambda p: False, **kw)
    assert slicer.mrmlScene.GetNumberOfNodes() == n


def test_failure_mid_run_restores_given_nodes(core, module, sparse, monkeypatch):
    """The engine fails after a preview was written: the user's output node gets back its voxels,
    geometry and display state, a created uncertainty node disappears, nothing else is left."""
    import types

    import XRayNeRFLib.recon.fov  # noqa: F401  (the real package loaded before its api module is stubbed)
    from XRayNeRFLib.progress import Progress

    cams, images = sparse
    stack = _stack(images)
    mine = _stack(np.arange(60, dtype=np.float32).reshape(3, 4, 5), "mine")
    mine.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(np.diag([2.0, 3.0, 4.0, 1.0])))
    composite = slicer_harness.add_slice_view(core, "Red").GetSliceCompositeNode()
    composite.SetBackgroundVolumeID(stack.GetID())  # what the user was looking at
    before = slicer.mrmlScene.GetNumberOfNodes()
    shown = []

    def failing(projections, cameras, method="fdk", *, progress=None, volume=None, **kw):
        progress(Progress(1, 10, "step 1", volume.data[0] + 0.05))  # a preview lands in the node
        shown.append(composite.GetBackgroundVolumeID())
        raise RuntimeError("the data loss became nan at step 1")

    monkeypatch.setitem(sys.modules, "XRayNeRFLib.recon.api", types.SimpleNamespace(reconstruct=failing, DEFAULT_RENDERER="trilinear"))
    logic = module.XRayNeRFReconstructionLogic()
    with pytest.raises(RuntimeError, match="nan"):
        logic.reconstruct(
            stack,
            mine,
            method="voxel",
            gridSize=12,
            uncertainty=True,
            previewIntervalS=0.0,
            geometrySource="circular",
            sourceIsocenterDistanceMm=250.0,
            sourceDetectorDistanceMm=400.0,
            pixelSpacingMm=3.0,
        )
    assert slicer.mrmlScene.GetNumberOfNodes() == before
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(mine), np.arange(60).reshape(3, 4, 5))
    np.testing.assert_allclose(_ijk_to_ras(mine), np.diag([2.0, 3.0, 4.0, 1.0]))
    assert mine.GetDisplayNode() is None and mine.GetAttribute("XRayNeRF.Reconstruction") is None
    assert shown == [mine.GetID()] and composite.GetBackgroundVolumeID() == stack.GetID()


@pytest.mark.parametrize(
    "case, message",
    [
        ("wrong_size_json", "disagree"),
        ("no_cameras", "no camera geometry"),
        ("thick_item", "1 slice"),
        ("missing_dicom", "does not exist"),
        ("rtk_without_file", "geometry file"),
    ],
)
def test_bad_inputs_say_what_to_do(core, module, sparse, tmp_path, case, message):
    from XRayNeRFLib.geometry_io import save_geometry

    cams, images = sparse
    logic = module.XRayNeRFReconstructionLogic()
    kw = {}
    node = _stack(images)
    if case == "wrong_size_json":
        save_geometry(orbit(10, size_px=(16, 16)), str(tmp_path / "g.json"))
        kw = dict(geometrySource="file", geometryFile=str(tmp_path / "g.json"))
    elif case == "no_cameras":
        kw = dict(geometrySource="images")
    elif case == "thick_item":
        node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSequenceNode")
        item = slicer.vtkMRMLScalarVolumeNode()
        slicer.util.updateVolumeFromArray(item, np.zeros((2, 4, 4), np.float32))
        node.SetDataNodeAtValue(item, "0")
        kw = dict(geometrySource="circular", **ORBIT)
    elif case == "missing_dicom":
        node, kw = None, dict(dicomPath=str(tmp_path / "nothing"), geometrySource="dicom")
    elif case == "rtk_without_file":
        kw = dict(geometrySource="file")
    n = slicer.mrmlScene.GetNumberOfNodes()
    with pytest.raises(ValueError, match=message):
        logic.reconstruct(node, gridSize=8, **kw)
    assert slicer.mrmlScene.GetNumberOfNodes() == n


# -- Widget (fake .ui: plain attributes) --------------------------------------------------------------------
def _widget(module):
    return slicer_harness.module_widget(module, NAME)


def test_widget_status_and_visible_fields(core, module, sparse):
    widget = _widget(module)
    ui, p = widget.ui, widget._parameterNode
    assert not ui.applyButton.enabled and "projection sequence" in ui.statusLabel.text
    p.inputKind = "stack"
    assert not ui.inputSequenceSelector.visible and ui.inputStackSelector.visible and not ui.dicomPathLineEdit.visible
    assert not ui.dicomOverridesCollapsibleButton.visible
    assert ui.isocenterRSpinBox.enabled  # no isocentre point chosen: the coordinates apply
    p.isocenterPoint = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "iso")
    assert not ui.isocenterRSpinBox.enabled and not ui.isocenterSSpinBox.enabled
    p.isocenterPoint.AddControlPoint(0.0, 0.0, 0.0)
    p.inputStack = _stack(sparse[1])
    assert ui.applyButton.enabled and ui.statusLabel.text == "Ready."
    assert ui.orbitCollapsibleButton.visible and not ui.geometryFileLineEdit.visible
    assert not ui.iterationsSpinBox.enabled and not ui.voxelSolverComboBox.enabled  # FDK has no iterations
    assert ui.fdkWindowComboBox.enabled and ui.fdkWindowCutoffSpinBox.enabled  # ... but a ramp-filter window
    assert ui.quantityComboBox.enabled and not ui.i0SpinBox.enabled
    p.quantity = "intensity"
    assert ui.i0SpinBox.enabled
    p.geometrySource = "file"
    assert not ui.applyButton.enabled and "geometry file" in ui.statusLabel.text and ui.geometryFileLineEdit.visible
    p.geometrySource = "circular"
    p.method = "voxel"
    assert ui.iterationsSpinBox.enabled and not ui.ensembleSizeSpinBox.enabled and ui.voxelSolverComboBox.enabled
    assert not ui.fdkWindowComboBox.enabled and not ui.fdkWindowCutoffSpinBox.enabled
    p.computeUncertainty = True
    assert ui.ensembleSizeSpinBox.enabled and ui.uncertaintyVolumeSelector.enabled
    p.inputKind = "dicom"
    assert ui.dicomOverridesCollapsibleButton.visible and ui.dicomPathLineEdit.visible
    # the output grid: the cylinder's fields until an explicit size (all three) or a reference volume takes over
    assert ui.fovRegionComboBox.enabled and ui.gridSizeSpinBox.enabled and not ui.explicitGridOriginRSpinBox.enabled
    p.explicitGridSizeX, p.explicitGridSizeY, p.explicitGridSizeZ = 8, 8, 8
    assert not ui.fovRegionComboBox.enabled and not ui.gridSizeSpinBox.enabled and not ui.explicitGridOriginRSpinBox.enabled
    p.explicitGridCentred = False
    assert ui.explicitGridOriginRSpinBox.enabled and ui.explicitGridOriginSSpinBox.enabled
    p.gridReferenceVolume = _stack(sparse[1], "reference")
    assert not ui.fovRegionComboBox.enabled and not ui.explicitGridOriginRSpinBox.enabled


def test_widget_refined_geometry_file_follows_refine(core, module, sparse):
    """The refined-geometry file field (and its Browse button) is enabled only while self-calibration is on."""
    widget = _widget(module)
    ui, p = widget.ui, widget._parameterNode
    p.inputKind, p.inputStack = "stack", _stack(sparse[1])
    assert not ui.refinedGeometryFileLineEdit.enabled and not ui.refinedGeometryFileBrowseButton.enabled
    p.refineGeometry = True
    assert ui.refinedGeometryFileLineEdit.enabled and ui.refinedGeometryFileBrowseButton.enabled


def test_widget_picks_a_stack_with_cameras(core, module, sparse):
    """With no sequence in the scene, the Widget starts from a stack that carries cameras (as the sample
    projections do) and takes the geometry from it: Apply is enabled at once."""
    from XRayNeRFMRML.nodes import set_cameras_attribute

    cams, images = sparse
    stack = _stack(images)
    set_cameras_attribute(stack, cams)
    widget = _widget(module)
    p = widget._parameterNode
    assert (p.inputKind, p.inputStack, p.geometrySource) == ("stack", stack, "images")
    assert widget.ui.applyButton.enabled and widget.ui.statusLabel.text == "Ready."


def test_widget_cancel_click_keeps_best_so_far(core, module, sparse):
    """Apply reads Cancel while running; clicking it stops the voxel fit: the node holds the best volume so
    far, the status line says so, and Apply comes back."""
    widget = _widget(module)
    p = widget._parameterNode
    p.inputKind, p.inputStack = "stack", _stack(sparse[1])
    p.sourceIsocenterDistanceMm, p.sourceDetectorDistanceMm, p.pixelSpacingMm = 250.0, 400.0, 3.0
    p.method, p.renderer, p.gridSize, p.iterations = "voxel", "trilinear", 12, 300
    widget.PROGRESS_INTERVAL_S = 0.0
    clicks = []

    def click(*args):
        if not clicks:
            clicks.append(widget.ui.applyButton.text)
            widget.onApplyButton()

    slicer.app.processEvents = click
    try:
        out = widget.onApplyButton()
    finally:
        del slicer.app.processEvents
    assert clicks == ["Cancel"]
    assert out.cancelled and p.outputVolume is out.volume_node
    assert widget.ui.statusLabel.text.startswith(f"Cancelled: '{out.volume_node.GetName()}' holds the best volume so far")
    assert widget.ui.applyButton.text == "Apply" and widget.ui.applyButton.enabled and not widget.running
    assert len(out.result.history.data) < 300


# -- static check of the .ui against the parameter node ----------------------------------------------------
WIDGET_FOR_TYPE = {"str": {"QLineEdit"}, "bool": {"QCheckBox"}, "int": {"QSpinBox"}, "float": {"QDoubleSpinBox", "ctkSliderWidget"}}


def test_ui_binds_every_field_with_a_fitting_widget(module):
    """Every parameter-node field is bound (SlicerParameterName) to a widget of a fitting class: Choice ->
    QComboBox, node -> qMRMLNodeComboBox of that node class, numbers -> spin boxes whose range is the
    validator's; every self.ui name used by the module exists in the .ui."""
    import re

    root = ET.parse(REPO / "Resources" / "UI" / f"{NAME}.ui").getroot()
    widgets = {w.get("name"): w for w in root.iter("widget")}
    bound = {}
    for w in widgets.values():
        for prop in w.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bound[prop.find("string").text] = w
    wrapper = module.XRayNeRFReconstructionParameterNode
    fields = wrapper.allParameters
    assert set(bound) == set(fields)
    for name, f in fields.items():
        w = bound[name]
        cls = w.get("class")
        if any(type(v).__name__ == "Choice" for v in f.validators):
            assert cls == "QComboBox", name
        elif f.type.__name__.startswith("vtkMRML"):
            assert cls == "qMRMLNodeComboBox", name
            types_ = [s.text for s in w.find("property[@name='nodeTypes']").iter("string")]
            assert types_ == [f.type.__name__], name
        else:
            assert cls in WIDGET_FOR_TYPE[f.type.__name__], (name, cls)
            for v in f.validators:
                lo = float(w.find("property[@name='minimum']/*").text)
                hi = float(w.find("property[@name='maximum']/*").text)
                assert (lo, hi) == (v.minimum, v.maximum), name
    source = Path(module.__file__).read_text()
    used = set(re.findall(r"\.ui\.(\w+)", source))
    assert used and used <= set(widgets), sorted(used - set(widgets))


# -- the shipped sample data: a real chest CT's simulated projections -------------------------------------
def _resample_hu(volume, like):
    """``volume`` (HU) trilinearly sampled at the voxel centres of ``like``'s grid: (K, J, I) float64."""
    k, j, i = like.data.shape
    kk, jj, ii = torch.meshgrid(torch.arange(k), torch.arange(j), torch.arange(i), indexing="ij")
    ijk = torch.stack([ii, jj, kk, torch.ones_like(ii)], -1).double().reshape(-1, 4)
    ras = ijk @ like.ras_from_ijk.double().T
    src = ras @ torch.linalg.inv(volume.ras_from_ijk.double()).T  # continuous (i, j, k) in the CT
    size = torch.tensor(volume.data.shape[::-1], dtype=torch.float64)  # (I, J, K)
    grid = (2.0 * src[:, :3] / (size - 1) - 1.0).reshape(1, 1, 1, -1, 3)
    out = torch.nn.functional.grid_sample(volume.data.double()[None, None], grid, align_corners=True, padding_mode="border")
    return out.reshape(k, j, i).numpy()


def test_sample_projections_reconstruct_the_sample_ct(core, module):
    """Resources/SampleData: 30 simulated views of the real chest CT, read by Slicer's reader with the JSON
    geometry file. FDK (32 voxels across) follows the CT: correlation > 0.93 and median error < 100 HU inside
    the scanned cylinder's central part."""
    from XRayNeRFLib.volume import load_volume

    sample = REPO / "Resources" / "SampleData"
    node = _read_with_slicer(sample / "chest_projections_30.mha")
    out = module.XRayNeRFReconstructionLogic().reconstruct(
        node, gridSize=32, geometrySource="file", geometryFile=str(sample / "chest_projections_30.json")
    )
    from XRayNeRFLib.geometry_io import load_geometry
    from XRayNeRFLib.recon.fov import default_grid

    like = default_grid(load_geometry(str(sample / "chest_projections_30.json")), grid=32)
    np.testing.assert_allclose(_ijk_to_ras(out.volume_node), like.ras_from_ijk.double().numpy(), atol=1e-4)
    ct = load_volume(str(sample / "chest_ct_128.nii.gz"), units="hu")
    ref = _resample_hu(ct, like)
    got = slicer.util.arrayFromVolume(out.volume_node).astype(np.float64)
    k, j, i = got.shape
    jj, ii = np.meshgrid(np.arange(j) - (j - 1) / 2, np.arange(i) - (i - 1) / 2, indexing="ij")
    inner = np.broadcast_to((jj**2 + ii**2) < (0.8 * i / 2) ** 2, got.shape).copy()
    inner[: k // 5], inner[k - k // 5 :] = False, False
    r = float(np.corrcoef(got[inner], ref[inner])[0, 1])
    err = float(np.median(np.abs(got[inner] - ref[inner])))
    assert r > 0.93 and err < 100.0, f"correlation {r:.3f}, median |error| {err:.0f} HU"  # measured 0.963, 62 HU


def test_energy_option_reaches_the_hu_conversion(core, module, sparse):
    """options energy_kev=80: the node holds HU at 80 keV's mu_water (the engine's mu, converted)."""
    from XRayNeRFLib.recon.fov import default_grid
    from XRayNeRFLib.volume import DEFAULT_EFFECTIVE_ENERGY_KEV, mu_water_per_mm
    from XRayNeRFMRML.reconstruction import DEFAULT_ENERGY_KEV

    assert DEFAULT_ENERGY_KEV == DEFAULT_EFFECTIVE_ENERGY_KEV
    cams, images = sparse
    out = module.XRayNeRFReconstructionLogic().reconstruct(
        _stack(images),
        gridSize=16,
        options={"energy_kev": 80.0},
        geometrySource="circular",
        sourceIsocenterDistanceMm=250.0,
        sourceDetectorDistanceMm=400.0,
        pixelSpacingMm=3.0,
    )
    mu = _engine(images, cams, volume=default_grid(cams, grid=16), units="mu").volume.data.double().numpy()
    w80 = mu_water_per_mm(80.0)
    assert abs(w80 - MU_WATER) > 1e-3
    np.testing.assert_allclose(slicer.util.arrayFromVolume(out.volume_node), 1000.0 * (mu / w80 - 1.0), atol=0.05)


# -- output grid and self-calibration from the panel -------------------------------------------------------
def _stack_parameters(module, images, spacing=3.0):
    logic = module.XRayNeRFReconstructionLogic()
    p = logic.getParameterNode()
    p.inputStack, p.inputKind, p.geometrySource = _stack(images), "stack", "circular"
    p.sourceIsocenterDistanceMm, p.sourceDetectorDistanceMm, p.pixelSpacingMm = 250.0, 400.0, spacing
    p.method, p.gridSize = "fdk", 10
    return logic, p


def _grid_of(node):
    return tuple(slicer.util.arrayFromVolume(node).shape), _ijk_to_ras(node)


def test_grid_options_reach_the_engine(core, module, sparse):
    """Each output-grid option of the parameter node gives the engine's grid (XRayNeRFLib.recon.grid) on the output node:
    the fovRegion cylinder ('any' is larger than 'every'), a reference volume's grid (it wins), an explicit size with the
    voxel size, centred on the isocentre or at a given origin; an incomplete explicit size or one without a voxel size
    is refused before any work, with the scene unchanged."""
    from XRayNeRFLib.recon.grid import cylinder_grid, explicit_grid

    cams, images = sparse
    logic, p = _stack_parameters(module, images)
    assert p.fovRegion == "every"  # the engine's DEFAULT_REGION
    shapes = {}
    for region in ("every", "any"):
        p.fovRegion = region
        shape, ras = _grid_of(logic.reconstructUsingParameterNode(p).volume_node)
        like = cylinder_grid(cams, region=region, grid=10)
        assert shape == tuple(like.data.shape), region
        np.testing.assert_allclose(ras, like.ras_from_ijk.double().numpy(), atol=1e-6)
        shapes[region] = ras[0, 0]
    assert shapes["any"] > shapes["every"]  # the same voxel count across a wider cylinder
    p.fovRegion = "every"
    p.explicitGridSizeX, p.explicitGridSizeY, p.explicitGridSizeZ = 7, 9, 5
    assert "voxel size" in logic.whyCannotReconstruct(p)
    p.voxelSpacingMm = 4.0
    shape, ras = _grid_of(logic.reconstructUsingParameterNode(p).volume_node)
    like = explicit_grid((7, 9, 5), 4.0, cameras=cams)
    assert shape == (5, 9, 7) == tuple(like.data.shape)
    np.testing.assert_allclose(ras, like.ras_from_ijk.double().numpy(), atol=1e-6)
    p.explicitGridCentred = False
    p.explicitGridOriginR, p.explicitGridOriginA, p.explicitGridOriginS = -10.0, 5.0, 2.5
    shape, ras = _grid_of(logic.reconstructUsingParameterNode(p).volume_node)
    np.testing.assert_allclose(ras[:3, 3], [-10.0, 5.0, 2.5])
    np.testing.assert_allclose(np.diag(ras)[:3], [4.0, 4.0, 4.0])
    reference = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "reference")
    slicer.util.updateVolumeFromArray(reference, np.zeros((6, 8, 11), np.float32))
    ref_ras = np.array([[0.0, 2.0, 0.0, -7.0], [-2.5, 0.0, 0.0, 4.0], [0.0, 0.0, 3.0, -9.0], [0.0, 0.0, 0.0, 1.0]])
    reference.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(ref_ras))
    p.gridReferenceVolume = reference
    out = logic.reconstructUsingParameterNode(p)
    shape, ras = _grid_of(out.volume_node)
    assert shape == (6, 8, 11)
    np.testing.assert_allclose(ras, ref_ras, atol=1e-9)
    assert float(np.abs(slicer.util.arrayFromVolume(out.volume_node) + 1000.0).max()) > 100.0  # a reconstruction, not the fill
    p.gridReferenceVolume = None
    p.explicitGridSizeY = 0
    n = slicer.mrmlScene.GetNumberOfNodes()
    reason = logic.whyCannotReconstruct(p)
    assert "all three sizes" in reason
    with pytest.raises(ValueError):
        logic.reconstructUsingParameterNode(p)
    assert slicer.mrmlScene.GetNumberOfNodes() == n


def test_refine_geometry_reaches_the_engine(core, module, sparse, monkeypatch):
    """refineGeometry runs the engine's self-calibration with RefineSettings.for_method (the CLI's settings) on the
    output grid, the reconstruction then uses the corrected cameras, and they are stored on the output node with the
    refinement's summary; unchecked, no refinement runs."""
    from XRayNeRFLib.geometry_io import cameras_from_json
    from XRayNeRFLib.recon import api, selfcal
    from XRayNeRFMRML.reconstruction import RECONSTRUCTION_ATTRIBUTE, REFINED_CAMERAS_ATTRIBUTE

    cams, images = sparse
    calls, seen = [], []
    real_reconstruct = api.reconstruct

    def fake_refine(projections, cameras, like, *, settings=None, masks=None, progress=None):
        calls.append((settings, tuple(like.data.shape)))
        shifted = selfcal.apply_corrections(cameras.to(dtype=torch.float64), torch.tensor([[0.0, 0.0, 0.01, 0.5, 0.0, 0.0]] * len(cameras)))
        return selfcal.RefineResult(shifted, like, torch.zeros(len(cameras), 6), None, [1.0, 0.5], "2 rounds done", 0.1)

    def spy(projections, cameras, *args, **kwargs):
        seen.append(cameras)
        return real_reconstruct(projections, cameras, *args, **kwargs)

    monkeypatch.setattr(selfcal, "refine_geometry", fake_refine)
    monkeypatch.setattr(api, "reconstruct", spy)
    logic, p = _stack_parameters(module, images)
    node = logic.reconstructUsingParameterNode(p).volume_node
    assert calls == [] and node.GetAttribute(REFINED_CAMERAS_ATTRIBUTE) is None
    p.refineGeometry = True
    for method in ("fdk", "voxel"):
        p.method, p.iterations = method, 2
        node = logic.reconstructUsingParameterNode(p).volume_node
        settings, shape = calls[-1]
        assert settings == selfcal.RefineSettings.for_method(method) and shape == tuple(slicer.util.arrayFromVolume(node).shape)
        stored = cameras_from_json(json.loads(node.GetAttribute(REFINED_CAMERAS_ATTRIBUTE)))
        torch.testing.assert_close(stored.world_from_camera, seen[-1].world_from_camera.double(), atol=1e-9, rtol=0)
        assert float((seen[-1].world_from_camera.double() - cams.world_from_camera.double()).abs().max()) > 0.4  # corrected
        info = json.loads(node.GetAttribute(RECONSTRUCTION_ATTRIBUTE))
        assert info["refined_geometry"]["stopped"] == "2 rounds done" and info["refined_geometry"]["data_terms"] == [1.0, 0.5]


def _jittered_refine(calls):
    """A stand-in for the engine's self-calibration: seeded per-view twists (about 0.6 deg, 1 mm) and principal-point
    shifts (about 0.5 px) applied by selfcal.apply_corrections, so the refined cameras differ from the nominal ones in
    every field a geometry file stores."""
    from XRayNeRFLib.recon import selfcal

    def fake_refine(projections, cameras, like, *, settings=None, masks=None, progress=None):
        calls.append(settings)
        g = torch.Generator().manual_seed(17 + len(calls))  # each run its own corrections
        v = len(cameras)
        delta = torch.cat([0.01 * torch.randn(v, 3, generator=g), torch.randn(v, 3, generator=g)], 1).double()
        shift = 0.5 * torch.randn(v, 2, generator=g).double()
        refined = selfcal.apply_corrections(cameras.to(dtype=torch.float64), delta, shift)
        return selfcal.RefineResult(refined, like, delta, shift, [1.0, 0.5], "2 rounds done", 0.1)

    return fake_refine


def _assert_same_cameras(a, b, atol=1e-6):
    assert tuple(a.size_px) == tuple(b.size_px)
    for field in ("world_from_camera", "sdd_mm", "pixel_spacing_mm", "principal_point_px"):
        torch.testing.assert_close(getattr(a, field).double(), getattr(b, field).double(), atol=atol, rtol=0, msg=field)


@pytest.mark.parametrize("name", ["refined.json", "refined.matrices.json", "refined.matrices.txt"])
def test_refined_geometry_file_round_trips_to_the_refined_cameras(core, module, sparse, monkeypatch, tmp_path, name):
    """With refineGeometry and a refinedGeometryFile the panel writes the corrected cameras (the CLI's writer, the form
    by extension) into a folder it creates; read back with the engine's load_geometry they are the cameras the
    reconstruction used and the ones stored on the output node, to 1e-6; the status line names the file;
    save_refined_geometry writes the same from the node later."""
    from XRayNeRFLib.geometry_io import load_geometry
    from XRayNeRFLib.recon import api, selfcal
    from XRayNeRFMRML.reconstruction import refined_cameras, save_refined_geometry

    cams, images = sparse
    calls, seen = [], []
    real_reconstruct = api.reconstruct

    def spy(projections, cameras, *args, **kwargs):
        seen.append(cameras)
        return real_reconstruct(projections, cameras, *args, **kwargs)

    monkeypatch.setattr(selfcal, "refine_geometry", _jittered_refine(calls))
    monkeypatch.setattr(api, "reconstruct", spy)
    logic, p = _stack_parameters(module, images)
    path = tmp_path / "new folder" / name
    p.refineGeometry, p.refinedGeometryFile = True, str(path)
    out = logic.reconstructUsingParameterNode(p)
    assert len(calls) == 1 and out.refined_geometry_file == str(path) and path.is_file()
    written = load_geometry(str(path))
    _assert_same_cameras(written, seen[-1])
    _assert_same_cameras(written, refined_cameras(out.volume_node))
    assert float((written.world_from_camera - cams.world_from_camera.double()).abs().max()) > 0.5  # not the nominal ones
    assert str(path) in module.XRayNeRFReconstructionWidget.outcomeMessage(out)
    again = tmp_path / ("again" + name[len("refined") :])
    save_refined_geometry(out.volume_node, str(again))
    _assert_same_cameras(load_geometry(str(again)), written)
    p.refineGeometry = False  # unchecked: the file field is not used, and the stale corrected cameras go
    out = logic.reconstructUsingParameterNode(p)
    assert out.refined_geometry_file is None and refined_cameras(out.volume_node) is None and len(calls) == 1


def _scene_state(node):
    """What a refused run must leave as it was: the scene's node count and ``node``'s voxels, geometry, attributes."""
    return (
        slicer.mrmlScene.GetNumberOfNodes(),
        slicer.util.arrayFromVolume(node).copy(),
        _ijk_to_ras(node),
        node.GetAttribute("XRayNeRF.Reconstruction"),
        node.GetAttribute("XRayNeRF.RefinedCameras"),
    )


@pytest.mark.parametrize(
    "case, error, message",
    [
        ("flat_reference", "ValueError", r"reference grid 'one slice' is not a 3-D volume"),
        ("huge_grid", "GridMemoryError", r"a 256 x 256 x 256 grid needs about 0\.\d GiB for fdk \(10 views\) but 0\.5 GiB are available"),
        ("bad_extension", "ValueError", r"the refined-geometry file '.*refined\.txt': use \.json"),
        ("folder", "ValueError", r"the refined-geometry file '.*' is a directory"),
        ("file_without_refine", "ValueError", r"turn refine geometry on"),
        ("write_fails", "ValueError", r"cannot write geometry file .*: No space left on device"),
    ],
)
def test_bad_grid_or_refined_file_leave_scene_and_files(core, module, sparse, monkeypatch, tmp_path, case, error, message):
    """A 2-D reference volume, a grid that would exceed the memory (the engine's estimate, before anything is
    allocated), a refined-geometry file that cannot be written or is given without refinement: one line naming the
    problem before any work (no refinement, no engine call), no file written, and the user's output node (holding an
    earlier self-calibrated run) and the scene as they were; a refined file that fails to be written at the end (a
    full disk) puts back the node's voxels and the earlier run's corrected cameras."""
    from XRayNeRFLib.cli import reconstruct as cli
    from XRayNeRFLib.recon import api, grid, selfcal
    from XRayNeRFLib.recon.grid import GridMemoryError
    from XRayNeRFMRML.reconstruction import run_reconstruction

    cams, images = sparse
    calls, engine = [], []
    monkeypatch.setattr(selfcal, "refine_geometry", _jittered_refine(calls))
    logic, p = _stack_parameters(module, images)
    p.refineGeometry, p.refinedGeometryFile = True, str(tmp_path / "first.json")
    earlier = logic.reconstructUsingParameterNode(p).volume_node  # the user's output node, with corrected cameras
    assert earlier.GetAttribute("XRayNeRF.RefinedCameras") and len(calls) == 1
    p.refinedGeometryFile = str(tmp_path / "refined.json")

    real_reconstruct = api.reconstruct

    def counted(*args, **kwargs):
        engine.append(1)
        return real_reconstruct(*args, **kwargs)

    def disk_full(cameras, path):
        raise ValueError(f"cannot write geometry file {path!r}: No space left on device")

    monkeypatch.setattr(api, "reconstruct", counted)
    monkeypatch.setattr(cli, "write_refined_geometry", disk_full)
    if case == "flat_reference":
        p.gridReferenceVolume = _stack(np.zeros((1, 8, 9), np.float32), "one slice")
    elif case == "huge_grid":  # 512 MiB free (the engine's reading of the system, replaced): too little for 256^3
        monkeypatch.setattr(grid, "available_memory_bytes", lambda: 2**29)
        p.explicitGridSizeX = p.explicitGridSizeY = p.explicitGridSizeZ = 256
        p.voxelSpacingMm = 1.0
    elif case == "bad_extension":
        p.refinedGeometryFile = str(tmp_path / "refined.txt")
    elif case == "folder":
        (tmp_path / "taken.json").mkdir()
        p.refinedGeometryFile = str(tmp_path / "taken.json")
    before = _scene_state(earlier)
    files = sorted(tmp_path.rglob("*"))
    with pytest.raises(ValueError) as caught:
        if case == "file_without_refine":
            run_reconstruction(logic.projections(p.inputStack, **ORBIT), refined_geometry_file=str(tmp_path / "r.json"))
        else:
            logic.reconstructUsingParameterNode(p)
    assert type(caught.value).__name__ == error and "\n" not in str(caught.value)
    assert re.search(message, str(caught.value)), str(caught.value)
    if isinstance(caught.value, GridMemoryError):  # the typed error's numbers, for a caller that offers a coarser grid
        assert caught.value.needed_bytes > caught.value.available_bytes == 2**29
    assert len(calls) == (2 if case == "write_fails" else 1) and len(engine) == (case == "write_fails")
    assert sorted(tmp_path.rglob("*")) == files  # nothing written
    after = _scene_state(earlier)
    assert after[0] == before[0] and after[3:] == before[3:]
    np.testing.assert_array_equal(after[1], before[1])
    np.testing.assert_allclose(after[2], before[2])
