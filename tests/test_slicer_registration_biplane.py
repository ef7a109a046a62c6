"""Biplane registration in the Registration module on a real MRML scene (slicer-core): one CT registered to two
X-ray nodes at once (XRayNeRFMRML.registration.register_ct_to_xrays through the module's Logic) recovers a known
offset of the CT, writes both DRR nodes on their detectors, shows the second overlay in the Yellow view and gives it
back; the panel's option reaches the layer; bad sets (an X-ray without camera, the same X-ray twice, an X-ray that
does not see the CT, mNeRF with biplane) stop with one error naming the node and leave the scene as it was."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "Testing" / "Python"))
sys.path.insert(0, str(REPO / "XRayNeRF"))

slicer = pytest.importorskip("slicer", reason="pip install slicer-core (the Qt-free core of 3D Slicer)")
import slicer_harness  # noqa: E402

# The run: NCC, 2 x 2 binning then full size, the trilinear projector (the X-rays are Siddon's), one torch thread.
RUN = dict(loss="ncc", levels=(2, 1), max_iterations=(40, 20), learning_rate=(1.0, 0.5), renderer="trilinear", num_threads=1)


@pytest.fixture(scope="module")
def module():
    return slicer_harness.load_module("XRayNeRFRegistration")


def _biplane_scene(module, start: np.ndarray, camera: bool = True):
    """The module's test CT (20^3 voxels of 3 mm about the origin; its true pose: no transform) seen by two X-rays
    rendered with Siddon: the module's LAO 30 view (32 x 32 px of 3 mm) and a second one at RAO 60, orthogonal to it,
    on another grid (28 x 24 px of 3.5 mm). The CT's transform starts at ``start`` (4, 4), the offset to recover.
    Returns (ct, first X-ray, second X-ray, transform, second X-ray's Cameras)."""
    from XRayNeRFMRML.nodes import cameras_from_node

    T = module.XRayNeRFRegistrationTest
    ct, first, transform = T._registrationScene(T, np.zeros(3))
    second = T._secondXray(ct)
    cams = cameras_from_node(second)
    if not camera:
        second.RemoveAttribute("XRayNeRF.Cameras")
    transform.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(start))
    return ct, first, second, transform, cams


BEAM_1 = np.array([-0.5, np.sqrt(3.0) / 2.0, 0.0])  # the first view's beam (LAO 30), RAS


def _start() -> np.ndarray:
    """The known offset: 3 degrees about the first view's beam and (4, -5, 3) mm, 6.3 mm of it along that beam, where
    one view hardly sees it."""
    from XRayNeRFLib.registration import so3_exp

    start = np.eye(4)
    start[:3, :3] = so3_exp(torch.from_numpy(BEAM_1 * np.deg2rad(3.0))).numpy()
    start[:3, 3] = (4.0, -5.0, 3.0)
    return start


def _body_tre_mm(ct, ct_to_parent: np.ndarray) -> float:
    """Mean distance (mm) by which ``ct_to_parent`` (4, 4) moves the CT's body voxels (HU > -500) from their true
    place (no transform): the mean target registration error over the anatomy."""
    from XRayNeRFMRML.nodes import ijk_to_ras

    k, j, i = np.nonzero(slicer.util.arrayFromVolume(ct) > -500)
    points = ijk_to_ras(ct) @ np.stack([i, j, k, np.ones(len(i))])  # (4, N) RAS
    return float(np.linalg.norm((ct_to_parent @ points - points)[:3], axis=0).mean())


def _view_state(slice_logic) -> dict:
    c, n = slice_logic.GetSliceCompositeNode(), slice_logic.GetSliceNode()
    return dict(
        background=c.GetBackgroundVolumeID(),
        foreground=c.GetForegroundVolumeID(),
        opacity=round(c.GetForegroundOpacity(), 9),
        orientation=n.GetOrientationString(),
        sliceToRAS=np.round(slicer.util.arrayFromVTKMatrix(n.GetSliceToRAS()), 9).ravel().tolist(),
        fov=tuple(round(v, 9) for v in n.GetFieldOfView()),
    )


