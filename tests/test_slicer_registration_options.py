"""The engine's options in the Registration panel on a real MRML scene (slicer-core): every option on the
parameter node reaches ``XRayNeRFLib.registration.register`` (the settings object and the NeTT model the Logic
passes), the defaults are the engine's, every parameter has its widget in the .ui, NeTT weights of another shape
are refused with the engine's typed error and nothing changes, and NeTT trained on the current pair is saved."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "Testing" / "Python"))
sys.path.insert(0, str(REPO / "XRayNeRF"))

slicer = pytest.importorskip("slicer", reason="pip install slicer-core (the Qt-free core of 3D Slicer)")
import slicer_harness  # noqa: E402


@pytest.fixture(scope="module")
def module():
    return slicer_harness.load_module("XRayNeRFRegistration")


class _Called(Exception):
    pass


@pytest.fixture
def captured(monkeypatch):
    """Replace the engine's register by a stub that records its keywords and stops the run."""
    import XRayNeRFLib.registration as engine

    calls = []

    def stub(volume, image, cameras, settings=None, **kwargs):
        calls.append(dict(kwargs, settings=settings))
        raise _Called()

    monkeypatch.setattr(engine, "register", stub)
    return calls


def _nett_file(path, hidden=16, tamper=None):
    import torch

    from XRayNeRFLib.registration.nett import NeTT, save_nett

    model = NeTT(hidden=hidden)
    torch.manual_seed(3)
    with torch.no_grad():
        for q in model.parameters():
            q.normal_(0.0, 0.1)
    save_nett(model, str(path))
    if tamper is not None:
        blob = torch.load(str(path), weights_only=True)
        blob.update(tamper)
        torch.save(blob, str(path))
    return model


def _ready(module):
    T = module.XRayNeRFRegistrationTest
    ct, xray, transform = T._registrationScene(T, np.array([2.0, 0.0, -1.0]))
    logic = module.XRayNeRFRegistrationLogic()
    p = logic.getParameterNode()
    p.inputVolume, p.xrayVolume, p.transform = ct, xray, transform
    return logic, p


def test_every_panel_option_reaches_the_engine(core, module, captured, tmp_path):
    """Similarity, coarse search (ranges, poses), intrinsics refinement and NeTT weights set on the parameter node
    are in the RegistrationSettings and appearance given to the engine; the rest are the engine's defaults; the
    scene is unchanged after the (stubbed) run stops."""
    from XRayNeRFLib.registration.nett import NeTT
    from XRayNeRFLib.registration.optimize import RegistrationSettings

    logic, p = _ready(module)
    model = _nett_file(tmp_path / "w.pt")
    p.similarity, p.coarseSearch, p.captureRangeDeg, p.captureRangeMm, p.searchStarts = "gncc", True, 12.0, 25.0, 16
    p.refineIntrinsics, p.applyNett, p.nettWeightsPath = True, True, str(tmp_path / "w.pt")
    red = slicer_harness.add_slice_view(core, "Red")
    n = slicer.mrmlScene.GetNumberOfNodes()
    with pytest.raises(_Called):
        logic.registerUsingParameterNode(p, sliceLogic=red)
    (call,) = captured
    s = call["settings"]
    assert isinstance(s, RegistrationSettings)
    assert (s.loss, s.capture_range_deg, s.capture_range_mm, s.n_starts, s.refine_intrinsics) == ("gncc", 12.0, 25.0, 16, True)
    expected = dataclasses.replace(
        RegistrationSettings(), loss="gncc", capture_range_deg=12.0, capture_range_mm=25.0, n_starts=16, refine_intrinsics=True
    )
    assert s == expected  # every other field at the engine's default
    assert isinstance(call["appearance"], NeTT)
    for (name, a), b in zip(call["appearance"].state_dict().items(), model.state_dict().values()):
        assert (a == b).all(), name
    assert call["progress_every"] == p.previewEvery
    assert slicer.mrmlScene.GetNumberOfNodes() == n and p.outputDRR is None  # the DRR and C-arm made for the run removed
    np.testing.assert_allclose(slicer.util.arrayFromTransformMatrix(p.transform)[:3, 3], [2.0, 0.0, -1.0])


