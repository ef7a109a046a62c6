"""The trame application: a panel with three tabs beside Slicer's Red and Green slice views and a 3D view.

Every button goes through :meth:`XRayNeRFWebApp._action`, which shows a refusal or an error as a message in
the page (element ``#message``) and keeps the server running. Long work (registration, reconstruction, DRR, each
overlay update) runs as a job (jobs.py); the page shows ``busy`` and a progress bar, pushed at ~10 Hz. The
buttons that change what the overlay shows (Accept, Revert, the Loads, Landmark start) wait for an overlay update
in flight and then apply (:meth:`XRayNeRFWebApp._after_overlay`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from pathlib import Path
from typing import Any, Callable, Optional

from .datadir import DataDir, UnsafePathError
from .jobs import BusyError, JobRunner
from .overlay import INTERVAL_S, LoopTimer
from .runtime import bind, use_headless_rendering
from .views import DragRendering, cheap_frames

log = logging.getLogger("XRayNeRFWeb")

POSE_KEYS = ("rx", "ry", "rz", "tr", "ta", "ts")


def _choices():
    from XRayNeRFMRML.choices import SIMILARITIES

    return SIMILARITIES


PUSH_INTERVAL_S = 0.1
# the views redrawn with each preview of a job (None: all); a reconstruction's preview is a slice: the 3D view (a
# volume rendering drawn on the CPU) is not redrawn 10 times a second for it
PREVIEW_VIEWS = {"reconstruction": ("Red", "Green")}
STILL_QUALITY = 90  # JPEG quality of the views (trame-rca's still quality)
UNCERTAINTY_COLORS = "vtkMRMLColorTableNodeRed"  # the uncertainty overlay's colour table (Slicer's default nodes)
UNCERTAINTY_OPACITY = 0.4


def _layout():
    from trame_slicer.views import Layout, LayoutDirection, ViewLayoutDefinition

    red = ViewLayoutDefinition.axial_view()
    green = ViewLayoutDefinition.coronal_view()
    threed = ViewLayoutDefinition.threed_view()
    return Layout(LayoutDirection.Horizontal, [red, Layout(LayoutDirection.Vertical, [threed, green])])


def _view_marker(name: str):
    """Per-view UI hook of trame-slicer: a marker element the tests find the view's image by."""

    def populate(server, view_id, view) -> None:
        from trame.widgets import html

        html.Div(classes=f"xr-view xr-view-{view.get_singleton_tag()}", style="display:none")

    return populate


