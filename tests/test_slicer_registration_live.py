"""The live overlay under manual alignment (Registration module) on a real MRML scene (slicer-core): a change of
the CT's transform gives one throttled re-render with the pixels of an independent render (the camera moved
instead of the CT), bursts coalesce, coarse while moving and full size at rest, removing a node or closing the
module stops it; the nudge buttons' motion; the coalescing rule itself in plain Python; the Qt timer adapter."""

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

slicer_harness.install()
from XRayNeRFMRML.throttle import CoalescingRenderer, ManualTimer  # noqa: E402


@pytest.fixture(scope="module")
def module():
    return slicer_harness.load_module("XRayNeRFRegistration")


class Timers:
    """A ManualTimer factory that keeps the timers: [0] the throttle, [1] the idle timer of each overlay."""

    def __init__(self):
        self.made = []

    def __call__(self, callback):
        self.made.append(ManualTimer(callback))
        return self.made[-1]

    @property
    def throttle(self):
        return self.made[-2]

    @property
    def idle(self):
        return self.made[-1]


def _pose(rotation_deg=(0.0, 0.0, 0.0), translation_mm=(0.0, 0.0, 0.0)) -> np.ndarray:
    from XRayNeRFMRML.manual_pose import rotation_about

    m = np.eye(4)
    for axis, angle in zip(np.eye(3), rotation_deg):
        m[:3, :3] = rotation_about(axis, angle) @ m[:3, :3]
    m[:3, 3] = translation_mm
    return m


def _set(transform, matrix) -> None:
    transform.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(matrix))


def _reference_drr(ct, xray, world_from_ct_parent: np.ndarray, factor: int = 1) -> np.ndarray:
    """The DRR of the CT moved by ``world_from_ct_parent``, computed the other way round: the unmoved CT
    (its array and IJK-to-RAS) seen from the camera moved by the inverse motion, trilinear (the overlay's)."""
    import torch

    from XRayNeRFLib.geometry import Cameras
    from XRayNeRFLib.render import render
    from XRayNeRFLib.volume import Volume, hu_to_mu
    from XRayNeRFMRML.nodes import cameras_from_node, ijk_to_ras

    cams = cameras_from_node(xray)
    w = torch.from_numpy(np.linalg.inv(world_from_ct_parent)) @ cams.world_from_camera[0]
    moved = Cameras(w[None], cams.sdd_mm, cams.pixel_spacing_mm, cams.principal_point_px, cams.size_px).downsampled(factor)
    hu = torch.from_numpy(np.array(slicer.util.arrayFromVolume(ct), dtype=np.float64))
    volume = Volume(hu_to_mu(hu), torch.from_numpy(ijk_to_ras(ct)), "mu")
    return render(volume, moved, renderer="trilinear")[0].numpy()


def _start(core, module, shift=(0.0, 0.0, 0.0), **options):
    T = module.XRayNeRFRegistrationTest
    ct, xray, transform = T._registrationScene(T, np.array(shift))
    timers = Timers()
    logic = module.XRayNeRFRegistrationLogic()
    red = slicer_harness.add_slice_view(core, "Red")
    live = logic.startLiveOverlay(ct, xray, transform, sliceLogic=red, makeTimer=timers, **options)
    return logic, live, (ct, xray, transform), timers, red


# -- the coalescing rule (plain Python) ------------------------------------------------------------------------
def test_coalescing_rule_one_change_burst_drag_and_close():
    clock = [0.0]
    timers = Timers()
    renders = []
    c = CoalescingRenderer(renders.append, timers, interval_s=0.05, idle_s=0.3, clock=lambda: clock[0])
    throttle, idle = timers.made
    c.changed()  # one change after a pause: one full-size render
    assert throttle.active and throttle.delay_s == 0.05 and not renders
    assert throttle.fire() and renders == [False] and not idle.active
    clock[0] = 10.0  # a pause longer than idle_s, then a burst of 25 changes within one window
    for _ in range(25):
        c.changed()
    assert throttle.starts == [0.05, 0.05] and c.pending == 25
    throttle.fire()
    assert renders == [False, False] and c.pending == 0 and not throttle.fire()
    clock[0] = 10.1  # still moving (a render 0.1 s ago): coarse, then full size once at rest
    c.changed()
    throttle.fire()
    assert renders == [False, False, True] and idle.active and idle.delay_s == 0.3
    clock[0] = 10.2
    c.changed()  # a change during the idle wait cancels it
    assert not idle.active
    throttle.fire()
    assert renders[-1] is True and idle.active
    assert idle.fire() and renders == [False, False, True, True, False]
    clock[0] = 10.25  # after the rest render the next change is full size again
    c.changed()
    throttle.fire()
    assert renders[-1] is False
    c.changed()
    c.close()
    assert not throttle.active and not idle.active and not throttle.fire()
    c.changed()
    assert not throttle.active and len(renders) == 6 and c.renders == renders
    with pytest.raises(ValueError, match="idle_s"):
        CoalescingRenderer(renders.append, Timers(), idle_s=0.0)


