"""The DRR module's Logic and self-test on a real MRML scene (slicer-core), plus static checks of every
XRayNeRF module's .ui bindings. The harness (Testing/Python/slicer_harness.py) stands in only for Qt,
CTK, slicer.i18n, slicer.app and the ScriptedLoadableModule/parameterNodeWrapper Python pieces."""

from __future__ import annotations

import ast
import importlib.metadata
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

DRR_TESTS = [
    "test_DRRGeometry",
    "test_DRRWaterSlab",
    "test_DRRParentTransform",
    "test_DRRFailureLeavesScene",
    "test_ParameterNode",
    "test_DRRObliqueFileFixture",
]


@pytest.fixture(scope="module")
def drr_module():
    return slicer_harness.load_module("XRayNeRFDRR")


def test_slicer_core_is_the_slicer_package():
    """`import slicer` must be slicer-core (the PyPI package 'slicer' is unrelated) beside torch."""
    assert hasattr(slicer, "vtkMRMLScene") and hasattr(slicer, "vtkMRMLSliceLogic")
    assert importlib.metadata.version("slicer-core").startswith("5.")
    with pytest.raises(importlib.metadata.PackageNotFoundError):
        importlib.metadata.version("slicer")
    assert torch.__version__.startswith("2.")


def test_scene_has_module_logics(core):
    for name in ("Volumes", "Markups", "Transforms", "Sequences", "Models"):
        assert core.app_logic.GetModuleLogic(name) is core.logics[name]
    assert slicer.mrmlScene is core.scene
    seq = core.scene.AddNewNodeByClass("vtkMRMLSequenceNode", "s")
    assert seq.GetID() and core.scene.GetNumberOfNodesByClass("vtkMRMLColorTableNode") > 10


@pytest.mark.parametrize("name", DRR_TESTS)
def test_module_self_test(core, drr_module, name):
    """The module's own ScriptedLoadableModuleTest methods, unchanged, on the real scene."""
    result = unittest.TestResult()
    case = drr_module.XRayNeRFDRRTest(name)
    case.setUp()
    case.run(result)
    problems = [text for _, text in result.errors + result.failures]
    assert result.testsRun == 1 and not problems, "\n".join(problems)


def test_self_test_runs_all_methods(drr_module):
    """runTest (what Slicer's Reload and Test calls) calls every test_ method."""
    names = {n for n in dir(drr_module.XRayNeRFDRRTest) if n.startswith("test_")}
    assert names == set(DRR_TESTS)
    src = Path(drr_module.__file__).read_text()
    body = src[src.index("def runTest(self):") : src.index("# -- helpers")]
    for n in names:
        assert f"self.{n}()" in body


def test_module_metadata(drr_module):
    module = drr_module.XRayNeRFDRR(None)
    p = module.parent
    assert p.title == "XRayNeRF DRR" and p.categories == ["XRayNeRF"]
    for phrase in ("docs/geometry.md", "RAS", "LAO", "CRA", "beam's eye view", "1/mm"):
        assert phrase in p.helpText
    assert "Slicer" in p.acknowledgementText


