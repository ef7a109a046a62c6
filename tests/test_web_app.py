"""The browser app's overlay and landmark plumbing in one process, without a browser: the real XRayNeRFWebApp (trame server not
started, its event loop run by the test), Slicer's core through trame-slicer, the sample data.

* an overlay update does not walk the data folder (a listing per update costs time in proportion to its files);
* Accept / Revert / a Load asked for while an overlay update is in flight wait for it, then apply in full: the
  pose they leave is the one the overlay showed, and the controls nudge that pose afterwards (no double nudge);
* the landmark start from point pairs in the two markups lists that clicks fill (clicks sent as the page sends them,
  through the views' trame-rca adapters; and the request -> layer route:
  XRayNeRFWeb/landmarks.py -> XRayNeRFMRML.landmarks), and the layer's messages on bad pairs.

One app for the module (building it and loading the sample take seconds); the tests run in file order.
"""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("trame_slicer", reason="pip install xraynerf[web] (trame-slicer)")

POSE_KEYS = ("rx", "ry", "rz", "tr", "ta", "ts")


class Harness:
    """The app on an event loop that runs only while the test awaits (``run``/``until``)."""

    def __init__(self, data_root: Path):
        from trame.app import get_server

        from XRayNeRFWeb.app import XRayNeRFWebApp
        from XRayNeRFWeb.datadir import DataDir
        from XRayNeRFWeb.jobs import JobRunner

        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self.data = DataDir(data_root, max_upload_bytes=2**20)

        async def build():
            server = get_server("xraynerf-test-overlay", client_type="vue3")
            app = XRayNeRFWebApp(server, self.data, runner=JobRunner(asyncio.get_running_loop()))
            server.state.ready()  # the pose controls' change callbacks run (as once the page is connected)
            return app

        self.app = self.loop.run_until_complete(build())

    def until(self, condition, timeout_s: float = 120.0) -> None:
        async def wait():
            deadline = self.loop.time() + timeout_s
            while not condition():
                if self.loop.time() > deadline:
                    raise AssertionError("timed out waiting on the app")
                await asyncio.sleep(0.005)

        self.loop.run_until_complete(wait())

    def idle(self, settle_s: float = 0.0) -> None:
        """No job runs and none waits (after ``settle_s`` more seconds of the loop: timers of the throttle)."""
        app = self.app
        self.until(lambda: app.runner.job is None and app._waiting is None and app._deferred is None)
        if settle_s:
            self.loop.run_until_complete(asyncio.sleep(settle_s))
            self.until(lambda: app.runner.job is None and app._waiting is None and app._deferred is None)

    def set_controls(self, **values) -> None:
        """The page moving the pose controls (the state's change callbacks, as a websocket update runs them)."""
        with self.app.state:
            for key, value in values.items():
                self.app.state[key] = float(value)


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    import slicer

    # the app publishes its scene and application as slicer.mrmlScene / slicer.app (XRayNeRFWeb.runtime.bind):
    # put the process's back afterwards, so that later test modules get the Slicer harness's
    before = (getattr(slicer, "app", None), getattr(slicer, "mrmlScene", None))
    h = Harness(tmp_path_factory.mktemp("web-data"))
    try:
        h.app.load_sample_registration()
        h.idle(settle_s=0.5)
        assert h.app.state.reg_ready and h.app.session.overlay_updates >= 1, h.app.state.message
        yield h
    finally:
        h.app.overlay_throttle.close()
        h.loop.close()
        slicer.app, slicer.mrmlScene = before


def controls(app) -> dict:
    return {k: float(app.state[k]) for k in POSE_KEYS}


def expected_pose(app, **controls_now) -> np.ndarray:
    """The CT's pose the controls give: the session's base nudged by them (XRayNeRFWeb.pose.nudged)."""
    from XRayNeRFWeb.pose import nudged

    c = {k: 0.0 for k in POSE_KEYS} | controls_now
    return nudged(app.session.base, app.session.ct_centre_local(), [c["rx"], c["ry"], c["rz"]], [c["tr"], c["ta"], c["ts"]])


# -- the data folder is not walked by an overlay update ------------------------------------------------------
class FolderWalks:
    """Counts directory listings (os.scandir / os.listdir / os.walk / Path.iterdir / glob / rglob) of paths under
    ``root`` while installed."""

    def __init__(self, monkeypatch, root: Path):
        self.root, self.calls = str(root), []
        for module, name in ((os, "scandir"), (os, "listdir"), (os, "walk")):
            monkeypatch.setattr(module, name, self._counting(getattr(module, name), name))
        for name in ("iterdir", "glob", "rglob"):
            monkeypatch.setattr(Path, name, self._counting(getattr(Path, name), f"Path.{name}"))

    def _counting(self, fn, name):
        def counted(path=".", *args, **kwargs):
            if str(path).startswith(self.root):
                self.calls.append((name, str(path)))
            return fn(path, *args, **kwargs)

        return counted