def test_biplane_recovers_a_known_offset_with_both_overlays(core, module):
    """Two X-ray nodes, the CT 3 degrees and 7.1 mm off (6.3 mm of it along the first beam): the biplane run brings
    the CT back to the truth (no transform) with a mean target error over its body voxels under 1 mm, about half a
    detector pixel at the isocentre (3 mm x 500 / 800) and a third of a voxel: the depth of each view lies in the
    other's image plane. The first X-ray alone, same run, leaves the CT over 5 mm off, mostly along its beam. (The
    rotation is not bounded by itself: this small smooth phantom shows a degree about an axis across both beams as
    a sub-pixel change, which the body-voxel error counts at its true size.) Both DRR nodes lie on their detectors
    and hold the DRR of the CT read again under the registered transform; the second overlay is in the Yellow view
    during the run and afterwards; the status line gives each X-ray's loss; Revert gives the transform and both
    views back."""
    from XRayNeRFMRML import registration
    from XRayNeRFMRML.nodes import cameras_from_node, detector_ras_from_ijk, ijk_to_ras

    red, yellow = slicer_harness.add_slice_view(core, "Red"), slicer_harness.add_slice_view(core, "Yellow")
    yellow.GetSliceNode().SetOrientation("Coronal")
    before = {"red": _view_state(red), "yellow": _view_state(yellow)}
    start = _start()
    ct, first, second, transform, _cams = _biplane_scene(module, start)
    logic = module.XRayNeRFRegistrationLogic()
    assert _body_tre_mm(ct, start) > 6.0
    alone = logic.register(ct, first, transform, sliceLogic=red, **RUN)  # the control: one view
    moved = slicer.util.arrayFromTransformMatrix(transform)
    assert _body_tre_mm(ct, moved) > 5.0 and abs(moved[:3, 3] @ BEAM_1) > 0.9 * np.linalg.norm(moved[:3, 3])
    assert len(alone.view_losses) == 1 and alone.drr_nodes == [alone.drr_node]
    logic.revert()
    during = []

    def progress(p):
        c = yellow.GetSliceCompositeNode()
        during.append((c.GetBackgroundVolumeID(), c.GetForegroundVolumeID()))
        return True

    out = logic.register(  # the control's DRR node and C-arm reused for the first X-ray
        ct, first, transform, alone.drr_node, alone.camera_model_node, sliceLogic=red, secondXray=second, progress=progress, **RUN
    )
    after = slicer.util.arrayFromTransformMatrix(transform)
    assert _body_tre_mm(ct, after) < 1.0, f"left: {_body_tre_mm(ct, after):.3f} mm\n{after}"
    assert out.loss < out.initial_loss and len(out.view_losses) == 2
    assert sum(out.view_losses) == pytest.approx(out.loss, rel=1e-6)
    assert out.xray_nodes == [first, second] and out.drr_nodes[0] is out.drr_node is alone.drr_node and out.overlay_updates > 2
    drr1, drr2 = out.drr_nodes
    assert during[0][0] == second.GetID() and during[-1] == (second.GetID(), drr2.GetID())
    assert yellow.GetSliceCompositeNode().GetForegroundVolumeID() == drr2.GetID()
    assert red.GetSliceCompositeNode().GetForegroundVolumeID() == drr1.GetID()
    assert [m.GetName() for m in out.camera_model_nodes] == ["xray C-arm", "lateral C-arm"]
    for xray, drr in ((first, drr1), (second, drr2)):
        np.testing.assert_allclose(ijk_to_ras(drr), detector_ras_from_ijk(cameras_from_node(xray)), atol=1e-6)
        again = registration.update_drr(ct, xray)  # the CT read again under the registered transform
        expected = slicer.util.arrayFromVolume(again)[0]
        np.testing.assert_allclose(slicer.util.arrayFromVolume(drr)[0], expected, rtol=1e-4, atol=2e-4 * expected.max())
        slicer.mrmlScene.RemoveNode(again)
    report = logic.registrationReport(out)
    assert "'xray'" in report and "'lateral'" in report and f"{out.view_losses[1]:.4f}" in report
    logic.revert()
    np.testing.assert_allclose(slicer.util.arrayFromTransformMatrix(transform), start, atol=1e-12)
    assert _view_state(red) == before["red"] and _view_state(yellow) == before["yellow"]


# -- bad sets: one typed error naming the X-ray, the scene as it was ---------------------------------------------
def _scene_state(ct, transform, *views) -> tuple:
    return (
        slicer.mrmlScene.GetNumberOfNodes(),
        ct.GetTransformNodeID(),
        slicer.util.arrayFromTransformMatrix(transform).round(12).tolist(),
        [_view_state(v) for v in views],
    )


def _elsewhere(module):
    """An X-ray whose C-arm looks at a point 40 cm above the CT: it does not see the CT."""
    T = module.XRayNeRFRegistrationTest
    cams = T._cameras(cols=16, rows=16, spacing=3.0, primary=-60.0, secondary=0.0, iso=(0.0, 0.0, 400.0))
    return T._imageNode("elsewhere", np.random.default_rng(0).random((16, 16)).astype(np.float32), cams)