def test_a_render_slower_than_idle_s_does_not_make_the_drag_full_size():
    """ "Still moving" counts from the end of the previous render: a full-size render that takes longer than
    idle_s (a large detector) is followed by coarse ones while the changes go on; an asynchronous renderer reports
    the end with render_ended()."""
    clock = [0.0]
    timers = Timers()
    renders = []

    def slow_render(coarse):  # the clock moves on while rendering: 1 s full size, 0.05 s coarse
        renders.append(coarse)
        clock[0] += 0.05 if coarse else 1.0

    c = CoalescingRenderer(slow_render, timers, interval_s=0.05, idle_s=0.3, clock=lambda: clock[0])
    throttle, idle = timers.made
    c.changed()
    throttle.fire()
    clock[0] += 0.06  # the next change came in during the render: the throttle fires just after it
    c.changed()
    throttle.fire()
    assert renders == [False, True] and idle.active
    # an asynchronous renderer (the callback only starts the render): the end is reported later
    clock[0], started = 100.0, []
    a = CoalescingRenderer(started.append, Timers(), interval_s=0.0, idle_s=0.3, clock=lambda: clock[0])
    a.changed()
    a.throttle_timer.fire()
    clock[0] += 1.0  # the full-size render ends 1 s later
    a.render_ended()
    clock[0] += 0.1
    a.changed()
    a.throttle_timer.fire()
    assert started == [False, True]
    clock[0] += 0.5  # a pause longer than idle_s after the coarse render ended (the idle timer not fired)
    a.render_ended()  # the coarse one ended
    clock[0] += 0.5
    a.changed()
    a.throttle_timer.fire()
    assert started == [False, True, False]


# -- real MRML ------------------------------------------------------------------------------------------
def test_transform_change_gives_one_throttled_update_with_the_right_pixels(core, module):
    """One change of the CT's transform: nothing renders until the throttle fires, then exactly one full-size
    update whose pixels equal the unmoved CT seen from the inversely moved camera; the overlay shows that node."""
    logic, live, (ct, xray, transform), timers, red = _start(core, module)
    start_drr = slicer.util.arrayFromVolume(live.drr_node)[0].copy()
    np.testing.assert_allclose(start_drr, _reference_drr(ct, xray, np.eye(4)), rtol=1e-4, atol=1e-4 * start_drr.max())
    assert red.GetSliceCompositeNode().GetForegroundVolumeID() == live.drr_node.GetID()
    assert red.GetSliceCompositeNode().GetBackgroundVolumeID() == xray.GetID()
    motion = _pose((4.0, -3.0, 6.0), (5.0, -4.0, 3.0))
    _set(transform, motion)
    assert timers.throttle.active and live.updates == []
    assert np.array_equal(slicer.util.arrayFromVolume(live.drr_node)[0], start_drr)  # not yet: throttled
    timers.throttle.fire()
    assert live.updates == [False] and not timers.idle.active
    drr = slicer.util.arrayFromVolume(live.drr_node)[0]
    reference = _reference_drr(ct, xray, motion)
    assert np.abs(reference - start_drr).max() > 0.2 * reference.max()  # the motion changes the picture
    np.testing.assert_allclose(drr, reference, rtol=1e-4, atol=1e-4 * reference.max())
    assert not timers.throttle.fire() and live.updates == [False]  # no second update
    live.stop()