def test_an_overlay_update_does_not_walk_the_data_folder(harness, monkeypatch):
    app = harness.app
    for i in range(300):  # a folder with many files: a listing per update would cost in proportion
        (harness.data.root / f"file_{i:03d}.nii.gz").write_bytes(b"x")
    walks = FolderWalks(monkeypatch, harness.data.root)
    app.data.listing()  # the counter sees a listing of the folder (so that the test below can fail)
    assert walks.calls, "the folder walk counter counts nothing"
    walks.calls.clear()
    n = app.session.overlay_updates
    harness.set_controls(tr=1.0)  # a pose control moved: the throttle, the overlay job, its end, the views
    harness.until(lambda: app.session.overlay_updates > n)
    harness.set_controls(tr=1.5)
    harness.idle(settle_s=0.5)  # the coarse update and the full-size one at rest
    assert app.session.overlay_updates >= n + 2
    assert walks.calls == [], f"an overlay update listed the data folder: {walks.calls[:4]}"
    np.testing.assert_allclose(app.session.transform_matrix(), expected_pose(app, tr=1.5), atol=1e-9)
    harness.set_controls(tr=0.0)
    harness.idle(settle_s=0.5)


# -- Accept / Revert / Load while an overlay update is in flight ---------------------------------------------
def in_flight_overlay(harness, **controls_now) -> None:
    """Move the controls and return while the overlay update they started is still running."""
    app = harness.app
    harness.set_controls(**controls_now)
    harness.until(lambda: app.runner.job is not None and app.runner.job.kind == "overlay")


def registered(harness) -> None:
    """A registration (cancelled after its first steps: the best pose so far is kept) awaiting Accept / Revert."""
    app = harness.app
    harness.idle(settle_s=0.4)
    app.register(app.state.loss, app.state.opacity)
    harness.until(lambda: app.runner.job is not None and app.runner.job.fraction > 0)
    app.cancel()
    harness.idle()
    assert app.state.reg_pending, app.state.message


def test_accept_during_an_overlay_update_waits_then_keeps_the_pose_shown(harness):
    app = harness.app
    registered(harness)
    registered_pose = app.session.transform_matrix()
    in_flight_overlay(harness, tr=3.0)
    app.accept()
    assert "waiting for the overlay update" in app.state.message
    assert app.state.reg_pending and app.session.registration_output is not None  # nothing applied yet
    harness.idle(settle_s=0.5)
    assert not app.state.reg_pending and app.state.message.startswith("Accepted"), app.state.message
    accepted = app.session.transform_matrix()
    from XRayNeRFWeb.pose import nudged

    shown = nudged(registered_pose, app.session.ct_centre_local(), [0, 0, 0], [3.0, 0, 0])
    np.testing.assert_allclose(accepted, shown, atol=1e-9)  # the pose the overlay showed when Accept was pressed
    np.testing.assert_allclose(app.session.base, accepted, atol=1e-12)
    assert controls(app) == {k: 0.0 for k in POSE_KEYS}  # the controls start again from the accepted pose
    harness.set_controls(tr=1.0)  # one more nudge moves 1 mm from the accepted pose, not 4 (no double nudge)
    harness.idle(settle_s=0.5)
    one_more = nudged(accepted, app.session.ct_centre_local(), [0, 0, 0], [1, 0, 0])
    np.testing.assert_allclose(app.session.transform_matrix(), one_more, atol=1e-9)
    harness.set_controls(tr=0.0)
    harness.idle(settle_s=0.5)


def test_revert_during_an_overlay_update_waits_then_restores_the_pose_before_registration(harness):
    app = harness.app
    before = app.session.transform_matrix()
    registered(harness)
    assert np.abs(app.session.transform_matrix() - before).max() > 1e-6
    in_flight_overlay(harness, ta=2.0)
    app.revert()
    assert "waiting for the overlay update" in app.state.message and app.state.reg_pending
    harness.idle(settle_s=0.5)
    assert app.state.message.startswith("Reverted"), app.state.message
    np.testing.assert_allclose(app.session.transform_matrix(), before, atol=1e-9)
    assert controls(app) == {k: 0.0 for k in POSE_KEYS} and app.session.registration_output is None