@pytest.mark.parametrize(
    "case, reason, name",
    [("no camera", "no-camera", "lateral"), ("twice", "duplicate", "xray"), ("elsewhere", "no-overlap", "elsewhere")],
)
def test_bad_xray_sets_name_the_node_and_change_nothing(core, module, case, reason, name):
    """A second X-ray without camera, the first X-ray given twice, a second X-ray that does not see the CT: one
    XRayViewError whose name is the node's and whose view is its place in the set; no node added, the CT's parent,
    its transform and both slice views as they were, nothing pending."""
    from XRayNeRFLib.errors import XRayViewError

    red, yellow = slicer_harness.add_slice_view(core, "Red"), slicer_harness.add_slice_view(core, "Yellow")
    ct, first, second, transform, _cams = _biplane_scene(module, _start(), camera=case != "no camera")
    other = {"no camera": second, "twice": first, "elsewhere": _elsewhere(module)}[case]
    logic = module.XRayNeRFRegistrationLogic()
    before = _scene_state(ct, transform, red, yellow)
    with pytest.raises(XRayViewError) as error:
        logic.register(ct, first, transform, sliceLogic=red, secondXray=other, secondSliceLogic=yellow, **RUN)
    assert (error.value.reason, error.value.name, error.value.view) == (reason, name, 1)
    assert f"'{name}'" in str(error.value) and "\n" not in str(error.value)
    assert _scene_state(ct, transform, red, yellow) == before and not logic.hasPendingResult()


def test_a_failure_during_the_run_restores_both_views(core, module):
    """An error raised while the optimiser runs (here by the progress callback): both DRR nodes and C-arm models made
    for the run removed, both slice views, the CT's parent and its transform as they were."""
    red, yellow = slicer_harness.add_slice_view(core, "Red"), slicer_harness.add_slice_view(core, "Yellow")
    ct, first, second, transform, _cams = _biplane_scene(module, _start())
    logic = module.XRayNeRFRegistrationLogic()
    before = _scene_state(ct, transform, red, yellow)
    seen = []

    def failing(p):
        seen.append(yellow.GetSliceCompositeNode().GetBackgroundVolumeID())
        raise RuntimeError("simulated failure in the optimiser")

    with pytest.raises(RuntimeError, match="simulated"):
        logic.register(ct, first, transform, sliceLogic=red, secondXray=second, secondSliceLogic=yellow, progress=failing, **RUN)
    assert seen == [second.GetID()]  # the second overlay was on screen
    assert _scene_state(ct, transform, red, yellow) == before and not logic.hasPendingResult()


# -- the panel ---------------------------------------------------------------------------------------------
def _widget(module):
    return slicer_harness.module_widget(module, "XRayNeRFRegistration")


@pytest.fixture
def short_engine(monkeypatch):
    """The engine's register, recorded and shortened (one level, 8 iterations, one thread)."""
    import XRayNeRFLib.registration as engine

    real, calls = engine.register, []

    def short(volume, image, cameras, settings=None, **kwargs):
        calls.append(dict(kwargs, image=image, cameras=cameras, settings=settings))
        return real(volume, image, cameras, settings, **dict(kwargs, levels=(2,), max_iterations=8, num_threads=1))

    monkeypatch.setattr(engine, "register", short)
    return calls