def test_defaults_are_the_engines_and_explicit_keywords_win(core, module, captured):
    from XRayNeRFLib.registration.optimize import RegistrationSettings

    logic, p = _ready(module)
    with pytest.raises(_Called):
        logic.registerUsingParameterNode(p, sliceLogic=slicer_harness.add_slice_view(core, "Red"))
    assert captured[0]["settings"] == RegistrationSettings() and captured[0]["appearance"] is None
    p.captureRangeDeg = 30.0  # ranges without the coarse search switched on: no search
    with pytest.raises(_Called):
        logic.registerUsingParameterNode(p, sliceLogic=slicer_harness.add_slice_view(core, "Yellow"), levels=(2,))
    assert captured[1]["settings"].n_starts == 1 and captured[1]["settings"].capture_range_deg == 0.0
    assert captured[1]["levels"] == (2,)
    p.coarseSearch, p.captureRangeDeg, p.captureRangeMm = True, 0.0, 0.0
    with pytest.raises(ValueError, match="capture range"):
        logic.registerUsingParameterNode(p, sliceLogic=slicer_harness.add_slice_view(core, "Green"))
    assert len(captured) == 2


def test_every_parameter_has_its_widget(module):
    """Each parameter-node field is bound to one widget of the .ui (SlicerParameterName), so the panel offers it."""
    import xml.etree.ElementTree as ET

    root = ET.parse(REPO / "Resources" / "UI" / "XRayNeRFRegistration.ui").getroot()
    bound = [p.find("string").text for p in root.iter("property") if p.get("name") == "SlicerParameterName"]
    fields = set(module.XRayNeRFRegistrationParameterNode.allParameters)
    assert sorted(bound) == sorted(fields)
    tips = {w.get("name"): w for w in root.iter("widget")}
    for name in ("coarseSearchCheckBox", "refineIntrinsicsCheckBox", "applyNettCheckBox", "trainNettButton", "landmarkStartButton"):
        tip = [p.find("string").text for p in tips[name].iter("property") if p.get("name") == "toolTip"]
        assert tip and len(tip[0]) > 40, name  # says when to use it


@pytest.mark.parametrize("tamper, reason", [({"hidden": 32}, "shape"), ({"format": "other"}, "format"), (None, "missing")])
def test_bad_nett_weights_are_refused_and_nothing_changes(core, module, captured, tmp_path, tamper, reason):
    from XRayNeRFLib.errors import NeTTWeightsError

    logic, p = _ready(module)
    path = tmp_path / "w.pt"
    if reason != "missing":
        _nett_file(path, tamper=tamper)
    p.applyNett, p.nettWeightsPath = True, str(path)
    red = slicer_harness.add_slice_view(core, "Red")
    n = slicer.mrmlScene.GetNumberOfNodes()
    with pytest.raises(NeTTWeightsError) as error:
        logic.registerUsingParameterNode(p, sliceLogic=red)
    assert error.value.reason == reason and error.value.path == str(path)
    if reason == "shape":
        assert "another shape" in str(error.value) and "retrain" in str(error.value)
    assert not captured and slicer.mrmlScene.GetNumberOfNodes() == n
    assert p.inputVolume.GetTransformNodeID() is None and not logic.hasPendingResult()


def test_train_nett_on_the_current_pair(core, module, tmp_path):
    """Train NeTT on the CT at its pose and the X-ray: the weights file is written and loads; a cancelled
    training writes nothing; a name without .pt is refused."""
    from XRayNeRFLib.progress import Cancelled
    from XRayNeRFLib.registration.nett import load_nett

    logic, p = _ready(module)
    p.nettIterations, p.nettWeightsPath = 3, str(tmp_path / "pair.pt")
    model, history = logic.trainNettUsingParameterNode(p)
    assert len(history) == 3 and (tmp_path / "pair.pt").is_file()
    assert p.inputVolume.GetTransformNodeID() == p.transform.GetID()
    again = load_nett(str(tmp_path / "pair.pt"))
    for a, b in zip(again.state_dict().values(), model.state_dict().values()):
        assert (a == b).all()
    p.nettWeightsPath = str(tmp_path / "stopped.pt")
    with pytest.raises(Cancelled):
        logic.trainNettUsingParameterNode(p, progress=lambda q: False)
    assert not (tmp_path / "stopped.pt").exists()
    p.nettWeightsPath = str(tmp_path / "weights.bin")
    with pytest.raises(ValueError, match=r"\.pt"):
        logic.trainNettUsingParameterNode(p)