def test_burst_coalesces_and_drag_is_coarse_until_rest(core, module):
    """20 changes in one window: one update, at the last pose. Moving on (within idle_s): a coarse update on the
    binned detector (node geometry and pixels of the binned camera); at rest: one full-size update."""
    from XRayNeRFMRML.nodes import cameras_from_node, detector_ras_from_ijk, ijk_to_ras

    logic, live, (ct, xray, transform), timers, red = _start(core, module, idle_s=60.0, coarse_factor=4)
    for k in range(20):
        _set(transform, _pose((0.0, 0.0, 0.5 * k), (0.3 * k, 0.0, -0.2 * k)))
    assert timers.throttle.starts == [0.05]
    timers.throttle.fire()
    assert live.updates == [False]
    last = _pose((0.0, 0.0, 9.5), (5.7, 0.0, -3.8))
    np.testing.assert_allclose(slicer.util.arrayFromVolume(live.drr_node)[0], _reference_drr(ct, xray, last), rtol=1e-4, atol=1e-4)
    drag = _pose((0.0, 0.0, 12.0), (8.0, 0.0, -5.0))
    _set(transform, drag)
    timers.throttle.fire()
    assert live.updates == [False, True] and timers.idle.active
    coarse = slicer.util.arrayFromVolume(live.drr_node)[0]
    assert coarse.shape == (8, 8)
    binned = cameras_from_node(xray).downsampled(4)
    np.testing.assert_allclose(ijk_to_ras(live.drr_node), detector_ras_from_ijk(binned), atol=1e-6)
    reference = _reference_drr(ct, xray, drag, factor=4)
    np.testing.assert_allclose(coarse, reference, rtol=1e-4, atol=1e-4 * reference.max())
    assert timers.idle.fire()
    assert live.updates == [False, True, False]
    full = slicer.util.arrayFromVolume(live.drr_node)[0]
    assert full.shape == (32, 32)
    np.testing.assert_allclose(full, _reference_drr(ct, xray, drag), rtol=1e-4, atol=1e-4)
    live.stop()


@pytest.mark.parametrize("which", ["ct", "xray", "drr", "scene-close"])
def test_removing_a_node_stops_updates(core, module, which):
    """Removing the CT, the X-ray or the DRR node (or closing the scene) stops the overlay: a pending render is
    dropped, later changes schedule nothing, the Logic reports no live overlay."""
    logic, live, (ct, xray, transform), timers, red = _start(core, module)
    _set(transform, _pose(translation_mm=(3.0, 0.0, 0.0)))
    assert timers.throttle.active
    if which == "scene-close":
        slicer.mrmlScene.Clear(0)
    else:
        slicer.mrmlScene.RemoveNode({"ct": ct, "xray": xray, "drr": live.drr_node}[which])
    assert not live.active and logic.liveOverlay is None
    assert not timers.throttle.fire()
    _set(transform, _pose(translation_mm=(6.0, 0.0, 0.0)))
    assert not timers.throttle.active and live.updates == []
    assert not logic.stopLiveOverlay()


def test_stop_and_widget_cleanup_leave_no_updates(core, module):
    """The Widget's checkbox starts the overlay; unticking stops it; the module's cleanup stops a running one."""
    from test_slicer_registration import _widget

    T = module.XRayNeRFRegistrationTest
    red = slicer_harness.add_slice_view(core, "Red")
    ct, xray, transform = T._registrationScene(T, np.zeros(3))
    widget = _widget(module)
    p = widget._parameterNode
    p.inputVolume, p.xrayVolume, p.transform = ct, xray, transform
    timers = Timers()
    live = widget.onLiveOverlayToggled(True, sliceLogic=red, makeTimer=timers)
    assert live is widget.logic.liveOverlay and p.outputDRR is live.drr_node and "Live overlay on" in widget.ui.statusLabel.text
    events = [
        (ct, slicer.vtkMRMLTransformableNode.TransformModifiedEvent),
        (ct, slicer.vtkMRMLVolumeNode.ImageDataModifiedEvent),
        (slicer.mrmlScene, slicer.mrmlScene.NodeAboutToBeRemovedEvent),
    ]
    assert all(obj.HasObserver(event) for obj, event in events)  # the overlay's observers (none else here)
    widget.onLiveOverlayToggled(False)
    assert not live.active and widget.logic.liveOverlay is None
    assert not any(obj.HasObserver(event) for obj, event in events)  # removed: no leak
    live = widget.onLiveOverlayToggled(True, sliceLogic=red, makeTimer=timers)
    _set(transform, _pose(translation_mm=(2.0, 0.0, 0.0)))
    widget.cleanup()
    assert not live.active and not timers.throttle.fire() and live.updates == []
    _set(transform, _pose(translation_mm=(4.0, 0.0, 0.0)))
    assert not timers.throttle.active