class XRayNeRFWebApp:
    """The page on ``server`` over the data folder ``data``. runner: runs the page's jobs off the event loop
    (jobs.py; a new :class:`JobRunner` when None), attached to the server's loop when the server is ready."""

    def __init__(self, server, data: DataDir, runner: Optional[JobRunner] = None):
        from trame_slicer.core import LayoutManager, SlicerApp
        from trame_slicer.rca_view.rca_view_factory import RemoteSliceViewFactory, RemoteThreeDViewFactory

        use_headless_rendering()
        self.server, self.data = server, data
        self.state, self.ctrl = server.state, server.controller
        self.sa = SlicerApp()
        bind(self.sa)
        # trame-slicer's register_rca_factories, with the slice factory kept (the Red view's image size while dragging).
        # interactive quality = still quality: one render per change (llvmpipe renders are the server's main cost;
        # trame-rca's default renders each change twice, a quick JPEG then a sharper one); blur_fps None: a view
        # redraws at the target rate also when the mouse is not over it (the overlay's view, while a slider moves)
        options = dict(interactive_quality=STILL_QUALITY, target_fps=30.0, blur_fps=None)
        slices = RemoteSliceViewFactory(server, populate_view_ui_f=_view_marker("slice"), **options)
        self.sa.view_manager.register_factory(slices)
        self.slice_views = slices  # trame-slicer's factory of the slice views (their trame-rca adapters: the page's clicks)
        self.sa.view_manager.register_factory(RemoteThreeDViewFactory(server, populate_view_ui_f=_view_marker("3d"), **options))
        self.layout_manager = LayoutManager(self.sa.scene, self.sa.view_manager, server)
        self.layout_manager.register_layout("XRayNeRF", _layout())
        self.layout_manager.set_layout("XRayNeRF")
        cheap_frames(self.sa.view_manager)
        # while the pose controls move, only the Red view redraws, at a reduced image size
        self.drag = DragRendering(self.sa.view_manager, overlay_adapter=slices.get_factory_view("Red").view_adapter)
        from XRayNeRFMRML.throttle import CoalescingRenderer

        # the layer's timing rule (the Slicer module's): coarse while the controls move, full size once they rest
        self.overlay_throttle = CoalescingRenderer(self._throttled_overlay, LoopTimer, interval_s=INTERVAL_S)
        self.runner = runner if runner is not None else JobRunner()
        self._deferred = None  # (kind, work, done, message): a long job waiting for the running overlay update
        self._waiting = None  # (action name, args): a scene-changing action waiting for the overlay updates (_after_overlay)
        from .session import Session

        red = self.sa.app_logic.GetSliceLogicByLayoutName("Red")
        green = self.sa.app_logic.GetSliceLogicByLayoutName("Green")
        self.session = Session(self.sa, data, red, green)
        self._init_state()
        self._init_landmarks()
        self._build_ui()
        self.ctrl.on_server_ready.add(self._on_ready)

    # -- plumbing --------------------------------------------------------------------------------------
    def _on_ready(self, **_) -> None:
        self.runner.attach(asyncio.get_event_loop())

    def _init_state(self) -> None:
        SIMILARITIES = _choices()  # the engine's similarity names (XRayNeRFMRML.choices: no copies here)
        from XRayNeRFMRML.choices import DEFAULT_FOV_REGION, DEFAULT_RENDERER  # the engine's defaults (projector, grid region)

        s = self.state
        s.update(
            dict(
                tab="registration",
                message="",
                message_type="info",
                busy=False,
                job_kind="",
                progress=0.0,
                progress_text="",
                max_upload_bytes=self.data.max_upload_bytes,
                data_dir=str(self.data.root),
                files=self.data.listing(),
                # registration
                reg_ct="",
                reg_xray="",
                reg_ct_path="",
                reg_xray_path="",
                reg_xray_image_path="",
                reg_camera_path="",
                reg_landmarks_path="",
                reg_intensities=False,
                reg_ready=False,
                reg_pending=False,
                opacity=0.5,
                loss=SIMILARITIES[0],
                overlay_updates=0,
                reg_result="",
                **{k: 0.0 for k in POSE_KEYS},
                # reconstruction
                rec_projections="",
                rec_stack_path="",
                rec_geometry_path="",
                rec_method="voxel",
                rec_grid=64,
                rec_fov_region=DEFAULT_FOV_REGION,
                rec_size_x=0,
                rec_size_y=0,
                rec_size_z=0,
                rec_spacing_mm=2.0,
                rec_origin_r="",
                rec_origin_a="",
                rec_origin_s="",
                rec_refine=False,
                rec_like_path="",
                rec_iterations=0,
                rec_renderer=DEFAULT_RENDERER,
                rec_uncertainty=False,
                rec_done=False,
                rec_has_uncertainty=False,
                rec_has_refined=False,
                rec_result="",
                # DRR
                drr_primary=30.0,
                drr_secondary=0.0,
                drr_sid=800.0,
                drr_sdd=1200.0,
                drr_cols=256,
                drr_rows=256,
                drr_spacing=1.6,
                drr_position="HFS",
                drr_renderer=DEFAULT_RENDERER,
                drr_done=False,
            )
        )
        for key in POSE_KEYS:
            s.change(key)(self._on_pose_change)
        s.change("opacity")(self._on_opacity)

    def _say(self, text: str, kind: str = "info") -> None:
        self.state.message, self.state.message_type = str(text), kind

    def _action(fn: Optional[Callable] = None, *, list_files: bool = True) -> Callable:  # noqa: N805  (a decorator below)
        """Run a page action; refusals and errors become the page's message, the server keeps going. list_files:
        refresh the page's data-folder listing afterwards (a walk of the folder: not for the overlay updates,
        which write no file and come many times a second). ``@_action`` or ``@_action(list_files=False)``."""

        def decorate(fn: Callable) -> Callable:
            @functools.wraps(fn)
            def wrapper(self, *args, **kwargs):
                try:
                    return fn(self, *args, **kwargs)
                except (ValueError, RuntimeError, FileNotFoundError, OSError) as error:
                    # ValueError covers UnsafePathError / upload refusals / engine input errors, RuntimeError BusyError
                    self._say(str(error), "error")
                except Exception as error:  # an unexpected failure must not stop the server; say what happened
                    log.exception("action %s failed", fn.__name__)
                    self._say(f"internal error in {fn.__name__}: {type(error).__name__}: {error}", "error")
                finally:
                    if list_files:
                        self.state.files = self.data.listing()
                return None

            return wrapper

        return decorate if fn is None else decorate(fn)

    def _after_overlay(fn: Callable) -> Callable:  # noqa: N805  (a decorator below, under @_action)
        """An action that changes what the overlay shows (Accept, Revert, a Load) waits for the overlay updates in
        flight: while one runs (or one is asked for after it) the action is kept, with its arguments, and runs once
        the last of them has ended (:meth:`_overlay_idle`), so it never meets a half-written pose or DRR. One action
        waits at a time; a second one (or one while a long job waits) is refused with BusyError."""

        @functools.wraps(fn)
        def wrapper(self, *args):
            job = self.runner.job
            if job is None or job.kind != "overlay":
                return fn(self, *args)
            if self._waiting is not None or self._deferred is not None:
                raise BusyError("the overlay update", fn.__name__.replace("_", " "))
            self._waiting = (fn.__name__, args)
            self._say(f"{fn.__name__.replace('_', ' ')}: waiting for the overlay update in flight")
            return None

        return wrapper

    def _overlay_idle(self) -> None:
        """The overlay updates asked for so far have ended (on the event loop): a long job that waits for them
        starts, else an action that waits for them runs (:meth:`_after_overlay`)."""
        if self.runner.has_pending_overlay:
            return
        if self._deferred is not None:
            deferred, self._deferred = self._deferred, None
            self._start_deferred(*deferred)
        elif self._waiting is not None:
            (name, args), self._waiting = self._waiting, None
            getattr(self, name)(*args)

    def _start(self, kind: str, work: Callable, done: Callable[[Any], None], message: str = "") -> None:
        """Start a job (BusyError if one runs); ``done(result)`` on success, errors become the message. A long job
        asked for while an overlay update runs starts when the overlay updates asked for so far have ended (they
        take a fraction of a second and are not the user's job: they do not make the page "busy")."""
        if kind != "overlay" and self._deferred is not None:
            raise BusyError(self._deferred[0], kind)
        if kind != "overlay" and self._waiting is not None:
            raise BusyError(self._waiting[0].replace("_", " "), kind)
        if kind != "overlay" and self.runner.job is not None and self.runner.job.kind == "overlay":
            self._deferred = (kind, work, done, message)
            return

        def finished(result, error) -> None:
            if kind == "overlay":  # the overlay's work returns whether its DRR was coarse
                self.drag.done(coarse=bool(result) and error is None)
                self.overlay_throttle.render_ended()  # "still moving" counts from the end of this render
            with self.state:
                self.state.busy, self.state.job_kind = False, ""
                self.state.progress = 100.0 if error is None else self.state.progress
                if error is None:
                    try:
                        done(result)
                    except Exception as e:  # showing the result failed: say so, keep serving
                        log.exception("after %s", kind)
                        self._say(f"{kind}: {e}", "error")
                elif isinstance(error, (ValueError, RuntimeError)):
                    self._say(f"{kind} failed: {error}", "error")
                else:
                    log.error("%s failed", kind, exc_info=error)
                    self._say(f"{kind} failed: {type(error).__name__}: {error}", "error")
                if kind != "overlay":  # an overlay update writes no file
                    self.state.files = self.data.listing()
            if kind == "overlay":
                # a long job or an action asked for during the overlay updates goes on once the last pose asked for
                # is in the scene (after the page's busy flag was reset above)
                self._overlay_idle()

        job = self.runner.start(kind, work, finished)
        if job is not None and kind != "overlay":
            self.drag.release_all()  # every view shows the job's previews
            self.state.busy, self.state.job_kind, self.state.progress = True, kind, 0.0
            self.state.progress_text = ""
            if message:
                self._say(message)
            asyncio.ensure_future(self._push_progress(job, PREVIEW_VIEWS.get(kind)))

    @_action
    def _start_deferred(self, kind: str, work: Callable, done: Callable[[Any], None], message: str = "") -> None:
        self._start(kind, work, done, message)

    async def _push_progress(self, job, views=None) -> None:
        """~10 Hz: the job's progress, and the views that show its previews (names; None: all) while it runs."""
        seen = -1
        while self.runner.job is job:
            with self.state:
                self.state.progress = round(100.0 * job.fraction, 1)
                self.state.progress_text = job.message
            if job.previews != seen:
                seen = job.previews
                self._render_views(views)
            await asyncio.sleep(PUSH_INTERVAL_S)

    def _render_views(self, names=None) -> None:
        """Ask the views (all, or those named: "Red", "Green", "ThreeD") to redraw; they also redraw by themselves
        when the nodes they show change."""
        for view in self.sa.view_manager.get_views():
            if names is None or view.get_singleton_tag() in names:
                view.schedule_render()

    def _resolve(self, relative: str) -> Path:
        return self.data.resolve(relative)

    def _upload(self, files) -> Path:
        """The first uploaded file saved in the data folder (size and readability checked)."""
        if not files:
            raise ValueError("no file was chosen")
        f = files[0]
        name = str(f.get("name") or "upload")
        self.data.check_upload_size(name, int(f.get("size") or 0))
        content = f.get("content")
        if content is None:
            raise ValueError(f"refused '{name}': the browser sent no content")
        if isinstance(content, list):
            content = b"".join(content)
        return self.data.save_upload(name, bytes(content))

    # -- registration ---------------------------------------------------------------------------------
    @_action
    @_after_overlay
    def load_sample_registration(self) -> None:
        self._refuse_if_busy("loading the sample data")
        self.session.load_sample_registration()
        self._after_registration_inputs()
        self.state.reg_xray_path = self.state.reg_ct_path = ""
        self._say(
            "Loaded the sample chest CT and fluoroscopy (LAO 20 / CRA 10). Move the CT with the sliders or press Register.", "success"
        )

    def _refuse_if_busy(self, what: str) -> None:
        if self.runner.job is not None:
            raise BusyError(self.runner.job.kind, what)

    def _after_registration_inputs(self) -> None:
        s, ses = self.state, self.session
        s.reg_ct = ses.ct.GetName() if ses.ct is not None else ""
        s.reg_xray = ses.xray.GetName() if ses.xray is not None else ""
        s.reg_ready = ses.ct is not None and ses.xray is not None
        s.reg_pending = False
        with self.state:
            for key in POSE_KEYS:
                s[key] = 0.0
        if s.reg_ready:
            self._request_overlay()

    @_action
    @_after_overlay
    def load_ct_path(self, relative: str) -> None:
        self._refuse_if_busy("loading a CT")
        self.session.load_ct(self._resolve(relative))
        self._after_registration_inputs()
        self._say(f"Loaded the CT '{self.state.reg_ct}'.", "success")

    @_action
    @_after_overlay
    def load_xray_path(self, relative: str) -> None:
        self._refuse_if_busy("loading an X-ray")
        self.session.load_xray_dicom(self._resolve(relative))
        self._after_registration_inputs()
        self._say(f"Loaded the X-ray '{self.state.reg_xray}' with its C-arm geometry.", "success")

    @_action
    @_after_overlay
    def upload_ct(self, files) -> None:
        self._refuse_if_busy("loading a CT")
        path = self._upload(files)
        self.session.load_ct(path)
        self.state.reg_ct_path = self.data.relative(path)
        self._after_registration_inputs()
        self._say(f"Loaded the CT '{self.state.reg_ct}' from {self.data.relative(path)}.", "success")

    @_action
    @_after_overlay
    def upload_xray(self, files) -> None:
        self._refuse_if_busy("loading an X-ray")
        path = self._upload(files)
        self.session.load_xray_dicom(path)
        self.state.reg_xray_path = self.data.relative(path)
        self._after_registration_inputs()
        self._say(f"Loaded the X-ray '{self.state.reg_xray}' with its C-arm geometry.", "success")

    @_action
    def upload_xray_image(self, files) -> None:
        self.state.reg_xray_image_path = self.data.relative(self._upload(files))
        self._say(f"Uploaded {self.state.reg_xray_image_path}; add its camera JSON and Load.", "info")

    @_action
    def upload_camera(self, files) -> None:
        self.state.reg_camera_path = self.data.relative(self._upload(files))
        self._say(f"Uploaded {self.state.reg_camera_path}.", "info")

    @_action
    def upload_landmarks(self, files) -> None:
        self.state.reg_landmarks_path = self.data.relative(self._upload(files))
        self._say(f"Uploaded {self.state.reg_landmarks_path}; the X-ray image's pose is solved from it at Load.", "info")

    @_action
    @_after_overlay
    def load_xray_image_path(
        self, image_relative: str, camera_relative: str, intensities: bool = False, landmarks_relative: str = ""
    ) -> None:
        """An X-ray image with its camera JSON (both in the data folder), its pose from the camera JSON or, when a
        landmark file is named, from the landmarks: Session.load_xray_image."""
        self._refuse_if_busy("loading an X-ray")
        if not str(image_relative or "").strip() or not str(camera_relative or "").strip():
            raise ValueError("an X-ray image needs its camera JSON: give both (upload them, or name files in the data folder)")
        landmarks = self._resolve(landmarks_relative) if str(landmarks_relative or "").strip() else None
        self.session.load_xray_image(self._resolve(image_relative), self._resolve(camera_relative), bool(intensities), landmarks)
        self._after_registration_inputs()
        how = "its pose from the landmarks" if landmarks is not None else "its camera JSON"
        self._say(f"Loaded the X-ray '{self.state.reg_xray}' with {how}.", "success")

    def _on_pose_change(self, **_) -> None:
        if self.state.reg_ready and not self._long_job_runs():
            self.overlay_throttle.changed()

    def _long_job_runs(self) -> bool:
        """A job other than an overlay update runs (its own previews show the pose)."""
        return self.runner.job is not None and self.runner.job.kind != "overlay"

    def _throttled_overlay(self, coarse: bool) -> None:
        """The throttle's render (on the event loop): an overlay update, coarse while the controls move."""
        if not self._long_job_runs():
            self._request_overlay(coarse)

    def _on_opacity(self, opacity, **_) -> None:
        self.session.set_opacity(float(opacity))

    @_action(list_files=False)
    def _request_overlay(self, coarse: bool = False) -> None:
        """An overlay update at the controls' pose: the DRR coarse (while they move) or full size."""
        s = self.state
        rotation = [float(s.rx), float(s.ry), float(s.rz)]
        translation = [float(s.tr), float(s.ta), float(s.ts)]
        opacity = float(s.opacity)

        def done(_):  # the views redraw when self.drag lets them (finished() in _start)
            s.overlay_updates = self.session.overlay_updates

        def work(job) -> bool:
            self.drag.start()  # holding the scene: the views redraw no half-updated state
            self.session.overlay_work(job, rotation, translation, opacity, coarse=bool(coarse))
            return bool(coarse)

        self._start("overlay", work, done)

    # -- registration: click-placed landmarks (landmarks.py) ------------------------------------------
    def _init_landmarks(self) -> None:
        from .landmarks import ClickedLandmarks

        self.landmarks = ClickedLandmarks(self.session, self.sa.markups_logic, self._on_landmark_points)
        self.state.update(dict(lm_ct=0, lm_xray=0, lm_placing=""))

    def _on_landmark_points(self, ct: int, xray: int) -> None:
        with self.state:  # a click in a view (trame-rca's event call) added or removed a point
            self.state.lm_ct, self.state.lm_xray = int(ct), int(xray)

    @_action(list_files=False)
    def place_landmarks(self, which: str) -> None:
        """Clicks in the views place CT points (``which="ct"``: on the CT in the Green view) or X-ray points
        (``"xray"``: on the X-ray in the Red view)."""
        if self._long_job_runs():  # (an overlay update may run: placing changes no pose)
            raise BusyError(self.runner.job.kind, "placing landmarks")
        self.landmarks.place(which)
        self.state.lm_placing = which
        where = "the CT in the Green view" if which == "ct" else "the X-ray in the Red view"
        self._say(f"Click the landmarks on {where}; pair n is the n-th point of each list.", "info")

    @_action(list_files=False)
    def stop_landmarks(self) -> None:
        self.landmarks.stop()
        self.state.lm_placing = ""

    @_action(list_files=False)
    @_after_overlay
    def clear_landmarks(self) -> None:
        self.landmarks.clear()
        self.state.lm_placing = ""

    @_action(list_files=False)
    @_after_overlay
    def landmark_start(self) -> None:
        """The CT moved to the pose solved from the clicked pairs (landmarks.ClickedLandmarks.start); Accept or
        Revert as after a registration. Bad pairs: the layer's LandmarkError as the message, nothing moved."""
        from .landmarks import report

        self._refuse_if_busy("the landmark start")
        self.state.lm_placing = ""
        start = self.landmarks.start()
        ses = self.session
        ses.registration_output, ses.last_registration = start, None  # Revert restores the transform from before
        ses.base = ses.transform_matrix()
        self._zero_controls()
        self.state.reg_pending = True
        self._request_overlay()
        self._say(report(start), "success")

    @_action
    def reset_pose(self) -> None:
        with self.state:
            for key in POSE_KEYS:
                self.state[key] = 0.0

    @_action
    def register(self, loss: str, opacity: float) -> None:
        from XRayNeRFMRML.choices import SIMILARITIES

        self.session.require_registration_inputs()
        if loss not in SIMILARITIES:
            raise ValueError(f"unknown similarity {loss!r}; use one of {', '.join(SIMILARITIES)}")
        opacity = float(opacity)

        def done(output) -> None:
            r = output.result  # the engine's RegistrationResult
            self.session.base = self.session.transform_matrix()
            self._zero_controls()
            self.state.reg_pending = True
            self.state.overlay_updates = self.session.overlay_updates
            state = "cancelled: the best pose so far is kept" if r.cancelled else "done"
            self.state.reg_result = f"{r.loss_name} {r.initial_loss:.4f} -> {r.loss:.4f}"
            self._say(f"Registration {state} ({self.state.reg_result}, {r.iterations} iterations). Accept or Revert.", "success")
            self.sa.view_manager.get_view("ThreeD").reset_view()  # the C-arm model in view
            self._render_views()

        self._start(
            "registration",
            lambda job: self.session.register_work(job, loss, opacity),
            done,
            "Registering: the overlay follows the optimiser.",
        )

    def _zero_controls(self) -> None:
        # the controls nudge the current pose: after it changed under them they start again from zero
        with self.state:
            for key in POSE_KEYS:
                self.state[key] = 0.0

    @_action
    def cancel(self) -> None:
        if not self.runner.cancel():
            raise ValueError("nothing is running")
        self._say("Cancelling: the job stops at its next step.")

    @_action
    @_after_overlay
    def accept(self) -> None:
        self._refuse_if_busy("accept")
        self.session.accept()
        self._zero_controls()  # the controls nudge the accepted pose now (not the pose from before it)
        self.state.reg_pending = False
        self._say("Accepted: the CT keeps the registered pose.", "success")

    @_action
    @_after_overlay
    def revert(self) -> None:
        self._refuse_if_busy("revert")
        self.session.revert()
        self._zero_controls()
        self.state.reg_pending = False
        self._request_overlay()
        self._say("Reverted: the CT is back where it was before the registration.", "success")

    @_action
    def download_pose(self):
        from .session import json_bytes

        data = json_bytes(self.session.pose_json())
        self.data.output_path("pose.json").write_bytes(data)
        return self.server.protocol.addAttachment(data)

    @_action
    def download_itk(self):
        path = self.data.output_path("ct_pose.tfm")
        self.session.write_itk_transform(path)
        return self.server.protocol.addAttachment(path.read_bytes())

    # -- reconstruction -------------------------------------------------------------------------------
    @_action
    @_after_overlay
    def load_sample_projections(self) -> None:
        self._refuse_if_busy("loading the sample projections")
        self.session.load_sample_projections()
        self._after_projections()

    def _after_projections(self) -> None:
        p = self.session.projections
        self.state.rec_projections = f"{p.source or 'projections'}: {len(p)} views of {p.cameras.width} x {p.cameras.height}"
        self._say(f"Loaded {self.state.rec_projections}.", "success")

    @_action
    @_after_overlay
    def load_projections_path(self, stack_relative: str, geometry_relative: str) -> None:
        self._refuse_if_busy("loading projections")
        stack = self._resolve(stack_relative)
        geometry = self._resolve(geometry_relative) if str(geometry_relative or "").strip() else None
        self.session.load_projections(stack, geometry)
        self._after_projections()

    @_action
    def upload_stack(self, files) -> None:
        self.state.rec_stack_path = self.data.relative(self._upload(files))
        self._say(f"Uploaded {self.state.rec_stack_path}; add its geometry file (or none for DICOM) and Load.", "info")

    @_action
    def upload_geometry(self, files) -> None:
        self.state.rec_geometry_path = self.data.relative(self._upload(files))
        self._say(f"Uploaded {self.state.rec_geometry_path}.", "info")

    @_action
    def upload_like(self, files) -> None:
        self.state.rec_like_path = self.data.relative(self._upload(files))
        self._say(f"Uploaded {self.state.rec_like_path}; the reconstruction takes its grid.", "info")

    @_action
    def reconstruct(self, form: dict) -> None:
        """form: the tab's fields as the page shows them (method, grid, iterations, renderer, uncertainty, the output
        grid: fov_region, or an explicit size / spacing_mm / origin_ras, or a reference image ``like`` in the data
        folder; refine_geometry): session.reconstruction_request."""
        s = self.state
        from .session import reconstruction_request

        request = reconstruction_request(form, self.data.resolve)
        method = request["method"]

        def show(node) -> None:  # in the worker, holding the scene
            if self.session.recon_output is not None:  # the previous result's volume rendering is stale now
                self.session.show_volume_rendering(self.session.recon_output.volume_node, False)
            self.sa.display_manager.show_volume_in_slice_background(node)
            self.sa.display_manager.show_volume_in_slice_foreground(None)
            self.sa.display_manager.reset_views()
            self.session.show_preview_slice(node)

        def done(result) -> None:
            from XRayNeRFMRML.reconstruction import refined_cameras

            out, _previous = result
            self.sa.display_manager.show_volume_in_slice_background(out.volume_node)
            self.sa.display_manager.reset_views()
            self.session.show_volume_rendering(out.volume_node)
            if out.uncertainty_node is not None:  # over the volume, black (certain) to red (uncertain)
                out.uncertainty_node.GetDisplayNode().SetAndObserveColorNodeID(UNCERTAINTY_COLORS)
                self.sa.display_manager.show_volume_in_slice_foreground(out.uncertainty_node)
                for view in self.sa.view_manager.get_slice_views():
                    view.set_foreground_opacity(UNCERTAINTY_OPACITY)
            s.rec_done, s.rec_has_uncertainty = True, out.uncertainty_node is not None
            s.rec_has_refined = refined_cameras(out.volume_node) is not None  # the download offered when refine ran
            kept = " (cancelled: the best volume so far is kept)" if out.cancelled else ""
            s.rec_result = f"{method}: {out.volume_node.GetName()}, {out.result.seconds:.1f} s{kept}"
            self._say(f"Reconstruction done{kept}: {s.rec_result}.", "success")
            self._render_views()

        self._start(
            "reconstruction",
            lambda job: self.session.reconstruct_work(job, request, show),
            done,
            f"Reconstructing ({method}); the preview slice updates while it runs.",
        )

    @_action
    def download_volume(self, suffix: str, which: str = "volume"):
        out = self.session.recon_output
        if out is None:
            raise ValueError("run a reconstruction first")
        node = out.volume_node if which == "volume" else out.uncertainty_node
        if node is None:
            raise ValueError("this reconstruction has no uncertainty volume")
        if suffix not in (".nii.gz", ".nrrd"):
            raise ValueError("download as .nii.gz or .nrrd")
        path = self.data.output_path(f"reconstruction{'' if which == 'volume' else '_uncertainty'}{suffix}")
        self.session.write_volume(node, path)
        return self.server.protocol.addAttachment(path.read_bytes())

    @_action
    def download_refined_geometry(self):
        """The last reconstruction's self-calibrated cameras (XRayNeRF geometry JSON), written in the data folder."""
        path = self.data.output_path("refined_geometry.json")
        self.session.write_refined_geometry(path)
        return self.server.protocol.addAttachment(path.read_bytes())

    # -- DRR -------------------------------------------------------------------------------------------
    @_action
    @_after_overlay
    def load_sample_ct(self) -> None:
        self._refuse_if_busy("loading the sample CT")
        from XRayNeRFMRML import sampledata

        self.session.load_ct(sampledata.verify(sampledata.sample_data_dir() / sampledata.CT_FILE), "chest CT")
        self._after_registration_inputs()
        self._say("Loaded the sample chest CT.", "success")

    @staticmethod
    def drr_pose(form: dict) -> dict:
        """The DRR tab's fields as keywords of XRayNeRFMRML.drr.carm_cameras (checked)."""
        from XRayNeRFMRML.choices import PATIENT_POSITIONS

        from .session import finite

        if form.get("position") not in PATIENT_POSITIONS:
            raise ValueError(f"unknown patient position {form.get('position')!r}")
        return dict(
            primary_deg=finite(form.get("primary"), "LAO/RAO", -180, 180),
            secondary_deg=finite(form.get("secondary"), "CRA/CAU", -90, 90),
            sid_mm=finite(form.get("sid"), "source-isocentre distance (mm)", 10, 5000),
            sdd_mm=finite(form.get("sdd"), "source-detector distance (mm)", 10, 5000),
            size_px=(int(finite(form.get("cols"), "detector columns", 2, 2048)), int(finite(form.get("rows"), "detector rows", 2, 2048))),
            pixel_spacing_mm=finite(form.get("spacing"), "pixel spacing (mm)", 0.01, 20),
            patient_position=form.get("position"),
        )

    @_action
    def render_drr(self, form: dict) -> None:
        """form: the tab's fields as the page shows them."""
        from XRayNeRFMRML.choices import RENDERERS

        pose, renderer = self.drr_pose(form), form.get("renderer")
        if renderer not in RENDERERS:
            raise ValueError(f"unknown renderer {renderer!r}")

        def done(output) -> None:
            node = output.volume_node
            from XRayNeRFMRML.nodes import cameras_from_node
            from XRayNeRFMRML.overlay import align_slice_to_detector

            green = self.session.green
            green.GetSliceCompositeNode().SetBackgroundVolumeID(node.GetID())
            green.GetSliceCompositeNode().SetForegroundVolumeID(None)
            align_slice_to_detector(green.GetSliceNode(), cameras_from_node(node))
            green.GetSliceNode().SetSliceVisible(True)  # the DRR on its detector plane in 3D
            model = output.camera_model_node
            if model.GetDisplayNode() is None:
                model.CreateDefaultDisplayNodes()
            model.GetDisplayNode().SetColor(1.0, 0.8, 0.1)
            self.session.show_volume_rendering(self.session.ct)
            self.sa.view_manager.get_view("ThreeD").reset_view()  # the CT, the detector plane and the C-arm in view
            self.state.drr_done = True
            self._say(f"DRR rendered: {node.GetName()} ({pose['size_px'][0]} x {pose['size_px'][1]}, {renderer}).", "success")
            self._render_views()

        self._start("DRR", lambda job: self.session.drr_work(job, pose, renderer), done, "Rendering the DRR.")

    @_action
    @_after_overlay
    def use_drr_as_xray(self) -> None:
        self._refuse_if_busy("changing the X-ray")
        self.session.use_drr_as_xray()
        self._after_registration_inputs()
        self.state.tab = "registration"
        self._say(f"The DRR '{self.state.reg_xray}' is now the Registration X-ray.", "success")

    @_action
    def download_drr(self):
        if self.session.drr_node is None:
            raise ValueError("render a DRR first")
        path = self.data.output_path("drr.nrrd")
        self.session.write_volume(self.session.drr_node, path)
        return self.server.protocol.addAttachment(path.read_bytes())

    # -- page ------------------------------------------------------------------------------------------
    def _build_ui(self) -> None:
        from . import ui

        ui.build(self)


def serve(data: DataDir, host: str = "127.0.0.1", port: int = 8080) -> int:
    """Start the server (blocks until it stops); prints the URL when it is ready."""
    from trame.app import get_server

    use_headless_rendering()
    server = get_server("xraynerf", client_type="vue3")
    server.cli.description = "xraynerf web"
    app = XRayNeRFWebApp(server, data)

    def announce(**_) -> None:
        print(f"XRayNeRF web app: http://{host}:{server.port}/  (data folder: {data.root})", flush=True)

    server.controller.on_server_ready.add(announce)
    started = time.monotonic()
    log.info("starting on %s:%s", host, port)
    server.start(host=host, port=port, open_browser=False, show_connection_info=False, timeout=0, disable_logging=True)
    del app, started
    return 0


__all__ = ["XRayNeRFWebApp", "serve", "UnsafePathError"]