def _second_xray(module, ct, transform, name="lateral", camera=True):
    """A second X-ray at a known pose: the CT (at its transform's pose) rendered from the side, on another grid
    (24 x 20 px of 3.5 mm) than the panel's X-ray (32 x 32 px of 3 mm)."""
    import torch

    from XRayNeRFLib.render import render
    from XRayNeRFLib.volume import as_mu
    from XRayNeRFMRML.nodes import volume_from_node

    T = module.XRayNeRFRegistrationTest
    cams = T._cameras(cols=24, rows=20, spacing=3.5, primary=100.0, secondary=5.0, iso=(0.0, 0.0, 0.0))
    ct.SetAndObserveTransformNodeID(transform.GetID())
    image = render(as_mu(volume_from_node(ct)), cams.to(dtype=torch.float32), renderer="siddon")[0].numpy()
    ct.SetAndObserveTransformNodeID(None)
    node = T._imageNode(name, image, cams)
    if not camera:
        node.RemoveAttribute("XRayNeRF.Cameras")
    return node, cams


def test_train_nett_on_the_pair_set(core, module, tmp_path, monkeypatch):
    """With a second X-ray chosen, NeTT trains on both X-rays (each with its own camera and grid, the CT read once
    at its pose) and saves the weights; a second X-ray without a camera is refused by name and nothing is written."""
    import torch

    import XRayNeRFLib.registration.nett as nett
    from XRayNeRFMRML.nodes import cameras_from_node

    logic, p = _ready(module)
    second, cams = _second_xray(module, p.inputVolume, p.transform)
    calls = []
    real = nett.train_nett

    def spy(volumes, images, cameras, **kw):
        calls.append((volumes, images, cameras))
        return real(volumes, images, cameras, **kw)

    monkeypatch.setattr(nett, "train_nett", spy)
    p.secondXray, p.nettIterations, p.nettWeightsPath = second, 2, str(tmp_path / "set.pt")
    model, history = logic.trainNettUsingParameterNode(p)
    ((volumes, images, cameras),) = calls
    assert [tuple(i.shape) for i in images] == [(1, 32, 32), (1, 20, 24)]
    assert torch.equal(images[1][0], torch.from_numpy(slicer.util.arrayFromVolume(second)[0]).float())
    assert torch.allclose(cameras[0].world_from_camera, cameras_from_node(p.xrayVolume).world_from_camera)
    assert torch.allclose(cameras[1].world_from_camera, cams.world_from_camera)
    assert len(volumes) == 2 and volumes[0] is volumes[1]  # one read of the CT
    assert len(history) == 2 and (tmp_path / "set.pt").is_file()
    p.secondXray, p.nettWeightsPath = p.xrayVolume, str(tmp_path / "same.pt")  # the same node twice counts once
    logic.trainNettUsingParameterNode(p)
    assert [tuple(i.shape) for i in calls[-1][1]] == [(1, 32, 32)]
    p.secondXray, p.nettWeightsPath = _second_xray(module, p.inputVolume, p.transform, "no camera", camera=False)[0], str(tmp_path / "x.pt")
    with pytest.raises(ValueError, match="no camera"):
        logic.trainNettUsingParameterNode(p)
    assert not (tmp_path / "x.pt").exists()


