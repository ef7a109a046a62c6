"""How the views are drawn: cheap frames on Mesa llvmpipe, and only the overlay's view redrawn while the CT is dragged.

The server draws every view on the CPU (VTK through EGL on Mesa llvmpipe) and sends each frame to the page as a
JPEG (trame-rca). Two choices keep a drag of the pose controls interactive (benchmarks/bench_web.py --profile
times each step):

* :func:`cheap_frames`: no multisampling. trame-slicer asks each view for 8x MSAA, which llvmpipe pays for on every
  frame (the whole framebuffer 8 times over); the slice views draw one image each, where MSAA adds nothing.
* :class:`DragRendering`: while the overlay follows the controls, only the overlay's view (Red) redraws, once per
  new DRR, and at a reduced image size (trame-rca's ``max_pixel_count``: at most :data:`DRAG_PIXELS`; the page
  stretches it to the view); the other views (the CT moving in 3D, the Green view) are held. When the controls
  have been still for ``settle_s`` every view redraws once, the Red view at its full size again.
  trame-slicer's ``set_render_blocked`` is the switch: a held view ignores render requests, and is asked to redraw
  when released. Most of a Red frame is Slicer's slice pipeline (reslicing and blending the X-ray and the DRR at
  the view's pixels), so its cost follows the pixel count.

Runs on the server's event loop (the views belong to it).
"""

from __future__ import annotations

import asyncio
from typing import Optional

SETTLE_S = 0.4  # the other views redraw when the controls have been still this long
DRAG_PIXELS = 120_000  # the overlay view's image while dragging: at most this many pixels (about 0.3 MP at rest)


def cheap_frames(view_manager) -> None:
    """No multisampling in any view (each view's render window)."""
    for view in view_manager.get_views():
        view.render_window().SetMultiSamples(0)


class DragRendering:
    """Hold the views while an overlay update runs; release the overlay's view with each new DRR, the rest later.

    ``start()`` when an overlay update starts (from its job's worker while it holds the scene, or from the event
    loop), ``done()`` after it (on the event loop, also when it failed); ``release_all()`` at once (before a long
    job, whose previews every view shows)."""

    def __init__(self, view_manager, overlay_view: str = "Red", settle_s: float = SETTLE_S, overlay_adapter=None):
        """overlay_adapter: the overlay view's trame-rca ``RcaViewAdapter`` (its image is made smaller while
        dragging), or None to keep its size."""
        self.view_manager, self.overlay_view, self.settle_s = view_manager, overlay_view, float(settle_s)
        self.adapter, self._small, self._dragging = overlay_adapter, False, False
        self._held = []  # views held by this object (views held by someone else are left alone)
        self._active = False  # an overlay update runs
        self._timer: Optional[asyncio.TimerHandle] = None

    def moving(self) -> None:
        """A control moved (on the event loop): from the next new DRR on, the overlay view's image is small until
        the drag settles (resized together with the DRR's frame, so that no frame shows the old DRR resized)."""
        self._dragging = True

    def start(self) -> None:
        """Hold every view (only flags are set: safe from the worker holding the scene)."""
        self._active = True
        for view in self.view_manager.get_views():
            if view not in self._held and not view.is_render_blocked:
                view.set_render_blocked(True)
                self._held.append(view)

    def done(self) -> None:
        """The new DRR is in its node: the overlay's view redraws now, the others after ``settle_s`` of stillness."""
        self._active = False
        if self._dragging and self.adapter is not None and not self._small:
            self._small = True
            self.adapter.max_pixel_count = DRAG_PIXELS  # trame-rca resizes the view and schedules its frame
        for view in list(self._held):
            if view.get_singleton_tag() == self.overlay_view:
                self._release(view)
        self._cancel_timer()
        self._timer = asyncio.get_event_loop().call_later(self.settle_s, self._settle)

    def release_all(self) -> None:
        self._cancel_timer()
        self._dragging = False
        if self._small:
            self._small = False
            self.adapter.max_pixel_count = 0  # trame-rca: no cap
        for view in list(self._held):
            self._release(view)

    @property
    def holding(self) -> list:
        """The names of the views held now."""
        return [view.get_singleton_tag() for view in self._held]

    def _settle(self) -> None:
        self._timer = None
        if not self._active:  # else the running update's done() waits again
            self.release_all()

    def _release(self, view) -> None:
        self._held.remove(view)
        view.set_render_blocked(False)  # trame-slicer schedules the view's render

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