def test_a_second_action_while_one_waits_is_refused_with_a_message(harness):
    app = harness.app
    in_flight_overlay(harness, ts=1.0)
    app.load_sample_ct()
    assert "waiting for the overlay update" in app.state.message
    app.accept()
    assert app.state.message.startswith("busy:"), app.state.message
    harness.idle(settle_s=0.5)
    assert app.state.message.startswith("Loaded the sample chest CT"), app.state.message


def test_a_load_during_an_overlay_update_waits_then_shows_the_new_inputs(harness):
    app = harness.app
    harness.idle(settle_s=0.4)
    old_ct = app.session.ct
    in_flight_overlay(harness, tr=2.0)
    app.load_sample_registration()
    assert "waiting for the overlay update" in app.state.message and app.session.ct is old_ct
    harness.idle(settle_s=0.5)
    assert app.session.ct is not old_ct and app.state.message.startswith("Loaded the sample"), app.state.message
    assert controls(app) == {k: 0.0 for k in POSE_KEYS}
    np.testing.assert_allclose(app.session.transform_matrix(), np.eye(4), atol=1e-12)  # a new CT starts unmoved
    assert app.session.overlay_renderer.matches(app.session.ct, app.session.xray)  # the overlay is of the new CT


# -- click-placed landmarks: the request -> layer path (XRayNeRFWeb/landmarks.py) ------------------------------
CT_POINTS = np.array([[-40.0, -25, 20], [35, -30, -15], [30, 35, 25], [-30, 30, -25], [5, -5, 40], [-10, 10, -35]])  # CT mm


def true_pairs(app):
    """The CT points (the CT's own frame + its transform now: world RAS mm) and the X-ray points (world RAS mm on
    the detector plane) where the sample CT at its true pose (the sample's setup, not a solve) projects them."""
    import torch

    from XRayNeRFMRML.nodes import cameras_from_node, ras_from_ijk_world, world_from_node

    h = np.c_[CT_POINTS + app.session.ct_centre_local(), np.ones(len(CT_POINTS))]
    ct_now = (world_from_node(app.session.ct) @ h.T).T[:, :3]
    at_truth = (app.session.sample_truth @ h.T).T[:, :3]
    uv = cameras_from_node(app.session.xray).project(torch.from_numpy(at_truth))[0][0].numpy()
    on_detector = (ras_from_ijk_world(app.session.xray) @ np.c_[uv, np.zeros(len(uv)), np.ones(len(uv))].T).T[:, :3]
    return ct_now, on_detector


def place(app, ct_world, xray_world) -> None:
    """Points as a click in place mode adds them: world positions into the active lists."""
    app.clear_landmarks()
    ct_list, xray_list = app.landmarks.lists()
    for p in ct_world:
        ct_list.AddControlPointWorld(*[float(v) for v in p])
    for p in xray_world:
        xray_list.AddControlPointWorld(*[float(v) for v in p])


def test_landmark_start_from_placed_pairs_moves_the_ct_to_the_true_pose_and_reports_the_error(harness):
    app = harness.app
    harness.idle(settle_s=0.4)
    before = app.session.transform_matrix()
    assert np.abs(before - app.session.sample_truth).max() > 1.0  # the start is off
    ct_world, xray_world = true_pairs(app)
    place(app, ct_world, xray_world)
    assert (app.state.lm_ct, app.state.lm_xray) == (6, 6)  # the page's counts follow the lists
    app.landmark_start()
    assert app.state.message.startswith("Landmark start from 6 pairs: reprojection error RMS 0.00 px"), app.state.message
    np.testing.assert_allclose(app.session.transform_matrix(), app.session.sample_truth, atol=1e-3)
    assert app.state.reg_pending and controls(app) == {k: 0.0 for k in POSE_KEYS}
    harness.idle(settle_s=0.5)
    np.testing.assert_allclose(app.session.transform_matrix(), app.session.sample_truth, atol=1e-3)  # the overlay kept it
    app.revert()  # as after a registration
    harness.idle(settle_s=0.5)
    np.testing.assert_allclose(app.session.transform_matrix(), before, atol=1e-9)


