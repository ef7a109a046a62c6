"""How the views are drawn: cheap frames on Mesa llvmpipe, and only the overlay's view redrawn while the CT is dragged.

The server draws every view on the CPU (VTK through EGL on Mesa llvmpipe) and sends each frame to the page as a
JPEG (trame-rca). Two choices keep a drag of the pose controls interactive (benchmarks/bench_web.py --profile
times each step):

* :func:`cheap_frames`: no multisampling. trame-slicer asks each view for 8x MSAA, which llvmpipe pays for on every
  frame (the whole framebuffer 8 times over); the slice views draw one image each, where MSAA adds nothing.
* :class:`DragRendering`: while the overlay follows the controls, only the overlay's view (Red) redraws, once per
  new DRR, and at a reduced image size (trame-rca's ``max_pixel_count``: at most :data:`DRAG_PIXELS`; the page
  stretches it to the view); the other views (the CT moving in 3D, the Green view) are held. The coarse DRRs
  are the ones made while the controls move; the full-size DRR that follows once they rest (the layer's throttle
  rule, ``XRayNeRFMRML.throttle.IDLE_S``: overlay.py) redraws every view, the Red view at its full size again.
  So the rest time is the throttle's, not a second timer here. trame-slicer's ``set_render_blocked`` is the
  switch: a held view ignores render requests, and is asked to redraw when released. Most of a Red frame is
  Slicer's slice pipeline (reslicing and blending the X-ray and the DRR at the view's pixels), so its cost
  follows the pixel count.

Runs on the server's event loop (the views belong to it).
"""

from __future__ import annotations

DRAG_PIXELS = 60_000  # the overlay view's image while dragging: at most this many pixels (about 0.3 MP at rest)


def cheap_frames(view_manager) -> None:
    """No multisampling in any view (each view's render window)."""
    for view in view_manager.get_views():
        view.render_window().SetMultiSamples(0)


class DragRendering:
    """Hold the views while an overlay update runs; release the overlay's view with each coarse DRR, all views
    with a full-size one.

    ``start()`` when an overlay update starts (from its job's worker while it holds the scene, or from the event
    loop), ``done(coarse)`` after it (on the event loop; ``coarse=False`` also when it failed); ``release_all()``
    at once (before a long job, whose previews every view shows)."""

    def __init__(self, view_manager, overlay_view: str = "Red", overlay_adapter=None):
        """overlay_adapter: the overlay view's trame-rca ``RcaViewAdapter`` (its image is made smaller while
        dragging), or None to keep its size."""
        self.view_manager, self.overlay_view = view_manager, overlay_view
        self.adapter, self._small = overlay_adapter, False
        self._held = []  # views held by this object (views held by someone else are left alone)

    def start(self) -> None:
        """Hold every view (only flags are set: safe from the worker holding the scene)."""
        for view in self.view_manager.get_views():
            if view not in self._held and not view.is_render_blocked:
                view.set_render_blocked(True)
                self._held.append(view)

    def done(self, coarse: bool) -> None:
        """The new DRR is in its node. Coarse (the controls move): the overlay's view redraws now, small (resized
        together with the DRR's frame, so that no frame shows the old DRR resized), the others stay held. Full
        size (at rest): every view redraws, the overlay's at its full size."""
        if not coarse:
            self.release_all()
            return
        if self.adapter is not None and not self._small:
            self._small = True
            self.adapter.max_pixel_count = DRAG_PIXELS  # trame-rca resizes the view and schedules its frame
        for view in list(self._held):
            if view.get_singleton_tag() == self.overlay_view:
                self._release(view)

    def release_all(self) -> None:
        if self._small:
            self._small = False
            self.adapter.max_pixel_count = 0  # trame-rca: no cap
        for view in list(self._held):
            self._release(view)

    @property
    def holding(self) -> list:
        """The names of the views held now."""
        return [view.get_singleton_tag() for view in self._held]

    def _release(self, view) -> None:
        self._held.remove(view)
        view.set_render_blocked(False)  # trame-slicer schedules the view's render