def test_nudges_move_along_and_about_the_detector_axes(core, module):
    """A translation nudge moves the CT's centre by the step along the camera axis (world RAS); a rotation nudge
    about z keeps the centre and turns the camera's x axis onto its y axis; each nudge is one live update."""
    from XRayNeRFMRML.manual_pose import detector_axes_ras
    from XRayNeRFMRML.nodes import cameras_from_node

    logic, live, (ct, xray, transform), timers, red = _start(core, module, shift=(1.0, -2.0, 3.0))
    p = logic.getParameterNode()
    p.inputVolume, p.xrayVolume, p.transform = ct, xray, transform
    p.nudgeTranslationMm, p.nudgeRotationDeg = 2.5, 45.0
    axes = detector_axes_ras(cameras_from_node(xray))
    np.testing.assert_allclose(axes @ axes.T, np.eye(3), atol=1e-9)
    centre = logic.volumeCentreRas(ct)
    logic.nudgeUsingParameterNode(p, "x", translationSteps=-2)
    np.testing.assert_allclose(logic.volumeCentreRas(ct), centre - 5.0 * axes[0], atol=1e-9)
    timers.throttle.fire()
    assert live.updates == [False]
    before = slicer.util.arrayFromTransformMatrix(transform)
    logic.nudgeUsingParameterNode(p, "z", rotationSteps=2)  # 90 degrees
    after = slicer.util.arrayFromTransformMatrix(transform)
    motion = after @ np.linalg.inv(before)  # the world motion (no parent above the transform)
    c = centre - 5.0 * axes[0]
    np.testing.assert_allclose(motion[:3, :3] @ c + motion[:3, 3], c, atol=1e-9)
    np.testing.assert_allclose(motion[:3, :3] @ axes[0], axes[1], atol=1e-12)
    with pytest.raises(ValueError, match="unknown detector axis"):
        logic.nudge(ct, xray, transform, "w", translationMm=1.0)
    np.testing.assert_allclose(slicer.util.arrayFromTransformMatrix(transform), after)
    live.stop()


def test_registration_pauses_the_live_overlay(core, module):
    """While the optimiser runs the live overlay renders nothing (the run updates the DRR itself); afterwards it
    runs again on the same nodes, and the transform changes from the run scheduled nothing on the old one."""
    logic, live, (ct, xray, transform), timers, red = _start(core, module, shift=(2.0, 0.0, 0.0))
    out = logic.register(ct, xray, transform, live.drr_node, sliceLogic=red, levels=(2,), max_iterations=3, loss="ncc")
    assert not live.active and live.updates == [] and not timers.made[0].active
    resumed = logic.liveOverlay
    assert resumed is not None and resumed is not live and resumed.drr_node is live.drr_node is out.drr_node
    _set(transform, _pose(translation_mm=(1.0, 1.0, 0.0)))
    timers.throttle.fire()
    assert resumed.updates == [False]
    resumed.stop()


def test_qt_timer_adapter(module, monkeypatch):
    """QtSingleShotTimer: single shot, seconds -> milliseconds, stop, active from isActive, timeout -> callback."""
    calls = []

    class FakeQTimer:
        def __init__(self):
            self.single, self.ms, self.running, self.slots = None, None, False, []

        def setSingleShot(self, value):
            self.single = value

        def connect(self, signal, slot):
            self.slots.append((signal, slot))

        def start(self, ms):
            self.ms, self.running = ms, True

        def stop(self):
            self.running = False

        def isActive(self):
            return self.running

    monkeypatch.setattr(sys.modules["qt"], "QTimer", FakeQTimer, raising=False)
    timer = module.QtSingleShotTimer(lambda: calls.append(1))
    assert timer._timer.single is True and not timer.active
    timer.start(0.05)
    assert timer._timer.ms == 50 and timer.active
    timer.stop()
    assert not timer.active
    ((signal, slot),) = timer._timer.slots
    assert signal == "timeout()"
    slot()
    assert calls == [1]


def test_bad_input_starts_nothing_and_changes_nothing(core, module):
    """An X-ray without camera, or a CT that cannot be rendered: one error, the CT's parent, the node count and
    the Red view as they were, no live overlay."""
    T = module.XRayNeRFRegistrationTest
    ct, xray, transform = T._registrationScene(T, np.zeros(3))
    bare = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "no camera")
    slicer.util.updateVolumeFromArray(bare, np.ones((1, 4, 4), np.float32))
    red = slicer_harness.add_slice_view(core, "Red")
    logic = module.XRayNeRFRegistrationLogic()
    n = slicer.mrmlScene.GetNumberOfNodes()
    background = red.GetSliceCompositeNode().GetBackgroundVolumeID()
    with pytest.raises(ValueError, match="no camera geometry"):
        logic.startLiveOverlay(ct, bare, transform, sliceLogic=red, makeTimer=Timers())
    with pytest.raises(ValueError, match="opacity"):
        logic.startLiveOverlay(ct, xray, transform, sliceLogic=red, makeTimer=Timers(), opacity=2.0)
    assert slicer.mrmlScene.GetNumberOfNodes() == n and ct.GetTransformNodeID() is None
    assert red.GetSliceCompositeNode().GetBackgroundVolumeID() == background and logic.liveOverlay is None