@pytest.mark.parametrize(
    "case, pattern",
    [
        ("three", "a pose needs at least 4"),
        ("collinear", "lie on one line"),
        ("off the detector", "off the X-ray's detector plane"),
        ("off the CT", "CT landmark 2 .* lies outside the CT"),
    ],
)
def test_bad_landmarks_give_the_layer_message_and_move_nothing(harness, case, pattern):
    app = harness.app
    harness.idle(settle_s=0.4)
    before = app.session.transform_matrix()
    ct_world, xray_world = true_pairs(app)
    if case == "three":
        ct_world, xray_world = ct_world[:3], xray_world[:3]
    elif case == "collinear":
        ct_world = ct_world[0] + np.outer(np.arange(5.0), ct_world[1] - ct_world[0]) / 4.0
        xray_world = xray_world[:5]
    elif case == "off the CT":  # a CT point clicked on the X-ray's plane
        ct_world = ct_world.copy()
        ct_world[2] = xray_world[2]
    else:
        normal = np.cross(xray_world[1] - xray_world[0], xray_world[2] - xray_world[0])
        xray_world = xray_world.copy()
        xray_world[2] += 5.0 * normal / np.linalg.norm(normal)  # 5 mm off the X-ray's plane
    place(app, ct_world, xray_world)
    app.landmark_start()
    assert re.search(pattern, app.state.message) and app.state.message_type == "error", app.state.message
    np.testing.assert_allclose(app.session.transform_matrix(), before, atol=1e-12)
    assert not app.state.reg_pending
    if case in ("off the detector", "off the CT"):  # the pair at fault is the only selected point of each list
        for node in app.landmarks.lists():
            assert [bool(node.GetNthControlPointSelected(i)) for i in range(node.GetNumberOfControlPoints())] == [i == 2 for i in range(6)]


def click(app, view_name: str, ras) -> None:
    """A left click where the page sends it (trame-rca's events: move, press, release, through the view's adapter)
    at the pixel of the slice view ``view_name`` nearest to the RAS point ``ras`` on its slice plane."""
    import slicer

    view = app.sa.view_manager.get_view(view_name)
    w, h = view.render_window().GetSize()
    logic = app.session.red if view_name == "Red" else app.session.green
    xy = np.linalg.inv(slicer.util.arrayFromVTKMatrix(logic.GetSliceNode().GetXYToRAS())) @ np.r_[ras, 1.0]
    assert abs(xy[2]) < 1e-3, "the point is not on the view's slice plane"
    x, y = (int(round(v)) for v in xy[:2])
    adapter = app.slice_views.get_factory_view(view_name).view_adapter
    for kind in ("MouseMove", "LeftButtonPress", "LeftButtonRelease"):
        event = dict(type=kind, x=x, y=y, w=w, h=h, ctrlKey=False, shiftKey=False, altKey=False, metaKey=False)
        adapter.on_interaction(None, event)


def test_clicked_pairs_in_the_two_views_give_the_true_start_pose(harness):
    """Clicks in the Green view (on the CT, its slice moved through each point) and in the Red view (on the X-ray)
    in place mode put the points where they are clicked (to the view's pixel), and the landmark start from them
    projects the CT where the sample's true pose does (to a pixel or two)."""
    app = harness.app
    harness.idle(settle_s=0.4)
    ct_world, xray_world = true_pairs(app)
    app.clear_landmarks()
    app.place_landmarks("ct")
    green = app.session.green.GetSliceNode()
    for p in ct_world:
        green.JumpSliceByOffsetting(*p)  # the coronal slice through the point, as a user scrolls to it
        click(app, "Green", p)
    app.place_landmarks("xray")
    for p in xray_world:
        click(app, "Red", p)
    assert (app.state.lm_ct, app.state.lm_xray) == (6, 6)
    ct_list, xray_list = app.landmarks.lists()
    for node, points in ((ct_list, ct_world), (xray_list, xray_world)):
        placed = np.array([node.GetNthControlPointPositionWorld(i) for i in range(6)])
        assert np.abs(placed - points).max() < 3.0  # within a view pixel or two (mm)
    app.landmark_start()
    assert app.state.message.startswith("Landmark start from 6 pairs"), app.state.message
    # one view fixes the CT's pose across the beam well and its depth poorly (a view pixel of click error scales
    # into millimetres along the beam): what the start must get right is where the CT projects on the X-ray, so
    # the landmarks projected at the solved pose and at the true pose must agree to a pixel or two
    import torch

    from XRayNeRFMRML.nodes import cameras_from_node

    local = np.c_[CT_POINTS + app.session.ct_centre_local(), np.ones(len(CT_POINTS))]
    cameras = cameras_from_node(app.session.xray)
    solved, truth = ((m @ local.T).T[:, :3] for m in (app.session.transform_matrix(), app.session.sample_truth))
    uv_solved, uv_truth = (cameras.project(torch.from_numpy(p))[0][0].numpy() for p in (solved, truth))
    shift_px = np.linalg.norm(uv_solved - uv_truth, axis=1)
    assert shift_px.max() < 2.0, f"the landmarks project {shift_px.max():.2f} px from where the true pose puts them"
    app.revert()
    harness.idle(settle_s=0.5)