def test_default_renderer_is_the_engines(core, drr_module):
    """One default projector: the DRR module's parameter node, its Logic and the MRML layer's render_drr take the
    engine's DEFAULT_RENDERER (as `xraynerf drr`), by name, not a copied literal; a DRR rendered without naming
    a renderer equals the engine's default render and differs from Siddon's."""
    from XRayNeRFLib.render import DEFAULT_RENDERER, render
    from XRayNeRFLib.volume import Volume, hu_to_mu

    logic = drr_module.XRayNeRFDRRLogic()
    assert logic.getParameterNode().renderer == DEFAULT_RENDERER
    defaults = {}
    for path, function in (("XRayNeRF/XRayNeRFDRR/XRayNeRFDRR.py", "renderDRR"), ("XRayNeRF/XRayNeRFMRML/drr.py", "render_drr")):
        tree = ast.parse((REPO / path).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and node.name == function:
                defaults[function] = next(d for a, d in zip(node.args.kwonlyargs, node.args.kw_defaults) if a.arg == "renderer")
            if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", None) == "renderer":
                defaults["parameter node"] = node.value
    assert sorted(defaults) == ["parameter node", "renderDRR", "render_drr"]
    assert all(isinstance(d, ast.Name) and d.id == "DEFAULT_RENDERER" for d in defaults.values()), ast.dump(defaults["renderDRR"])
    rng = np.random.default_rng(5)
    hu = rng.uniform(-1000, 1500, size=(9, 11, 13)).astype(np.float32)
    affine = _oblique((1, 2, 3), 35.0, (1.5, 2.0, 2.5), (-10.0, -12.0, -9.0))
    ct = drr_module.XRayNeRFDRRTest._ctNode(hu, affine)
    pose = dict(sourceIsocenterDistanceMm=350.0, sourceDetectorDistanceMm=600.0, detectorColumns=24, detectorRows=20, pixelSpacingMm=4.0)
    got = slicer.util.arrayFromVolume(logic.renderDRR(ct, **pose).volume_node)[0]
    cams = logic.cameras(ct, **pose)
    vol = Volume(hu_to_mu(torch.tensor(hu, dtype=torch.float64)), torch.tensor(affine), "mu")
    expected = render(vol, cams, renderer=DEFAULT_RENDERER)[0].numpy()
    siddon = render(vol, cams, renderer="siddon")[0].numpy()
    np.testing.assert_allclose(got, expected, rtol=2e-4, atol=2e-4)
    assert np.abs(got - siddon).max() > 10 * 2e-4  # the two renderers differ on this random CT: the default is visible


def _oblique(rotation_axis, angle_deg, spacing, origin):
    axis = np.asarray(rotation_axis, float) / np.linalg.norm(rotation_axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    a = np.radians(angle_deg)
    r = np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * k @ k
    out = np.eye(4)
    out[:3, :3] = r @ np.diag(spacing)
    out[:3, 3] = origin
    return out


@pytest.mark.parametrize("renderer", ["siddon", "trilinear"])
def test_oblique_ct_drr_equals_engine_render(core, drr_module, renderer):
    """An oblique CT (direction cosines about a skew axis, anisotropic spacing): the DRR node's values
    equal the engine's render of the same voxels and affine, and the node's camera round-trips."""
    from XRayNeRFLib.geometry import Cameras
    from XRayNeRFLib.render import render
    from XRayNeRFLib.volume import Volume, hu_to_mu
    from XRayNeRFMRML.nodes import cameras_from_node

    rng = np.random.default_rng(7)
    hu = rng.uniform(-1000, 1500, size=(9, 11, 13)).astype(np.float32)
    affine = _oblique((1, 2, 3), 35.0, (1.5, 2.0, 2.5), (-10.0, -12.0, -9.0))
    ct = drr_module.XRayNeRFDRRTest._ctNode(hu, affine)
    pose = dict(
        primaryAngleDeg=25.0,
        secondaryAngleDeg=-15.0,
        sourceIsocenterDistanceMm=350.0,
        sourceDetectorDistanceMm=600.0,
        detectorColumns=24,
        detectorRows=20,
        pixelSpacingMm=4.0,
        patientPosition="FFS",
    )
    logic = drr_module.XRayNeRFDRRLogic()
    drr = logic.renderDRR(ct, renderer=renderer, **pose).volume_node
    # independent path: the engine on the numpy voxels and the affine we wrote
    centre = (affine @ np.r_[(13 - 1) / 2, (11 - 1) / 2, (9 - 1) / 2, 1.0])[:3]
    cams = Cameras.carm(
        25.0,
        -15.0,
        sid_mm=350.0,
        sdd_mm=600.0,
        size_px=(24, 20),
        pixel_spacing_mm=4.0,
        isocenter_ras=centre,
        patient_position="FFS",
        dtype=torch.float64,
    )
    vol = Volume(hu_to_mu(torch.tensor(hu, dtype=torch.float64)), torch.tensor(affine), "mu")
    expected = render(vol, cams, renderer=renderer)[0].numpy()
    got = slicer.util.arrayFromVolume(drr)[0]
    assert expected.max() > 0.3 and (expected == 0).sum() > 0  # CT seen partly, not filling the detector
    np.testing.assert_allclose(got, expected, rtol=2e-4, atol=2e-4)
    back = cameras_from_node(drr)
    np.testing.assert_allclose(back.world_from_camera.numpy(), cams.world_from_camera.numpy(), atol=1e-9)
    assert back.size_px == (24, 20)


def test_drr_pixels_project_onto_their_voxels(core, drr_module):
    """Every DRR voxel centre (IJK-to-RAS of the node) projects through the camera onto its own pixel."""
    from XRayNeRFMRML.nodes import cameras_from_node

    ct = drr_module.XRayNeRFDRRTest._ctNode(np.zeros((5, 5, 5)), _oblique((0, 0, 1), 10, (2, 2, 2), (0, 0, 0)))
    drr = (
        drr_module.XRayNeRFDRRLogic()
        .renderDRR(
            ct,
            primaryAngleDeg=-70.0,
            secondaryAngleDeg=30.0,
            detectorColumns=7,
            detectorRows=4,
            pixelSpacingMm=0.7,
            sourceIsocenterDistanceMm=500.0,
            sourceDetectorDistanceMm=900.0,
            patientPosition="HFP",
        )
        .volume_node
    )
    a = drr_module.XRayNeRFDRRTest._ijkToRas(drr)
    jj, ii = np.meshgrid(np.arange(4), np.arange(7), indexing="ij")
    ijk = np.stack([ii.ravel(), jj.ravel(), np.zeros(28), np.ones(28)], axis=1)
    ras = (ijk @ a.T)[:, :3]
    pixels, depth = cameras_from_node(drr).project(torch.tensor(ras))
    np.testing.assert_allclose(pixels[0].numpy(), ijk[:, :2], atol=1e-6)
    np.testing.assert_allclose(depth[0].numpy(), 900.0, atol=1e-6)


def test_drr_under_parent_transform_lands_on_detector(core, drr_module):
    """An output node placed under a transform still shows the DRR on the detector in world RAS."""
    from XRayNeRFMRML.nodes import ras_from_ijk_world

    ct = drr_module.XRayNeRFDRRTest._ctNode(np.zeros((4, 4, 4)), np.eye(4))
    t = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    t.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(_oblique((1, 0, 0), 40, (1, 1, 1), (5, 6, 7))))
    out = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "out")
    out.SetAndObserveTransformNodeID(t.GetID())
    logic = drr_module.XRayNeRFDRRLogic()
    drr = logic.renderDRR(ct, out, detectorColumns=4, detectorRows=4).volume_node
    assert drr is out
    free = logic.renderDRR(ct, detectorColumns=4, detectorRows=4).volume_node
    np.testing.assert_allclose(ras_from_ijk_world(out), ras_from_ijk_world(free), atol=1e-9)