def test_panel_biplane_option_reaches_the_layer(core, module, short_engine):
    """The panel's 'Register to both X-rays (biplane)': without a usable second X-ray Apply is off with the reason
    (the first X-ray's tools stay on); with it, Apply registers both X-ray nodes (each image and camera to the engine),
    the second overlay is in the Yellow view (after Show overlay too), the status line gives each X-ray's loss, the
    second DRR and C-arm are stored on the parameter node and reused; Revert gives the Yellow view back. mNeRF with
    biplane is refused."""
    from XRayNeRFMRML.nodes import cameras_from_node

    red, yellow = slicer_harness.add_slice_view(core, "Red"), slicer_harness.add_slice_view(core, "Yellow")
    yellowBefore = _view_state(yellow)
    ct, first, second, transform, cams = _biplane_scene(module, _start())
    bare = _biplane_scene(module, _start(), camera=False)[2]
    widget = _widget(module)
    ui, p = widget.ui, widget._parameterNode
    p.inputVolume, p.xrayVolume, p.transform, p.similarity = ct, first, transform, "ncc"
    assert ui.applyButton.enabled and not p.biplane
    for chosen, says in ((None, "Biplane: choose"), (first, "two different X-rays"), (bare, "no camera geometry")):
        p.secondXray, p.biplane = chosen, True
        assert not ui.applyButton.enabled and says in ui.statusLabel.text
        assert ui.previewButton.enabled and ui.nudgePlusXButton.enabled  # the first X-ray's tools
    p.secondXray, p.useMnerf = second, True
    assert not ui.applyButton.enabled and "untick 'mNeRF' or 'biplane'" in ui.statusLabel.text
    n = slicer.mrmlScene.GetNumberOfNodes()
    with pytest.raises(ValueError, match="untick 'mNeRF' or 'biplane'"):
        widget.logic.registerUsingParameterNode(p)
    assert not short_engine and slicer.mrmlScene.GetNumberOfNodes() == n and ct.GetTransformNodeID() is None
    p.useMnerf = False
    assert ui.applyButton.enabled
    widget.logic.previewUsingParameterNode(p)  # Show overlay: both X-rays' DRRs at the start pose
    composite = yellow.GetSliceCompositeNode()
    assert (composite.GetBackgroundVolumeID(), composite.GetForegroundVolumeID()) == (second.GetID(), p.secondOutputDRR.GetID())
    widget.onApplyButton()
    (call,) = short_engine
    assert [tuple(i.shape) for i in call["image"]] == [(32, 32), (24, 28)]
    assert torch.equal(call["image"][1], torch.from_numpy(slicer.util.arrayFromVolume(second)[0]))
    assert torch.allclose(call["cameras"][1].world_from_camera, cams.world_from_camera)
    assert torch.allclose(call["cameras"][0].world_from_camera, cameras_from_node(first).world_from_camera)
    out = widget.logic._pending
    assert [p.secondOutputDRR, p.secondCameraModel] == [out.drr_nodes[1], out.camera_model_nodes[1]]
    assert (composite.GetBackgroundVolumeID(), composite.GetForegroundVolumeID()) == (second.GetID(), p.secondOutputDRR.GetID())
    assert red.GetSliceCompositeNode().GetForegroundVolumeID() == p.outputDRR.GetID()
    status = ui.statusLabel.text
    assert "Per X-ray: 'xray'" in status and f"'lateral' {out.view_losses[1]:.4f}" in status and "Accept or Revert" in status
    widget.onRevertButton()
    assert _view_state(yellow) == yellowBefore
    np.testing.assert_allclose(slicer.util.arrayFromTransformMatrix(transform), _start(), atol=1e-12)
    ids = (p.secondOutputDRR.GetID(), p.secondCameraModel.GetID())
    widget.onApplyButton()
    widget.onAcceptButton()
    assert (p.secondOutputDRR.GetID(), p.secondCameraModel.GetID()) == ids  # reused
    assert composite.GetBackgroundVolumeID() == second.GetID() and not widget.logic.restoreView()  # kept on screen
    p.biplane = False  # one view again: the engine gets one X-ray
    widget.onApplyButton()
    assert len(short_engine[-1]["image"]) == 1


def test_nett_applies_to_both_views_and_intrinsics_refinement_is_refused(core, module, monkeypatch, tmp_path):
    """Biplane with 'Apply NeTT': the engine gets the NeTT model and both X-rays. With 'Refine intrinsics' the engine
    refuses two X-rays (its rule: one camera's intrinsics) and the scene, the transform and both views stay."""
    import XRayNeRFLib.registration as engine
    from XRayNeRFLib.registration.nett import NeTT, save_nett

    red, yellow = slicer_harness.add_slice_view(core, "Red"), slicer_harness.add_slice_view(core, "Yellow")
    ct, first, second, transform, _cams = _biplane_scene(module, _start())
    logic = module.XRayNeRFRegistrationLogic()
    p = logic.getParameterNode()
    p.inputVolume, p.xrayVolume, p.transform, p.secondXray, p.biplane = ct, first, transform, second, True
    save_nett(NeTT(hidden=16), str(tmp_path / "w.pt"))
    p.applyNett, p.nettWeightsPath = True, str(tmp_path / "w.pt")
    before = _scene_state(ct, transform, red, yellow)
    real, calls = engine.register, []

    def stopped(volume, image, cameras, settings=None, **kwargs):
        calls.append(dict(kwargs, image=image))
        raise RuntimeError("stopped after the call")

    monkeypatch.setattr(engine, "register", stopped)
    with pytest.raises(RuntimeError, match="stopped after the call"):
        logic.registerUsingParameterNode(p, sliceLogic=red, secondSliceLogic=yellow)
    assert isinstance(calls[0]["appearance"], NeTT) and len(calls[0]["image"]) == 2
    assert _scene_state(ct, transform, red, yellow) == before
    monkeypatch.setattr(engine, "register", real)
    p.applyNett, p.refineIntrinsics = False, True
    with pytest.raises(ValueError, match="refine_intrinsics works with one X-ray"):
        logic.registerUsingParameterNode(p, sliceLogic=red, secondSliceLogic=yellow)
    assert _scene_state(ct, transform, red, yellow) == before and not logic.hasPendingResult()