def test_mnerf_option_fits_the_second_xray_and_reaches_the_engine(core, module, captured, tmp_path):
    """'mNeRF' with a second X-ray: the engine gets RegistrationSettings whose drr_source is an mNeRF fitted to that
    X-ray alone (the CT at its transform's pose); without a second X-ray, or with NeTT ticked, one clear error and
    the CT's parent and transform stay as they were."""
    from XRayNeRFLib.registration.mnerf import MNeRF
    from XRayNeRFLib.registration.optimize import RegistrationSettings
    from XRayNeRFMRML.nodes import volume_from_node

    logic, p = _ready(module)
    p.useMnerf = True
    second = _second_xray(module, p.inputVolume, p.transform)[0]
    red, yellow = slicer_harness.add_slice_view(core, "Red"), slicer_harness.add_slice_view(core, "Yellow")
    n = slicer.mrmlScene.GetNumberOfNodes()
    with pytest.raises(ValueError, match="second X-ray"):
        logic.registerUsingParameterNode(p, sliceLogic=red)
    p.secondXray = second
    _nett_file(tmp_path / "w.pt")
    p.applyNett, p.nettWeightsPath = True, str(tmp_path / "w.pt")
    with pytest.raises(ValueError, match="untick 'Apply NeTT' or 'mNeRF'"):
        logic.registerUsingParameterNode(p, sliceLogic=yellow)
    assert captured == [] and p.inputVolume.GetTransformNodeID() is None
    assert slicer.mrmlScene.GetNumberOfNodes() == n
    np.testing.assert_allclose(slicer.util.arrayFromTransformMatrix(p.transform)[:3, 3], [2.0, 0.0, -1.0])
    p.applyNett = False
    with pytest.raises(_Called):
        logic.registerUsingParameterNode(p, sliceLogic=slicer_harness.add_slice_view(core, "Green"))
    (call,) = captured
    s = call["settings"]
    assert isinstance(s.drr_source, MNeRF)
    assert dataclasses.replace(s, drr_source=None) == RegistrationSettings()
    assert s.drr_source(volume_from_node(p.inputVolume)) is s.drr_source.volume  # fitted for the CT at this pose


def test_mnerf_fit_is_reused_until_the_ct_or_the_second_xray_changes(core, module, monkeypatch):
    """The panel's mNeRF is fitted once per (CT voxels and pose, second X-ray pixels and camera): a second run from the
    same start reuses it; moving the CT's transform, editing the X-ray's pixels or choosing another X-ray fits again;
    a failed fit keeps the previous entry (and the CT's parent is put back)."""
    import XRayNeRFLib.registration.mnerf as mnerf

    fitted = []

    def counting_fit(volume, images, cameras, progress=None):
        if fitted and fitted[-1] == "fail":
            raise mnerf.MNeRFError("stubbed failure", reason="stub")
        fitted.append(object())
        return fitted[-1]

    monkeypatch.setattr(mnerf, "fit_mnerf", counting_fit)
    logic, p = _ready(module)
    p.useMnerf = True
    p.secondXray, _ = _second_xray(module, p.inputVolume, p.transform)
    first = logic.fitMnerfUsingParameterNode(p)
    assert logic.fitMnerfUsingParameterNode(p) is first and len(fitted) == 1
    matrix = slicer.util.arrayFromTransformMatrix(p.transform)
    matrix[:3, 3] += [1.0, 0.0, 0.0]
    p.transform.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(matrix))
    moved = logic.fitMnerfUsingParameterNode(p)
    assert moved is not first and len(fitted) == 2
    assert logic.fitMnerfUsingParameterNode(p) is moved
    pixels = slicer.util.arrayFromVolume(p.secondXray)
    pixels[0, 0, 0] += 1.0
    slicer.util.arrayFromVolumeModified(p.secondXray)
    edited = logic.fitMnerfUsingParameterNode(p)
    assert edited is not moved and len(fitted) == 3
    p.secondXray, _ = _second_xray(module, p.inputVolume, p.transform, name="other lateral")
    assert logic.fitMnerfUsingParameterNode(p) is not edited and len(fitted) == 4
    assert logic.mnerfCache.fits == 4
    fitted.append("fail")
    p.transform.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(np.eye(4)))
    parent = p.inputVolume.GetTransformNodeID()
    with pytest.raises(mnerf.MNeRFError):
        logic.fitMnerfUsingParameterNode(p)
    assert p.inputVolume.GetTransformNodeID() == parent and logic.mnerfCache.fits == 4