def test_nonlinear_parent_transform_is_refused(core, drr_module):
    ct = drr_module.XRayNeRFDRRTest._ctNode(np.zeros((4, 4, 4)), np.eye(4))
    grid = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLGridTransformNode", "warp")
    ct.SetAndObserveTransformNodeID(grid.GetID())
    n = slicer.mrmlScene.GetNumberOfNodes()
    with pytest.raises(ValueError, match="Harden transform"):
        drr_module.XRayNeRFDRRLogic().renderDRR(ct, detectorColumns=4, detectorRows=4)
    assert slicer.mrmlScene.GetNumberOfNodes() == n


# -- static checks: .ui names and parameter-node bindings of every module ------------------------------
def _modules():
    return sorted(p.name for p in (REPO / "XRayNeRF").iterdir() if (p / f"{p.name}.py").is_file())


def _ui_widgets(ui_path: Path):
    root = ET.parse(ui_path).getroot()
    names, bound = set(), {}
    for w in root.iter("widget"):
        names.add(w.get("name"))
        for prop in w.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bound[prop.find("string").text] = w.get("name")
    return names, bound


def _parameter_fields(source: str):
    fields = {}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ClassDef) and any(
            (isinstance(d, ast.Name) and d.id == "parameterNodeWrapper") for d in node.decorator_list
        ):
            fields[node.name] = [s.target.id for s in node.body if isinstance(s, ast.AnnAssign)]
    return fields


def test_modules_exist():
    assert "XRayNeRFDRR" in _modules()


@pytest.mark.parametrize("name", _modules())
def test_ui_names_and_parameter_bindings(name):
    source = (REPO / "XRayNeRF" / name / f"{name}.py").read_text()
    ui = REPO / "Resources" / "UI" / f"{name}.ui"
    assert ui.is_file(), f"{name}.py needs Resources/UI/{name}.ui"
    widgets, bound = _ui_widgets(ui)
    used = set(re.findall(r"self\.ui\.(\w+)", source))
    assert used, "the Widget uses no .ui widget"
    assert used <= widgets, f"names used in {name}.py missing from {ui.name}: {sorted(used - widgets)}"
    fields = _parameter_fields(source)
    assert fields, f"{name}.py has no @parameterNodeWrapper class"
    for cls, names in fields.items():
        assert names
        unbound = [f for f in names if f not in bound]
        assert not unbound, f"{cls} fields without a GUI binding (SlicerParameterName) in {ui.name}: {unbound}"
        stray = [p for p in bound if p not in names]
        assert not stray, f"{ui.name} binds names that are not fields of {cls}: {stray}"


def test_render_drr_runs_the_engine_through_call_engine(core, drr_module):
    """The layer's hook (XRayNeRFMRML/engine_call.py): render_drr hands its engine render, with its progress
    callback, to the caller's ``call_engine`` (the web app runs it off its event loop), and the DRR is the same."""
    from XRayNeRFLib.render import render
    from XRayNeRFMRML.drr import carm_cameras, render_drr

    hu = np.random.default_rng(3).uniform(-1000, 1000, size=(8, 9, 10)).astype(np.float32)
    ct = drr_module.XRayNeRFDRRTest._ctNode(hu, _oblique((0, 0, 1), 10.0, (2.0, 2.0, 2.5), (-10.0, -9.0, -10.0)))
    cams = carm_cameras(ct, primary_deg=20.0, sid_mm=300.0, sdd_mm=500.0, size_px=(12, 10), pixel_spacing_mm=4.0)
    calls = []

    def call_engine(fn, *args, **kwargs):
        calls.append((fn, kwargs.get("progress")))
        return fn(*args, **kwargs)

    def progress(p):
        return True

    via_hook = slicer.util.arrayFromVolume(render_drr(ct, cams, renderer="siddon", progress=progress, call_engine=call_engine).volume_node)
    direct = slicer.util.arrayFromVolume(render_drr(ct, cams, renderer="siddon").volume_node)
    assert calls == [(render, progress)]
    assert via_hook.max() > 0.1
    np.testing.assert_array_equal(via_hook, direct)