def test_widget_nudges_and_input_change_stop_the_overlay(core, module):
    """The Widget's nudge buttons move the CT by the parameter node's steps (one live update each); selecting
    another CT on the panel stops the live overlay and unticks its checkbox."""
    from test_slicer_registration import _widget

    from XRayNeRFMRML.manual_pose import detector_axes_ras
    from XRayNeRFMRML.nodes import cameras_from_node

    T = module.XRayNeRFRegistrationTest
    red = slicer_harness.add_slice_view(core, "Red")
    ct, xray, transform = T._registrationScene(T, np.zeros(3))
    widget = _widget(module)
    p = widget._parameterNode
    assert not widget.ui.nudgePlusXButton.enabled and not widget.ui.liveOverlayCheckBox.enabled
    p.inputVolume, p.xrayVolume, p.transform, p.nudgeTranslationMm = ct, xray, transform, 3.0
    assert widget.ui.nudgePlusXButton.enabled and widget.ui.rotateMinusZButton.enabled and widget.ui.liveOverlayCheckBox.enabled
    timers = Timers()
    widget.ui.liveOverlayCheckBox.checked = True
    live = widget.onLiveOverlayToggled(True, sliceLogic=red, makeTimer=timers)
    centre = widget.logic.volumeCentreRas(ct)
    widget.onNudge("y", 0, -1)  # "Up (-y)"
    y = detector_axes_ras(cameras_from_node(xray))[1]
    np.testing.assert_allclose(widget.logic.volumeCentreRas(ct), centre - 3.0 * y, atol=1e-9)
    timers.throttle.fire()
    assert live.updates == [False]
    other = T._ctNode(np.zeros((4, 4, 4)), np.eye(4))
    p.inputVolume = other  # the panel now names another CT
    assert not live.active and widget.logic.liveOverlay is None and widget.ui.liveOverlayCheckBox.checked is False


def test_widget_trains_nett_and_says_so(core, module, tmp_path):
    from test_slicer_registration import _widget

    T = module.XRayNeRFRegistrationTest
    ct, xray, transform = T._registrationScene(T, np.zeros(3))
    widget = _widget(module)
    p = widget._parameterNode
    p.inputVolume, p.xrayVolume, p.transform = ct, xray, transform
    assert not widget.ui.trainNettButton.enabled
    p.nettWeightsPath, p.nettIterations = str(tmp_path / "w.pt"), 2
    assert widget.ui.trainNettButton.enabled
    widget.onTrainNettButton()
    assert (tmp_path / "w.pt").is_file() and widget.ui.statusLabel.text.startswith("NeTT trained (2 iterations")
    assert widget.ui.applyButton.text == "Apply"


@pytest.mark.parametrize("threads", ["default", 2, None])
def test_renders_use_the_overlay_thread_count_and_give_the_process_its_own_back(core, module, monkeypatch, threads):
    """Each overlay render runs with the overlay's ``num_threads`` (default ``RENDER_THREADS``; None: the
    process's), and the process's count is the same after; a count below 1 is refused before anything starts."""
    import torch

    import XRayNeRFMRML.live_overlay as lo

    seen = []
    real = lo.render_image

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return real(*args, **kwargs)

    monkeypatch.setattr(lo, "render_image", spy)
    process = 3 if lo.RENDER_THREADS != 3 else 4  # differs from every count asked for
    before = torch.get_num_threads()
    torch.set_num_threads(process)
    try:
        options = {} if threads == "default" else {"num_threads": threads}
        logic, live, (ct, xray, transform), timers, red = _start(core, module, **options)
        _set(transform, _pose((2.0, 0.0, 0.0)))
        timers.throttle.fire()
        expected = {"default": lo.RENDER_THREADS, 2: 2, None: process}[threads]
        assert seen == [expected, expected] and live.updates == [False]  # the first render and the update
        assert torch.get_num_threads() == process
        live.stop()
        n = slicer.mrmlScene.GetNumberOfNodes()
        with pytest.raises(ValueError, match="thread count"):
            lo.LiveOverlay(ct, xray, num_threads=0)
        assert slicer.mrmlScene.GetNumberOfNodes() == n
    finally:
        torch.set_num_threads(before)
