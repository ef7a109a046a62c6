"""Jobs off the server's event loop, with the MRML scene handed over safely.

The MRML scene, VTK and the trame views belong to the event-loop thread. A job (registration, reconstruction,
a DRR, one overlay update) runs in a worker thread that *holds the scene*: while it holds it, the event loop is
parked (blocked in a callback), so the job may call the XRayNeRFMRML layer unchanged, exactly as Slicer runs it
on its main thread. The job lets go of the scene, and the event loop runs (page events, view rendering), for the
whole time the engine computes: the layer's functions take ``call_engine`` (XRayNeRFMRML/engine_call.py), and
the job passes :meth:`JobState.call_engine`, which releases the scene around the engine call (for example
``XRayNeRFLib.registration.register``) and holds it again around each of its progress callbacks (where the layer
writes its live preview into nodes). So no MRML or VTK object is touched by two threads at once:

    event loop  ──run──┐ parked ┌──run (engine computes)──┐ parked ┌──run──
    worker             └─Logic: read nodes─┘  engine ...  └─progress: write preview─┘ ...

One job at a time (:class:`BusyError` for a second one); overlay updates coalesce (the newest pose wins).
Progress is recorded in plain attributes and pushed to the page by the event loop at ~10 Hz.
"""

from __future__ import annotations

import asyncio
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Optional


class BusyError(RuntimeError):
    """A job was asked for while another runs."""

    def __init__(self, running: str, asked: str):
        self.running, self.asked = running, asked
        super().__init__(f"busy: {running} is running; wait for it to finish or cancel it before starting {asked}")


class SceneGate:
    """Parks the event loop while a worker thread holds the scene (see the module docstring)."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self._resume: Optional[threading.Event] = None
        self.owner: Optional[int] = None  # thread id of the worker holding the scene

    def hold(self) -> None:
        """From the worker: returns once the event loop is parked."""
        parked, resume = threading.Event(), threading.Event()

        def park() -> None:
            parked.set()
            resume.wait()

        self.loop.call_soon_threadsafe(park)
        while not parked.wait(1.0):
            if self.loop.is_closed():
                raise RuntimeError("the server's event loop has stopped")
        self._resume, self.owner = resume, threading.get_ident()

    def release(self) -> None:
        resume, self._resume, self.owner = self._resume, None, None
        if resume is not None:
            resume.set()

    @contextmanager
    def released(self):
        """From the worker holding the scene: let the event loop run for the block (no MRML / VTK inside)."""
        self.release()
        try:
            yield
        finally:
            self.hold()

    def held_here(self) -> bool:
        return self.owner == threading.get_ident()

    def call_engine(self, fn: Callable, *args, **kwargs):
        """From the worker holding the scene: ``fn(*args, **kwargs)`` (an engine function: no MRML / VTK) with the
        scene released, its ``progress=`` callback (if any) called with the scene held. The layer's
        ``call_engine`` (XRayNeRFMRML/engine_call.py)."""
        if not self.held_here():
            raise RuntimeError("call_engine is for the job's worker thread while it holds the scene")
        progress = kwargs.get("progress")
        if progress is not None:

            def in_scene(*a, **k):
                self.hold()
                try:
                    return progress(*a, **k)
                finally:
                    self.release()

            kwargs["progress"] = in_scene
        with self.released():
            return fn(*args, **kwargs)


@dataclass
class JobState:
    """What the page shows of the running job; written by the worker, read by the event loop."""

    kind: str
    gate: Optional[SceneGate] = None
    fraction: float = 0.0
    message: str = ""
    previews: int = 0
    cancel_requested: bool = False
    started_s: float = field(default_factory=time.monotonic)

    def call_engine(self, fn: Callable, *args, **kwargs):
        """What the job passes to the layer as ``call_engine``: :meth:`SceneGate.call_engine`."""
        return self.gate.call_engine(fn, *args, **kwargs)


class JobRunner:
    """At most one job at a time, each in its own worker thread holding the scene (engine calls excepted).

    ``start(kind, work, done)``: ``work(job)`` runs in the worker; ``done(result, error)`` runs afterwards on
    the event loop. Overlay updates (``kind == "overlay"``) asked for while one runs are kept, newest only,
    and started when it ends; anything else while a job runs raises BusyError.

    The app takes its runner as an argument (``XRayNeRFWebApp(server, data, runner=...)``) and attaches it to the
    server's event loop when the server is ready (:meth:`attach`); a runner made with ``loop`` is attached."""

    def __init__(self, loop: Optional[asyncio.AbstractEventLoop] = None):
        self.loop: Optional[asyncio.AbstractEventLoop] = None
        self.gate: Optional[SceneGate] = None
        self.job: Optional[JobState] = None
        self._pending_overlay = None
        self._thread: Optional[threading.Thread] = None
        if loop is not None:
            self.attach(loop)

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Run jobs for this event loop (the one that owns the scene and the views)."""
        self.loop, self.gate = loop, SceneGate(loop)

    @property
    def busy(self) -> bool:
        return self.job is not None

    def start(self, kind: str, work: Callable[[JobState], Any], done: Callable[[Any, Optional[BaseException]], None]):
        if self.loop is None:
            raise RuntimeError("the job runner is not attached to the server's event loop yet")
        if self.job is not None:
            if kind == "overlay" and self.job.kind == "overlay":
                self._pending_overlay = (work, done)
                return None
            raise BusyError(self.job.kind, kind)
        job = self.job = JobState(kind, self.gate)

        def run() -> None:
            asyncio.set_event_loop(self.loop)  # VTK observers that schedule renders find the server's loop
            result, error = None, None
            try:
                self.gate.hold()
                try:
                    result = work(job)
                finally:
                    self.gate.release()
            except BaseException as e:  # handed to done() on the loop, which shows it in the page
                error = e
            self.loop.call_soon_threadsafe(self._finish, job, done, result, error)

        self._thread = threading.Thread(target=run, name=f"xraynerf-{kind}", daemon=True)
        self._thread.start()
        return job

    def _finish(self, job: JobState, done, result, error) -> None:
        self.job = None
        try:
            done(result, error)
        finally:
            pending, self._pending_overlay = self._pending_overlay, None
            if pending is not None and self.job is None:
                self.start("overlay", *pending)

    @property
    def has_pending_overlay(self) -> bool:
        """An overlay update is kept to start when the running job ends."""
        return self._pending_overlay is not None

    def cancel(self) -> bool:
        """Ask the running job to stop at its next progress call; False when there is none."""
        if self.job is None:
            return False
        self.job.cancel_requested = True
        return True
